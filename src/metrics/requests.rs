//! How long the HTTP API takes to answer, per route and status class: the
//! `http_request_duration_seconds` histogram family, from the request's arrival at its route to
//! its response head (a WebSocket's `101`, an SSE stream's `200`, not the stream's life).
//!
//! The routes are the server's route table, fixed at start-up, so the label set is bounded: one
//! histogram per route and class (`1xx` … `5xx`), allocated up front, each lock-free.

use std::time::Duration;

use super::histogram::{AtomicHistogram, HistogramSnapshot};

/// Upper bounds of the buckets, in microseconds: 0.5 ms to 10 s.
const BOUNDS_MICROS: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Status classes, by the first digit of the status.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Response times of every route, by status class.
#[derive(Debug)]
pub struct RequestDurations {
    routes: Vec<RouteDurations>,
}

/// One route's histograms.
#[derive(Debug)]
struct RouteDurations {
    /// The route as configured, `{name}` marking a path parameter.
    route: String,
    by_class: [AtomicHistogram; CLASSES.len()],
}

/// One histogram of a snapshot: its route, its status class and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSnapshot {
    /// The route, as configured.
    pub route: String,
    /// `1xx` … `5xx`.
    pub class: &'static str,
    /// The observations.
    pub histogram: HistogramSnapshot,
}

impl RequestDurations {
    /// Histograms for these routes (the route table's paths).
    pub fn new(routes: impl IntoIterator<Item = String>) -> Self {
        let routes = routes
            .into_iter()
            .map(|route| RouteDurations {
                route,
                by_class: std::array::from_fn(|_| AtomicHistogram::new(BOUNDS_MICROS, 1e6)),
            })
            .collect();
        Self { routes }
    }

    /// Records that a request to `route` was answered with `status` after `elapsed`. A route
    /// that is not in the table is not recorded.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let Some(durations) = self.routes.iter().find(|entry| entry.route == route) else {
            return;
        };
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        durations.by_class[class].observe(micros);
    }

    /// Every histogram that has observations.
    pub fn snapshot(&self) -> Vec<RouteSnapshot> {
        self.routes
            .iter()
            .flat_map(|entry| {
                entry
                    .by_class
                    .iter()
                    .zip(CLASSES)
                    .map(|(histogram, class)| RouteSnapshot {
                        route: entry.route.clone(),
                        class,
                        histogram: histogram.snapshot(),
                    })
            })
            .filter(|snapshot| snapshot.histogram.count > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_timed_by_route_and_class() {
        let durations = RequestDurations::new(["/sse/push".to_owned(), "/health".to_owned()]);
        durations.observe("/sse/push", 200, Duration::from_millis(2));
        durations.observe("/sse/push", 200, Duration::from_millis(20));
        durations.observe("/sse/push", 422, Duration::from_micros(300));
        durations.observe("/elsewhere", 404, Duration::from_millis(1));
        let snapshot = durations.snapshot();
        assert_eq!(snapshot.len(), 2, "{snapshot:?}");
        assert_eq!((snapshot[0].class, snapshot[0].histogram.count), ("2xx", 2));
        assert!((snapshot[0].histogram.sum - 0.022).abs() < 1e-9);
        assert_eq!((snapshot[1].class, snapshot[1].histogram.count), ("4xx", 1));
    }
}
