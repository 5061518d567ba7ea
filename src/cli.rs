//! The command line as a whole: the subcommands (`serve`, `healthcheck`, `push`, `listen`), the
//! server's settings ([`crate::config::Settings`]) flattened into it, the merge of a `.env` file
//! (its settings become flags placed before the command line's), and the one-line error for a bad
//! value. `main` is a thin shell around [`Cli::parse_or_exit`].

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

use crate::client::args::{ListenArgs, PushArgs};
use crate::config::Settings;
use crate::routes;

/// The whole command line: server settings plus an optional subcommand.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "websocket-sse-server",
    version,
    about = "Real-time push gateway over WebSocket and Server-Sent Events (SSE): upstream \
             services POST JSON messages for a user_id; every WebSocket and SSE client connected \
             as that user receives them at once, in order.",
    after_help = "Every option can also be set by the environment variable shown, or in a .env file \
                  in the working directory. Flags beat the environment, which beats .env."
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub settings: Settings,
}

/// The program's subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Ask the server on HOST:PORT for `/health`; exit 0 when it answers 200, 1 otherwise. Made for
    /// container health checks, so the image needs no curl.
    Healthcheck,
    /// Push one event to a user (or several) through a running server, and print its JSON answer.
    #[command(
        after_help = "Exit status: 0 when the server answers 2xx, 1 otherwise (refused, \
                            unreachable, timed out), 2 for bad arguments such as --data that is \
                            not a JSON object (nothing is sent then), 3 when a --user-ids push \
                            was accepted but only partial: some users had no connection (the \
                            printed answer's results say which).\n\n\
                            Example:\n  websocket-sse-server push --user 42 \
                            --data '{\"text\":\"hello\"}' --event-type chat"
    )]
    Push(PushArgs),
    /// Connect to a running server as a user and print every event it delivers, one JSON line per
    /// event on stdout (status lines go to stderr); reconnect and resume when the connection
    /// drops.
    #[command(
        after_help = "Reconnects with exponential backoff (with jitter, capped at \
                            --reconnect-max) and resumes from the last event id seen, so nothing \
                            is lost or repeated while the event is in the server's history (else \
                            the server sends a resync event).\n\n\
                            Exit status: 0 after --count events or on Ctrl-C/SIGTERM; 1 when the \
                            server refuses the connection for good (400, 401, 403) or an \
                            administrator disconnects the user (close code 4003); 2 for bad \
                            arguments; 3 when the token expired (close code 4001): get a new \
                            token and run again with --token <new> --last-event-id <the id \
                            printed>.\n\n\
                            Example:\n  websocket-sse-server listen --user 42 --count 1"
    )]
    Listen(ListenArgs),
}

impl Cli {
    /// Parses flags, the environment and `dotenv` (the `.env` file's settings that the environment
    /// does not set). On a bad value, returns the one-line message to print; help and version
    /// requests and usage errors are handled by clap (printed, then exit).
    ///
    /// `.env` settings become flags placed before the command line's, and a later flag overrides
    /// an earlier one, so the command line still wins; the environment is never modified. Keys
    /// that are not settings are ignored.
    pub fn parse_or_exit(dotenv: Vec<(String, String)>) -> Result<Self, String> {
        let command = Self::command().args_override_self(true);
        let mut given = std::env::args_os();
        let program = given
            .next()
            .unwrap_or_else(|| "websocket-sse-server".into());
        let from_dotenv: Vec<std::ffi::OsString> = dotenv
            .into_iter()
            .filter_map(|(key, value)| {
                let long = command
                    .get_arguments()
                    .find(|arg| arg.get_env().is_some_and(|env| env == key.as_str()))?
                    .get_long()?;
                Some(format!("--{long}={value}").into())
            })
            .collect();
        let args = std::iter::once(program).chain(from_dotenv).chain(given);
        let parsed = command.try_get_matches_from(args).and_then(|mut matches| {
            <Self as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
        });
        match parsed {
            Ok(cli) => {
                routes::check_paths(&cli.settings)?;
                cli.settings.check_consistency()?;
                let serving = matches!(cli.command, None | Some(Command::Serve));
                if let (true, Some(cert), Some(key)) = (
                    serving,
                    &cli.settings.tls_cert_file,
                    &cli.settings.tls_key_file,
                ) {
                    // Checked here too, so that a bad certificate is a one-line usage error.
                    crate::tls::Tls::load(cert, key).map_err(|error| error.to_string())?;
                }
                Ok(cli)
            }
            Err(err) => match err.kind() {
                ErrorKind::ValueValidation | ErrorKind::InvalidValue => Err(describe_error(&err)),
                _ => err.exit(),
            },
        }
    }
}

/// Turns clap's report of a bad value into one line naming the environment variable, the flag,
/// the value and what is accepted, e.g. `invalid PORT="abc" (--port): expected an integer from 0
/// to 65535`.
pub fn describe_error(err: &clap::Error) -> String {
    let context_string = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = context_string(ContextKind::InvalidArg).unwrap_or_default();
    let value = context_string(ContextKind::InvalidValue).unwrap_or_default();
    let long = flag
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--");
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long));
    let env = arg
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    // A secret's value (an API key, a JWT secret, a Redis URL with a password) is never printed.
    let hidden = arg.is_some_and(|arg| arg.is_hide_env_values_set());
    let expected = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) => format!("expected one of {}", values.join(", ")),
        _ => std::error::Error::source(err).map_or_else(
            || "the value is not accepted".to_owned(),
            |source| source.to_string(),
        ),
    };
    match env {
        Some(env) if hidden => format!("invalid {env} (--{long}): {expected}"),
        Some(env) => format!("invalid {env}={value:?} (--{long}): {expected}"),
        // A subcommand's flag (`push`, `listen`): no variable to name.
        None => format!("invalid value {value:?} for --{long}: {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::FromArgMatches;

    use super::*;
    use crate::config::{BrokerKind, Secret};

    /// The command line from `args` alone: the environment is not read.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(
            std::iter::once("websocket-sse-server").chain(args.iter().copied()),
        )?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn bad_port_names_variable_flag_and_range() {
        let err = parse(&["--port", "abc"]).unwrap_err();
        assert_eq!(
            describe_error(&err),
            r#"invalid PORT="abc" (--port): expected an integer from 0 to 65535"#
        );
    }

    #[test]
    fn bad_log_level_lists_the_choices() {
        let err = parse(&["--log-level", "loud"]).unwrap_err();
        let line = describe_error(&err);
        assert!(
            line.starts_with(r#"invalid LOG_LEVEL="loud" (--log-level): expected one of"#),
            "{line}"
        );
        assert!(line.contains("info") && line.contains("warn"), "{line}");
    }

    #[test]
    fn negative_interval_is_refused() {
        let err = parse(&["--ws-ping-interval=-1"]).unwrap_err();
        assert!(describe_error(&err).starts_with(r#"invalid WS_PING_INTERVAL="-1""#));
    }

    #[test]
    fn cluster_settings_are_checked_and_the_redis_url_stays_secret() {
        let cli = parse(&[
            "--broker",
            "REDIS",
            "--redis-url",
            "redis://:hunter2@redis:6379/1",
            "--node-id",
            "node-a.eu_1",
        ])
        .unwrap();
        assert_eq!(cli.settings.broker, BrokerKind::Redis);
        let urls: Vec<&str> = cli.settings.redis_url.iter().map(Secret::expose).collect();
        assert_eq!(urls, ["redis://:hunter2@redis:6379/1"]);
        let sharded = parse(&["--redis-url", "redis://r1:6379, redis://:pw@r2:6379"]).unwrap();
        let urls: Vec<&str> = sharded
            .settings
            .redis_url
            .iter()
            .map(Secret::expose)
            .collect();
        assert_eq!(urls, ["redis://r1:6379", "redis://:pw@r2:6379"]);
        assert!(!format!("{:?}", sharded.settings).contains("pw@"));
        assert!(!format!("{:?}", cli.settings).contains("hunter2"));
        assert_eq!(cli.settings.presence_lease, Duration::from_secs(15));
        for (flag, bad) in [
            ("--redis-url", "http://redis:6379"),
            ("--redis-url", "redis://"),
            ("--redis-url", "redis://a:6379,redis://a:6379"),
            ("--redis-url", "redis://a:6379,redis://:pw@A:6379/0"),
            ("--redis-url", "redis://a:6379,"),
            ("--node-id", "a/b"),
            ("--node-id", ""),
            ("--redis-key-prefix", "a{b}"),
            ("--redis-key-prefix", "has space"),
            ("--broker", "kafka"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert!(describe_error(&err).starts_with("invalid "), "{flag} {bad}");
        }
    }
}
