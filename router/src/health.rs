//! What the router knows of one node's health and distance, from its own probes and from
//! the requests it proxies. Pure: every event comes in with the time it happened, so tests
//! drive it on a virtual clock.
//!
//! - Round-trip time: an exponentially weighted moving average of probe round trips
//!   (weight [`EWMA_WEIGHT`] for the newest sample).
//! - Health: a node starts unknown and is used only after it has answered a probe. It is
//!   taken out after [`FALL`] consecutive failures (probe timeouts, refused connections,
//!   proxied requests that failed before any response byte) and put back after [`RISE`]
//!   consecutive successful probes: one good answer from a flapping node does not bring it
//!   back (HAProxy's rise/fall, with its defaults).
//! - Load: what the node reported in its last probe answer.

use std::time::Duration;

/// Weight of the newest round-trip sample in the average.
pub const EWMA_WEIGHT: f64 = 0.3;
/// Consecutive failures that take a node out.
pub const FALL: u32 = 3;
/// Consecutive successful probes that put a node back.
pub const RISE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not answered yet: not used.
    Unknown,
    Up,
    Down,
}

/// What a node says of itself in a probe answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// Requests it is answering now.
    pub in_flight: u64,
    /// How many it takes at once before it wants no more; `None`: no limit.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// It is stopping: finish what it has, send nothing new.
    #[serde(default)]
    pub draining: bool,
}

impl Load {
    pub fn has_room(&self) -> bool {
        !self.draining && self.capacity.is_none_or(|c| self.in_flight < c)
    }
}

/// One node as the router sees it. `at` is time since the router started.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    health: Health,
    rtt: Option<Duration>,
    failures: u32,
    successes: u32,
    load: Load,
    changed_at: Duration,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            health: Health::Unknown,
            rtt: None,
            failures: 0,
            successes: 0,
            load: Load::default(),
            changed_at: Duration::ZERO,
        }
    }
}

impl Tracker {
    pub fn health(&self) -> Health {
        self.health
    }

    /// The averaged round trip; `None` before the first answer.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    pub fn load(&self) -> Load {
        self.load
    }

    /// When health last changed.
    pub fn changed_at(&self) -> Duration {
        self.changed_at
    }

    pub fn usable(&self) -> bool {
        self.health == Health::Up
    }

    /// A probe answered after `rtt`, reporting `load`.
    pub fn probe_answered(&mut self, rtt: Duration, load: Load, at: Duration) {
        self.rtt = Some(match self.rtt {
            None => rtt,
            Some(avg) => avg.mul_f64(1.0 - EWMA_WEIGHT) + rtt.mul_f64(EWMA_WEIGHT),
        });
        self.load = load;
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        let back = match self.health {
            Health::Unknown => true,
            Health::Down => self.successes >= RISE,
            Health::Up => false,
        };
        if back {
            self.set(Health::Up, at);
        }
    }

    /// A probe failed or timed out, or a proxied request failed before any response byte.
    pub fn failed(&mut self, at: Duration) {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if self.failures >= FALL && self.health != Health::Down {
            self.set(Health::Down, at);
        }
    }

    /// A proxied request got its answer: the failure count starts over (a node that is
    /// down comes back only through probes).
    pub fn request_answered(&mut self) {
        self.failures = 0;
    }

    fn set(&mut self, health: Health, at: Duration) {
        self.health = health;
        self.changed_at = at;
        self.successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_node_is_used_only_after_it_answers() {
        let mut t = Tracker::default();
        assert_eq!(t.health(), Health::Unknown);
        assert!(!t.usable());
        t.probe_answered(5 * MS, Load::default(), 250 * MS);
        assert!(t.usable());
        assert_eq!(t.rtt(), Some(5 * MS));
    }

    #[test]
    fn round_trips_are_averaged() {
        let mut t = Tracker::default();
        t.probe_answered(10 * MS, Load::default(), Duration::ZERO);
        t.probe_answered(20 * MS, Load::default(), 250 * MS);
        assert_eq!(t.rtt(), Some(13 * MS));
        for i in 0..30 {
            t.probe_answered(40 * MS, Load::default(), (500 + i * 250) * MS);
        }
        let rtt = t.rtt().unwrap();
        assert!(rtt > 39 * MS && rtt <= 40 * MS, "{rtt:?}");
    }

    #[test]
    fn three_failures_take_a_node_out_and_two_answers_bring_it_back() {
        let mut t = Tracker::default();
        t.probe_answered(5 * MS, Load::default(), Duration::ZERO);
        t.failed(250 * MS);
        t.failed(500 * MS);
        assert!(t.usable(), "two failures are not enough");
        t.failed(750 * MS);
        assert_eq!(t.health(), Health::Down);
        assert_eq!(t.changed_at(), 750 * MS);
        t.probe_answered(5 * MS, Load::default(), 1000 * MS);
        assert!(!t.usable(), "one answer is not enough");
        t.probe_answered(5 * MS, Load::default(), 1250 * MS);
        assert!(t.usable());
    }

    #[test]
    fn a_flapping_node_stays_out() {
        let mut t = Tracker::default();
        t.probe_answered(5 * MS, Load::default(), Duration::ZERO);
        for i in 0..3 {
            t.failed((i + 1) * 250 * MS);
        }
        // Answers and failures in turn: never two answers in a row, so never back.
        for i in 0..20 {
            let at = (1000 + i * 250) * MS;
            if i % 2 == 0 {
                t.probe_answered(5 * MS, Load::default(), at)
            } else {
                t.failed(at)
            }
            assert!(!t.usable(), "back at step {i}");
        }
    }

    #[test]
    fn answered_requests_reset_the_failure_count() {
        let mut t = Tracker::default();
        t.probe_answered(5 * MS, Load::default(), Duration::ZERO);
        t.failed(MS);
        t.failed(2 * MS);
        t.request_answered();
        t.failed(3 * MS);
        t.failed(4 * MS);
        assert!(t.usable());
    }

    #[test]
    fn load_says_whether_there_is_room() {
        assert!(Load::default().has_room());
        assert!(!Load { in_flight: 10, capacity: Some(10), draining: false }.has_room());
        assert!(Load { in_flight: 9, capacity: Some(10), draining: false }.has_room());
        assert!(!Load { in_flight: 0, capacity: None, draining: true }.has_room());
    }
}
