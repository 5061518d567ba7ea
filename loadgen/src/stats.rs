//! Shared measurement state: latency histograms, the per-message acknowledgement table and the
//! per-connection "seen" bitsets used to find loss and duplicates.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Largest latency the histograms track, in microseconds (60 s); larger values saturate.
const MAX_TRACKED_US: u64 = 60_000_000;
/// Samples a [`LocalSamples`] buffers before merging into the shared histogram.
const FLUSH_EVERY: usize = 256;

/// A new microsecond histogram (1 µs .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).unwrap_or_else(|_| {
        // The bounds above are constants that hdrhistogram accepts; this is unreachable.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("hdrhistogram rejects sigfig 3"))
    })
}

/// A histogram shared by many tasks; each task buffers samples in a [`LocalSamples`].
#[derive(Debug)]
pub struct SharedHistogram {
    inner: Mutex<Histogram<u64>>,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self {
            inner: Mutex::new(new_histogram()),
        }
    }
}

impl SharedHistogram {
    /// Records a batch of microsecond samples under one lock.
    pub fn record_all(&self, samples: &[u64]) {
        if let Ok(mut histogram) = self.inner.lock() {
            for &us in samples {
                histogram.saturating_record(us.clamp(1, MAX_TRACKED_US));
            }
        }
    }

    /// Percentile summary in milliseconds.
    pub fn summary_ms(&self) -> Value {
        match self.inner.lock() {
            Ok(histogram) => summary_ms(&histogram),
            Err(_) => json!(null),
        }
    }
}

/// A per-task buffer of samples flushed into a [`SharedHistogram`].
#[derive(Debug, Default)]
pub struct LocalSamples {
    buffer: Vec<u64>,
}

impl LocalSamples {
    /// Buffers one sample, flushing when the buffer is full.
    pub fn record(&mut self, us: u64, shared: &SharedHistogram) {
        self.buffer.push(us);
        if self.buffer.len() >= FLUSH_EVERY {
            self.flush(shared);
        }
    }

    /// Merges all buffered samples.
    pub fn flush(&mut self, shared: &SharedHistogram) {
        if !self.buffer.is_empty() {
            shared.record_all(&self.buffer);
            self.buffer.clear();
        }
    }
}

/// `{count, mean, p50, p90, p99, p99_9, max}` in milliseconds.
pub fn summary_ms(histogram: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "mean": round3(histogram.mean() / 1000.0),
        "p50": ms(histogram.value_at_quantile(0.50)),
        "p90": ms(histogram.value_at_quantile(0.90)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p99_9": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
    })
}

/// `{median, max}` of some values (the median of an even count is the mean of the middle two);
/// both null when there are none.
pub fn median_max(values: &[f64]) -> Value {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return json!({"median": null, "max": null});
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    json!({"median": round3(median), "max": round3(sorted[n - 1])})
}

/// Rounds to three decimals (for readable JSON).
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// How many connections acknowledged each message sequence number, as the server reported.
#[derive(Debug)]
pub struct AckTable {
    delivered: Vec<AtomicU16>,
    expected_total: AtomicU64,
}

impl AckTable {
    /// A table for sequence numbers `0..capacity`.
    pub fn new(capacity: u64) -> Self {
        Self {
            delivered: (0..capacity).map(|_| AtomicU16::new(0)).collect(),
            expected_total: AtomicU64::new(0),
        }
    }

    /// Number of sequence numbers the table can hold.
    pub fn capacity(&self) -> u64 {
        self.delivered.len() as u64
    }

    /// Records that the server delivered `seq` to `delivered` connections.
    pub fn record(&self, seq: u64, delivered: u64) {
        if let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|i| self.delivered.get(i))
        {
            slot.store(
                u16::try_from(delivered).unwrap_or(u16::MAX),
                Ordering::Relaxed,
            );
            self.expected_total.fetch_add(delivered, Ordering::Relaxed);
        }
    }

    /// Deliveries the server acknowledged for `seq` (0 when unknown or failed).
    pub fn delivered(&self, seq: u64) -> u64 {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.delivered.get(i))
            .map_or(0, |slot| u64::from(slot.load(Ordering::Relaxed)))
    }

    /// Sum of acknowledged deliveries so far.
    pub fn expected_total(&self) -> u64 {
        self.expected_total.load(Ordering::Relaxed)
    }
}

/// A growable bitset over message indices (one per connection).
#[derive(Debug, Default, Clone)]
pub struct SeenSet {
    words: Vec<u64>,
}

impl SeenSet {
    /// Marks `index`; returns `false` if it was already marked (a duplicate).
    pub fn insert(&mut self, index: u64) -> bool {
        let word = (index / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    /// True if `index` is marked.
    pub fn contains(&self, index: u64) -> bool {
        self.words
            .get((index / 64) as usize)
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_set_detects_duplicates() {
        let mut seen = SeenSet::default();
        assert!(seen.insert(0));
        assert!(seen.insert(1000));
        assert!(!seen.insert(1000));
        assert!(seen.contains(0) && seen.contains(1000) && !seen.contains(999));
    }

    #[test]
    fn ack_table_saturates_and_ignores_out_of_range() {
        let acks = AckTable::new(4);
        acks.record(1, 3);
        acks.record(2, 100_000);
        acks.record(9, 1);
        assert_eq!(acks.delivered(1), 3);
        assert_eq!(acks.delivered(2), u64::from(u16::MAX));
        assert_eq!(acks.delivered(9), 0);
        assert_eq!(acks.expected_total(), 100_003);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(
            median_max(&[3.0, 1.0, 2.0]),
            json!({"median": 2.0, "max": 3.0})
        );
        assert_eq!(median_max(&[4.0, 1.0]), json!({"median": 2.5, "max": 4.0}));
        assert_eq!(median_max(&[]), json!({"median": null, "max": null}));
    }

    #[test]
    fn percentiles_in_ms() {
        let shared = SharedHistogram::default();
        let mut local = LocalSamples::default();
        for us in 1..=1000 {
            local.record(us * 10, &shared);
        }
        local.flush(&shared);
        let summary = shared.summary_ms();
        assert_eq!(summary["count"], 1000);
        let p50 = summary["p50"].as_f64().unwrap_or_default();
        assert!((4.9..=5.1).contains(&p50), "{p50}");
    }
}
