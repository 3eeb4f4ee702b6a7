//! A safetensors file from memory: the header, then every tensor it lists read back as f32
//! (the encoder loader's path), which must agree with its shape.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trident::models::tensors::Store;

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(store) = Store::parse([(Path::new("fuzz.safetensors"), data)]) else {
        return;
    };
    for (name, _, shape) in store.names() {
        assert!(store.contains(&name));
        if let Ok(v) = store.get(&name, &shape) {
            assert_eq!(v.len(), shape.iter().product::<usize>(), "{name} {shape:?}");
        }
    }
});
