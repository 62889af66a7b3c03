//! One exponential backoff with full random jitter, used by every
//! reconnect and retry loop: the agent's connection to the control plane,
//! the control plane's watch of its store, and the etcd client's retries.
//!
//! The ceiling of each pause doubles, from a first delay up to a largest
//! one, and the pause itself is drawn at random between [`FLOOR`] of the
//! ceiling and the whole ceiling ("full jitter"), so that a fleet of
//! agents, or several replicas, that lost their peer at the same moment
//! spread their attempts over the whole window instead of coming back
//! together in waves. The small floor keeps a loop from spinning.
//!
//! This crate owns the timing only: it never sleeps itself (callers sleep
//! with their own runtime) and depends on nothing of Wardline's, so that
//! the agent and the control plane may both use it.
#![forbid(unsafe_code)]

use std::time::Duration;

use rand::Rng as _;

/// The shortest pause, as a share of its ceiling.
pub const FLOOR: f64 = 0.05;

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
    /// A backoff whose ceilings start at `first` and double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            current: first,
        }
    }

    /// The pause before the next attempt: drawn uniformly between
    /// [`FLOOR`] of the current ceiling and the ceiling. The ceiling then
    /// doubles, up to the largest.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        ceiling.mul_f64(FLOOR + (1.0 - FLOOR) * rand::rng().random::<f64>())
    }

    /// The ceiling of the next pause.
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
    fn ceilings_double_up_to_the_largest() {
        let mut backoff = Backoff::new(FIRST, MAX);
        let mut base = FIRST;
        for _ in 0..10 {
            let pause = backoff.next_delay();
            assert!(
                pause >= base.mul_f64(FLOOR) && pause <= base,
                "{pause:?} outside [{:?}, {base:?}]",
                base.mul_f64(FLOOR)
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

    #[test]
    fn a_fleet_spreads_over_the_whole_window() {
        // Full jitter: a thousand first pauses cover the window evenly,
        // not bunched at its end (equal jitter put them all in its top
        // third).
        let pauses: Vec<f64> = (0..1000)
            .map(|_| Backoff::new(FIRST, MAX).next_delay().as_secs_f64() / FIRST.as_secs_f64())
            .collect();
        let low = pauses.iter().filter(|p| **p < 0.5).count();
        assert!(
            (350..=650).contains(&low),
            "{low} of 1000 in the first half"
        );
    }
}
