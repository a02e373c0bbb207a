//! The read-only verbs: finding a container by reference, `inspect`, `list`, `stats`, `logs`.

use std::collections::HashMap;
use std::path::PathBuf;

use super::cgroup::{StatsFiles, read_from_start, read_record};
use super::{
    ContainerInfo, ContainerManager, ContainerState, Error, Stats, Status, io_err, logs, util,
};

/// What [`ContainerManager::stats_running_cached`] keeps between calls. A running container's
/// record (`state.json`: name, labels, cgroup, network) is written before it starts and not
/// after, so it is read once; later calls read only the figures and whether it still runs.
#[derive(Debug, Default)]
pub struct StatsCache {
    /// By container id; `None`: exited or dead (it never runs again).
    known: HashMap<String, Option<Watched>>,
}

#[derive(Debug)]
struct Watched {
    info: ContainerInfo,
    /// `/proc/PID/stat` of the monitor, held open: once the monitor is gone it cannot be
    /// read again, even if its pid is reused.
    monitor: std::fs::File,
    cgroup: StatsFiles,
    /// `/proc/PID/net/dev` of the container's init (absent: the host's network).
    net: Option<std::fs::File>,
    /// The figures of the latest call, lent to its caller.
    read: (Stats, Option<NetIo>),
}

impl ContainerManager {
    /// Finds a container by full id, unique id prefix or name.
    pub fn resolve(&self, reference: &str) -> Result<ContainerState, Error> {
        // A full id or a name is one file away; only a prefix needs every state.json.
        if let Some(st) = self.state_of(reference).or_else(|| self.by_name(reference)) {
            return Ok(st);
        }
        let all = self.states();
        if let Some(s) = all
            .iter()
            .find(|s| s.id == reference || s.name == reference)
        {
            return Ok(s.clone());
        }
        let m: Vec<_> = all
            .iter()
            .filter(|s| !reference.is_empty() && s.id.starts_with(reference))
            .collect();
        match m.len() {
            0 => Err(Error::NotFound(reference.to_string())),
            1 => Ok(m[0].clone()),
            _ => Err(Error::Ambiguous(reference.to_string())),
        }
    }

    /// Inspects one container.
    pub fn inspect(&self, reference: &str) -> Result<ContainerInfo, Error> {
        Ok(self.info_of(self.resolve(reference)?))
    }

    /// All containers, oldest first.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.states().into_iter().map(|s| self.info_of(s)).collect()
    }

    /// Current resource usage of a running container.
    pub fn stats(&self, reference: &str) -> Result<Stats, Error> {
        let st = self.resolve(reference)?;
        Ok(self.hier.stats(&st.cgroup_path))
    }

    /// Resource usage of every running container, with the network traffic of its netns
    /// (`None` for a container that shares the host's network: the host's counters are not
    /// its own).
    pub fn stats_running(&self) -> Vec<(ContainerInfo, Stats, Option<NetIo>)> {
        self.list()
            .into_iter()
            .filter(|i| i.status == super::Status::Running)
            .map(|i| {
                let stats = self.hier.stats(&i.state.cgroup_path);
                let net = match (&i.state.network, i.pid) {
                    (super::NetworkMode::Host, _) | (_, None) => None,
                    (_, Some(pid)) => net_io(pid),
                };
                (i, stats, net)
            })
            .collect()
    }

    /// [`ContainerManager::stats_running`] for a caller that asks again and again (a metrics
    /// scrape): only new containers' records are read; for the others, the figures and the
    /// liveness of their monitor.
    /// The records are lent from `cache` (a scrape takes its labels; cloning each
    /// container's whole record at every scrape was much of the scrape's allocations).
    pub fn stats_running_cached<'c>(
        &self,
        cache: &'c mut StatsCache,
    ) -> Vec<(&'c ContainerInfo, Stats, Option<NetIo>)> {
        let Ok(rd) = std::fs::read_dir(&self.containers_dir) else {
            cache.known.clear();
            return Vec::new();
        };
        let ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        cache.known.retain(|id, _| ids.contains(id));
        for id in ids {
            if cache.known.contains_key(&id) {
                continue;
            }
            let Some(st) = std::fs::read(self.dir(&id).join("state.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<ContainerState>(&d).ok())
            else {
                // Still being created: looked at again next time.
                continue;
            };
            let info = self.info_of(st);
            match (info.status, self.monitor_info(&id)) {
                (Status::Running, Some(m)) => {
                    let monitor = std::fs::File::open(format!("/proc/{}/stat", m.monitor_pid));
                    // Opened after the check of its start time: if it was the monitor then,
                    // the open file stays the monitor's.
                    let Ok(monitor) = monitor.and_then(|f| {
                        if util::process_alive(m.monitor_pid, m.monitor_start_time) {
                            Ok(f)
                        } else {
                            Err(std::io::ErrorKind::NotFound.into())
                        }
                    }) else {
                        cache.known.insert(id, None);
                        continue;
                    };
                    let net = match (&info.state.network, info.pid) {
                        (super::NetworkMode::Host, _) | (_, None) => None,
                        (_, Some(pid)) => std::fs::File::open(format!("/proc/{pid}/net/dev")).ok(),
                    };
                    let cgroup = StatsFiles::new(&info.state.cgroup_path);
                    cache.known.insert(
                        id,
                        Some(Watched {
                            info,
                            monitor,
                            cgroup,
                            net,
                            read: Default::default(),
                        }),
                    );
                }
                (Status::Exited | Status::Dead, _) => {
                    cache.known.insert(id, None);
                }
                _ => {}
            }
        }
        for (id, w) in cache.known.iter_mut() {
            let Some(c) = w else { continue };
            // What `info_of` checks, without reading the record again.
            let running = read_record(&c.monitor).is_ok_and(|s| {
                let state = s
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next());
                state.is_some_and(|st| st != "Z" && st != "X")
            }) && !self.dir(id).join("exit.json").exists();
            if !running {
                *w = None;
                continue;
            }
            let stats = self.hier.stats_of(&c.cgroup);
            let net = c
                .net
                .as_ref()
                .and_then(|f| read_from_start(f).ok())
                .map(|s| parse_net_dev(&s));
            c.read = (stats, net);
        }
        let mut out: Vec<_> = cache
            .known
            .values()
            .flatten()
            .map(|c| (&c.info, c.read.0.clone(), c.read.1))
            .collect();
        out.sort_by(|a, b| a.0.state.created_at.cmp(&b.0.state.created_at));
        out
    }

    /// Path of the container's current log file.
    pub fn log_path(&self, reference: &str) -> Result<PathBuf, Error> {
        let st = self.resolve(reference)?;
        Ok(self.dir(&st.id).join("container.log"))
    }

    /// All log entries of a container, oldest first.
    pub fn logs(&self, reference: &str) -> Result<Vec<logs::LogEntry>, Error> {
        logs::read_all(&self.log_path(reference)?).map_err(io_err("reading the log"))
    }
}

/// Bytes through the interfaces of a network namespace, loopback excluded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetIo {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The traffic of the netns process `pid` is in, from its `/proc/PID/net/dev` (the kernel
/// shows the namespace of the process, not the reader's).
pub fn net_io(pid: i32) -> Option<NetIo> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(&s))
}

fn parse_net_dev(s: &str) -> NetIo {
    let mut out = NetIo::default();
    // Two header lines, then `iface: rx_bytes packets errs drop fifo frame compressed
    // multicast tx_bytes ...`.
    for l in s.lines().skip(2) {
        let Some((iface, rest)) = l.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            out.rx_bytes += f[0];
            out.tx_bytes += f[8];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_every_interface_but_loopback() {
        let s = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  \
eth0:    1200      10    0    0    0     0          0         0      3400      20    0    0    0     0       0          0\n  \
eth1:      30       1    0    0    0     0          0         0        40       1    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(s),
            NetIo {
                rx_bytes: 1230,
                tx_bytes: 3440
            }
        );
    }
}
