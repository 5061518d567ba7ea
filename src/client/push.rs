//! `push`: one `POST` to the server's push endpoint; the answer's JSON goes to stdout.

use std::io::{Read, Write};

use axum::body::Bytes;
use axum::http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{EXIT_PARTIAL, Failure, Target, check_path, describe_body};
use crate::client::args::PushArgs;
use crate::config::Settings;

/// Validates the arguments, sends the push and prints the server's answer. `Ok` when the server
/// answered 2xx, except a `partial` answer to `--user-ids` ([`EXIT_PARTIAL`]).
pub async fn run(args: &PushArgs, settings: &Settings) -> Result<(), Failure> {
    let target = Target::from_args(args.url.as_deref(), args.ca_file.as_deref(), settings)?;
    let path = args.path.as_deref().unwrap_or(&settings.sse_path);
    check_path(path)?;
    let body = request_body(args, &read_data(&args.data)?)?;
    let api_key = args.api_key.clone().or_else(|| {
        let keys = settings.push_api_keys.as_ref()?;
        keys.0.first().map(|key| key.expose().to_owned())
    });

    let url = target.url("http", path, "");
    let mut request = Request::post(target.path_and_query(path, ""))
        .header(header::HOST, target.authority())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json");
    if let Some(key) = api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| Failure::usage(format!("cannot build the request: {error}")))?;

    let exchange = async {
        let stream = target.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(args.timeout, exchange)
        .await
        .map_err(|_| {
            Failure::failed(format!(
                "POST {url}: no answer within {:.1}s (the push may or may not have been accepted; \
                 retry with the same --event-id to be safe)",
                args.timeout.as_secs_f64()
            ))
        })?
        .map_err(|error| Failure::failed(format!("POST {url}: {error}")))?;

    let mut stdout = std::io::stdout().lock();
    let printed = stdout
        .write_all(body.trim_ascii())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(error) = printed {
        return Err(Failure::failed(format!("cannot write the answer: {error}")));
    }
    if status.is_success() {
        if !args.user_ids.is_empty() && answered_partial(&body) {
            return Err(Failure {
                status: EXIT_PARTIAL,
                message: format!(
                    "POST {url}: partial: some of the users had no connection (see \"results\")"
                ),
            });
        }
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "POST {url} answered {status}: {}",
            describe_body(&body)
        )))
    }
}

/// Whether a 2xx answer's `status` is `partial`.
fn answered_partial(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        status: Option<&'a str>,
    }
    serde_json::from_slice::<Answer<'_>>(body).is_ok_and(|answer| answer.status == Some("partial"))
}

/// The `--data` text: the argument itself, a file's contents (`@FILE`) or stdin (`-`).
fn read_data(arg: &str) -> Result<String, Failure> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| Failure::usage(format!("--data -: cannot read stdin: {error}")))?;
        Ok(text)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|error| Failure::usage(format!("--data {arg}: cannot read {path}: {error}")))
    } else {
        Ok(arg.to_owned())
    }
}

/// The JSON request body; `data` is forwarded byte for byte once checked to be a JSON object.
fn request_body(args: &PushArgs, data: &str) -> Result<Vec<u8>, Failure> {
    let data: Box<RawValue> = serde_json::from_str(data.trim()).map_err(|error| {
        Failure::usage(format!(
            "--data is not valid JSON ({error}); expected an object such as '{{\"text\":\"hi\"}}'"
        ))
    })?;
    if !data.get().starts_with('{') {
        return Err(Failure::usage(format!(
            "--data must be a JSON object such as '{{\"text\":\"hi\"}}', not {}",
            data.get()
        )));
    }
    let body = match (&args.user, args.user_ids.as_slice()) {
        (Some(user), []) => Body {
            user_id: Some(user),
            user_ids: None,
            data: &data,
            event_type: args.event_type.as_deref(),
            event_id: args.event_id.as_deref(),
        },
        (None, ids) if !ids.is_empty() => Body {
            user_id: None,
            user_ids: Some(ids.iter().map(|id| id.trim()).collect()),
            data: &data,
            event_type: args.event_type.as_deref(),
            event_id: args.event_id.as_deref(),
        },
        _ => return Err(Failure::usage("give either --user or --user-ids")),
    };
    serde_json::to_vec(&body)
        .map_err(|error| Failure::usage(format!("cannot encode the body: {error}")))
}

/// The push request body (`user_id` or `user_ids`).
#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_ids: Option<Vec<&'a str>>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args(user: Option<&str>, user_ids: &[&str]) -> PushArgs {
        PushArgs {
            user: user.map(str::to_owned),
            user_ids: user_ids.iter().map(|id| (*id).to_owned()).collect(),
            data: String::new(),
            event_type: Some("chat".into()),
            event_id: None,
            url: None,
            ca_file: None,
            path: None,
            api_key: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn body_keeps_the_data_and_names_the_recipients() {
        let body = request_body(&args(Some("42"), &[]), r#" {"b":1.50,"a":[1]} "#).unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"user_id":"42","data":{"b":1.50,"a":[1]},"event_type":"chat"}"#
        );
        let body = request_body(&args(None, &["a", " b"]), "{}").unwrap();
        assert!(
            String::from_utf8(body)
                .unwrap()
                .starts_with(r#"{"user_ids":["a","b"],"data":{}"#)
        );
    }

    #[test]
    fn data_must_be_a_json_object() {
        for bad in ["", "{", "[1]", "\"text\"", "{'k':1}", "{} {}"] {
            let failure = request_body(&args(Some("42"), &[]), bad).unwrap_err();
            assert_eq!(failure.status, super::super::EXIT_USAGE, "{bad}");
        }
    }
}
