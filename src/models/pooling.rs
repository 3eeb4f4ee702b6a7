//! Sentence-transformers configuration (`modules.json`, `1_Pooling/config.json`,
//! `sentence_bert_config.json`) and the pooling / normalisation of token states.
//!
//! Used by `models::encoder` after `models::bert` has produced the hidden states.

use std::path::Path;

use serde_json::Value;

use super::ModelError;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average over all tokens (specials included, like sentence-transformers).
    Mean,
    /// The first token's state.
    Cls,
    /// Element-wise maximum over tokens.
    Max,
    /// Sum over tokens divided by sqrt(length).
    MeanSqrtLen,
    /// The last token's state.
    LastToken,
}

impl Pooling {
    /// The name sentence-transformers and TEI use for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::LastToken => "last_token",
        }
    }
}

/// What the sentence-transformers files say (all optional for a plain HF model).
#[derive(Debug, Clone, Default)]
pub struct StConfig {
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn pooling_from(cfg: &Value, path: &Path) -> Result<Pooling, ModelError> {
    if let Some(mode) = cfg.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
            "lasttoken" => Ok(Pooling::LastToken),
            other => Err(ModelError::Unsupported(format!("pooling mode {other}"))),
        };
    }
    let flags = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ("pooling_mode_lasttoken", Pooling::LastToken),
    ];
    let on: Vec<Pooling> = flags
        .iter()
        .filter(|(k, _)| cfg.get(*k).and_then(Value::as_bool).unwrap_or(false))
        .map(|(_, p)| *p)
        .collect();
    match on.as_slice() {
        [p] => Ok(*p),
        [] => Err(ModelError::Invalid {
            path: path.to_path_buf(),
            reason: "no pooling mode enabled".into(),
        }),
        _ => Err(ModelError::Unsupported(
            "several pooling modes concatenated".into(),
        )),
    }
}

/// Reads the sentence-transformers files of `dir`, if any.
pub fn read_st_config(dir: &Path) -> Result<StConfig, ModelError> {
    let mut out = StConfig::default();
    if let Some(v) = read_json(&dir.join("sentence_bert_config.json"))? {
        out.max_seq_length = v
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
    }
    let modules_path = dir.join("modules.json");
    let Some(modules) = read_json(&modules_path)? else {
        return Ok(out);
    };
    let list = modules.as_array().ok_or_else(|| ModelError::Invalid {
        path: modules_path.clone(),
        reason: "expected an array".into(),
    })?;
    for m in list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
        let sub = m.get("path").and_then(Value::as_str).unwrap_or_default();
        match ty.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Pooling" => {
                let p = dir.join(sub).join("config.json");
                let cfg = read_json(&p)?.ok_or_else(|| ModelError::Files {
                    what: "pooling config named by modules.json is missing".into(),
                    path: p.clone(),
                })?;
                out.pooling = Some(pooling_from(&cfg, &p)?);
            }
            "Normalize" => out.normalize = true,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "sentence-transformers module {other}"
                )))
            }
        }
    }
    Ok(out)
}

/// Pools `hidden` (`[len, h]`, row-major) into one `h`-vector.
pub fn pool(hidden: &[f32], h: usize, mode: Pooling) -> Vec<f32> {
    let len = hidden.len() / h;
    if len == 0 {
        return vec![0.0; h];
    }
    let rows = hidden.chunks_exact(h);
    match mode {
        Pooling::Cls => hidden[..h].to_vec(),
        Pooling::LastToken => hidden[(len - 1) * h..].to_vec(),
        Pooling::Max => rows.fold(vec![f32::NEG_INFINITY; h], |mut acc, r| {
            acc.iter_mut().zip(r).for_each(|(a, &v)| *a = a.max(v));
            acc
        }),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let mut acc = vec![0.0f32; h];
            for r in rows {
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
            }
            let div = if mode == Pooling::Mean {
                len as f32
            } else {
                (len as f32).sqrt()
            };
            acc.iter_mut().for_each(|a| *a /= div);
            acc
        }
    }
}

/// L2-normalises `v` in place (like `torch.nn.functional.normalize`, eps 1e-12).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let hs = [1.0, 2.0, 3.0, -4.0, 5.0, 0.0];
        assert_eq!(pool(&hs, 2, Pooling::Cls), vec![1.0, 2.0]);
        assert_eq!(pool(&hs, 2, Pooling::LastToken), vec![5.0, 0.0]);
        assert_eq!(pool(&hs, 2, Pooling::Max), vec![5.0, 2.0]);
        assert_eq!(pool(&hs, 2, Pooling::Mean), vec![3.0, -2.0 / 3.0]);
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }

    #[test]
    fn st_files_select_pooling_and_normalize() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("1_Pooling")).unwrap();
        std::fs::write(
            d.path().join("modules.json"),
            r#"[{"type":"sentence_transformers.models.Transformer","path":""},
                {"type":"sentence_transformers.models.Pooling","path":"1_Pooling"},
                {"type":"sentence_transformers.models.Normalize","path":"2_Normalize"}]"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("sentence_bert_config.json"),
            r#"{"max_seq_length": 77}"#,
        )
        .unwrap();
        let c = read_st_config(d.path()).unwrap();
        assert_eq!(
            (c.pooling, c.normalize, c.max_seq_length),
            (Some(Pooling::Cls), true, Some(77))
        );
        let empty = tempfile::tempdir().unwrap();
        let c = read_st_config(empty.path()).unwrap();
        assert_eq!(
            (c.pooling, c.normalize, c.max_seq_length),
            (None, false, None)
        );
    }
}
