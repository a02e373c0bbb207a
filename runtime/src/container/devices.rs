//! Device access rules of a container, for both cgroup generations.
//!
//! cgroup v1 has a `devices` controller that takes the rules as text (`devices.allow`,
//! `devices.deny`). cgroup v2 has none: the kernel asks an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup (or an ancestor) on every `open` and
//! `mknod` of a device node, and denies unless it returns 1. [`compile`] turns the rule list into
//! such a program (assembled here, no compiler or BPF library needed), [`attach`] loads it and
//! attaches it to a cgroup directory. The program is referenced by the cgroup only: it goes when
//! the cgroup is removed. On a hybrid host both apply, since the process is in both hierarchies.
//!
//! The rules come from the OCI spec's `linux.resources.devices` (what runc and crun enforce
//! too), evaluated like the v1 controller evaluates its list: the last rule that matches decides,
//! and nothing matches means deny.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Errors loading or attaching a device program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    /// The kernel refused the program (the verifier's log says why).
    #[error("loading the cgroup device program: {source}{log}")]
    Load {
        /// the cause
        source: std::io::Error,
        /// the verifier's log, if any
        log: String,
    },
    /// The program could not be attached to the cgroup.
    #[error("attaching the device program to cgroup {path}: {source}")]
    Attach {
        /// the cgroup directory
        path: PathBuf,
        /// the cause
        source: std::io::Error,
    },
}

const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR` of the program's context.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One rule: `allow`/deny `access` to devices of `kind` (`None`: block and char) with the
/// given numbers (`None`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// `'b'`, `'c'`, or `None` for both.
    pub kind: Option<char>,
    /// Major number, `None` for any.
    pub major: Option<u32>,
    /// Minor number, `None` for any.
    pub minor: Option<u32>,
    /// Bit set of mknod (1), read (2), write (4).
    pub access: u8,
}

impl DeviceRule {
    /// The access bits as `rwm` letters.
    pub fn access_string(&self) -> String {
        [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
            .into_iter()
            .filter(|(bit, _)| self.access & bit != 0)
            .map(|(_, c)| c)
            .collect()
    }

    /// The rule as the v1 controller's `devices.allow`/`devices.deny` take it.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.unwrap_or('a'),
            num(self.major),
            num(self.minor),
            self.access_string()
        )
    }

    fn matches_everything(&self) -> bool {
        self.kind.is_none()
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
    }
}

fn parse_access(s: &str) -> u8 {
    s.chars()
        .map(|c| match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// The rules of an OCI device list, in order.
pub fn rules_from_spec(devices: &[LinuxDeviceCgroup]) -> Vec<DeviceRule> {
    devices
        .iter()
        .map(|d| DeviceRule {
            allow: d.allow(),
            kind: match d.typ() {
                Some(LinuxDeviceType::B) => Some('b'),
                Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some('c'),
                Some(LinuxDeviceType::A) | None => None,
                Some(LinuxDeviceType::P) => Some('p'),
            },
            major: d.major().and_then(|m| u32::try_from(m).ok()),
            minor: d.minor().and_then(|m| u32::try_from(m).ok()),
            access: d.access().as_deref().map_or(ACC_ALL, parse_access),
        })
        // FIFOs are not devices to the kernel's device checks.
        .filter(|r| r.kind != Some('p'))
        .collect()
}

/// Docker's defaults: deny everything, then mknod of any node and use of the standard ones
/// (null, zero, full, random, urandom, tty, console, ptmx, pts/*, tun).
pub fn default_rules() -> Vec<DeviceRule> {
    let rule = |kind, major, minor, access| DeviceRule {
        allow: true,
        kind: Some(kind),
        major,
        minor,
        access,
    };
    let mut v = vec![
        DeviceRule {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: ACC_ALL,
        },
        rule('c', None, None, ACC_MKNOD),
        rule('b', None, None, ACC_MKNOD),
    ];
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(5)),
        (1, Some(7)),
        (1, Some(8)),
        (1, Some(9)),
        (5, Some(0)),
        (5, Some(1)),
        (5, Some(2)),
        (136, None),
        (10, Some(200)),
    ] {
        v.push(rule('c', Some(major), minor, ACC_ALL));
    }
    v
}

/// Everything allowed (privileged containers).
pub fn allow_all() -> Vec<DeviceRule> {
    vec![DeviceRule {
        allow: true,
        kind: None,
        major: None,
        minor: None,
        access: ACC_ALL,
    }]
}

/// Whether the list ends in "allow everything" (privileged): no program is needed.
pub fn allows_everything(rules: &[DeviceRule]) -> bool {
    rules
        .last()
        .is_some_and(|r| r.allow && r.matches_everything())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JEQ_K: u8 = 0x15;
const JMP_EXIT: u8 = 0x95;

/// Assembles the program for `rules`. Registers: r2 = device type, r3 = requested access,
/// r4 = major, r5 = minor (from `struct bpf_cgroup_dev_ctx`); r0 = verdict.
pub fn compile(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    // Last matching rule wins: test them from the end; the first hit returns.
    for r in rules.iter().rev() {
        // Each test jumps past the rest of the block when the rule does not apply; the target
        // offsets are filled in once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut skips: Vec<usize> = Vec::new();
        if let Some(k) = r.kind {
            let t = if k == 'b' { DEV_BLOCK } else { DEV_CHAR };
            skips.push(block.len());
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        if r.access != ACC_ALL {
            block.push(insn(ALU32_MOV_X, 0, 3, 0, 0));
            if r.allow {
                // Allowed only if every requested bit is in the rule.
                block.push(insn(ALU32_AND_K, 0, 0, 0, i32::from(!r.access & ACC_ALL)));
                skips.push(block.len());
                block.push(insn(JMP_JNE_K, 0, 0, 0, 0));
            } else {
                // Denied if any requested bit is in the rule.
                block.push(insn(ALU32_AND_K, 0, 0, 0, i32::from(r.access)));
                skips.push(block.len());
                block.push(insn(JMP_JEQ_K, 0, 0, 0, 0));
            }
        }
        for (reg, n) in [(4, r.major), (5, r.minor)] {
            if let Some(n) = n {
                skips.push(block.len());
                // Device numbers are at most 32 bits wide; the kernel compares the
                // zero-extended register with the sign-extended immediate.
                block.push(insn(JMP_JNE_K, reg, 0, 0, n as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for i in skips {
            block[i].off = (len - i - 1) as i16;
        }
        prog.extend(block);
        // Whatever follows an unconditional verdict is unreachable, which the verifier refuses.
        if r.matches_everything() {
            return prog;
        }
    }
    prog.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, fully initialised
    // (unused fields zero), and its size is passed along; pointers inside it are valid for
    // the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `prog` as a cgroup device program.
pub fn load(prog: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"dcpp_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a fresh descriptor nobody else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(source) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err(DeviceFilterError::Load {
                source,
                log: if text.is_empty() {
                    String::new()
                } else {
                    format!("\n{text}")
                },
            })
        }
    }
}

fn open_cgroup(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

/// Compiles `rules`, loads the program and attaches it to the cgroup directory `dir` (of a
/// cgroup2 hierarchy). `BPF_F_ALLOW_MULTI`: programs of ancestors (systemd's) keep applying,
/// a device must pass all of them.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceFilterError> {
    let prog = load(&compile(rules))?;
    let attach_err = |source| DeviceFilterError::Attach {
        path: dir.to_path_buf(),
        source,
    };
    let cg = open_cgroup(dir).map_err(attach_err)?;
    let mut attr = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(attach_err)?;
    Ok(())
}

/// How many device programs are attached to the cgroup directory `dir` itself.
pub fn attached_programs(dir: &Path) -> std::io::Result<u32> {
    let cg = open_cgroup(dir)?;
    let mut attr = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr.prog_cnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_match_the_controller_syntax() {
        let d = default_rules();
        assert_eq!(d[0].v1_line(), "a *:* rwm");
        assert_eq!(d[1].v1_line(), "c *:* m");
        assert_eq!(d[3].v1_line(), "c 1:3 rwm");
        assert_eq!(d.last().unwrap().v1_line(), "c 10:200 rwm");
    }

    #[test]
    fn spec_rules_round_trip() {
        let spec: Vec<LinuxDeviceCgroup> = default_rules()
            .iter()
            .map(|r| {
                let mut b = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                    .allow(r.allow)
                    .access(r.access_string());
                if let Some(k) = r.kind {
                    b = b.typ(if k == 'b' {
                        LinuxDeviceType::B
                    } else {
                        LinuxDeviceType::C
                    });
                }
                if let Some(m) = r.major {
                    b = b.major(i64::from(m));
                }
                if let Some(m) = r.minor {
                    b = b.minor(i64::from(m));
                }
                b.build().unwrap()
            })
            .collect();
        assert_eq!(rules_from_spec(&spec), default_rules());
    }

    #[test]
    fn jumps_land_inside_the_program() {
        for rules in [default_rules(), allow_all(), vec![]] {
            let p = compile(&rules);
            for (i, ins) in p.iter().enumerate() {
                if ins.code == JMP_JNE_K || ins.code == JMP_JEQ_K {
                    let target = i as i64 + 1 + i64::from(ins.off);
                    assert!(target > i as i64 && (target as usize) < p.len(), "{i}");
                }
            }
            assert_eq!(p.last().unwrap().code, JMP_EXIT);
        }
        // allow-all stops after its unconditional verdict.
        assert_eq!(compile(&allow_all()).len(), 8);
    }
}
