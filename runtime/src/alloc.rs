//! mimalloc as the global allocator, for the alignments every allocation has taking mimalloc's
//! plain entry points (feature `mimalloc`; weft-proxy and the phase benches allocate with it).
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every layout to `mi_malloc_aligned`. mimalloc 3
//! serves an aligned request from its small-block fast path only up to 1 KiB and only when the
//! size class has a block ready on its free list (freed blocks wait on another list until a
//! generic call collects them), and from its plain path beyond that only when the rounded size
//! is a power of two; every other request (a request's boxed future of 1.6 KiB, a small block
//! whose class has its freed blocks still to collect) over-allocates by `align - 1` bytes
//! through the generic path: ~240 instructions a call, twice per proxied request
//! (`scripts/callgrind-proxy`; mimalloc_rust pull request 170 proposes the same fix upstream).
//! mimalloc aligns every block of 16 bytes or more to 16 (`MI_MAX_ALIGN_SIZE`) and a smaller
//! one to 8, so a layout whose alignment is at most 16 and at most its size is what `mi_malloc`
//! returns anyway; only larger alignments take the aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// mimalloc, through `mi_malloc` for natural alignments (see the module docs).
///
/// ```
/// #[global_allocator]
/// static GLOBAL: weft_runtime::alloc::MiMalloc = weft_runtime::alloc::MiMalloc;
/// ```
pub struct MiMalloc;

/// Whether a block of `size` bytes from the plain entry points is aligned to `align`.
#[inline(always)]
fn natural(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every pointer comes from mimalloc and goes back to it; the plain entry points are used
// only where their blocks' alignment covers the layout's (module docs, and the tests below).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size.
        unsafe {
            if natural(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if natural(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract); `mi_free` takes a
        // block from any of mimalloc's entry points, aligned ones included.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract); the
        // block it returns has `new_size` bytes at `layout.align()`.
        unsafe {
            if natural(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc's bin edges and its small, medium and large classes.
    fn sizes() -> impl Iterator<Item = usize> {
        (1..=300).chain((301..=9000).step_by(7)).chain([
            16 << 10,
            (64 << 10) + 8,
            (1 << 20) + 24,
            4 << 20,
            (32 << 20) + 40,
        ])
    }

    #[test]
    fn every_block_has_its_layouts_alignment() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in sizes() {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed with its own layout.
                unsafe {
                    for p in [a.alloc(layout), a.alloc_zeroed(layout)] {
                        assert!(!p.is_null(), "{size} bytes at {align}");
                        assert_eq!(p as usize % align, 0, "{size} bytes at {align}");
                        a.dealloc(p, layout);
                    }
                }
            }
        }
    }

    #[test]
    fn many_live_blocks_keep_their_alignment() {
        // Blocks held at once, so later ones come from pages part used (not one reused block).
        let a = MiMalloc;
        for align in [8, 16, 64] {
            let layouts: Vec<Layout> = sizes()
                .filter(|&s| s < 1 << 20)
                .map(|s| Layout::from_size_align(s, align).unwrap())
                .collect();
            // SAFETY: non-zero sizes; each block is freed with its own layout.
            unsafe {
                let blocks: Vec<*mut u8> = layouts.iter().map(|&l| a.alloc(l)).collect();
                for (&p, l) in blocks.iter().zip(&layouts) {
                    assert_eq!(p as usize % l.align(), 0, "{} bytes at {}", l.size(), l.align());
                }
                for (p, l) in blocks.into_iter().zip(layouts) {
                    a.dealloc(p, l);
                }
            }
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_and_the_alignment() {
        let a = MiMalloc;
        for align in [1, 8, 16, 64] {
            let mut layout = Layout::from_size_align(align.max(24), align).unwrap();
            // SAFETY: non-zero sizes; the block is resized and freed with the layout it has.
            unsafe {
                let mut p = a.alloc_zeroed(layout);
                p.write_bytes(0x5a, layout.size());
                for new_size in [40, 1500, 70_000, 3 << 20, 100, 24.max(align)] {
                    let kept = layout.size().min(new_size);
                    p = a.realloc(p, layout, new_size);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{new_size} bytes at {align}");
                    assert!(std::slice::from_raw_parts(p, kept).iter().all(|&b| b == 0x5a));
                    layout = Layout::from_size_align(new_size, align).unwrap();
                    p.write_bytes(0x5a, new_size);
                }
                a.dealloc(p, layout);
            }
        }
    }
}
