//! Time as a dependency. The engine never reads the wall clock directly: it is given a
//! [`Clock`], so SLA ladders and cron schedules run in virtual time in tests and `simulate`.

use std::sync::Mutex;

use chrono::{TimeDelta, Utc};

use crate::Timestamp;

/// A source of the current instant.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that moves only when told to. Time never goes backwards unless [`VirtualClock::set`]
/// is asked to, which tests use to inject clock jumps.
#[derive(Debug)]
pub struct VirtualClock {
    now: Mutex<Timestamp>,
}

impl VirtualClock {
    pub fn new(start: Timestamp) -> Self {
        Self { now: Mutex::new(start) }
    }

    /// Moves the clock forward by `by` and returns the new instant.
    pub fn advance(&self, by: TimeDelta) -> Timestamp {
        let mut now = self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
        *now
    }

    /// Sets the clock to `to`, forwards or backwards.
    pub fn set(&self, to: Timestamp) {
        let mut now = self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = to;
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_moves_only_when_told() {
        let start = "2026-03-02T14:00:00Z".parse().expect("valid instant");
        let clock = VirtualClock::new(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now(), start);
        let later = clock.advance(TimeDelta::hours(24));
        assert_eq!(later - start, TimeDelta::hours(24));
        assert_eq!(clock.now(), later);
        clock.set(start);
        assert_eq!(clock.now(), start);
    }
}
