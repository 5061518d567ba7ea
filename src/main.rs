//! The `websocket-sse-server` command: reads `.env` and the command line, then serves (default),
//! probes a running server (`healthcheck`), or acts as its client (`push`, `listen`).

use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use websocket_sse_server::cli::{Cli, Command};
use websocket_sse_server::client;
use websocket_sse_server::config::Settings;
use websocket_sse_server::dotenv;
use websocket_sse_server::healthcheck;
use websocket_sse_server::logging;
use websocket_sse_server::server::Application;

/// A faster allocator than glibc for many small, short-lived allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for configuration errors, as for command-line usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let dotenv = match dotenv::load(Path::new(".env"), |key| std::env::var_os(key).is_some()) {
        Ok(variables) => variables,
        Err(error) => {
            eprintln!("error: cannot read .env: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cli = match Cli::parse_or_exit(dotenv) {
        Ok(cli) => cli,
        Err(line) => {
            eprintln!("error: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let settings = cli.settings;
    let (runtime, command) = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let runtime = runtime(&settings);
            return match runtime {
                Ok(runtime) => runtime.block_on(serve(settings)),
                Err(error) => runtime_failed(&error),
            };
        }
        Command::Healthcheck => (client_runtime(), ClientCommand::Healthcheck),
        Command::Push(args) => (client_runtime(), ClientCommand::Push(args)),
        Command::Listen(args) => (client_runtime(), ClientCommand::Listen(args)),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(client(command, settings)),
        Err(error) => runtime_failed(&error),
    }
}

/// The subcommands that act as a client of a server.
enum ClientCommand {
    Healthcheck,
    Push(client::args::PushArgs),
    Listen(client::args::ListenArgs),
}

fn runtime_failed(error: &std::io::Error) -> ExitCode {
    eprintln!("error: cannot start the async runtime: {error}");
    ExitCode::FAILURE
}

/// One thread is plenty for a command that holds one connection.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `healthcheck`, `push` or `listen`.
async fn client(command: ClientCommand, settings: Settings) -> ExitCode {
    let outcome = match command {
        ClientCommand::Healthcheck => {
            return match healthcheck::probe(&settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("unhealthy: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        ClientCommand::Push(args) => client::push::run(&args, &settings).await,
        ClientCommand::Listen(args) => {
            let stop = CancellationToken::new();
            let mut signals = match ShutdownSignals::install() {
                Ok(signals) => signals,
                Err(error) => {
                    eprintln!("error: cannot install signal handlers: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let on_signal = stop.clone();
            tokio::spawn(async move {
                signals.next().await;
                on_signal.cancel();
            });
            client::listen::run(&args, &settings, stop).await
        }
    };
    match outcome {
        Ok(()) => ExitCode::from(client::EXIT_OK),
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.status)
        }
    }
}

/// A multi-threaded runtime with `WORKERS` threads, or one per usable core.
fn runtime(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.workers > 0 {
        builder.worker_threads(settings.workers);
    }
    builder.enable_all().build()
}

async fn serve(settings: Settings) -> ExitCode {
    let level = if settings.debug {
        logging::LogLevel::Debug
    } else {
        settings.log_level
    };
    logging::init(level, &settings.log_format);
    let (host, port) = (settings.host.clone(), settings.port);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
            tracing::error!(%error, "cannot start: invalid configuration");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen on {host}:{port}");
            return ExitCode::FAILURE;
        }
    };
    // Install the handlers before announcing the address: a signal that arrives right after
    // start-up must start a graceful shutdown, not kill the process.
    let mut signals = match ShutdownSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let lifecycle = app.lifecycle();
    tokio::spawn(async move {
        signals.next().await;
        lifecycle.begin_shutdown();
        tracing::info!("shutdown signal received; send it again to exit at once");
        signals.next().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(1);
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment they are installed.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    /// Registers both handlers; from here on neither signal kills the process.
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
