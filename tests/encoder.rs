//! Encoder backend against reference numbers from sentence-transformers / transformers
//! (`tests/fixtures/encoder/*.json`, produced by `tests/fixtures/gen/encoder_refs.py`).
//! Needs the MiniLM weights (`scripts/fetch-models.sh`); the tiny XLM-R and the MiniLM
//! cross-encoder are generated here from fixed seeds by `trident::models::testutil`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use trident::models::encoder::{EncoderKind, EncoderModel, PairTokens, Pooling};
use trident::models::{testutil, DTypeChoice, LoadOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> PathBuf {
    let p = root().join("models/embedding");
    assert!(
        p.join("model.safetensors").exists(),
        "MiniLM weights missing: run scripts/fetch-models.sh"
    );
    p
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/encoder").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(path: &Path, dtype: DTypeChoice) -> EncoderModel {
    EncoderModel::load(
        path,
        &LoadOptions {
            dtype,
            ..Default::default()
        },
    )
    .unwrap()
}

fn check_minilm(dtype: DTypeChoice, min_cos: f64) -> EncoderModel {
    let fx = fixture("minilm_st.json");
    let m = load(&minilm(), dtype);
    let texts: Vec<&str> = fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.encode_text(t, true).unwrap())
        .collect();
    for (got, want) in ids.iter().zip(fx["ids"].as_array().unwrap()) {
        assert_eq!(got, &u32s(want));
    }
    let batch: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let vecs = m.embed(&batch).unwrap();
    for (i, (got, want)) in vecs
        .iter()
        .zip(fx["vectors"].as_array().unwrap())
        .enumerate()
    {
        let c = cosine(got, &floats(want));
        eprintln!("{dtype:?} text {i}: cosine {c:.7}");
        assert!(c >= min_cos, "{dtype:?} text {i}: cosine {c}");
    }
    // A padded batch of mixed lengths equals each input alone.
    for (i, one) in batch.iter().enumerate() {
        let alone = m.embed(&[one]).unwrap();
        assert!(
            max_abs(&alone[0], &vecs[i]) < 1e-5,
            "{dtype:?} text {i} alone differs"
        );
    }
    m
}

#[test]
fn minilm_f32_matches_sentence_transformers() {
    let m = check_minilm(DTypeChoice::F32, 0.9999);
    let info = m.info();
    assert_eq!(
        (info.max_len, info.hidden_size, info.normalize),
        (256, 384, true)
    );
    assert_eq!(
        (info.pooling, info.kind, info.dtype.as_str()),
        (Pooling::Mean, EncoderKind::Embedding, "f32")
    );
    let long = fixture("minilm_st.json")["texts"][5]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        m.encode_text(&long, false).is_err(),
        "too long input must be rejected without truncate"
    );
    assert!(
        m.score(&[]).is_err(),
        "an embedding model has no classification head"
    );
    let ids = m.encode_text("Hello world", false).unwrap();
    assert_eq!(m.decode(&ids).unwrap(), "[CLS] hello world [SEP]");
    // A query prepared once for many documents: its tokens open every pair, and only
    // the document (or a query longer than the window) is cut to the 256-token window.
    let q = "where do engines run?";
    let q_ids = m.encode_text(q, false).unwrap();
    let prepared = m.prepare_query(q).unwrap();
    let pair = m
        .encode_prepared_pair(&prepared, "engines run as child processes")
        .unwrap();
    assert_eq!(
        pair.ids[..q_ids.len()],
        q_ids[..],
        "[CLS] query [SEP] first"
    );
    assert_eq!(
        pair.ids,
        m.encode_pair(q, "engines run as child processes")
            .unwrap()
            .ids
    );
    let cut = m.encode_prepared_pair(&prepared, &long).unwrap();
    assert_eq!(cut.ids.len(), 256);
    assert_eq!(cut.ids[..q_ids.len()], q_ids[..]);
    // Text past the window is never tokenised (only its first 256 × 32 characters), and
    // the cut tokens are the same as from the whole text.
    let huge = "the quick brown fox jumps over the lazy dog ".repeat(190_000);
    let huge_ids = m.encode_text(&huge, true).unwrap();
    assert_eq!(huge_ids, m.encode_text(&huge[..20_000], true).unwrap());
    assert_eq!(huge_ids.len(), 256);
    let huge_pair = m.encode_prepared_pair(&prepared, &huge).unwrap();
    assert_eq!(huge_pair.ids.len(), 256);
    let err = m.encode_text(&huge, false).unwrap_err().to_string();
    assert!(
        err.contains("characters"),
        "refused before tokenising: {err}"
    );
    let long_query = m.prepare_query(&long).unwrap();
    assert_eq!(
        m.encode_prepared_pair(&long_query, "short")
            .unwrap()
            .ids
            .len(),
        256
    );
    assert_eq!(m.token_strings(&ids), ["[CLS]", "hello", "world", "[SEP]"]);
}

#[test]
fn minilm_auto_dtype_stays_within_bound() {
    let m = check_minilm(DTypeChoice::Auto, 0.999);
    assert!(["f32", "bf16"].contains(&m.info().dtype.as_str()));
}

#[test]
fn tiny_xlm_roberta_embedding_matches_transformers() {
    let fx = fixture("tiny_xlmr.json");
    let dir = tempfile::tempdir().unwrap();
    testutil::write_tiny_xlmr(dir.path(), false).unwrap();
    let m = load(dir.path(), DTypeChoice::F32);
    assert_eq!(
        (m.info().model_type.as_str(), m.info().max_len),
        ("xlm-roberta", 64)
    );
    assert_eq!(
        (m.info().pooling, m.info().normalize),
        (Pooling::Mean, false)
    );
    let texts = fx["texts"].as_array().unwrap();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.encode_text(t.as_str().unwrap(), false).unwrap())
        .collect();
    for (got, want) in ids.iter().zip(fx["ids"].as_array().unwrap()) {
        assert_eq!(got, &u32s(want));
    }
    let batch: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let vecs = m.embed(&batch).unwrap();
    for (i, (got, want)) in vecs.iter().zip(fx["mean"].as_array().unwrap()).enumerate() {
        let d = max_abs(got, &floats(want));
        eprintln!("tiny text {i}: max abs diff {d}");
        assert!(d < 1e-4, "text {i}: max abs diff {d}");
        let alone = m.embed(&[batch[i]]).unwrap();
        assert!(max_abs(&alone[0], got) < 1e-6);
    }
}

/// CLS pooling reads only the first row, so the CPU path skips the rest of the last layer
/// (`Bert::forward_first`); the vectors must equal the first row of the full pass.
#[test]
fn cls_pooling_equals_the_first_row_of_the_full_pass() {
    let fx = fixture("tiny_xlmr.json");
    let dir = tempfile::tempdir().unwrap();
    testutil::write_tiny_xlmr(dir.path(), false).unwrap();
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    let m = load(dir.path(), DTypeChoice::F32);
    assert_eq!(m.info().pooling, Pooling::Cls);
    let ids: Vec<Vec<u32>> = fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| m.encode_text(t.as_str().unwrap(), false).unwrap())
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    assert!(batch.len() > 1 && batch.iter().any(|b| b.len() != batch[0].len()));
    let vecs = m.embed(&batch).unwrap();
    let states = m.token_states(&batch).unwrap();
    let want = fx["cls"].as_array().unwrap();
    for (i, (got, full)) in vecs.iter().zip(&states).enumerate() {
        let d = max_abs(got, &full[0]);
        assert!(d < 1e-5, "text {i}: max abs diff {d} vs the full pass");
        let d = max_abs(got, &floats(&want[i]));
        assert!(d < 1e-4, "text {i}: max abs diff {d} vs transformers");
        let alone = m.embed(&[batch[i]]).unwrap();
        assert!(max_abs(&alone[0], got) < 1e-5, "text {i} alone");
    }
}

#[test]
fn tiny_xlm_roberta_classifier_matches_transformers() {
    let fx = fixture("tiny_xlmr.json");
    let dir = tempfile::tempdir().unwrap();
    testutil::write_tiny_xlmr(dir.path(), true).unwrap();
    let m = load(dir.path(), DTypeChoice::F32);
    assert_eq!(
        m.info().kind,
        EncoderKind::CrossEncoder {
            num_labels: testutil::TINY_LABELS
        }
    );
    let pairs: Vec<PairTokens> = fx["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            m.encode_pair(p[0].as_str().unwrap(), p[1].as_str().unwrap())
                .unwrap()
        })
        .collect();
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(p.ids, u32s(&fx["pair_ids"][i]), "pair {i} ids");
        assert_eq!(
            p.type_ids,
            u32s(&fx["pair_type_ids"][i]),
            "pair {i} type ids"
        );
    }
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let logits = m.logits(&refs).unwrap();
    let scores = m.score(&refs).unwrap();
    for (i, want) in fx["logits"].as_array().unwrap().iter().enumerate() {
        let d = max_abs(&logits[i], &floats(want));
        assert!(d < 1e-4, "pair {i}: logits {:?} vs {want}", logits[i]);
        assert_eq!(scores[i], logits[i][0]);
    }
}

#[test]
fn minilm_cross_encoder_matches_transformers() {
    let fx = fixture("minilm_cross.json");
    let dir = tempfile::tempdir().unwrap();
    testutil::write_minilm_cross_encoder(&minilm(), dir.path()).unwrap();
    let m = load(dir.path(), DTypeChoice::F32);
    assert_eq!(m.info().kind, EncoderKind::CrossEncoder { num_labels: 1 });
    assert_eq!(m.info().max_len as u64, fx["max_length"].as_u64().unwrap());
    let pairs: Vec<PairTokens> = fx["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            m.encode_pair(p[0].as_str().unwrap(), p[1].as_str().unwrap())
                .unwrap()
        })
        .collect();
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(p.ids, u32s(&fx["ids"][i]), "pair {i} ids");
        assert_eq!(p.type_ids, u32s(&fx["type_ids"][i]), "pair {i} type ids");
    }
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let scores = m.score(&refs).unwrap();
    for (i, (got, want)) in scores.iter().zip(floats(&fx["logits"])).enumerate() {
        eprintln!("cross pair {i}: {got} vs {want}");
        assert!((got - want).abs() < 1e-4, "pair {i}: {got} vs {want}");
        let alone = m.score(&[refs[i]]).unwrap();
        assert!((alone[0] - got).abs() < 1e-5);
    }
}

#[test]
fn encoder_model_can_move_to_a_model_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EncoderModel>();
}
