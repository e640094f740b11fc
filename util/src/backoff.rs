//! Exponential backoff with jitter, shared by every retry loop (sync's requests to the parent and
//! its retries of a failed pass): many children that lost the same parent must not come back in
//! step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Waits that double per attempt from `first` up to `max`, spread by a random factor.
#[derive(Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    seed: AtomicU64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Backoff {
            first,
            max,
            seed: AtomicU64::new(nanos | 1),
        }
    }

    /// The un-jittered wait before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn cap(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max)
    }

    /// Full jitter: uniform in [0, cap]. Best spread; fit for cheap request retries.
    pub fn full(&self, attempt: u32) -> Duration {
        self.spread(self.cap(attempt), 0.0)
    }

    /// Equal jitter: uniform in [cap/2, cap]. Never retries at once; fit for a whole pass.
    pub fn equal(&self, attempt: u32) -> Duration {
        self.spread(self.cap(attempt), 0.5)
    }

    fn spread(&self, cap: Duration, floor: f64) -> Duration {
        let unit = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(floor + (1.0 - floor) * unit)
    }

    /// xorshift: jitter needs spread, not cryptographic randomness.
    fn random(&self) -> u64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_stays_in_range() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(b.cap(1), Duration::from_secs(5));
        assert_eq!(b.cap(2), Duration::from_secs(10));
        assert_eq!(b.cap(5), Duration::from_secs(60));
        assert_eq!(b.cap(1000), Duration::from_secs(60));
        for attempt in 1..8 {
            let cap = b.cap(attempt);
            let e = b.equal(attempt);
            assert!(e >= cap / 2 && e <= cap, "{e:?} vs {cap:?}");
            assert!(b.full(attempt) <= cap);
        }
    }
}
