//! A GGUF file from memory: the header and tensor table, the decoder configuration, every
//! weight the loader reads (sizes checked against the file before allocating), and the
//! tokenizer built from the metadata.
//!
//! candle's header reader can panic on a hostile header (`general.alignment = 0`);
//! `GgufFile` catches that and returns an error. libFuzzer's panic hook would abort even
//! on a caught panic, so this target's hook only reports: an uncaught panic still aborts
//! (libfuzzer-sys turns an unwinding input into an abort).

#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trident::models::gguf_tokenizer;
use trident::models::llama::gguf::GgufFile;

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught or not): {info}")));
    },
    |data: &[u8]| {
        let Ok(mut g) = GgufFile::from_reader(Path::new("fuzz.gguf"), Cursor::new(data)) else {
            return;
        };
        let _ = gguf_tokenizer::from_gguf(&g.content);
        let _ = g.load_model();
    }
);
