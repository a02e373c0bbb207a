//! The shim's one error type. Its messages travel as text: from the container init to the
//! monitor over the control pipe, from the monitor to the launcher over the ready pipe, and from
//! there to the manager on stderr, which puts them in [`Error::Create`](crate::container::Error)
//! or the container's `exit.json`. So each message names the step that failed and the thing it
//! acted on, and reads on its own.

use std::path::PathBuf;

use super::super::cgroup::CgroupError;
use super::super::rootpath::RootPathError;
use super::super::seccomp::SeccompError;

/// Why a shim program (monitor, built-in executor, exec) failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file of the container's dir could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// the file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// A file of the container's dir is not valid JSON of its kind.
    #[error("parsing {}: {source}", path.display())]
    Parse {
        /// the file
        path: PathBuf,
        /// cause
        source: serde_json::Error,
    },
    /// A file of the container's dir could not be created or written.
    #[error("{what} {}: {source}", path.display())]
    Write {
        /// `creating` or `writing`
        what: &'static str,
        /// the file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// The `exec` request on the command line is not valid JSON.
    #[error("bad exec request: {0}")]
    ExecRequest(#[source] serde_json::Error),
    /// The spec has no `process`.
    #[error("config.json has no process")]
    NoProcess,
    /// `exec` into a container whose init is gone.
    #[error("container is not running")]
    NotRunning,
    /// The spec asks for a namespace the built-in executor cannot make.
    #[error(
        "time namespaces are not supported by the built-in executor (use --runtime runc or crun)"
    )]
    TimeNamespace,
    /// Creating, joining or inspecting the container's cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A system call of a setup step without an object of its own.
    #[error("{step}: {source}")]
    Sys {
        /// the step (`fork`, `pivot_root`, `making / private`, …)
        step: &'static str,
        /// cause
        source: nix::Error,
    },
    /// A libc call of a setup step without an object of its own.
    #[error("{step}: {source}")]
    Os {
        /// the step (`dup2`, `bringing lo up`, `waiting for start`, …)
        step: &'static str,
        /// cause
        source: std::io::Error,
    },
    /// A namespace file (of the container, for `exec`) could not be opened.
    #[error("opening {kind} namespace: {source}")]
    OpenNamespaceOf {
        /// `net`, `mnt`, …
        kind: &'static str,
        /// cause
        source: std::io::Error,
    },
    /// setns into a namespace of the container (for `exec`).
    #[error("joining {kind} namespace: {source}")]
    JoinNamespaceOf {
        /// `net`, `mnt`, …
        kind: &'static str,
        /// cause
        source: nix::Error,
    },
    /// A namespace path given by the spec could not be opened.
    #[error("opening namespace {}: {source}", path.display())]
    OpenNamespace {
        /// the namespace file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// setns into a namespace path given by the spec.
    #[error("joining namespace {}: {source}", path.display())]
    JoinNamespace {
        /// the namespace file
        path: PathBuf,
        /// cause
        source: nix::Error,
    },
    /// The container init ended before reporting ready or an error.
    #[error("container init died during setup")]
    InitDied,
    /// What the container init reported over the control pipe (it formatted its own error).
    #[error("{0}")]
    Init(String),
    /// The monitor ended before reporting the container created.
    #[error("the container monitor died during setup")]
    MonitorDied,
    /// The container init never heard that the monitor moved it into its cgroup.
    #[error("the monitor could not place the container in its cgroup")]
    CgroupNotJoined,
    /// The root filesystem could not be opened.
    #[error(transparent)]
    OpenRoot(RootPathError),
    /// A path inside the root filesystem could not be resolved or created.
    #[error("{step}: {source}")]
    Root {
        /// `creating the working directory`, `creating mount point`, `creating /dev`, …
        step: &'static str,
        /// cause
        source: RootPathError,
    },
    /// `chdir` for `exec`.
    #[error("chdir {}: {source}", path.display())]
    Chdir {
        /// the directory
        path: PathBuf,
        /// cause
        source: nix::Error,
    },
    /// `chdir` into the working directory after pivot_root.
    #[error("chdir to working directory {}: {source}", path.display())]
    WorkingDir {
        /// the directory, inside the container
        path: PathBuf,
        /// cause
        source: nix::Error,
    },
    /// A mount destination with `..`.
    #[error("mount destination {} contains '..'", dest.display())]
    MountDestination {
        /// the destination
        dest: PathBuf,
    },
    /// A mount of the spec.
    #[error("mounting {typ} on {}: {source}", dest.display())]
    Mount {
        /// filesystem type (empty for a bind mount without one)
        typ: String,
        /// destination inside the container
        dest: PathBuf,
        /// cause
        source: nix::Error,
    },
    /// Finding a new mount again (to remount it or change its propagation).
    #[error("mounting {typ}: {source}")]
    ResolveMount {
        /// filesystem type
        typ: String,
        /// cause
        source: RootPathError,
    },
    /// A node or symlink in the container's `/dev`.
    #[error("{op} /dev/{name}: {source}")]
    Device {
        /// `mknod`, `chmod` or `symlink`
        op: &'static str,
        /// the entry
        name: &'static str,
        /// cause
        source: std::io::Error,
    },
    /// A device node the spec asks for.
    #[error("creating device {path}: {source}")]
    SpecDevice {
        /// the node's path in the container
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// A masked path.
    #[error("masking {path}: {source}")]
    Mask {
        /// inside the container
        path: String,
        /// cause
        source: nix::Error,
    },
    /// A read-only path.
    #[error("making {path} read-only: {source}")]
    ReadonlyPath {
        /// inside the container
        path: String,
        /// cause
        source: nix::Error,
    },
    /// A path with a NUL byte (cannot be given to the kernel).
    #[error("{} contains a NUL byte", path.display())]
    NulInPath {
        /// the path
        path: PathBuf,
    },
    /// An argument or environment entry with a NUL byte.
    #[error("{value:?} contains a NUL byte")]
    NulInString {
        /// the string
        value: String,
    },
    /// execve of the container's (or exec's) program.
    #[error("exec {program:?}: {source}")]
    Exec {
        /// the program as given
        program: PathBuf,
        /// cause
        source: nix::Error,
    },
    /// The spec's process has no arguments.
    #[error("no command specified")]
    NoCommand,
    /// The program exists but may not be executed.
    #[error("exec: {name:?}: permission denied")]
    PermissionDenied {
        /// the program as given
        name: String,
    },
    /// The program path names nothing.
    #[error("exec: {name:?}: no such file or directory")]
    NoSuchProgram {
        /// the program as given
        name: String,
    },
    /// No directory of `$PATH` has the program.
    #[error("exec: {name:?}: executable file not found in $PATH")]
    NotInPath {
        /// the program as given
        name: String,
    },
    /// Dropping a capability from the bounding set.
    #[error("dropping {cap} from the bounding set: {source}")]
    DropBounding {
        /// the capability
        cap: caps::Capability,
        /// cause
        source: caps::errors::CapsError,
    },
    /// Setting the inheritable, effective, permitted or ambient set.
    #[error("setting capabilities: {0}")]
    Capabilities(#[source] caps::errors::CapsError),
    /// setresgid.
    #[error("setgid {gid}: {source}")]
    SetGid {
        /// the group
        gid: u32,
        /// cause
        source: nix::Error,
    },
    /// setresuid.
    #[error("setuid {uid}: {source}")]
    SetUid {
        /// the user
        uid: u32,
        /// cause
        source: nix::Error,
    },
    /// The spec's seccomp profile.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Installing a compiled seccomp program.
    #[error("installing seccomp filter: {0}")]
    InstallSeccomp(#[source] seccompiler::Error),
    /// `/proc/self/stat` does not tell where the argument area is.
    #[error("/proc/self/stat has {0} argument area bounds")]
    ArgArea(&'static str),
    /// setrlimit.
    #[error(
        "setting ulimit {name}={soft}:{hard}: {source} (raising a hard limit needs CAP_SYS_RESOURCE)"
    )]
    Rlimit {
        /// the limit (`nofile`, …)
        name: &'static str,
        /// soft limit
        soft: u64,
        /// hard limit
        hard: u64,
        /// cause
        source: std::io::Error,
    },
    /// A sysctl name that is not a plain dotted name.
    #[error("invalid sysctl name {key:?}")]
    SysctlName {
        /// the name
        key: String,
    },
    /// A sysctl that does not exist in the container's namespaces.
    #[error("sysctl {key}: no such kernel parameter in the container's namespaces")]
    SysctlUnknown {
        /// the name
        key: String,
    },
    /// A sysctl file that could not be opened.
    #[error("sysctl {key}: opening {path}: {source}")]
    SysctlOpen {
        /// the name
        key: String,
        /// its /proc/sys file
        path: String,
        /// cause
        source: std::io::Error,
    },
    /// A sysctl value the kernel refused.
    #[error("sysctl {key}={value}: {source}")]
    SysctlWrite {
        /// the name
        key: String,
        /// the value
        value: String,
        /// cause
        source: std::io::Error,
    },
    /// Running the OCI runtime binary.
    #[error("running {runtime}: {source}")]
    RunRuntime {
        /// the binary
        runtime: String,
        /// cause
        source: std::io::Error,
    },
    /// `<runtime> create` failed; `message` is the last error it logged, or its exit status.
    #[error("{runtime} create: {message}")]
    RuntimeCreate {
        /// the binary
        runtime: String,
        /// what it said
        message: String,
    },
    /// The runtime's pid file does not hold a pid.
    #[error("{runtime} wrote a bad pid file")]
    BadPidFile {
        /// the binary
        runtime: String,
    },
}

impl ShimError {
    /// A failed system call of `step`.
    pub(crate) fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> Self {
        move |source| ShimError::Sys { step, source }
    }

    /// A failed libc call of `step`, with errno as the cause.
    pub(crate) fn last_os(step: &'static str) -> Self {
        ShimError::Os {
            step,
            source: std::io::Error::last_os_error(),
        }
    }

    /// A failed I/O of `step`.
    pub(crate) fn os(step: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| ShimError::Os { step, source }
    }

    /// A failed resolution inside the root filesystem during `step`.
    pub(crate) fn root(step: &'static str) -> impl FnOnce(RootPathError) -> Self {
        move |source| ShimError::Root { step, source }
    }
}
