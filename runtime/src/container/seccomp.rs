//! The default seccomp profile and its compilation to BPF for the built-in executor.
//!
//! Docker's default profile is an allow-list whose effect, for a container without extra
//! capabilities, is to refuse the syscalls below (kernel modules, clocks, keyrings, mount API,
//! namespaces, tracing of other processes' memory, …). We express it as the equivalent deny-list
//! so it stays short and readable; the same list goes into config.json, so runc enforces it too.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls docker's default profile refuses with EPERM to a container without CAP_SYS_ADMIN & co.
pub const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// Namespace flags that `clone` may not carry (docker's profile allows clone only without them).
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The default profile as an OCI `linux.seccomp` section.
pub fn default_profile() -> LinuxSeccomp {
    let eperm = libc::EPERM as u32;
    let mut syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(DENIED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(eperm)
            .build()
            .expect("static syscall rule"),
    ];
    for flag in CLONE_NS_FLAGS {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(eperm)
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(*flag)
                        .value_two(*flag)
                        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                        .build()
                        .expect("static arg rule"),
                ])
                .build()
                .expect("static syscall rule"),
        );
    }
    // clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .expect("static syscall rule"),
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
        .expect("static seccomp profile")
}

/// Errors compiling a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile uses something the built-in executor cannot express.
    #[error("seccomp profile not supported by the built-in executor: {0}")]
    Unsupported(String),
    /// seccompiler rejected the filter.
    #[error("seccomp: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

/// Compiles an OCI profile of the shape `default_profile` produces (default allow, per-syscall
/// errno rules) into BPF programs, one per distinct errno, to be installed in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    if profile.default_action() != LinuxSeccompAction::ScmpActAllow {
        return Err(SeccompError::Unsupported(
            "default action other than SCMP_ACT_ALLOW".into(),
        ));
    }
    let arch = target_arch()?;
    // Per errno: syscall → rules; a syscall in `unconditional` matches on its number alone,
    // which seccompiler expresses as an empty rule list.
    let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    let mut unconditional: BTreeSet<(u32, i64)> = BTreeSet::new();
    for sc in profile.syscalls().iter().flatten() {
        if sc.action() != LinuxSeccompAction::ScmpActErrno {
            return Err(SeccompError::Unsupported(format!(
                "action {:?}",
                sc.action()
            )));
        }
        let errno = sc.errno_ret().unwrap_or(libc::EPERM as u32);
        let mut conds = Vec::new();
        for a in sc.args().iter().flatten() {
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    SeccompCmpOp::MaskedEq(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            let index = u8::try_from(a.index())
                .map_err(|_| SeccompError::Unsupported("argument index".into()))?;
            conds.push(SeccompCondition::new(
                index,
                SeccompCmpArgLen::Qword,
                op,
                value,
            )?);
        }
        for name in sc.names() {
            // Like libseccomp, names unknown on this architecture are skipped.
            let Some(nr) = syscall_nr(name) else { continue };
            let rules = by_errno.entry(errno).or_default().entry(nr).or_default();
            if conds.is_empty() {
                unconditional.insert((errno, nr));
            } else {
                rules.push(SeccompRule::new(conds.clone())?);
            }
        }
    }
    for (errno, nr) in unconditional {
        if let Some(rules) = by_errno.get_mut(&errno).and_then(|m| m.get_mut(&nr)) {
            rules.clear();
        }
    }
    let mut out = Vec::new();
    for (errno, rules) in by_errno {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch,
        )?;
        out.push(BpfProgram::try_from(filter)?);
    }
    Ok(out)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Unsupported("this CPU architecture".into()))
    }
}

/// Syscall numbers of the names the default profile uses, for the running architecture.
fn syscall_nr(name: &str) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    let extra = match name {
        // Not in libc: removed syscalls, numbers from the x86_64 table.
        "create_module" => Some(174),
        "get_kernel_syms" => Some(177),
        "ioperm" => Some(libc::SYS_ioperm),
        "iopl" => Some(libc::SYS_iopl),
        "nfsservctl" => Some(libc::SYS_nfsservctl),
        "query_module" => Some(178),
        "sysfs" => Some(libc::SYS_sysfs),
        "_sysctl" => Some(libc::SYS__sysctl),
        "uselib" => Some(libc::SYS_uselib),
        "ustat" => Some(libc::SYS_ustat),
        _ => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let extra: Option<libc::c_long> = None;
    if let Some(nr) = extra {
        return Some(nr);
    }
    let nr = match name {
        "acct" => libc::SYS_acct,
        "add_key" => libc::SYS_add_key,
        "bpf" => libc::SYS_bpf,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "clock_settime" => libc::SYS_clock_settime,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        "delete_module" => libc::SYS_delete_module,
        "finit_module" => libc::SYS_finit_module,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fsopen" => libc::SYS_fsopen,
        "fspick" => libc::SYS_fspick,
        "get_mempolicy" => libc::SYS_get_mempolicy,
        "init_module" => libc::SYS_init_module,
        "kcmp" => libc::SYS_kcmp,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "kexec_load" => libc::SYS_kexec_load,
        "keyctl" => libc::SYS_keyctl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "mbind" => libc::SYS_mbind,
        "mount" => libc::SYS_mount,
        "mount_setattr" => libc::SYS_mount_setattr,
        "move_mount" => libc::SYS_move_mount,
        "move_pages" => libc::SYS_move_pages,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "open_tree" => libc::SYS_open_tree,
        "perf_event_open" => libc::SYS_perf_event_open,
        "pivot_root" => libc::SYS_pivot_root,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "quotactl" => libc::SYS_quotactl,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        "reboot" => libc::SYS_reboot,
        "request_key" => libc::SYS_request_key,
        "set_mempolicy" => libc::SYS_set_mempolicy,
        "setns" => libc::SYS_setns,
        "settimeofday" => libc::SYS_settimeofday,
        "swapoff" => libc::SYS_swapoff,
        "swapon" => libc::SYS_swapon,
        "umount2" => libc::SYS_umount2,
        "unshare" => libc::SYS_unshare,
        "userfaultfd" => libc::SYS_userfaultfd,
        _ => return None,
    };
    Some(nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_and_knows_every_name() {
        let p = default_profile();
        for n in DENIED {
            assert!(syscall_nr(n).is_some(), "no number for {n}");
        }
        let progs = compile(&p).expect("compiles");
        // EPERM and ENOSYS filters.
        assert_eq!(progs.len(), 2);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("SCMP_ACT_ERRNO") && json.contains("\"unshare\""));
    }
}
