//! A small circuit breaker: after `threshold` consecutive failures the
//! dependency is skipped for `cooldown`, then one call at a time is let
//! through to probe it. A dead Redis then costs an atomic load per call, not
//! a timeout.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

pub struct Breaker {
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are refused; 0 = closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go out now. Once the cooldown is over, exactly one
    /// caller wins the compare-exchange and probes; the rest keep skipping
    /// until that probe reports.
    pub(crate) fn allow(&self) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < open_until {
            return false;
        }
        let probe_until = now + self.cooldown.as_millis() as u64;
        self.open_until_ms
            .compare_exchange(open_until, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
    }

    pub(crate) fn record_failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let breaker = Breaker::new(2, Duration::from_millis(30));
        assert!(breaker.allow());
        breaker.record_failure();
        assert!(breaker.allow(), "one failure is not enough");
        breaker.record_failure();
        assert!(!breaker.allow(), "open after two");
        std::thread::sleep(Duration::from_millis(40));
        assert!(breaker.allow(), "one probe after the cooldown");
        assert!(!breaker.allow(), "only one");
        breaker.record_success();
        assert!(breaker.allow() && !breaker.is_open());
    }
}
