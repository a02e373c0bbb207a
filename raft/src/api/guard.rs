//! Admission control of the TCP listener, which anyone who reaches the port can talk to: caps on
//! open connections (per listener, and per source for connections that have not yet shown the
//! cluster token), a token bucket of failed authentications per source, and a periodic summary
//! of what was refused instead of one log line per refusal (which an attacker would turn into
//! a disk-filling, log-drowning stream).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Limits of the TCP listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Time a client has to send a complete request head; hyper restarts it for every request,
    /// so it also closes kept-alive connections idle that long between requests.
    pub header_read_timeout: Duration,
    /// A connection that has not presented the cluster token this long after it was accepted
    /// is closed, whatever it is doing (a join is one short request).
    pub unauthenticated_timeout: Duration,
    /// Connections open at once on the listener; more are accepted and closed at once. Keep it
    /// well below the process's NOFILE limit: the agent, the store and the unix socket need
    /// descriptors too.
    pub max_connections: usize,
    /// Not-yet-authenticated connections open at once from one source (an IPv4 address or an
    /// IPv6 /64).
    pub max_unauthenticated_per_source: usize,
    /// Failed authentications a source may make in a burst before it is answered 429.
    pub auth_failure_burst: u32,
    /// Time after which a source regains one allowed failure.
    pub auth_failure_refill: Duration,
    /// How often refusals are summarised in the log.
    pub log_interval: Duration,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(20),
            unauthenticated_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_unauthenticated_per_source: 32,
            auth_failure_burst: 20,
            auth_failure_refill: Duration::from_secs(1),
            log_interval: Duration::from_secs(60),
        }
    }
}

/// Sources tracked for failed authentications; beyond it, sources whose bucket is full again
/// are forgotten, and if that is not enough new sources are not tracked (their failures are
/// still counted in the summary).
const MAX_TRACKED_SOURCES: usize = 16_384;
/// Sources named individually in one summary line.
const SUMMARY_SOURCES: usize = 10;

/// Why a request or connection was refused, as counted in the summary.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// No client certificate on a route that needs one.
    Missing,
    /// A failed TLS handshake: plaintext, a certificate of another CA, an expired one.
    Invalid,
    /// A wrong join token.
    Join,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    missing: u64,
    invalid: u64,
    join: u64,
    limited: u64,
    connections: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.missing + self.invalid + self.join + self.limited + self.connections
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    unauthenticated: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
    refused: HashMap<IpAddr, Counts>,
}

/// Shared by the accept loop, every connection and the auth middleware of one listener.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: ListenerLimits,
    state: Mutex<State>,
}

/// One admitted connection; dropping it gives its slots back.
#[derive(Debug)]
pub(crate) struct Admission {
    gate: Arc<Gate>,
    source: IpAddr,
    /// Still counted against its source's unauthenticated cap.
    unauthenticated: AtomicBool,
}

impl Admission {
    /// The connection presented the cluster token: it no longer counts against its source.
    pub(crate) fn authenticated(&self) {
        if self.unauthenticated.swap(false, Ordering::AcqRel) {
            self.gate.release_unauthenticated(self.source);
        }
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        !self.unauthenticated.load(Ordering::Acquire)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
        let mut st = self.gate.lock();
        st.open = st.open.saturating_sub(1);
    }
}

/// The unit limits are kept per: one IPv4 address, or one IPv6 /64 (what a single host or
/// customer usually gets, so rotating addresses within it gains nothing).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Gate {
    pub(crate) fn new(limits: ListenerLimits) -> Gate {
        Gate {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn limits(&self) -> &ListenerLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot for a new connection from `ip`, or refuses it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let source = source_key(ip);
        let mut st = self.lock();
        let per_source = st.unauthenticated.get(&source).copied().unwrap_or(0);
        if st.open >= self.limits.max_connections
            || per_source >= self.limits.max_unauthenticated_per_source
        {
            st.refused.entry(source).or_default().connections += 1;
            return None;
        }
        st.open += 1;
        *st.unauthenticated.entry(source).or_default() += 1;
        Some(Admission {
            gate: self.clone(),
            source,
            unauthenticated: AtomicBool::new(true),
        })
    }

    fn release_unauthenticated(&self, source: IpAddr) {
        let mut st = self.lock();
        if let Some(n) = st.unauthenticated.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                st.unauthenticated.remove(&source);
            }
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let per = self.limits.auth_failure_refill.as_secs_f64().max(1e-6);
        let gained = now.duration_since(b.at).as_secs_f64() / per;
        b.tokens = (b.tokens + gained).min(f64::from(self.limits.auth_failure_burst));
        b.at = now;
    }

    /// True when `ip` used up its failed authentications: the caller answers 429 without
    /// looking at the credential (so guessing costs the guesser time, not the node CPU).
    pub(crate) fn rate_limited(&self, ip: IpAddr) -> bool {
        let source = source_key(ip);
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        let Some(b) = st.buckets.get_mut(&source) else {
            return false;
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            return false;
        }
        st.refused.entry(source).or_default().limited += 1;
        true
    }

    /// Records a refusal from `ip`: counted, and a wrong join token taken from its bucket. A
    /// failed handshake or a missing certificate costs nothing: a certificate cannot be
    /// guessed, and a peer whose connection predates a new root must not lock its address out.
    pub(crate) fn refused(&self, ip: IpAddr, why: Refusal) {
        let source = source_key(ip);
        let now = Instant::now();
        let burst = f64::from(self.limits.auth_failure_burst);
        let mut st = self.lock();
        let st = &mut *st;
        let c = st.refused.entry(source).or_default();
        match why {
            Refusal::Missing => c.missing += 1,
            Refusal::Invalid => c.invalid += 1,
            Refusal::Join => c.join += 1,
        }
        if !matches!(why, Refusal::Join) {
            return;
        }
        if !st.buckets.contains_key(&source) && st.buckets.len() >= MAX_TRACKED_SOURCES {
            let per = self.limits.auth_failure_refill.as_secs_f64().max(1e-6);
            st.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() / per < burst);
            if st.buckets.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        let b = st.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// The refusals since the last call as one log line, or None when there were none.
    pub(crate) fn take_summary(&self) -> Option<String> {
        let refused = std::mem::take(&mut self.lock().refused);
        if refused.is_empty() {
            return None;
        }
        let mut by_count: Vec<(IpAddr, Counts)> = refused.into_iter().collect();
        by_count.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        let total: u64 = by_count.iter().map(|(_, c)| c.total()).sum();
        let mut line = format!("{total} refused from {} source(s):", by_count.len());
        for (ip, c) in by_count.iter().take(SUMMARY_SOURCES) {
            let _ = write!(line, " {ip} [");
            let mut first = true;
            for (n, what) in [
                (c.missing, "without a certificate"),
                (c.invalid, "failed TLS handshakes"),
                (c.join, "invalid join token"),
                (c.limited, "rate-limited"),
                (c.connections, "connections over the cap"),
            ] {
                if n > 0 {
                    let _ = write!(line, "{}{n} {what}", if first { "" } else { ", " });
                    first = false;
                }
            }
            line.push(']');
        }
        if by_count.len() > SUMMARY_SOURCES {
            let _ = write!(line, " and {} more", by_count.len() - SUMMARY_SOURCES);
        }
        Some(line)
    }

    /// Logs [`Gate::take_summary`] every `log_interval` until the task is aborted.
    pub(crate) async fn log_summaries(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.limits.log_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(line) = self.take_summary() {
                tracing::warn!(
                    interval_secs = self.limits.log_interval.as_secs_f64(),
                    "TCP listener: {line}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 3,
            max_unauthenticated_per_source: 2,
            auth_failure_burst: 3,
            auth_failure_refill: Duration::from_secs(3600),
            ..ListenerLimits::default()
        }
    }

    #[test]
    fn per_source_and_listener_caps() {
        let g = Arc::new(Gate::new(limits()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert!(
            g.admit(a).is_none(),
            "third unauthenticated from one source"
        );
        a1.authenticated();
        let _a3 = g.admit(a).unwrap();
        assert!(g.admit(b).is_none(), "listener cap of 3 reached");
        drop(a1);
        let _b1 = g.admit(b).unwrap();
        let s = g.take_summary().unwrap();
        assert!(s.contains("192.0.2.1 [1 connections over the cap]"), "{s}");
        assert!(g.take_summary().is_none());
    }

    #[test]
    fn ipv6_sources_are_per_64() {
        let g = Arc::new(Gate::new(limits()));
        let _x = g.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _y = g.admit("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(g.admit("2001:db8:0:0:1::3".parse().unwrap()).is_none());
        assert!(g.admit("2001:db8:0:1::3".parse().unwrap()).is_some());
        assert_eq!(
            source_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn failures_exhaust_the_bucket_per_source() {
        let g = Gate::new(limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!g.rate_limited(a));
            g.refused(a, Refusal::Invalid);
            g.refused(a, Refusal::Missing);
        }
        assert!(
            !g.rate_limited(a),
            "handshakes and missing certificates cost nothing"
        );
        for _ in 0..3 {
            assert!(!g.rate_limited(a));
            g.refused(a, Refusal::Join);
        }
        assert!(g.rate_limited(a));
        assert!(!g.rate_limited(b));
        let s = g.take_summary().unwrap();
        assert!(
            s.contains("3 without a certificate, 3 failed TLS handshakes, 3 invalid join token, 1 rate-limited"),
            "{s}"
        );
    }
}
