//! Exponential backoff per object: the delay doubles with each consecutive failure up to a
//! cap, with ±10 % jitter so a thousand connections to one restarted server do not retry in
//! lockstep. A success forgets the object's failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The delay after `failures` consecutive failures (1 → `base`). Pure.
pub fn delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(cap)
}

/// `d` scaled by a factor in [0.9, 1.1] chosen by `random`.
pub fn jitter(d: Duration, random: u8) -> Duration {
    d.mul_f64(0.9 + 0.2 * f64::from(random) / 255.0)
}

/// `d` with ±10 % random jitter.
pub fn spread(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    jitter(
        d,
        getrandom::fill(&mut byte).map(|_| byte[0]).unwrap_or(128),
    )
}

pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failure of `key`; returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let n = {
            let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        spread(delay(n, self.base, self.cap))
    }

    /// Forgets `key`'s failures.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
        let got: Vec<u64> = (1..=11).map(|n| delay(n, base, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay(u32::MAX, base, cap), cap);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_secs(10);
        assert_eq!(jitter(d, 0), Duration::from_secs(9));
        assert_eq!(jitter(d, 255), Duration::from_secs(11));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        b.failed("a");
        b.failed("a");
        let third = b.failed("a");
        assert!(third >= Duration::from_millis(3600), "{third:?}");
        b.succeeded("a");
        assert!(b.failed("a") <= Duration::from_millis(1100));
    }
}
