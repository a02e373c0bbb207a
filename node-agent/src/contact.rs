//! Whether this node is in touch with the managers, and what the agent may do about its tasks
//! because of it. Pure: the agent feeds in heartbeat outcomes and the time, and asks before
//! each round.
//!
//! Only a heartbeat proves contact: it is a raft write, committed by a leader with a quorum. A
//! read proves nothing, because a manager on the minority side of a partition still answers
//! reads from its own copy of the store, which stopped changing when it was cut off.
//!
//! Two rules follow:
//! - **Partition grace.** When no heartbeat got through for the grace period, the node is cut
//!   off: the leader on the other side has declared it down and given its slots to other
//!   nodes, so its own task containers are stopped and removed and nothing is started, until a
//!   heartbeat gets through again. The grace must be longer than the time the leader takes to
//!   declare a node down, or a node would stop tasks the cluster still counts on.
//! - **Catching up.** After the agent starts and after a cut-off ends, a round acts only on a
//!   store read that includes the first heartbeat that got through: the copy read here may
//!   still predate the partition, and would show tasks that were moved elsewhere meanwhile.

use std::time::{Duration, Instant};

/// What this node's agent may do with the tasks the store assigns to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No heartbeat got through since the agent started: act on nothing yet (containers that
    /// run are left running).
    Unconfirmed,
    /// A heartbeat got through, committed at `revision`; a round acts once a read shows it.
    CatchingUp { revision: u64 },
    /// Reconcile with what the store says.
    InTouch,
    /// Cut off from the managers for longer than the grace: keep no task container, start
    /// nothing.
    CutOff,
}

/// A change the agent reports (and, for [`Transition::CutOff`], acts on at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No heartbeat got through for `silent` (at least the grace): stand down.
    CutOff { silent: Duration },
    /// A heartbeat got through again after `cut_for` cut off.
    Rejoined { cut_for: Duration },
}

/// The agent's contact with the managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// `None`: never cut off.
    grace: Option<Duration>,
    /// The last heartbeat that got through, or the agent's start.
    last: Instant,
    /// When the node was cut off, while it is.
    cut_at: Option<Instant>,
    standing: Standing,
}

impl Contact {
    /// An agent starting at `now` that stands down after `grace` without contact (`None`:
    /// never).
    pub fn new(now: Instant, grace: Option<Duration>) -> Self {
        Contact {
            grace: grace.filter(|g| !g.is_zero()),
            last: now,
            cut_at: None,
            standing: Standing::Unconfirmed,
        }
    }

    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// A heartbeat got through at `now`, committed at `revision`.
    pub fn reached(&mut self, now: Instant, revision: u64) -> Option<Transition> {
        self.last = now;
        let cut_at = self.cut_at.take();
        self.standing = match self.standing {
            Standing::Unconfirmed | Standing::CutOff => Standing::CatchingUp { revision },
            // The first heartbeat's revision is enough: it was committed after the cut ended.
            s @ (Standing::CatchingUp { .. } | Standing::InTouch) => s,
        };
        cut_at.map(|at| Transition::Rejoined {
            cut_for: now.saturating_duration_since(at),
        })
    }

    /// Time passed (a heartbeat failed, or none ended yet): cuts the node off once the grace
    /// has passed since the last heartbeat that got through.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        let grace = self.grace?;
        let silent = now.saturating_duration_since(self.last);
        if self.standing == Standing::CutOff || silent < grace {
            return None;
        }
        self.standing = Standing::CutOff;
        self.cut_at = Some(now);
        Some(Transition::CutOff { silent })
    }

    /// A read of the store at `revision`: whether a round on it may act.
    pub fn read(&mut self, revision: u64) -> bool {
        match self.standing {
            Standing::CatchingUp { revision: r } if revision >= r => {
                self.standing = Standing::InTouch;
                true
            }
            s => s == Standing::InTouch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Clock;
    use crate::testing::FakeClock;

    const GRACE: Duration = Duration::from_secs(10);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_node_acts_only_once_a_read_shows_its_first_heartbeat() {
        let clock = FakeClock::new(0);
        let mut c = Contact::new(clock.now(), Some(GRACE));
        assert_eq!(c.standing(), Standing::Unconfirmed);
        assert!(!c.read(100), "no heartbeat got through yet");
        clock.advance(secs(0.2));
        assert_eq!(c.reached(clock.now(), 40), None);
        assert_eq!(c.standing(), Standing::CatchingUp { revision: 40 });
        assert!(!c.read(39), "a copy older than the heartbeat");
        assert_eq!(c.standing(), Standing::CatchingUp { revision: 40 });
        // Later heartbeats keep the first one's revision.
        assert_eq!(c.reached(clock.now(), 45), None);
        assert!(c.read(40));
        assert_eq!(c.standing(), Standing::InTouch);
        // In touch, every read acts (lagging a little is harmless now).
        assert!(c.read(1));
        assert_eq!(c.reached(clock.now(), 50), None);
        assert_eq!(c.standing(), Standing::InTouch);
    }

    #[test]
    fn a_node_is_cut_off_exactly_when_the_grace_passes_without_a_heartbeat() {
        let clock = FakeClock::new(0);
        let mut c = Contact::new(clock.now(), Some(GRACE));
        c.reached(clock.now(), 1);
        assert!(c.read(1));
        // Heartbeats every second keep it in touch indefinitely.
        for _ in 0..30 {
            clock.advance(secs(1.0));
            assert_eq!(c.tick(clock.now()), None);
            c.reached(clock.now(), 2);
        }
        // Then silence: in touch until just before the grace has passed.
        clock.advance(secs(9.999));
        assert_eq!(c.tick(clock.now()), None);
        assert_eq!(c.standing(), Standing::InTouch);
        assert!(c.read(2));
        clock.advance(secs(0.001));
        assert_eq!(
            c.tick(clock.now()),
            Some(Transition::CutOff { silent: GRACE })
        );
        assert_eq!(c.standing(), Standing::CutOff);
        // Once: further ticks change nothing, and no read lets a round act (a minority
        // manager's reads still work).
        clock.advance(secs(5.0));
        assert_eq!(c.tick(clock.now()), None);
        assert!(!c.read(1_000));
        assert_eq!(c.standing(), Standing::CutOff);
    }

    #[test]
    fn a_late_first_tick_reports_the_whole_silence() {
        let clock = FakeClock::new(0);
        let mut c = Contact::new(clock.now(), Some(GRACE));
        clock.advance(secs(12.5));
        assert_eq!(
            c.tick(clock.now()),
            Some(Transition::CutOff { silent: secs(12.5) }),
            "an agent that never reached the managers since it started is cut off too"
        );
    }

    #[test]
    fn a_cut_off_node_rejoins_on_a_heartbeat_and_acts_once_it_has_caught_up() {
        let clock = FakeClock::new(0);
        let mut c = Contact::new(clock.now(), Some(GRACE));
        c.reached(clock.now(), 5);
        assert!(c.read(5));
        clock.advance(GRACE);
        assert_eq!(
            c.tick(clock.now()),
            Some(Transition::CutOff { silent: GRACE })
        );
        clock.advance(secs(20.0));
        assert_eq!(
            c.reached(clock.now(), 90),
            Some(Transition::Rejoined {
                cut_for: secs(20.0)
            })
        );
        assert_eq!(c.standing(), Standing::CatchingUp { revision: 90 });
        // The store read here still predates the heal: the tasks moved meanwhile are not seen.
        assert!(!c.read(60));
        assert!(c.read(91));
        assert_eq!(c.standing(), Standing::InTouch);
        // The grace counts from the heartbeat that got through.
        clock.advance(secs(9.0));
        assert_eq!(c.tick(clock.now()), None);
        clock.advance(secs(1.0));
        assert_eq!(
            c.tick(clock.now()),
            Some(Transition::CutOff { silent: GRACE })
        );
    }

    #[test]
    fn a_cut_off_node_that_gets_through_while_catching_up_is_not_rejoined_twice() {
        let clock = FakeClock::new(0);
        let mut c = Contact::new(clock.now(), Some(GRACE));
        clock.advance(GRACE);
        assert!(c.tick(clock.now()).is_some());
        clock.advance(secs(1.0));
        assert!(matches!(
            c.reached(clock.now(), 7),
            Some(Transition::Rejoined { .. })
        ));
        assert_eq!(c.reached(clock.now(), 8), None);
        assert_eq!(c.standing(), Standing::CatchingUp { revision: 7 });
    }

    #[test]
    fn without_a_grace_a_node_is_never_cut_off() {
        for grace in [None, Some(Duration::ZERO)] {
            let clock = FakeClock::new(0);
            let mut c = Contact::new(clock.now(), grace);
            c.reached(clock.now(), 1);
            assert!(c.read(1));
            clock.advance(Duration::from_secs(86_400));
            assert_eq!(c.tick(clock.now()), None);
            assert_eq!(c.standing(), Standing::InTouch);
        }
    }
}
