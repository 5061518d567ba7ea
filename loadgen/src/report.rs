//! Run reports: an ordered set of (possibly nested) fields rendered as a table or one JSON object,
//! plus warnings and the integrity failures that make loadgen exit non-zero.

use serde_json::{Map, Value, json};

use crate::stats::round3;
use crate::sys::CpuUsage;

/// Above this fraction of one core, loadgen itself may be the bottleneck.
const BUSY_LOADGEN_CORES: f64 = 0.9;

/// The result of one scenario.
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    fields: Map<String, Value>,
    /// Notes that do not fail the run (e.g. loadgen saturated its core).
    pub warnings: Vec<String>,
    /// Integrity problems (loss, duplicates, misrouted frames, failed connections).
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            fields: Map::new(),
            warnings: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Sets a field (insertion order is kept in the table).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Adds a failure when `count > 0`.
    pub fn fail_if_nonzero(&mut self, what: &str, count: u64) {
        if count > 0 {
            self.failures.push(format!("{what}: {count}"));
        }
    }

    /// Adds the `cpu` section and warns when loadgen used more than ~90 % of a core.
    pub fn set_cpu(&mut self, usage: &CpuUsage, deliveries: u64) {
        self.set_cpu_per(usage, deliveries as f64 / 1e6, "million_deliveries");
    }

    /// Adds the `cpu` section with CPU seconds per `units` of work (`server_s_per_<unit>`,
    /// `loadgen_s_per_<unit>`; null when `units` is 0) and warns when loadgen used more than
    /// ~90 % of a core.
    pub fn set_cpu_per(&mut self, usage: &CpuUsage, units: f64, unit: &str) {
        let per_unit = |seconds: f64| {
            if units > 0.0 {
                json!(round3(seconds / units))
            } else {
                Value::Null
            }
        };
        let mut cpu = Map::new();
        cpu.insert("window_s".into(), json!(round3(usage.wall_s)));
        cpu.insert("loadgen_s".into(), json!(round3(usage.loadgen_s)));
        cpu.insert("loadgen_cores".into(), json!(round3(usage.loadgen_cores())));
        cpu.insert("server_s".into(), json!(usage.server_s.map(round3)));
        cpu.insert(
            "server_cores".into(),
            json!(usage.server_cores().map(round3)),
        );
        cpu.insert(
            format!("server_s_per_{unit}"),
            usage.server_s.map_or(Value::Null, per_unit),
        );
        cpu.insert(format!("loadgen_s_per_{unit}"), per_unit(usage.loadgen_s));
        self.set("cpu", Value::Object(cpu));
        self.warn_if_loadgen_busy(usage.loadgen_cores(), "during the measured window");
    }

    /// Warns when loadgen used more than ~90 % of a core (`cores`) `during` some phase: then the
    /// load generator, not the server, may be the bottleneck.
    pub fn warn_if_loadgen_busy(&mut self, cores: f64, during: &str) {
        if cores > BUSY_LOADGEN_CORES {
            self.warnings.push(format!(
                "loadgen used {:.0}% of a core {during}: the load generator, not the server, may \
                 be the bottleneck",
                cores * 100.0
            ));
        }
    }

    /// The whole report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("scenario".into(), self.scenario.into());
        object.insert("ok".into(), self.failures.is_empty().into());
        for (key, value) in &self.fields {
            object.insert(key.clone(), value.clone());
        }
        object.insert("warnings".into(), json!(self.warnings));
        object.insert("failures".into(), json!(self.failures));
        Value::Object(object)
    }

    /// The report as an aligned two-column table, nested fields as `a.b`.
    pub fn to_table(&self) -> String {
        let mut rows = Vec::new();
        flatten("", &Value::Object(self.fields.clone()), &mut rows);
        let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
        let mut out = format!("== loadgen {} ==\n", self.scenario);
        for (key, value) in rows {
            out.push_str(&format!("{key:<width$}  {value}\n"));
        }
        for warning in &self.warnings {
            out.push_str(&format!("WARNING: {warning}\n"));
        }
        if self.failures.is_empty() {
            out.push_str("RESULT: ok\n");
        } else {
            out.push_str(&format!("RESULT: FAILED ({})\n", self.failures.join(", ")));
        }
        out
    }
}

/// Flattens nested objects into `(dotted.key, display value)` rows.
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, rows);
            }
        }
        Value::Null => rows.push((prefix.to_owned(), "-".to_owned())),
        Value::String(text) => rows.push((prefix.to_owned(), text.clone())),
        Value::Number(number) => rows.push((
            prefix.to_owned(),
            match number.as_f64() {
                Some(float) if number.is_f64() => format!("{float:.3}"),
                _ => number.to_string(),
            },
        )),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_agree() {
        let mut report = Report::new("push");
        report.set("sent", 10u64);
        report.set("latency_ms", json!({"p50": 1.5, "max": null}));
        report.fail_if_nonzero("loss", 0);
        report.fail_if_nonzero("duplicates", 2);
        let table = report.to_table();
        assert!(table.contains("latency_ms.p50  1.500"), "{table}");
        assert!(table.contains("RESULT: FAILED (duplicates: 2)"));
        let value = report.to_json();
        assert_eq!(value["ok"], false);
        assert_eq!(value["latency_ms"]["p50"], 1.5);
    }
}
