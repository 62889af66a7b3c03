//! One exponential backoff with random jitter, used by every reconnect and
//! retry loop: the agent's connection to the control plane, the control
//! plane's watch of its store, and the etcd client's retries.
//!
//! Each pause doubles, from a first delay up to a largest one, and a random
//! part (up to [`JITTER`] of the pause) is added so that a fleet of agents,
//! or several replicas, that lost their peer at the same moment do not all
//! come back at the same moment.
//!
//! This crate owns the timing only: it never sleeps itself (callers sleep
//! with their own runtime) and depends on nothing of Wardline's, so that
//! the agent and the control plane may both use it.
#![forbid(unsafe_code)]

use std::time::Duration;

use rand::Rng as _;

/// The largest random part of a pause, as a share of the pause.
pub const JITTER: f64 = 0.5;

/// An exponential backoff: [`Backoff::next_delay`] is the pause before the
/// next attempt; [`Backoff::reset`] after a success starts again from the
/// first delay.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff whose pauses start at `first` and double up to `max`
    /// (each plus its jitter).
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            current: first,
        }
    }

    /// The pause before the next attempt: the current delay plus a random
    /// part of up to [`JITTER`] of it. The delay then doubles, up to the
    /// largest.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        base + base.mul_f64(JITTER * rand::rng().random::<f64>())
    }

    /// The delay the next pause is based on, without its jitter.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Starts again from the first delay, after an attempt that succeeded.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn pauses_double_up_to_the_largest_with_jitter() {
        let mut backoff = Backoff::new(FIRST, MAX);
        let mut base = FIRST;
        for _ in 0..10 {
            let pause = backoff.next_delay();
            assert!(
                pause >= base && pause <= base.mul_f64(1.0 + JITTER),
                "{pause:?} outside {base:?} plus jitter"
            );
            base = (base * 2).min(MAX);
            assert_eq!(backoff.current(), base);
        }
        backoff.reset();
        assert_eq!(backoff.current(), FIRST);
    }

    #[test]
    fn jitter_is_random() {
        // Two thousand pauses of one delay are not all the same (the
        // process id, the jitter this replaced, was).
        let pauses: std::collections::BTreeSet<Duration> = (0..2000)
            .map(|_| Backoff::new(FIRST, MAX).next_delay())
            .collect();
        assert!(pauses.len() > 100, "{} distinct pauses", pauses.len());
    }
}
