//! The metrics endpoints: `GET /metrics` (JSON, or the Prometheus text when the request's `Accept`
//! prefers it, so that a standard scrape config works) and `GET /metrics/prometheus` (always
//! text: Prometheus 0.0.4, or OpenMetrics 1.0 when `Accept` prefers it).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use strum::VariantArray;

use crate::error::ApiError;
use crate::metrics::Gauges;
use crate::metrics::process::ProcessStats;
use crate::metrics::prometheus::{Exposition, Format};
use crate::protocol::{EvictionCause, Transport};
use crate::state::{AppState, SharedState};

/// The gauges read from their owners for one snapshot.
fn gauges(state: &AppState) -> Gauges {
    let hub = &state.hub;
    Gauges {
        connections: std::array::from_fn(|index| hub.transport_count(Transport::VARIANTS[index])),
        users_online: hub.user_count(),
        history_users: hub.history().map_or(0, |history| history.stream_count()),
        history_events: hub.history().map_or(0, |history| history.event_count()),
        history_bytes: hub.history().map_or(0, |history| history.byte_count()),
        history_evictions: std::array::from_fn(|index| {
            let cause = EvictionCause::VARIANTS[index];
            hub.history().map_or(0, |history| history.evicted(cause))
        }),
        queued_bytes: hub.queued_bytes(),
        uptime_seconds: state.started_at.elapsed().as_secs_f64(),
        max_connections: state.max_connections,
    }
}

/// `GET /metrics`: the seed's keys, then every counter, as JSON; the Prometheus text instead when
/// `Accept` prefers `text/plain` or `application/openmetrics-text` to JSON.
pub async fn handler(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let mut response = match negotiate(&headers) {
        Some(format) => text(&state, format),
        None => json_snapshot(&state).into_response(),
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// `GET /metrics/prometheus`: the Prometheus text exposition (OpenMetrics when `Accept` prefers
/// `application/openmetrics-text` to `text/plain`).
pub async fn prometheus(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let format = match negotiate(&headers) {
        Some(Format::OpenMetrics) => Format::OpenMetrics,
        _ => Format::Prometheus,
    };
    let mut response = text(&state, format);
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

fn json_snapshot(state: &AppState) -> Json<Value> {
    let mut snapshot = state.metrics.snapshot(&gauges(state));
    if let Value::Object(fields) = &mut snapshot {
        fields.insert("broker".to_owned(), json!(state.broker.report()));
        fields.insert("cluster".to_owned(), json!(state.broker.cluster()));
        fields.insert("webhooks".to_owned(), json!(state.webhooks.report()));
        fields.insert("acks".to_owned(), json!(state.acks.report()));
    }
    Json(snapshot)
}

fn text(state: &AppState, format: Format) -> Response {
    let exposition = Exposition {
        counts: state.metrics.counts(),
        gauges: gauges(state),
        broker: state.broker.report(),
        cluster: state.broker.cluster(),
        webhooks: state.webhooks.report(),
        acks: state.acks.report(),
        process: ProcessStats::read(),
        requests: state.request_durations.snapshot(),
    };
    match exposition.encode(format) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            body,
        )
            .into_response(),
        Err(_) => ApiError::Internal.into_response(),
    }
}

/// The text format `Accept` prefers to JSON, if any. Each candidate (JSON, Prometheus text,
/// OpenMetrics) gets the `q` of the most specific range that matches it (`type/subtype`, then
/// `type/*`, then `*/*`); the highest wins, ties going to JSON, then Prometheus text. No header
/// (or `*/*` alone, as curl and browsers send) means JSON.
fn negotiate(headers: &HeaderMap) -> Option<Format> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return None;
    }
    let ranges = parse_accept(&accept);
    let json = quality(&ranges, "application", "json");
    let plain = quality(&ranges, "text", "plain");
    let openmetrics = quality(&ranges, "application", "openmetrics-text");
    if openmetrics > json && openmetrics > plain {
        Some(Format::OpenMetrics)
    } else if plain > json {
        Some(Format::Prometheus)
    } else {
        None
    }
}

/// One media range of an `Accept` header: type, subtype (lowercase) and its `q`.
#[derive(Debug, PartialEq)]
struct Range {
    kind: String,
    subtype: String,
    q: f32,
}

fn parse_accept(accept: &str) -> Vec<Range> {
    accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let (kind, subtype) = parts.next()?.trim().split_once('/')?;
            let q = parts
                .filter_map(|parameter| parameter.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, value)| value.trim().parse::<f32>().ok())?;
            Some(Range {
                kind: kind.trim().to_ascii_lowercase(),
                subtype: subtype.trim().to_ascii_lowercase(),
                q: q.clamp(0.0, 1.0),
            })
        })
        .collect()
}

/// The `q` the ranges give `kind/subtype`: from the most specific matching range (the highest if
/// several equally specific ones match), 0 if none does.
fn quality(ranges: &[Range], kind: &str, subtype: &str) -> f32 {
    let best = |matches: &dyn Fn(&Range) -> bool| {
        ranges
            .iter()
            .filter(|range| matches(range))
            .map(|range| range.q)
            .reduce(f32::max)
    };
    best(&|range| range.kind == kind && range.subtype == subtype)
        .or_else(|| best(&|range| range.kind == kind && range.subtype == "*"))
        .or_else(|| best(&|range| range.kind == "*" && range.subtype == "*"))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept(value: &str) -> Option<Format> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        negotiate(&headers)
    }

    #[test]
    fn json_unless_a_text_format_is_preferred() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(with_accept("*/*"), None);
        assert_eq!(with_accept("application/json"), None);
        assert_eq!(
            with_accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            None
        );
        assert_eq!(with_accept("application/json, text/plain"), None);
        assert_eq!(with_accept("text/plain"), Some(Format::Prometheus));
        assert_eq!(
            with_accept("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
            Some(Format::Prometheus)
        );
        assert_eq!(with_accept("text/*"), Some(Format::Prometheus));
        assert_eq!(
            with_accept("application/json;q=0.5, text/plain"),
            Some(Format::Prometheus)
        );
        assert_eq!(
            with_accept("application/openmetrics-text"),
            Some(Format::OpenMetrics)
        );
    }

    #[test]
    fn prometheus_scrape_headers_get_openmetrics() {
        // What Prometheus 2.x and 3.x send by default.
        assert_eq!(
            with_accept(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Some(Format::OpenMetrics)
        );
        assert_eq!(
            with_accept(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                 application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;\
                 escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            ),
            Some(Format::OpenMetrics)
        );
        // Prometheus with `scrape_protocols: [PrometheusText0.0.4]`.
        assert_eq!(
            with_accept("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Some(Format::Prometheus)
        );
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        assert_eq!(with_accept("garbage, text/plain;q=oops"), None);
        assert_eq!(with_accept("text/plain;q=0"), None);
    }
}
