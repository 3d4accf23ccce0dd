//! glibc's allocator settings for this process.
//!
//! By default glibc serves every allocation above its dynamic mmap threshold (at most 32 MiB)
//! with a fresh `mmap` and unmaps it on free, so a training step that allocates the same large
//! tensors every time (the LM head's logits and their gradient: 200 MB per micro-batch of the
//! demo's SFT) page-faults and zeroes every page of them again at each step. Measured on the demo
//! SFT (25 steps, the 2-core dev CPU, idle, two interleaved repetitions each): 5.3 M minor page
//! faults and 10.5 s of system time by default, 0.36 M and 1.0 s with the settings below, and
//! 11-12 % less wall time (docs/benchmarks.md, "Allocator"). Same numbers out: only where freed
//! memory goes changes.
//!
//! Here allocations up to 512 MiB come from the heap and freed memory stays there for reuse
//! (the heap's top is returned to the kernel only beyond 1 GiB free). A user who sets glibc's
//! own malloc tunables (`GLIBC_TUNABLES=glibc.malloc...`) or `RLHF_DEFAULT_MALLOC=1` keeps glibc's
//! defaults.

/// Largest allocation served from the heap.
const MMAP_THRESHOLD: i32 = 512 << 20;
/// Free memory at the heap's top kept before it is returned to the kernel.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings; call first thing in `main`, before any other thread starts.
/// The workspace denies unsafe code; this one call into glibc is the exception.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc"));
    if tuned || std::env::var_os("RLHF_DEFAULT_MALLOC").is_some() {
        return;
    }
    // SAFETY: mallopt only changes the allocator's parameters; called before any other thread
    // exists, so no allocation runs concurrently with it.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Other platforms keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
