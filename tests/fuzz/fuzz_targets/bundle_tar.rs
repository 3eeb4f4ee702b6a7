//! The offline bundle's reader over an uncompressed archive: the entry validator (types,
//! paths, GNU long names, PAX refusal), the manifest (first entry, parsed and checked),
//! the signature slot and every payload rule (listed, once, of the listed size, hashed).
//!
//! The input is a list of entries that `trident_fuzz::tar_of` writes as tar headers with
//! valid checksums: a mutated header would only ever fail its checksum, so the fuzzer
//! mutates what the headers say instead.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use trident::bundle::reader::{read_tar, NullSink};

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = read_tar(Cursor::new(trident_fuzz::tar_of(data)), None, &mut NullSink);
});
