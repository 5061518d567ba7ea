//! The Prometheus view of the metrics: every counter, gauge and histogram, named `websocket_sse_*`,
//! encoded by `prometheus-client` (the official Rust client) in the Prometheus text format 0.0.4
//! or in OpenMetrics text 1.0.
//!
//! The counters live in [`Metrics`](super::Metrics) as plain atomics (see there why); at each
//! scrape they are read once into a [`Counts`], the gauges are read from their owners, and an
//! [`Exposition`] holding those values is registered as a collector in a fresh registry and
//! encoded. The crate does the format work: names and their `_total`/unit suffixes, `HELP`/`TYPE`
//! (and `UNIT`, `# EOF` in OpenMetrics), escaping, cumulative histogram buckets.
//!
//! Labels are bounded: transports, reasons, the broker kind and the version. None holds a user id.
//! Beside the service's own families, a scrape has the standard `process_*` families every
//! Prometheus client library exports ([`super::process`]), unprefixed as dashboards expect them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use strum::VariantArray;

use super::histogram::HistogramSnapshot;
use super::process::ProcessStats;
use super::requests::RouteSnapshot;
use super::{
    AckReport, BrokerReport, ClusterStats, Counts, DropReason, Gauges, Refusal, Rejection,
    WebhookReport,
};
use crate::protocol::{
    DisconnectReason, EvictionCause, Label, ResyncReason, SlowConsumerCause, Transport,
};

/// The prefix of every metric name.
pub const PREFIX: &str = "websocket_sse";

/// Which text format to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text exposition format, version 0.0.4.
    Prometheus,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Everything one scrape shows, read once.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The counters and histograms.
    pub counts: Counts,
    /// This node's gauges.
    pub gauges: Gauges,
    /// The broker's state and counters.
    pub broker: BrokerReport,
    /// The cluster's counts (`None` with the memory broker).
    pub cluster: Option<ClusterStats>,
    /// The webhook sender's counters and queue.
    pub webhooks: WebhookReport,
    /// The acknowledgement tracker's counters and state.
    pub acks: AckReport,
    /// The process's resources (`None` where they cannot be read).
    pub process: Option<ProcessStats>,
    /// The HTTP API's response times that have observations, by route and status class.
    pub requests: Vec<RouteSnapshot>,
}

impl Exposition {
    /// The text exposition in `format`.
    pub fn encode(self, format: Format) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector(self.process)));
        registry
            .sub_registry_with_prefix(PREFIX)
            .register_collector(Box::new(self));
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
        }
        Ok(text)
    }
}

/// Writes one metric family with a descriptor.
struct Family<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl Family<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        self.encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        value: V,
    ) -> Result<(), std::fmt::Error> {
        self.encoder
            .encode_descriptor(name, help, unit, MetricType::Gauge)?
            .encode_gauge(&value)
    }

    /// A counter or gauge with one label, one sample per `(label value, value)`.
    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        label: &'static str,
        samples: impl IntoIterator<Item = (&'static str, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, metric_type)?;
        for (value_label, value) in samples {
            let labels = [(label, value_label)];
            let mut sample = metric.encode_family(&labels)?;
            match metric_type {
                MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
                _ => sample.encode_gauge(&value)?,
            }
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        histogram: &HistogramSnapshot,
    ) -> Result<(), std::fmt::Error> {
        self.encoder
            .encode_descriptor(name, help, unit, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(
                histogram.sum,
                histogram.count,
                &histogram.buckets,
                None,
            )
    }

    fn info(
        &mut self,
        name: &str,
        help: &str,
        labels: &impl EncodeLabelSet,
    ) -> Result<(), std::fmt::Error> {
        self.encoder
            .encode_descriptor(name, help, None, MetricType::Info)?
            .encode_info(labels)
    }
}

/// Pairs the label of each variant of `T` with its value in `values` (declaration order).
fn by<T: Label + VariantArray>(values: &[u64]) -> impl Iterator<Item = (&'static str, u64)> {
    T::VARIANTS
        .iter()
        .map(|variant| variant.label())
        .zip(values.iter().copied())
}

/// The `process_*` families, from one reading.
#[derive(Debug)]
struct ProcessCollector(Option<ProcessStats>);

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(process) = self.0 else {
            return Ok(());
        };
        let mut out = Family {
            encoder: &mut encoder,
        };
        out.gauge(
            "process_resident_memory",
            "Resident memory size in bytes",
            Some(&Unit::Bytes),
            process.resident_memory_bytes,
        )?;
        out.gauge(
            "process_virtual_memory",
            "Virtual memory size in bytes",
            Some(&Unit::Bytes),
            process.virtual_memory_bytes,
        )?;
        out.encoder
            .encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&process.cpu_seconds, None)?;
        out.gauge(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            process.open_fds,
        )?;
        if let Some(max_fds) = process.max_fds {
            out.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max_fds,
            )?;
        }
        out.gauge(
            "process_start_time",
            "Start time of the process since unix epoch in seconds",
            Some(&Unit::Seconds),
            process.start_time_seconds,
        )
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.counts;
        let gauges = &self.gauges;
        let broker = &self.broker;
        let mut out = Family {
            encoder: &mut encoder,
        };
        use MetricType::{Counter, Gauge};

        out.info(
            "build",
            "Build information: the server's version (always 1)",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )?;
        out.gauge(
            "uptime",
            "Time since the server started",
            Some(&Unit::Seconds),
            gauges.uptime_seconds,
        )?;

        // Connections and users on this node.
        let connections = gauges.connections.map(|count| count as u64);
        out.labelled(
            "connections",
            "Open client connections on this node, by transport",
            Gauge,
            "transport",
            by::<Transport>(&connections),
        )?;
        out.gauge(
            "max_connections",
            "The connection limit of this node (MAX_CONNECTIONS or derived from the file descriptor limit)",
            None,
            gauges.max_connections as u64,
        )?;
        out.gauge(
            "users_online",
            "Users with at least one connection on this node",
            None,
            gauges.users_online as u64,
        )?;
        out.counter(
            "connections_opened",
            "Connections registered (WebSocket and SSE)",
            counts.connections_opened,
        )?;
        out.labelled(
            "connections_closed",
            "Registered connections that ended, by reason",
            Counter,
            "reason",
            by::<DisconnectReason>(&counts.connections_closed),
        )?;
        out.labelled(
            "slow_consumer_closes",
            "Connections asked to close as slow consumers, by the bound they hit: queue_events \
             (WS_SEND_QUEUE), queue_bytes (WS_SEND_QUEUE_BYTES), node_budget \
             (SEND_QUEUES_MAX_BYTES) or write_timeout (WS_WRITE_TIMEOUT)",
            Counter,
            "cause",
            by::<SlowConsumerCause>(&counts.slow_consumers),
        )?;
        out.gauge(
            "queued",
            "Bytes queued for the connections of this node (a payload several queues share \
             counted once)",
            Some(&Unit::Bytes),
            gauges.queued_bytes as u64,
        )?;
        out.labelled(
            "connections_refused",
            "Connection attempts turned away before registration, by reason",
            Counter,
            "reason",
            by::<Refusal>(&counts.connections_refused),
        )?;
        out.counter(
            "client_messages",
            "Text frames received from WebSocket clients (each answered with an ack), \
             acknowledgements excepted",
            counts.client_messages,
        )?;
        out.counter(
            "client_acks",
            "Event ids acknowledged by clients on this node (WebSocket frames and SSE posts)",
            counts.client_acks,
        )?;

        // Pushes.
        out.counter(
            "pushes_accepted",
            "Events accepted from upstreams (each batch item counts; duplicates do not)",
            counts.events_accepted,
        )?;
        out.labelled(
            "push_requests_rejected",
            "Push requests refused, by reason",
            Counter,
            "reason",
            by::<Rejection>(&counts.requests_rejected),
        )?;
        out.counter(
            "duplicate_pushes",
            "Pushes that repeated an event_id still in the user's history (not delivered again)",
            counts.duplicate_pushes,
        )?;
        out.histogram(
            "batch_size",
            "Items per accepted batch push request",
            None,
            &counts.batch_size,
        )?;

        // Delivery.
        out.counter(
            "events_delivered",
            "Event copies handed to connection queues on this node (one per connection)",
            counts.events_delivered,
        )?;
        out.labelled(
            "events_dropped",
            "Events that did not reach a socket, by reason: offline (no connection of the user \
             on this node, per event), failed (a connection's queue was full or closing, per \
             connection), slow_consumer and closed (left queued, never written, when the connection \
             ended)",
            Counter,
            "reason",
            by::<DropReason>(&counts.events_dropped),
        )?;
        if !self.requests.is_empty() {
            let mut family = out.encoder.encode_descriptor(
                "http_request_duration",
                "From a request's arrival at its route to its response head (a WebSocket's 101, \
                 an SSE stream's 200), by route and status class",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for snapshot in &self.requests {
                let labels = [
                    ("route", snapshot.route.as_str()),
                    ("status", snapshot.class),
                ];
                let histogram = &snapshot.histogram;
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum,
                        histogram.count,
                        &histogram.buckets,
                        None,
                    )?;
            }
        }
        out.histogram(
            "delivery_latency",
            "From an event's acceptance on this node (or its arrival from the cluster) to the \
             write of its frame to a client's socket; replays excluded",
            Some(&Unit::Seconds),
            &counts.delivery_latency,
        )?;
        out.labelled(
            "bytes_sent",
            "Bytes written to clients, by transport (WebSocket: text frames with their headers; \
             SSE: the event stream body)",
            Counter,
            "transport",
            by::<Transport>(&counts.bytes_sent),
        )?;

        // History and resumes.
        out.gauge(
            "history_users",
            "Users with a history stream on this node",
            None,
            gauges.history_users as u64,
        )?;
        out.gauge(
            "history_events",
            "Events held in history on this node",
            None,
            gauges.history_events as u64,
        )?;
        out.gauge(
            "history",
            "Bytes of the events held in history on this node (a payload several users share \
             counted once)",
            Some(&Unit::Bytes),
            gauges.history_bytes as u64,
        )?;
        out.labelled(
            "history_evictions",
            "Events dropped from history before anyone asked for them, by cause: size \
             (HISTORY_SIZE), age (HISTORY_TTL), users (HISTORY_MAX_USERS), bytes \
             (HISTORY_MAX_BYTES)",
            Counter,
            "cause",
            by::<EvictionCause>(&gauges.history_evictions),
        )?;
        out.counter(
            "resumes",
            "Connections that resumed and were replayed what they missed",
            counts.resumes_replayed,
        )?;
        out.counter(
            "events_replayed",
            "Events replayed to resuming connections",
            counts.events_replayed,
        )?;
        out.labelled(
            "resyncs",
            "Connections that could not resume and were sent a resync event, by reason",
            Counter,
            "reason",
            by::<ResyncReason>(&counts.resyncs),
        )?;

        // Broker.
        out.labelled(
            "broker_connected",
            "1 when the broker can route pushes (always 1 for the memory broker), by broker kind",
            Gauge,
            "broker",
            [(broker.kind, u64::from(broker.connected))],
        )?;
        let link = broker.link.clone().unwrap_or_default();
        out.counter("broker_errors", "Broker (Redis) errors", link.errors)?;
        out.counter(
            "broker_outages",
            "Times the link to the broker (Redis) went down",
            link.outages,
        )?;
        out.counter(
            "broker_reconnects",
            "Times the link to the broker (Redis) came back",
            link.reconnects,
        )?;
        out.counter(
            "broker_catch_ups",
            "Catch-ups run for connections after a broker outage or a gap",
            link.catch_ups,
        )?;
        out.counter(
            "broker_messages_received",
            "Messages received from the broker's subscription",
            link.messages_received,
        )?;
        out.counter(
            "broker_malformed_messages",
            "Messages from the broker that could not be decoded",
            link.malformed_messages,
        )?;

        // Webhooks and acknowledgements.
        let webhooks = &self.webhooks;
        out.counter(
            "webhooks_sent",
            "Webhooks delivered (answered 2xx)",
            webhooks.sent,
        )?;
        out.counter(
            "webhook_failed_attempts",
            "Webhook attempts that failed (timeout, connection error, non-2xx); each may be retried",
            webhooks.failed_attempts,
        )?;
        out.counter(
            "webhooks_given_up",
            "Webhooks given up after WEBHOOK_MAX_ATTEMPTS",
            webhooks.given_up,
        )?;
        out.counter(
            "webhooks_dropped",
            "Webhooks dropped, oldest first, because the queue was full",
            webhooks.dropped,
        )?;
        out.gauge(
            "webhook_queue",
            "Webhooks queued or being delivered",
            None,
            webhooks.queued,
        )?;
        out.gauge(
            "webhook_queue_bytes",
            "Bytes of the webhooks queued or being delivered",
            None,
            webhooks.queued_bytes,
        )?;
        out.histogram(
            "webhook_delivery",
            "Time from queueing a webhook to its 2xx answer, retries included",
            Some(&Unit::Seconds),
            &webhooks.latency,
        )?;
        let acks = &self.acks;
        out.gauge(
            "acks_pending",
            "Events pushed from this node waiting for a client's acknowledgement",
            None,
            acks.pending,
        )?;
        out.gauge(
            "acks_pending_bytes",
            "Bytes held by the events waiting for acknowledgement",
            None,
            acks.pending_bytes,
        )?;
        out.counter(
            "acks_resolved",
            "Events acknowledged within ACK_TIMEOUT",
            acks.acked,
        )?;
        out.counter(
            "acks_expired",
            "Events not acknowledged within ACK_TIMEOUT (reported message.undelivered)",
            acks.expired,
        )?;
        out.counter(
            "acks_evicted",
            "Events given up early at the pending-acknowledgement bounds (reported undelivered)",
            acks.evicted,
        )?;

        // Cluster (as of this node's last heartbeat).
        if let Some(cluster) = &self.cluster {
            out.gauge(
                "cluster_nodes",
                "Nodes with a live lease in the cluster",
                None,
                cluster.nodes,
            )?;
            out.labelled(
                "cluster_connections",
                "Connections on all nodes of the cluster, by transport",
                Gauge,
                "transport",
                [
                    ("websocket", cluster.websocket_connections),
                    ("sse", cluster.sse_connections),
                ],
            )?;
            out.gauge(
                "cluster_users",
                "Users with at least one connection anywhere in the cluster",
                None,
                cluster.users,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LinkCounts, Metrics};

    fn exposition(cluster: Option<ClusterStats>) -> Exposition {
        let metrics = Metrics::default();
        metrics.connection_opened();
        metrics.connection_closed(DisconnectReason::PingTimeout);
        metrics.observe_batch(3);
        Exposition {
            counts: metrics.counts(),
            gauges: Gauges {
                connections: [2, 1],
                users_online: 2,
                history_users: 1,
                history_events: 4,
                history_bytes: 0,
                history_evictions: [0; 4],
                queued_bytes: 0,
                uptime_seconds: 2.0,
                max_connections: 100,
            },
            broker: BrokerReport {
                kind: "memory",
                node_id: None,
                connected: true,
                link: None,
            },
            cluster,
            webhooks: WebhookReport::default(),
            acks: AckReport::default(),
            requests: Vec::new(),
            process: Some(ProcessStats {
                resident_memory_bytes: 30 << 20,
                virtual_memory_bytes: 1 << 30,
                cpu_seconds: 1.5,
                open_fds: 12,
                max_fds: Some(1024),
                start_time_seconds: 1_800_000_000.0,
            }),
        }
    }

    #[test]
    fn the_process_families_are_unprefixed() {
        let text = exposition(None).encode(Format::Prometheus).unwrap();
        assert!(
            text.contains("# TYPE process_resident_memory_bytes gauge\n"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes 31457280\n"));
        assert!(text.contains("process_cpu_seconds_total 1.5\n"), "{text}");
        assert!(text.contains("process_open_fds 12\n"));
        assert!(text.contains("process_max_fds 1024\n"));
        assert!(
            text.contains("process_start_time_seconds 1800000000"),
            "{text}"
        );
        assert!(!text.contains("websocket_sse_process"));
    }

    #[test]
    fn prometheus_text_has_typed_families_and_cumulative_buckets() {
        let text = exposition(None).encode(Format::Prometheus).unwrap();
        assert!(text.contains("# TYPE websocket_sse_connections_opened_total counter\n"));
        assert!(text.contains("websocket_sse_connections_opened_total 1\n"));
        assert!(
            text.contains("websocket_sse_connections_closed_total{reason=\"ping_timeout\"} 1\n")
        );
        assert!(text.contains("websocket_sse_connections{transport=\"websocket\"} 2\n"));
        assert!(text.contains("websocket_sse_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("websocket_sse_batch_size_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("websocket_sse_batch_size_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("websocket_sse_batch_size_count 1\n"));
        assert!(text.contains("# TYPE websocket_sse_delivery_latency_seconds histogram\n"));
        assert!(text.contains("websocket_sse_delivery_latency_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("websocket_sse_delivery_latency_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("websocket_sse_build_info{version=\""));
        assert!(text.contains("websocket_sse_broker_connected{broker=\"memory\"} 1\n"));
        assert!(!text.contains("cluster_nodes"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_text_ends_with_eof_and_shows_the_cluster() {
        let cluster = ClusterStats {
            node_id: "a".to_owned(),
            nodes: 3,
            connections: 7,
            websocket_connections: 5,
            sse_connections: 2,
            users: 4,
        };
        let text = exposition(Some(cluster))
            .encode(Format::OpenMetrics)
            .unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE websocket_sse_connections_opened counter\n"));
        assert!(text.contains("# UNIT websocket_sse_delivery_latency_seconds seconds\n"));
        assert!(text.contains("websocket_sse_cluster_nodes 3\n"));
        assert!(text.contains("websocket_sse_cluster_connections{transport=\"sse\"} 2\n"));
    }

    #[test]
    fn a_cluster_broker_shows_its_link_counters() {
        let mut exposition = exposition(None);
        exposition.broker = BrokerReport {
            kind: "redis",
            node_id: Some("a".to_owned()),
            connected: false,
            link: Some(LinkCounts {
                outages: 2,
                errors: 5,
                ..LinkCounts::default()
            }),
        };
        let json = serde_json::to_value(&exposition.broker).unwrap();
        let text = exposition.encode(Format::Prometheus).unwrap();
        assert!(text.contains("websocket_sse_broker_connected{broker=\"redis\"} 0\n"));
        assert!(text.contains("websocket_sse_broker_outages_total 2\n"));
        assert!(text.contains("websocket_sse_broker_errors_total 5\n"));
        assert_eq!(json["node_id"], "a");
        assert_eq!(json["outages"], 2);
    }
}
