//! A lock-free histogram with fixed buckets, for the hot path.
//!
//! `prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation; the
//! delivery latency is observed by every session on every core, so that one lock would be shared
//! by all of them. Here an observation is two relaxed atomic adds (its bucket and the sum), and a
//! session that writes many events at once accumulates them in a [`Tally`] on its stack and adds
//! the totals once per write.
//!
//! Values are recorded as integers in a raw unit (microseconds for latency, items for batch
//! sizes) and scaled to the exported unit when read. The count is the sum of the buckets as read,
//! so a snapshot's `+Inf` bucket always equals its count, even while observations race with it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Most finite buckets a histogram may have.
pub const MAX_BOUNDS: usize = 24;

/// A fixed-bucket histogram of non-negative integers.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds (inclusive) of the finite buckets, ascending, in the raw unit.
    bounds: &'static [u64],
    /// One counter per finite bucket, then the `+Inf` bucket (not cumulative).
    counts: [AtomicU64; MAX_BOUNDS + 1],
    /// Sum of the observed raw values.
    sum: AtomicU64,
    /// Raw units per exported unit (for example `1e6` for microseconds to seconds). A divisor
    /// rather than a factor: `25_000 / 1e6` is exactly the double nearest 0.025, `25_000 * 1e-6`
    /// is not.
    divisor: f64,
}

/// A histogram as read at one moment, in the exported unit.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, count in this bucket alone)` for each finite bucket, then `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations (the sum of the bucket counts).
    pub count: u64,
    /// Sum of the observed values.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// A histogram with no observation and only the `+Inf` bucket (for what is switched off).
    pub fn empty() -> Self {
        Self {
            buckets: vec![(f64::INFINITY, 0)],
            count: 0,
            sum: 0.0,
        }
    }
}

impl AtomicHistogram {
    /// A histogram with these bucket bounds (ascending, at most [`MAX_BOUNDS`]; extra ones are
    /// ignored) in a raw unit, `divisor` of which make one exported unit.
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BOUNDS)];
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            divisor,
        }
    }

    /// The bucket a raw value falls in: the first whose bound is at least the value, else `+Inf`.
    fn bucket(&self, raw: u64) -> usize {
        self.bounds.partition_point(|bound| *bound < raw)
    }

    /// Records one value.
    pub fn observe(&self, raw: u64) {
        self.counts[self.bucket(raw)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// A tally to record many values and add them to this histogram at once.
    pub fn tally(&self) -> Tally<'_> {
        Tally {
            histogram: self,
            counts: [0; MAX_BOUNDS + 1],
            sum: 0,
            any: false,
        }
    }

    /// The current buckets, count and sum, in the exported unit.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let mut count = 0;
        for (index, counter) in self.counts[..=self.bounds.len()].iter().enumerate() {
            let bound = self
                .bounds
                .get(index)
                .map_or(f64::INFINITY, |bound| *bound as f64 / self.divisor);
            let value = counter.load(Ordering::Relaxed);
            count += value;
            buckets.push((bound, value));
        }
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.divisor,
        }
    }
}

/// Observations gathered on the stack and added to their histogram by [`Tally::commit`] (or on
/// drop): one atomic add per bucket touched and one for the sum, whatever the number of values.
#[derive(Debug)]
pub struct Tally<'a> {
    histogram: &'a AtomicHistogram,
    counts: [u32; MAX_BOUNDS + 1],
    sum: u64,
    any: bool,
}

impl Tally<'_> {
    /// Records one value.
    pub fn observe(&mut self, raw: u64) {
        let bucket = self.histogram.bucket(raw);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.sum = self.sum.saturating_add(raw);
        self.any = true;
    }

    /// Adds what was recorded to the histogram.
    pub fn commit(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if !self.any {
            return;
        }
        for (counter, count) in self.histogram.counts.iter().zip(&mut self.counts) {
            if *count > 0 {
                counter.fetch_add(u64::from(*count), Ordering::Relaxed);
                *count = 0;
            }
        }
        self.histogram.sum.fetch_add(self.sum, Ordering::Relaxed);
        self.sum = 0;
        self.any = false;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let histogram = AtomicHistogram::new(&[1, 5, 10], 1.0);
        for value in [0, 1, 2, 5, 6, 10, 11, 1000] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(
            snapshot.buckets,
            [(1.0, 2), (5.0, 2), (10.0, 2), (f64::INFINITY, 2)]
        );
        assert_eq!(snapshot.count, 8);
        assert_eq!(snapshot.sum, 1035.0);
    }

    #[test]
    fn a_tally_adds_the_same_as_single_observations() {
        let one = AtomicHistogram::new(&[100, 1000], 1e6);
        let many = AtomicHistogram::new(&[100, 1000], 1e6);
        let mut tally = many.tally();
        for value in [50, 100, 101, 5000, 7] {
            one.observe(value);
            tally.observe(value);
        }
        assert_eq!(many.snapshot().count, 0);
        tally.commit();
        assert_eq!(one.snapshot(), many.snapshot());
        let snapshot = many.snapshot();
        assert_eq!(snapshot.buckets[0], (0.0001, 3));
        assert!((snapshot.sum - 5258e-6).abs() < 1e-12);
    }

    #[test]
    fn a_dropped_tally_is_committed() {
        let histogram = AtomicHistogram::new(&[1], 1.0);
        {
            let mut tally = histogram.tally();
            tally.observe(3);
        }
        assert_eq!(histogram.snapshot().buckets, [(1.0, 0), (f64::INFINITY, 1)]);
    }
}
