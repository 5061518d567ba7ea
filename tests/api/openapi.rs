//! The API description: `/openapi.json` is valid OpenAPI 3.1 whose examples match its schemas,
//! it describes exactly the routes the router serves (and the real server answers every
//! documented operation with a documented status and body), it shows the configured paths, and
//! `/docs` serves Swagger UI from the server alone.

use std::collections::BTreeSet;

use reqwest::{Method, Url};
use serde_json::{Value, json};
use websocket_sse_server::config::Settings;
use websocket_sse_server::{openapi, routes};

use crate::helpers::{TestApp, spawn_app};

/// Non-default paths for every configurable endpoint.
const CUSTOM_PATHS: [&str; 10] = [
    "--ws-path",
    "/live/socket",
    "--sse-stream-path",
    "/live/events",
    "--sse-path",
    "/v2/push",
    "--sse-batch-path",
    "/v2/push/many",
    "--console-path",
    "/console",
];

async fn served_document(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

fn settings(flags: &[&str]) -> Settings {
    let mut args = vec!["websocket-sse-server"];
    args.extend_from_slice(flags);
    Settings::from_flags(args).unwrap()
}

/// Every `$ref` in `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    found.push((at.clone(), child.as_str().expect("$ref is a string")));
                } else {
                    refs(child, format!("{at}/{key}"), found);
                }
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                refs(child, format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

/// `target` with every `$ref` replaced by what it points to (the document's references are
/// acyclic, so this terminates; a `$ref`'s siblings are kept beside the referenced keywords).
fn resolve(document: &Value, target: &Value) -> Value {
    match target {
        Value::Object(map) => {
            let mut resolved = serde_json::Map::new();
            for (key, child) in map {
                if key == "$ref" {
                    let pointer = child.as_str().unwrap().trim_start_matches('#');
                    let referenced = document.pointer(pointer).unwrap();
                    if let Value::Object(fields) = resolve(document, referenced) {
                        resolved.extend(fields);
                    }
                } else {
                    resolved.insert(key.clone(), resolve(document, child));
                }
            }
            Value::Object(resolved)
        }
        Value::Array(items) => items.iter().map(|item| resolve(document, item)).collect(),
        other => other.clone(),
    }
}

/// Checks `instance` against an OpenAPI 3.1 schema (JSON Schema 2020-12) of `document`.
fn assert_matches(document: &Value, schema: &Value, instance: &Value, what: &str) {
    let schema = resolve(document, schema);
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|error| panic!("{what}: the schema does not compile: {error}"));
    let problems: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        problems.is_empty(),
        "{what}: {instance} does not match its schema: {problems:?}"
    );
}

/// Each (method, path) the document describes.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in methods {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_with_resolvable_refs_and_examples_that_match() {
    let app = spawn_app(&[]).await;
    let document = served_document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));

    // A real OpenAPI 3.1 parser takes it, and resolves every operation's parts.
    let spec = oas3::from_json(document.to_string()).expect("oas3 parses the document");
    spec.validate_version()
        .expect("a supported OpenAPI version");
    let mut operation_ids = BTreeSet::new();
    let mut count = 0;
    for (path, method, operation) in spec.operations() {
        count += 1;
        let what = format!("{method} {path}");
        let id = operation.operation_id.clone().expect("an operationId");
        assert!(operation_ids.insert(id), "{what}: duplicate operationId");
        assert!(operation.summary.is_some(), "{what}: no summary");
        let declared = operation.responses.as_ref().map_or(0, |r| r.len());
        assert!(declared > 0, "{what}: no responses");
        assert_eq!(
            operation.responses(&spec).len(),
            declared,
            "{what}: a response does not resolve"
        );
        operation
            .parameters(&spec)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        operation
            .request_body(&spec)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for parameter in path.split('/').filter(|s| s.starts_with('{')) {
            let name = parameter.trim_matches(['{', '}']);
            let found = operation.parameter(name, &spec).unwrap();
            assert!(
                found.is_some(),
                "{what}: path parameter {name} undocumented"
            );
        }
    }
    assert_eq!(count, documented(&document).len());

    // Every reference points somewhere.
    let mut found = Vec::new();
    refs(&document, String::new(), &mut found);
    assert!(found.len() > 50, "the document uses references");
    for (at, reference) in &found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {reference} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{at}: {reference} points nowhere"
        );
    }

    // Every security requirement names a declared scheme.
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    for (method, path) in documented(&document) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        for requirement in operation["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains_key(scheme), "{method} {path}: {scheme}");
            }
        }
    }

    // Every example matches its schema: media types, parameters, and the schemas' own.
    let mut checked = 0;
    let mut examples = Vec::new();
    collect_examples(&document, &document, String::new(), &mut examples);
    for (what, schema, example) in &examples {
        assert_matches(&document, schema, example, what);
        checked += 1;
    }
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        for example in schema["examples"].as_array().into_iter().flatten() {
            assert_matches(&document, schema, example, name);
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} examples checked");
}

/// Every (where, schema, example) of media types and parameters in `value`.
fn collect_examples(
    document: &Value,
    value: &Value,
    at: String,
    found: &mut Vec<(String, Value, Value)>,
) {
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            for (index, item) in items.iter().enumerate() {
                collect_examples(document, item, format!("{at}/{index}"), found);
            }
        }
        return;
    };
    if let Some(schema) = map.get("schema") {
        if let Some(example) = map.get("example") {
            found.push((at.clone(), schema.clone(), example.clone()));
        }
        for (name, example) in map
            .get("examples")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let example = resolve(document, example);
            found.push((
                format!("{at}/{name}"),
                schema.clone(),
                example["value"].clone(),
            ));
        }
    }
    for (key, child) in map {
        if key != "schema" && key != "examples" && key != "example" {
            collect_examples(document, child, format!("{at}/{key}"), found);
        }
    }
}

/// The router is built from `routes::table` and nothing else, so comparing the table with the
/// document compares what is served with what is documented.
#[tokio::test]
async fn the_document_and_the_router_have_the_same_routes() {
    for flags in [&[][..], &CUSTOM_PATHS[..]] {
        let settings = settings(flags);
        let served: BTreeSet<(String, String)> = routes::table(&settings)
            .into_iter()
            .map(|route| (route.method.to_string(), route.path))
            .collect();
        assert!(served.len() >= 15, "found only {served:?}");
        let described: BTreeSet<(String, String)> = openapi::operations(&settings)
            .unwrap()
            .into_iter()
            .map(|(method, path)| (method.to_string(), path))
            .collect();
        let undocumented: Vec<_> = served.difference(&described).collect();
        let unserved: Vec<_> = described.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "routes the document lacks: {undocumented:?}; documented but not routed: {unserved:?}"
        );
    }
}

#[tokio::test]
async fn the_server_answers_every_documented_operation_as_documented() {
    let app = spawn_app(&CUSTOM_PATHS).await;
    let document = served_document(&app).await;
    let operations = documented(&document);
    assert!(operations.len() >= 15);
    for (method, path) in &operations {
        let operation = &resolve(&document, &document["paths"][path][method.to_lowercase()]);
        let what = format!("{method} {path}");
        let response = example_request(&app, method, path, operation)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let documented = resolve(&document, &operation["responses"][status.as_str()]);
        assert!(
            documented.is_object(),
            "{what} answered {status}, which is not documented (a route missing, or a handler \
             not written yet?)"
        );
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap().trim().to_owned();
        if let Some(content) = documented["content"].as_object() {
            assert!(
                content.contains_key(&essence),
                "{what} answered {status} with {content_type}, not documented"
            );
        }
        if essence == "application/json" {
            let body: Value = response.json().await.unwrap();
            let schema = &documented["content"]["application/json"]["schema"];
            assert_matches(&document, schema, &body, &format!("{what} → {status}"));
        }
        // Other bodies (a live event stream) are dropped unread.

        // A method the path does not document is refused with 405.
        let other = app
            .http
            .request(Method::PUT, app.url(&example_path(path, operation)))
            .send()
            .await
            .unwrap();
        if !operations.contains(&("PUT".to_owned(), path.clone())) {
            assert_eq!(other.status(), 405, "PUT {path}");
        }
    }
}

/// `path` with each path parameter replaced by its example.
fn example_path(path: &str, operation: &Value) -> String {
    let mut concrete = path.to_owned();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] == "path" {
            let name = parameter["name"].as_str().unwrap();
            let example = parameter["example"].as_str().expect("a path example");
            concrete = concrete.replace(&format!("{{{name}}}"), example);
        }
    }
    concrete
}

/// A harmless request built from the operation's own examples.
fn example_request(
    app: &TestApp,
    method: &str,
    path: &str,
    operation: &Value,
) -> reqwest::RequestBuilder {
    let mut url = Url::parse(&app.url(&example_path(path, operation))).unwrap();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] == "query"
            && let Some(example) = parameter["example"].as_str()
        {
            url.query_pairs_mut()
                .append_pair(parameter["name"].as_str().unwrap(), example);
        }
    }
    let mut request = app
        .http
        .request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    let content = &operation["requestBody"]["content"]["application/json"];
    if content.is_object() {
        let example = content["example"].clone();
        let example = if example.is_null() {
            let first = content["examples"].as_object().unwrap().values().next();
            first.unwrap()["value"].clone()
        } else {
            example
        };
        request = request.json(&example);
    }
    request
}

#[tokio::test]
async fn the_served_document_shows_the_configured_paths_and_security() {
    let app = spawn_app(&CUSTOM_PATHS).await;
    let paths = served_document(&app).await["paths"].clone();
    for configured in [
        "/live/socket",
        "/live/events",
        "/v2/push",
        "/v2/push/many",
        "/console",
    ] {
        assert!(paths.get(configured).is_some(), "{configured} missing");
    }
    for default in ["/ws", "/sse/stream", "/sse/push", "/sse/push/batch", "/"] {
        assert!(paths.get(default).is_none(), "{default} still there");
    }
    // Open mode: credentials optional, user_id required.
    let document = served_document(&app).await;
    let security = &document["paths"]["/v2/push"]["post"]["security"];
    assert!(security.as_array().unwrap().contains(&json!({})));
    assert_eq!(
        document["components"]["parameters"]["UserIdQuery"]["required"],
        true
    );

    let key = "an-api-key-of-some-length";
    let app = spawn_app(&[
        "--console-enabled",
        "false",
        "--push-api-keys",
        key,
        "--metrics-public",
        "false",
        "--jwt-secret",
        "a-secret-long-enough-for-hs256-tokens",
        "--max-batch-size",
        "7",
    ])
    .await;
    let document = served_document(&app).await;
    assert!(document["paths"].get("/").is_none(), "the console is off");
    for (method, path) in [("post", "/sse/push"), ("get", "/metrics"), ("get", "/ws")] {
        let security = document["paths"][path][method]["security"]
            .as_array()
            .unwrap();
        assert!(!security.is_empty());
        assert!(
            !security.contains(&json!({})),
            "{path}: credentials are enforced"
        );
    }
    assert_eq!(
        document["components"]["parameters"]["UserIdQuery"]["required"],
        false
    );
    assert_eq!(
        document["components"]["schemas"]["BatchRequest"]["maxItems"],
        7
    );
    // The document itself stays public.
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn docs_serves_swagger_ui_from_the_server_alone() {
    let app = spawn_app(&[]).await;
    let page_url = Url::parse(&app.url("/docs")).unwrap();
    let response = app.http.get(page_url.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    let page = response.text().await.unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the page references something outside the server:\n{page}"
    );

    // Every referenced file (src=, href=, data-url=) is served, with the right type.
    let mut references = Vec::new();
    for attribute in ["src=\"", "href=\"", "data-url=\""] {
        for (index, _) in page.match_indices(attribute) {
            let rest = &page[index + attribute.len()..];
            references.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    assert!(references.len() >= 5, "{references:?}");
    let mut seen_types = BTreeSet::new();
    for reference in &references {
        assert!(!reference.starts_with("//"), "{reference}");
        let url = page_url.join(reference).unwrap();
        assert_eq!(url.host_str(), page_url.host_str(), "{reference}");
        let response = app.http.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let expected = match url.path().rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "png" => "image/png",
            "json" => "application/json",
            other => panic!("unexpected file type {other} in {url}"),
        };
        assert_eq!(content_type, expected, "{url}");
        seen_types.insert(expected);
        if url.path().starts_with("/docs/") {
            let cache = response.headers()["cache-control"].to_str().unwrap();
            assert!(cache.contains("max-age=31536000"), "{url}: {cache}");
            let etag = response.headers()["etag"].clone();
            let body = response.bytes().await.unwrap();
            assert!(body.len() > 100, "{url}");
            let again = app
                .http
                .get(url.clone())
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{url}");
        }
    }
    assert_eq!(
        seen_types.len(),
        4,
        "scripts, styles, icons and the document"
    );

    // The start-up script points Swagger UI at the document and turns the online validator off.
    let script = app.http.get(app.url("/docs/docs.js")).send().await.unwrap();
    let script = script.text().await.unwrap();
    assert!(script.contains("validatorUrl: null"));
    assert!(!script.contains("http://") && !script.contains("https://"));

    // The license ships with it; unknown files are 404.
    let license = app.http.get(app.url("/docs/LICENSE")).send().await.unwrap();
    assert_eq!(license.status(), 200);
    assert!(license.text().await.unwrap().contains("Apache License"));
    for missing in ["/docs/nothing.js", "/docs/swagger-ui-bundle.js.map"] {
        let response = app.http.get(app.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
}
