//! `dcpp logs NAME`: a container's log (unchanged behaviour), or, when NAME is a service
//! (`web` or `stack_web`) with task containers on this machine, the logs of all its replicas
//! merged in time order with compose-style `web.1 | ` prefixes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use dcpp_control::schema::{LABEL_SERVICE, LABEL_SLOT, LABEL_STACK};
use dcpp_runtime::container::{
    ContainerInfo, ContainerManager, ManagerOptions, RuntimeKind, ShimCommand, logs,
};

use crate::Global;
use crate::cmd::container::{TopLogsArgs, run_logs};

pub fn run(global: &Global, args: TopLogsArgs) -> anyhow::Result<u8> {
    let mgr = ContainerManager::open(ManagerOptions {
        data_dir: global.data_dir.clone(),
        cgroup_parent: args.rt.cgroup_parent.clone(),
        runtime: RuntimeKind::parse(&args.rt.runtime),
        shim: ShimCommand::locate().context("locating the dcpp executable")?,
        network_hook: None,
    })?;
    let name = args.logs.container.clone();
    if mgr.resolve(&name).is_ok() {
        return run_logs(global, args);
    }
    let replicas = service_containers(&mgr, &name);
    if replicas.is_empty() {
        return run_logs(global, args);
    }
    let mut offsets: BTreeMap<String, (String, PathBuf, u64)> = BTreeMap::new();
    let mut merged = Vec::new();
    for c in &replicas {
        let path = mgr.log_path(&c.state.id)?;
        let prefix = prefix_of(c);
        let (entries, offset) = logs::read_snapshot(&path).unwrap_or_default();
        for e in entries {
            merged.push((e.time.clone(), prefix.clone(), e));
        }
        offsets.insert(c.state.id.clone(), (prefix, path, offset));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = args
        .logs
        .tail
        .map(|t| merged.len().saturating_sub(t))
        .unwrap_or(0);
    let width = offsets.values().map(|(p, _, _)| p.len()).max().unwrap_or(0);
    for (_, p, e) in &merged[skip..] {
        print_line(p, width, e, args.logs.timestamps);
    }
    if !args.logs.follow {
        return Ok(0);
    }
    loop {
        // New replicas (scale up, replacements) join the stream as they appear.
        for c in service_containers(&mgr, &name) {
            if !offsets.contains_key(&c.state.id)
                && let Ok(path) = mgr.log_path(&c.state.id)
            {
                offsets.insert(c.state.id.clone(), (prefix_of(&c), path, 0));
            }
        }
        let width = offsets.values().map(|(p, _, _)| p.len()).max().unwrap_or(0);
        for (prefix, path, off) in offsets.values_mut() {
            if let Ok((entries, next)) = logs::read_from(path, *off) {
                *off = next;
                for e in &entries {
                    print_line(prefix, width, e, args.logs.timestamps);
                }
            }
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn service_containers(mgr: &ContainerManager, name: &str) -> Vec<ContainerInfo> {
    mgr.list()
        .into_iter()
        .filter(|c| {
            let l = &c.state.labels;
            match (l.get(LABEL_STACK), l.get(LABEL_SERVICE)) {
                (Some(st), Some(sv)) => sv == name || format!("{st}_{sv}") == name,
                _ => false,
            }
        })
        .collect()
}

fn prefix_of(c: &ContainerInfo) -> String {
    let l = &c.state.labels;
    format!(
        "{}.{}",
        l.get(LABEL_SERVICE).map(String::as_str).unwrap_or("?"),
        l.get(LABEL_SLOT).map(String::as_str).unwrap_or("?")
    )
}

fn print_line(prefix: &str, width: usize, e: &logs::LogEntry, timestamps: bool) {
    let line = if timestamps {
        format!("{prefix:<width$} | {} {}", e.time, e.log)
    } else {
        format!("{prefix:<width$} | {}", e.log)
    };
    let _ = std::io::stdout().write_all(line.as_bytes());
}
