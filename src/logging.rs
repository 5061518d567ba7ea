//! Log output: the seed's loguru-style line template or structured JSON, at the configured level.
//!
//! The template language is loguru's subset that makes sense here: `{time}` or `{time:FORMAT}` with
//! loguru's tokens (`YYYY`, `MM`, `DD`, `HH`, `mm`, `ss`, `SSS`, `ZZ`, …) translated to strftime,
//! `{level}` (loguru's names: `INFO`, `WARNING`, …), `{message}` (the message and its fields) and
//! `{name}` (the module that logged). Anything else in braces is refused at start-up.

use std::fmt;
use std::io::IsTerminal;

use chrono::format::{Item, StrftimeItems};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Logging verbosity, with the seed's Python level names accepted as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-frame detail.
    Trace,
    /// Connection and push detail.
    Debug,
    /// Start-up, shutdown and notable events.
    Info,
    /// Problems the server worked around.
    #[value(alias = "warning")]
    Warn,
    /// Failures only.
    #[value(alias = "critical")]
    Error,
}

/// The seed's default line template.
pub const DEFAULT_TEMPLATE: &str = "{time:YYYY-MM-DD HH:mm:ss} | {level} | {message}";

/// How log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
    /// A line built from a loguru-style template.
    Template(LineTemplate),
}

/// A parsed loguru-style template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Local time, with a strftime format translated from loguru's tokens.
    Time(String),
    Level,
    Message,
    Name,
}

/// loguru's time tokens and their strftime equivalents, longest first so that `YYYY` wins over `YY`.
const TIME_TOKENS: [(&str, &str); 17] = [
    ("YYYY", "%Y"),
    ("SSSSSS", "%6f"),
    ("MMMM", "%B"),
    ("dddd", "%A"),
    ("MMM", "%b"),
    ("ddd", "%a"),
    ("SSS", "%3f"),
    ("YY", "%y"),
    ("MM", "%m"),
    ("DD", "%d"),
    ("HH", "%H"),
    ("hh", "%I"),
    ("mm", "%M"),
    ("ss", "%S"),
    ("ZZ", "%z"),
    ("Z", "%:z"),
    ("A", "%p"),
];

/// loguru's format for a bare `{time}`.
const DEFAULT_TIME_FORMAT: &str = "YYYY-MM-DD HH:mm:ss.SSS";

impl LogFormat {
    /// Parses `json` or a template; errors name the offending placeholder.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().eq_ignore_ascii_case("json") {
            return Ok(Self::Json);
        }
        LineTemplate::parse(raw).map(Self::Template)
    }
}

impl LineTemplate {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| {
                format!("unclosed '{{' in {raw:?}; expected json or a template such as {DEFAULT_TEMPLATE}")
            })? + open;
            let placeholder = &rest[open + 1..close];
            let (name, spec) = placeholder.split_once(':').unwrap_or((placeholder, ""));
            parts.push(match name.trim() {
                "time" => Part::Time(translate_time_format(if spec.is_empty() {
                    DEFAULT_TIME_FORMAT
                } else {
                    spec
                })?),
                "level" => Part::Level,
                "message" => Part::Message,
                "name" | "module" => Part::Name,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; expected json or a template using \
                         {{time}}, {{time:FORMAT}}, {{level}}, {{message}} and {{name}}"
                    ));
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if !parts.contains(&Part::Message) {
            return Err(
                "the template has no {message}; expected json or a template such as \
                        {time:YYYY-MM-DD HH:mm:ss} | {level} | {message}"
                    .into(),
            );
        }
        Ok(Self { parts })
    }
}

/// Translates loguru time tokens to a strftime format chrono accepts.
fn translate_time_format(loguru: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = loguru;
    'outer: while let Some(c) = rest.chars().next() {
        for (token, strftime) in TIME_TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(strftime);
                rest = after;
                continue 'outer;
            }
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    if StrftimeItems::new(&out).any(|item| matches!(item, Item::Error)) {
        return Err(format!("cannot use time format {loguru:?}"));
    }
    Ok(out)
}

impl<S, N> FormatEvent<S, N> for LineTemplate
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        for part in &self.parts {
            match part {
                Part::Literal(text) => writer.write_str(text)?,
                Part::Time(format) => write!(writer, "{}", chrono::Local::now().format(format))?,
                Part::Level => writer.write_str(level_name(*metadata.level()))?,
                Part::Message => ctx.field_format().format_fields(writer.by_ref(), event)?,
                Part::Name => writer.write_str(metadata.target())?,
            }
        }
        writeln!(writer)
    }
}

/// loguru's level names, as the seed's users know them.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARNING",
        Level::ERROR => "ERROR",
    }
}

/// The filter for `level`: `RUST_LOG` when set, otherwise the level for this crate and at most
/// `info` for the libraries below it (their debug output is per-frame noise).
fn filter(level: LogLevel) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    let directive = match level {
        LogLevel::Trace => "info,websocket_sse_server=trace",
        LogLevel::Debug => "info,websocket_sse_server=debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    EnvFilter::new(directive)
}

/// Installs the global subscriber, writing `format` lines at `level`. Call once, before anything
/// logs.
pub fn init(level: LogLevel, format: &LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (closed pipe, full disk) is dropped; reporting it
        // would panic the task that logged, such as the one that handles shutdown signals.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Template(template) => builder.event_format(template.clone()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_template_translates_time_tokens() {
        let LogFormat::Template(template) = LogFormat::parse(DEFAULT_TEMPLATE).unwrap() else {
            panic!("expected a template");
        };
        assert_eq!(
            template.parts,
            vec![
                Part::Time("%Y-%m-%d %H:%M:%S".into()),
                Part::Literal(" | ".into()),
                Part::Level,
                Part::Literal(" | ".into()),
                Part::Message,
            ]
        );
    }

    #[test]
    fn bare_time_uses_loguru_default_and_percent_is_literal() {
        assert_eq!(
            translate_time_format(DEFAULT_TIME_FORMAT).unwrap(),
            "%Y-%m-%d %H:%M:%S.%3f"
        );
        assert_eq!(translate_time_format("HH:mm 100%").unwrap(), "%H:%M 100%%");
    }

    #[test]
    fn json_and_bad_templates() {
        assert_eq!(LogFormat::parse("JSON").unwrap(), LogFormat::Json);
        assert!(
            LogFormat::parse("{time} {bogus} {message}")
                .unwrap_err()
                .contains("{bogus}")
        );
        assert!(
            LogFormat::parse("{time} | {level}")
                .unwrap_err()
                .contains("{message}")
        );
        assert!(LogFormat::parse("{message").is_err());
    }
}
