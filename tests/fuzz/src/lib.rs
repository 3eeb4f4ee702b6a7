//! What the fuzz targets share: an allocator that aborts on one huge allocation, and the
//! tar writer of `bundle_tar`.
//!
//! The targets build without a sanitizer (`-s none`, see `scripts/fuzz.sh`), so libFuzzer's
//! `-malloc_limit_mb` has no malloc hooks to work with, and an untouched `Vec::with_capacity`
//! of terabytes would pass `-rss_limit_mb` on an overcommitting kernel. A size taken from a
//! hostile header must never size an allocation, so any single one above [`MAX_ALLOC`]
//! is a crash here.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a target may make (every input is far smaller).
pub const MAX_ALLOC: usize = 256 << 20;

/// The system allocator with the [`MAX_ALLOC`] check.
pub struct CappedAlloc;

impl CappedAlloc {
    fn check(size: usize) {
        if size > MAX_ALLOC {
            // No allocation here: a fixed message, then abort (libFuzzer saves the input).
            eprintln!("fuzz: one allocation of {size} bytes (limit {MAX_ALLOC})");
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the check only ever aborts.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's obligations are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The tar archive `data` describes: entries of `type, name length, name, size (u16 LE),
/// bytes`, written as tar headers (the name in the 100-byte field, a valid checksum); any
/// bytes left after the last whole entry follow the two end blocks as they are.
pub fn tar_of(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let [kind, name_len, rest @ ..] = data {
        let Some((name, rest)) = rest.split_at_checked(usize::from(*name_len)) else {
            break;
        };
        let [lo, hi, rest @ ..] = rest else { break };
        let size = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (body, rest) = rest.split_at(size);
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_old_mut().name;
        let n = name.len().min(field.len());
        field[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(512), 0);
        data = rest;
    }
    out.extend_from_slice(&[0; 1024]);
    out.extend_from_slice(data);
    out
}
