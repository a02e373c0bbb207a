//! Process-wide settings of the `dcpp` binary itself.

/// Makes a write to a closed pipe end the process quietly, as for any Unix filter: Rust starts
/// with SIGPIPE ignored, so `dcpp … | head` would get EPIPE and panic in `println!`. For the
/// CLI only: the daemon and the shim keep it ignored and handle EPIPE as an error.
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL for SIGPIPE touches no memory of ours; called before any
    // thread of this process is started, so no other thread depends on the old disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Raises the soft NOFILE limit to the hard one; returns (before, after). A daemon serving
/// many containers, their logs and its listeners needs far more than the usual soft 1024.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

/// The soft NOFILE limit.
pub fn nofile_limit() -> std::io::Result<u64> {
    Ok(nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?.0)
}

/// Caps glibc's malloc arenas for a long-running multi-threaded process. By default each thread
/// that allocates under contention may get an arena of its own (up to eight per core); a
/// thousand-container round runs hundreds of blocking threads at once, and what they freed
/// stays in their arenas, fragmented, long after the threads are gone: the daemon's RSS grew
/// by tens of MiB with each large apply/down and never came back. Call before starting threads.
pub fn limit_malloc_arenas(arenas: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes an allocator tunable; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}

/// Returns the heap's free memory to the kernel (glibc keeps freed pages mapped otherwise):
/// what a large round of container operations allocated and freed.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory that is free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
