//! Hostile model files: GGUF headers that lie about sizes, offsets, alignment and layer
//! counts, and a `tokenizer.json` that is not JSON. Each must be a load error naming the
//! file — never a panic, an abort or a huge allocation. The GGUF files are written byte by
//! byte here (version 3 layout), so a header can say anything.

use std::path::{Path, PathBuf};

use trident::models::decoder::DecoderModel;
use trident::models::testutil_decoder::{write_tiny_decoder, write_tiny_gguf, TinyDecoderSpec};
use trident::models::LoadOptions;

/// A GGUF metadata value.
enum Kv {
    U32(u32),
    U64(u64),
    Str(&'static str),
}

/// A tensor entry: name, dims (GGUF order: innermost first), ggml type, data offset.
struct Tensor(&'static str, Vec<u64>, u32, u64);

const F32: u32 = 0;

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file with `kvs`, `tensors` and `data` after the 32-byte aligned header.
fn gguf(kvs: &[(&str, Kv)], tensors: &[Tensor], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        string(&mut out, k);
        match v {
            Kv::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::U64(x) => {
                out.extend(10u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
        }
    }
    for Tensor(name, dims, ty, offset) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(data);
    out
}

/// Llama metadata for a model of hidden size 8 with `layers` blocks.
fn llama(layers: u64) -> Vec<(&'static str, Kv)> {
    vec![
        ("general.architecture", Kv::Str("llama")),
        ("llama.embedding_length", Kv::U32(8)),
        ("llama.attention.head_count", Kv::U32(2)),
        ("llama.feed_forward_length", Kv::U32(16)),
        ("llama.block_count", Kv::U64(layers)),
        ("llama.context_length", Kv::U32(32)),
    ]
}

/// Writes `bytes` as `name` in `dir`, loads it and returns the error text (a success or a
/// panic fails the test).
fn load_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let loaded = std::panic::catch_unwind(|| DecoderModel::load(&file, &LoadOptions::default()));
    let err = match loaded {
        Ok(Ok(_)) => panic!("{name}: a hostile file loaded"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{name}: loading panicked"),
    };
    assert!(
        err.contains(&file.display().to_string()),
        "{name}: the error does not name the file: {err}"
    );
    err
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

#[test]
fn lying_gguf_headers_are_errors_naming_the_file() {
    let (_keep, dir) = dir();
    let embd = |dims: Vec<u64>, offset: u64| Tensor("token_embd.weight", dims, F32, offset);
    let four_rows = vec![0u8; 4 * 8 * 4];

    // A tensor of 2^40 rows in a file of a few hundred bytes: refused before allocating.
    let err = load_error(
        &dir,
        "huge.gguf",
        &gguf(&llama(1), &[embd(vec![8, 1 << 40], 0)], &four_rows),
    );
    assert!(err.contains("runs past the end of the file"), "{err}");

    // Dimensions whose product overflows.
    let err = load_error(
        &dir,
        "overflow.gguf",
        &gguf(&llama(1), &[embd(vec![1 << 62, 1 << 62], 0)], &four_rows),
    );
    assert!(!err.is_empty());

    // Data offset past the end of the file.
    let err = load_error(
        &dir,
        "offset.gguf",
        &gguf(&llama(1), &[embd(vec![8, 4], 1 << 50)], &four_rows),
    );
    assert!(err.contains("past the end"), "{err}");

    // A block count no file could hold (and that must not size an allocation).
    let err = load_error(
        &dir,
        "layers.gguf",
        &gguf(&llama(1 << 40), &[embd(vec![8, 4], 0)], &four_rows),
    );
    assert!(err.contains("block_count"), "{err}");

    // A zero-sized dimension (candle would view an empty buffer as blocks: an abort).
    let err = load_error(
        &dir,
        "zero.gguf",
        &gguf(&llama(1), &[embd(vec![8, 0], 0)], &four_rows),
    );
    assert!(err.contains("zero dimension"), "{err}");

    // A scalar and a 1-D embedding table (GGUF allows any rank): the scalar's rows were
    // read as `dims()[0]`, a panic (the gguf_header fuzz target's crash-scalar-token-embd).
    for (name, dims) in [("scalar.gguf", vec![]), ("vector.gguf", vec![8])] {
        let err = load_error(&dir, name, &gguf(&llama(1), &[embd(dims, 0)], &four_rows));
        assert!(err.contains("token_embd.weight"), "{err}");
    }

    // Alignment 0 (candle divides by it).
    let mut kvs = llama(1);
    kvs.push(("general.alignment", Kv::U32(0)));
    load_error(
        &dir,
        "align.gguf",
        &gguf(&kvs, &[embd(vec![8, 4], 0)], &four_rows),
    );

    // A string length of 2^60 and a tensor count of 2^60.
    let mut bad = b"GGUF".to_vec();
    bad.extend(3u32.to_le_bytes());
    bad.extend(0u64.to_le_bytes());
    bad.extend(1u64.to_le_bytes());
    bad.extend((1u64 << 60).to_le_bytes());
    load_error(&dir, "string.gguf", &bad);
    let mut bad = b"GGUF".to_vec();
    bad.extend(3u32.to_le_bytes());
    bad.extend((1u64 << 60).to_le_bytes());
    bad.extend(0u64.to_le_bytes());
    load_error(&dir, "count.gguf", &bad);

    // Not a GGUF at all, and an empty file.
    load_error(&dir, "text.gguf", b"hello, I am not a model");
    load_error(&dir, "empty.gguf", b"");
}

#[test]
fn a_tokenizer_json_that_is_not_json_is_an_error_naming_it() {
    // Safetensors checkpoint with a broken tokenizer.json.
    let (_keep, dir) = dir();
    write_tiny_decoder(&dir, &TinyDecoderSpec::new("llama")).unwrap();
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, "{ this is not json").unwrap();
    let err = DecoderModel::load(&dir, &LoadOptions::default())
        .err()
        .expect("a broken tokenizer.json must not load")
        .to_string();
    assert!(err.contains(&tok.display().to_string()), "{err}");

    // A GGUF beside a broken tokenizer.json: the side file is used, and named.
    let (_keep2, gdir) = dir_with_gguf();
    let side = gdir.join("tokenizer.json");
    std::fs::write(&side, [0xff, 0xfe, 0x00]).unwrap();
    let err = DecoderModel::load(&gdir.join("m.gguf"), &LoadOptions::default())
        .err()
        .expect("a broken tokenizer.json must not load")
        .to_string();
    assert!(err.contains(&side.display().to_string()), "{err}");
}

fn dir_with_gguf() -> (tempfile::TempDir, PathBuf) {
    let (keep, dir) = dir();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_tiny_decoder(&src, &TinyDecoderSpec::new("llama")).unwrap();
    write_tiny_gguf(
        &src,
        &dir.join("m.gguf"),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    (keep, dir)
}
