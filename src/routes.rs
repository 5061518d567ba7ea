//! The route table: every endpoint the server answers — method, path (as configured), what it is
//! and who may call it — with its handler. [`crate::server::router`] is built from this table and
//! nothing else, the configured paths are checked against it ([`check_paths`]), and the OpenAPI
//! document is compared with it by a test, so none of them can drift.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::api::{admin, health, metrics, push};
use crate::config::Settings;
use crate::state::SharedState;
use crate::transport::{ack, sse, ws};
use crate::{console, js_client, openapi};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the port (clients authenticate inside the handler when tokens are on).
    Public,
    /// Publishers: one of `PUSH_API_KEYS` when keys are set, and `PUSH_RATE`.
    Publisher,
    /// Administrators: one of `ADMIN_API_KEYS` (or, when those are not set, of `PUSH_API_KEYS`),
    /// and `PUSH_RATE`.
    Admin,
    /// Monitoring: public unless `METRICS_PUBLIC=false`, then an API key.
    Metrics,
}

/// One endpoint.
pub struct Route {
    /// Its HTTP method.
    pub method: Method,
    /// Its path, as the settings configure it (`{name}` marks a path parameter).
    pub path: String,
    /// The setting that configures the path (`WS_PATH`, …); `None` for a fixed path.
    pub setting: Option<&'static str>,
    /// What it is, for people ("health", "WebSocket", …).
    pub name: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What answers it.
    pub handler: MethodRouter<SharedState>,
}

impl Route {
    fn new<H, T>(method: Method, path: &str, name: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, SharedState>,
        T: 'static,
    {
        // The table only uses methods axum filters on; GET is never reached.
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        Self {
            method,
            path: path.to_owned(),
            setting: None,
            name,
            access,
            handler: on(filter, handler),
        }
    }

    /// The same route, its path configured by `setting`.
    fn configured_by(mut self, setting: &'static str) -> Self {
        self.setting = Some(setting);
        self
    }
}

/// Every endpoint, with the configured paths. The console is listed only when it is enabled.
pub fn table(settings: &Settings) -> Vec<Route> {
    let mut routes = every_route(settings);
    if !settings.console_enabled {
        routes.retain(|route| route.setting != Some("CONSOLE_PATH"));
    }
    routes
}

/// Refuses settings whose paths clash: a configured path that is a fixed one, or that another
/// setting already uses (the console's counts even when it is off).
pub fn check_paths(settings: &Settings) -> Result<(), String> {
    let routes = every_route(settings);
    let (configured, fixed): (Vec<&Route>, Vec<&Route>) =
        routes.iter().partition(|route| route.setting.is_some());
    for (index, route) in configured.iter().enumerate() {
        let (setting, path) = (route.setting.unwrap_or_default(), &route.path);
        if let Some(reserved) = fixed.iter().find(|other| other.path == *path) {
            return Err(format!(
                "invalid {setting}={path:?}: {path} is reserved for the {} endpoint",
                reserved.name
            ));
        }
        if let Some(other) = configured[..index].iter().find(|other| other.path == *path) {
            let other = other.setting.unwrap_or_default();
            return Err(format!(
                "invalid {setting}={path:?}: {other} already uses that path"
            ));
        }
    }
    Ok(())
}

fn every_route(settings: &Settings) -> Vec<Route> {
    use Access::{Admin, Metrics, Public, Publisher};
    use Method as M;
    vec![
        Route::new(
            M::GET,
            &settings.ws_path,
            "WebSocket",
            Public,
            ws::handshake,
        )
        .configured_by("WS_PATH"),
        Route::new(M::POST, &settings.sse_path, "push", Publisher, push::push)
            .configured_by("SSE_PATH"),
        Route::new(
            M::POST,
            &settings.sse_batch_path,
            "batch push",
            Publisher,
            push::push_batch,
        )
        .configured_by("SSE_BATCH_PATH"),
        Route::new(
            M::GET,
            &settings.sse_stream_path,
            "Server-Sent Events",
            Public,
            sse::stream,
        )
        .configured_by("SSE_STREAM_PATH"),
        Route::new(
            M::POST,
            &settings.sse_ack_path,
            "SSE acknowledgement",
            Public,
            ack::acknowledge,
        )
        .configured_by("SSE_ACK_PATH"),
        Route::new(
            M::GET,
            &settings.console_path,
            "console",
            Public,
            console::page,
        )
        .configured_by("CONSOLE_PATH"),
        Route::new(M::GET, "/health", "health", Public, health::health),
        Route::new(M::GET, "/ready", "readiness", Public, health::ready),
        Route::new(M::GET, "/metrics", "metrics", Metrics, metrics::handler),
        Route::new(
            M::GET,
            "/metrics/prometheus",
            "Prometheus metrics",
            Metrics,
            metrics::prometheus,
        ),
        Route::new(
            M::GET,
            "/openapi.json",
            "OpenAPI document",
            Public,
            openapi::spec,
        ),
        Route::new(M::GET, "/docs", "API documentation", Public, openapi::docs),
        Route::new(
            M::GET,
            "/client.js",
            "JavaScript client",
            Public,
            js_client::script,
        ),
        Route::new(
            M::GET,
            "/client.js.map",
            "JavaScript client source map",
            Public,
            js_client::source_map,
        ),
        Route::new(
            M::GET,
            "/docs/{file}",
            "API documentation assets",
            Public,
            openapi::asset,
        ),
        Route::new(
            M::POST,
            "/sse/broadcast",
            "broadcast",
            Admin,
            push::broadcast,
        ),
        Route::new(
            M::GET,
            "/admin/users/{user_id}",
            "user report",
            Admin,
            admin::user,
        ),
        Route::new(
            M::DELETE,
            "/admin/users/{user_id}/connections",
            "user disconnect",
            Admin,
            admin::disconnect,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        Settings::from_flags(std::iter::once("t").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn clashing_paths_are_refused() {
        let err = check_paths(&settings(&["--sse-path", "/health"])).unwrap_err();
        assert_eq!(
            err,
            r#"invalid SSE_PATH="/health": /health is reserved for the health endpoint"#
        );
        let err = check_paths(&settings(&["--ws-path", "/sse/push"])).unwrap_err();
        assert_eq!(
            err,
            r#"invalid SSE_PATH="/sse/push": WS_PATH already uses that path"#
        );
        assert!(check_paths(&settings(&["--console-path", "/docs"])).is_err());
        assert!(check_paths(&settings(&[])).is_ok());
    }

    #[test]
    fn every_method_in_the_table_is_one_axum_routes() {
        for route in table(&settings(&[])) {
            assert!(
                MethodFilter::try_from(route.method.clone()).is_ok(),
                "{} {}",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn the_console_is_routed_only_when_enabled() {
        let on = table(&settings(&[]));
        let off = table(&settings(&["--console-enabled", "false"]));
        assert_eq!(on.len(), off.len() + 1);
        assert!(
            off.iter()
                .all(|route| route.setting != Some("CONSOLE_PATH"))
        );
    }
}
