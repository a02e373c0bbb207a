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
