//! Gives the system back the heap memory the allocator keeps after the program freed it.
//!
//! glibc's allocator returns freed memory to the system only from the top of each arena, and
//! only above a threshold that grows with the largest block freed; what start-up allocates and
//! frees (settings, the router, database opening, certificates) stays resident in the arenas of
//! the threads that did it, about 0.8 MiB of an idle `serve` (README, "Size, idle memory,
//! start"). `malloc_trim(0)` hands back every free page of every arena, so an idle process keeps
//! what it uses. It walks and locks each arena in turn: call it at a quiet moment (the end of
//! start-up), not on a request's path.
//!
//! The one crate of the workspace with unsafe code: `malloc_trim` is a C function.

/// Asks the allocator to return its free pages to the system; true when it gave some back.
/// Elsewhere than glibc it does nothing and returns false (musl and the other allocators have
/// no such call, and return large blocks by themselves).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc locks each arena
    // while it trims it, so it is safe to call while other threads allocate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the glibc version: other allocators have nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// Memory freed in the middle of the heap (below a block still in use, so the top cannot
    /// shrink) is given back: the process's resident set falls by most of it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_pages_below_a_live_block_are_given_back() {
        // Small blocks (below glibc's mmap threshold), so they come from the heap.
        let mut freed: Vec<Vec<u8>> = (0..512).map(|_| vec![1u8; 16 * 1024]).collect();
        let keep = vec![1u8; 16 * 1024];
        let resident_before = resident_kib();
        freed.clear();
        freed.shrink_to_fit();
        super::release_free();
        let resident_after = resident_kib();
        assert_eq!(keep[0], 1);
        // 8 MiB were freed; the threshold leaves room for the test harness's own noise.
        assert!(
            resident_before - resident_after > 4 * 1024,
            "resident {resident_before} KiB before, {resident_after} KiB after the trim"
        );
    }

    fn resident_kib() -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
