//! The agent's global allocator: the system allocator, except that the store engine's
//! segment buffers are kept for reuse instead of going back to the kernel.
//!
//! sled writes its log through one buffer per 512 KiB segment (`AlignedBuf` in sled's
//! `pagecache/iobuf.rs`: a fresh 8 KiB-aligned allocation for each segment, freed once the
//! segment is written). Each is above glibc's mmap threshold (fixed at 128 KiB by
//! [`crate::telemetry::tune_allocator`]), so each is a new mapping that the checkpoints
//! fill page by page and that is unmapped once written: 16 of them every 20 s in a busy
//! agent, which put a 0–0.5 MiB sawtooth on its RSS (`docs/performance.md`, eighth
//! measurement). Kept here instead (at most [`SLOTS`]), a segment's buffer is the previous
//! segment's, already resident: the RSS carries their size as a constant, not a sawtooth.
//! Taking them from glibc's heap instead (a higher mmap threshold) was tried: as flat, but
//! 6.4 MiB higher, for the holes the aligned blocks leave in the heap.
//!
//! An idle agent gives them back ([`release_kept`], from `telemetry::release_idle_memory`).
//!
//! Everything else goes straight to [`System`]. The check is one comparison of the
//! alignment, which nothing else in the agent asks for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// The alignment sled asks for its segment buffers, and nothing else here does.
const POOLED_ALIGN: usize = 8192;
/// Only blocks at least this large are kept (sled's segments are 512 KiB).
const POOLED_MIN: usize = 256 * 1024;
/// How many freed buffers are kept: one being written while the next one fills, and a
/// spare for a checkpoint that seals one early.
pub const SLOTS: usize = 2;

/// A freed block kept for reuse: its address and size (alignment is always
/// [`POOLED_ALIGN`]).
#[derive(Clone, Copy)]
struct Kept {
    ptr: usize,
    size: usize,
}

/// Freed segment buffers kept for reuse, over [`System`].
pub struct Pool {
    kept: Mutex<[Option<Kept>; SLOTS]>,
}

/// The process's pool: the one [`Allocator`] uses.
static POOL: Pool = Pool::new();

/// The global allocator the `posbridge` binary installs (`main.rs`): [`System`], with
/// segment buffers kept for reuse in the process's pool (see the module's doc).
pub struct Allocator;

impl Allocator {
    pub const fn new() -> Allocator {
        Allocator
    }
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator::new()
    }
}

/// Give the buffers kept for reuse back to the kernel; returns how many there were. For
/// an idle agent (`telemetry::release_idle_memory`): it writes no segment until its next
/// payment. A no-op where [`Allocator`] is not the global allocator (tests, the bench).
pub fn release_kept() -> usize {
    POOL.release()
}

impl Pool {
    pub const fn new() -> Pool {
        Pool { kept: Mutex::new([None; SLOTS]) }
    }

    fn pooled(layout: Layout) -> bool {
        layout.align() == POOLED_ALIGN && layout.size() >= POOLED_MIN
    }

    /// How many freed buffers are held now.
    pub fn kept(&self) -> usize {
        self.slots().iter().flatten().count()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, [Option<Kept>; SLOTS]> {
        // Nothing panics while the lock is held; a poisoned lock's data is still whole.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block for `layout`: a kept one of exactly its size when there is one, else
    /// [`System`]'s.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Pool::pooled(layout) {
            let mut slots = self.slots();
            let found = slots.iter_mut().find(|s| s.is_some_and(|k| k.size == layout.size()));
            if let Some(k) = found.and_then(Option::take) {
                return k.ptr as *mut u8;
            }
        }
        // SAFETY: forwarded with the caller's own (non-zero-size) layout.
        unsafe { System.alloc(layout) }
    }

    /// Free `ptr`: kept when it is a segment buffer and a slot is free, else [`System`]'s.
    ///
    /// # Safety
    /// As [`GlobalAlloc::dealloc`], for a block from [`Pool::alloc`] of this pool.
    pub unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Pool::pooled(layout) {
            let mut slots = self.slots();
            if let Some(slot) = slots.iter_mut().find(|s| s.is_none()) {
                *slot = Some(Kept { ptr: ptr as usize, size: layout.size() });
                return;
            }
        }
        // SAFETY: `ptr` was allocated by `System` with `layout` (kept blocks included).
        unsafe { System.dealloc(ptr, layout) }
    }

    /// Give every kept block back to [`System`]; returns how many there were.
    pub fn release(&self) -> usize {
        let taken = std::mem::replace(&mut *self.slots(), [None; SLOTS]);
        let mut released = 0;
        for k in taken.iter().flatten() {
            if let Ok(layout) = Layout::from_size_align(k.size, POOLED_ALIGN) {
                // SAFETY: a kept block came from `System` with exactly this layout and is
                // out of the pool now, so nothing else can hand it out or free it.
                unsafe { System.dealloc(k.ptr as *mut u8, layout) }
                released += 1;
            }
        }
        released
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

// SAFETY: every block handed out comes from `System` with the layout it is asked for: a
// kept block is reused only for a request of exactly its size and alignment, and is given
// back to `System` with that same layout. The pool's lock is never held across a call
// that could allocate through this allocator (std's `Mutex` on Linux is a futex: it does
// not allocate).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { POOL.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on; every block came from `POOL.alloc`.
        unsafe { POOL.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`; never from the kept blocks, whose contents are old.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`, a kept block's reuse included.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment() -> Layout {
        Layout::from_size_align(512 * 1024, POOLED_ALIGN).expect("layout")
    }

    #[test]
    fn a_freed_segment_buffer_is_the_next_one_handed_out() {
        let a = Pool::new();
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let first = a.alloc(segment());
            assert!(!first.is_null());
            first.write_bytes(7, segment().size());
            a.dealloc(first, segment());
            assert_eq!(a.kept(), 1);
            let second = a.alloc(segment());
            assert_eq!(second, first, "the kept buffer is reused");
            assert_eq!(a.kept(), 0);
            a.dealloc(second, segment());
        }
    }

    #[test]
    fn at_most_slots_buffers_are_kept_and_other_blocks_are_not() {
        let a = Pool::new();
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let blocks: Vec<*mut u8> = (0..SLOTS + 2).map(|_| a.alloc(segment())).collect();
            for &b in &blocks {
                a.dealloc(b, segment());
            }
            assert_eq!(a.kept(), SLOTS, "the rest went back to the system");

            // Another size with the same alignment is not handed a kept block.
            let other = Layout::from_size_align(300 * 1024, POOLED_ALIGN).expect("layout");
            let o = a.alloc(other);
            assert!(!blocks.contains(&o));
            assert_eq!(a.kept(), SLOTS, "no kept block was taken for another size");
            a.dealloc(o, other);
            // Small or differently aligned blocks are never kept.
            let small = Layout::from_size_align(64, 8).expect("layout");
            let s = a.alloc(small);
            a.dealloc(s, small);
            let page = Layout::from_size_align(512 * 1024, 4096).expect("layout");
            let p = a.alloc(page);
            a.dealloc(p, page);
            assert_eq!(a.kept(), SLOTS);
        }
    }

    #[test]
    fn release_gives_every_kept_buffer_back() {
        let a = Pool::new();
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let (x, y) = (a.alloc(segment()), a.alloc(segment()));
            a.dealloc(x, segment());
            a.dealloc(y, segment());
        }
        assert_eq!(a.release(), 2);
        assert_eq!(a.kept(), 0);
        assert_eq!(a.release(), 0);
    }

    #[test]
    fn zeroed_requests_are_zeroed_even_with_a_kept_buffer_waiting() {
        // The process's own pool, through the allocator type (the only test using it:
        // this test binary does not install it).
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let b = Allocator.alloc(segment());
            b.write_bytes(0xAB, segment().size());
            Allocator.dealloc(b, segment());
            assert_eq!(POOL.kept(), 1);
            let z = Allocator.alloc_zeroed(segment());
            let all_zero = std::slice::from_raw_parts(z, segment().size()).iter().all(|&x| x == 0);
            assert!(all_zero);
            assert_eq!(POOL.kept(), 1, "the kept block stayed kept");
            Allocator.dealloc(z, segment());
        }
        assert_eq!(release_kept(), 2);
    }
}
