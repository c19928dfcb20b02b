//! The source of "now". Every decision that depends on time (uptime today;
//! agreement windows and membership end dates later) asks a [`Clock`], so
//! tests can set the date instead of waiting for it.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// Where the node reads the current time from.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current instant, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// A shared clock handle, as the node's services hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that says what it is told, for tests that need "now" to be a
/// particular date.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock standing still at `now`.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(now),
        }
    }

    /// Moves the clock to `now`.
    pub fn set(&self, now: OffsetDateTime) {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn manual_clock_reports_what_it_was_set_to() {
        let clock = ManualClock::new(datetime!(2024-12-31 23:59 UTC));
        assert_eq!(clock.now(), datetime!(2024-12-31 23:59 UTC));
        clock.set(datetime!(2025-01-01 00:00 UTC));
        assert_eq!(clock.now(), datetime!(2025-01-01 00:00 UTC));
    }
}
