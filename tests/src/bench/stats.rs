//! The statistics every part of the benchmarks uses, defined once.
//!
//! **Percentile** is the *nearest rank*: the `p`th percentile of `n` values
//! is the smallest value that at least `p`% of the values are less than or
//! equal to, that is the value at rank `ceil(p / 100 * n)` (1-based, at
//! least 1) in ascending order. It is always one of the measured values,
//! never an interpolation. **Median** is the 50th percentile by that
//! definition: the middle value of an odd count and the lower of the two
//! middle values of an even count. **Mean** is the arithmetic mean.
//!
//! Every function takes the values in any order and leaves them as they
//! are; each returns `None` for no values.

use std::cmp::Ordering;
use std::time::Duration;

use serde::Serialize;

/// A measured value that can be ordered and averaged.
pub trait Sample: Copy {
    /// A total order (for floats, `f64::total_cmp`).
    fn order(&self, other: &Self) -> Ordering;
    /// The value as a float, for the mean.
    fn as_f64(self) -> f64;
}

impl Sample for u64 {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Sample for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
    fn as_f64(self) -> f64 {
        self
    }
}

impl Sample for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
    /// Seconds.
    fn as_f64(self) -> f64 {
        self.as_secs_f64()
    }
}

/// The values in ascending order.
pub fn sorted<T: Sample>(values: &[T]) -> Vec<T> {
    let mut v = values.to_vec();
    v.sort_by(T::order);
    v
}

/// The 1-based nearest rank of the `p`th percentile among `n` values.
fn rank(p: f64, n: usize) -> usize {
    let p = p.clamp(0.0, 100.0);
    ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n)
}

/// The `p`th percentile (0 to 100), nearest rank (see the module's
/// documentation).
pub fn percentile<T: Sample>(values: &[T], p: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    Some(sorted(values)[rank(p, values.len()) - 1])
}

/// The median: the 50th percentile, nearest rank (the lower middle value of
/// an even count).
pub fn median<T: Sample>(values: &[T]) -> Option<T> {
    percentile(values, 50.0)
}

/// The arithmetic mean.
pub fn mean<T: Sample>(values: &[T]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().map(|v| v.as_f64()).sum::<f64>() / values.len() as f64)
}

/// The smallest value.
pub fn min<T: Sample>(values: &[T]) -> Option<T> {
    values.iter().copied().min_by(T::order)
}

/// The largest value.
pub fn max<T: Sample>(values: &[T]) -> Option<T> {
    values.iter().copied().max_by(T::order)
}

/// The usual figures of one set of values, by the definitions above.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary<T> {
    pub count: usize,
    pub min: T,
    pub p10: T,
    pub median: T,
    pub p90: T,
    pub p99: T,
    pub max: T,
    pub mean: f64,
}

impl<T: Sample> Summary<T> {
    /// `None` for no values.
    pub fn of(values: &[T]) -> Option<Summary<T>> {
        let v = sorted(values);
        let n = v.len();
        let at = |p: f64| v[rank(p, n) - 1];
        (n > 0).then(|| Summary {
            count: n,
            min: v[0],
            p10: at(10.0),
            median: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: v[n - 1],
            mean: v.iter().map(|x| x.as_f64()).sum::<f64>() / n as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v = [5u64, 1, 4, 2, 3];
        assert_eq!(median(&v), Some(3));
        assert_eq!(percentile(&v, 10.0), Some(1));
        assert_eq!(percentile(&v, 20.0), Some(1));
        assert_eq!(percentile(&v, 21.0), Some(2));
        assert_eq!(percentile(&v, 90.0), Some(5));
        assert_eq!(percentile(&v, 100.0), Some(5));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(v, [5, 1, 4, 2, 3], "the values are left as they were");
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 99.5), Some(100));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle() {
        assert_eq!(median(&[10u64, 40, 30, 20]), Some(20));
        assert_eq!(median(&[2.0f64, 1.0]), Some(1.0));
        assert_eq!(median(&[7u64]), Some(7));
    }

    #[test]
    fn no_values_no_figures() {
        let none: [u64; 0] = [];
        assert_eq!(median(&none), None);
        assert_eq!(percentile(&none, 99.0), None);
        assert_eq!(mean(&none), None);
        assert_eq!(min(&none), None);
        assert_eq!(max(&none), None);
        assert_eq!(Summary::of(&none), None);
    }

    #[test]
    fn durations_floats_and_the_summary() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(max(&d), Some(Duration::from_millis(100)));
        assert_eq!(mean(&[1.0f64, 2.0, f64::INFINITY]), Some(f64::INFINITY));
        assert_eq!(min(&[3.0f64, -1.0, 2.0]), Some(-1.0));
        let s = Summary::of(&[4u64, 1, 3, 2]).unwrap();
        assert_eq!(
            (s.count, s.min, s.p10, s.median, s.p90, s.p99, s.max),
            (4, 1, 1, 2, 4, 4, 4)
        );
        assert_eq!(s.mean, 2.5);
    }
}
