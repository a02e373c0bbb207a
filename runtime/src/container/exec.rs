//! `exec`: runs a command in a running container, through the shim (built-in executor) or
//! `<runtime> exec`.

use std::path::PathBuf;

use super::{ContainerManager, Error, ExecRequest, RuntimeKind, Status, io_err, util};

impl ContainerManager {
    /// Runs a command in a running container (joining its namespaces and cgroup). The child's
    /// stdio is what `stdio` configures; the returned child's status is the command's.
    pub fn exec(
        &self,
        reference: &str,
        req: &ExecRequest,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Result<std::process::Child, Error> {
        let st = self.resolve(reference)?;
        let info = self.info_of(st.clone());
        if info.status != Status::Running {
            return Err(Error::State {
                id: st.id,
                msg: format!("container is {}, not running", info.status),
            });
        }
        let dir = self.dir(&st.id);
        let mut cmd = match &RuntimeKind::parse(&st.runtime) {
            RuntimeKind::Builtin => {
                let mut c = std::process::Command::new(&self.opts.shim.program);
                c.args(&self.opts.shim.args)
                    .arg("exec")
                    .arg(&dir)
                    .arg(serde_json::to_string(req).unwrap_or_default());
                c
            }
            RuntimeKind::Oci(rt) => {
                let spec: oci_spec::runtime::Spec = serde_json::from_slice(
                    &std::fs::read(dir.join("config.json"))
                        .map_err(io_err("reading config.json"))?,
                )
                .map_err(|e| Error::Create(format!("config.json: {e}")))?;
                let mut p = spec.process().clone().unwrap_or_default();
                p.set_args(Some(req.args.clone()));
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(req.env.iter().cloned());
                p.set_env(Some(env));
                if let Some(cwd) = &req.cwd {
                    p.set_cwd(PathBuf::from(cwd));
                }
                if let Some((uid, gid)) = req.user {
                    let mut u = p.user().clone();
                    u.set_uid(uid);
                    u.set_gid(gid);
                    p.set_user(u);
                }
                let pf = dir.join(format!(
                    "exec-{}.json",
                    util::random_hex(6).map_err(io_err("random"))?
                ));
                std::fs::write(&pf, serde_json::to_vec(&p).unwrap_or_default())
                    .map_err(io_err("writing the exec process file"))?;
                let mut c = std::process::Command::new(rt);
                c.args([
                    "--root",
                    &self.opts.data_dir.join("runtime").to_string_lossy(),
                    "exec",
                    "--process",
                ])
                .arg(&pf)
                .arg(&st.id);
                // `runc exec` hands its umask (our 077, which keeps the data dir private) to the
                // process; the container's processes get the usual 022, as its init does.
                // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                        libc::umask(0o022);
                        Ok(())
                    });
                }
                c
            }
        };
        configure(&mut cmd);
        cmd.spawn().map_err(io_err("spawning exec"))
    }
}
