//! The control plane's one clock. Every decision reads the time from `App::now()`, which reads
//! this: the system's clock in production, a virtual one that tests and simulations move by hand
//! (so a test of per-second billing advances two seconds instead of sleeping them).

use gpucloud_model::Timestamp;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// Milliseconds since the epoch, moved only by `advance` and `set`; clones share it.
    Virtual(Arc<AtomicI64>),
}

impl Clock {
    /// A virtual clock reading `at` until it is moved.
    pub fn virtual_at(at: Timestamp) -> Clock {
        Clock::Virtual(Arc::new(AtomicI64::new(at.0)))
    }

    /// A virtual clock starting at the system's time now (so calendar-based rules, such as the
    /// month an invoice is in, read as they would).
    pub fn virtual_now() -> Clock {
        Clock::virtual_at(Clock::System.now())
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            ),
            Clock::Virtual(ms) => Timestamp(ms.load(Ordering::SeqCst)),
        }
    }

    pub fn is_virtual(&self) -> bool {
        matches!(self, Clock::Virtual(_))
    }

    /// Moves a virtual clock forward by `by` and returns the new time. The system clock cannot be
    /// moved: that is a caller's bug, so it says so rather than pretending.
    pub fn advance(&self, by: Duration) -> Result<Timestamp, &'static str> {
        match self {
            Clock::System => Err("the system clock cannot be moved"),
            Clock::Virtual(ms) => {
                let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
                Ok(Timestamp(ms.fetch_add(by, Ordering::SeqCst).saturating_add(by)))
            }
        }
    }

    /// Sets a virtual clock to `to`, backwards too (a clock jump, as a badly synced host has).
    pub fn set(&self, to: Timestamp) -> Result<(), &'static str> {
        match self {
            Clock::System => Err("the system clock cannot be set"),
            Clock::Virtual(ms) => {
                ms.store(to.0, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_clock_moves_only_when_moved_and_clones_share_it() {
        let c = Clock::virtual_at(Timestamp(1_000));
        let seen = c.clone();
        assert_eq!(c.now(), Timestamp(1_000));
        assert_eq!(c.advance(Duration::from_millis(1_500)), Ok(Timestamp(2_500)));
        assert_eq!(seen.now(), Timestamp(2_500));
        c.set(Timestamp(500)).unwrap();
        assert_eq!(seen.now(), Timestamp(500));
        assert!(Clock::System.advance(Duration::from_secs(1)).is_err());
        assert!(Clock::System.set(Timestamp(0)).is_err());
        let a = Clock::System.now();
        assert!(Clock::System.now() >= a);
    }
}
