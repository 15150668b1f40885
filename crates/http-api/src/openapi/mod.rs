//! `GET /openapi.json`: the edge's OpenAPI 3.1 document, derived from the code.
//!
//! Each route module declares its operations with `#[utoipa::path]` on the handler (or, for
//! the wildcard routes that dispatch on a suffix, on the function that serves the suffix) and
//! gathers them in its own `Doc` beside its `router()`; `routes::openapi` merges those the
//! way `routes::router` merges the routers. The bodies are the types of [`schemas`]. Three
//! things are added here, in one place, because every operation shares them:
//! - the error answers: every status [`ApiError`] can take, each with the one error JSON;
//! - the authentication (`x-api-key` or `Authorization: Bearer`), except on the routes that
//!   need no key;
//! - the document's header (title, version, the contract it follows).
//!
//! What keeps the document and the router in step: a test below reads the routes' sources
//! and checks that every `.route(..)` method is documented and every documented operation is
//! routed; the Python suite validates real answers against the served document, and
//! schemathesis fuzzes every operation against it (`tests/run.sh`).

pub mod schemas;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{IntoParams, OpenApi};

use crate::error::ApiError;
use crate::AppState;

/// The routes anyone may call: no key is asked, so no security requirement is shown.
const PUBLIC_PATHS: &[&str] = &["/health", "/metrics", "/openapi.json"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "intentd",
        description = "The AXME/AXP v1 intent API as intentd serves it: intents, their events \
                       and streams, agents and delivery, inbox and approvals, webhooks, \
                       scenarios, the mesh, and intentd's own admin and cluster routes. Every \
                       error is `{\"ok\": false, \"error\": {\"code\", \"message\", \"retryable\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(openapi_json),
    components(schemas(schemas::ErrorAnswer, schemas::ErrorDetail))
)]
struct Base;

/// The `Idempotency-Key` header of the write routes that honour one: the same key and body
/// answer the first outcome again, the same key with another body is a 409.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// Up to 255 printable characters, remembered at least 24 h.
    #[param(rename = "Idempotency-Key")]
    pub idempotency_key: Option<String>,
}

/// The owner a request acts for, on the routes of an owner's resources (inbox, webhooks,
/// an intent's control form): the `owner_agent` query parameter, which the SDK sends.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// An agent address; only an admin key may name another than its own.
    pub owner_agent: Option<String>,
}

/// The same owner as a header, as other gateway clients send it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct OwnerHeader {
    #[param(rename = "x-owner-agent")]
    pub owner: Option<String>,
}

/// The whole document: the base, every route module's operations, the shared errors and the
/// authentication.
pub fn document() -> Document {
    let mut doc = Base::openapi();
    doc.merge(crate::routes::openapi());
    add_security(&mut doc);
    add_error_answers(&mut doc);
    doc
}

/// The document as served, built once: it depends on nothing but the code.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = serde_json::Value))
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

/// One of each error the edge answers with, for their status codes and codes.
fn documented_errors() -> Vec<ApiError> {
    let m = String::new;
    vec![
        ApiError::InvalidRequest(m()),
        ApiError::AuthFailed(m()),
        ApiError::Forbidden(m()),
        ApiError::NotFound(m()),
        ApiError::RequestTimeout(m()),
        ApiError::Conflict {
            code: "conflict",
            message: m(),
        },
        ApiError::PayloadTooLarge(m()),
        ApiError::UriTooLong(m()),
        ApiError::SchemaInvalid(m()),
        ApiError::HeadersTooLarge(m()),
        ApiError::Internal(m()),
        ApiError::Unavailable {
            message: m(),
            retry_after_secs: 1,
        },
    ]
}

/// Why an error status is answered, as the document tells it.
fn error_description(e: &ApiError) -> &'static str {
    match e {
        ApiError::InvalidRequest(_) => "Malformed JSON, a duplicate key, a bad parameter or header",
        ApiError::AuthFailed(_) => "No API key, or an unknown or revoked one",
        ApiError::Forbidden(_) => "The key's role may not do this",
        ApiError::NotFound(_) => "No such intent, agent, thread, key or route",
        ApiError::MethodNotAllowed(_) => "The route does not take this method",
        ApiError::RequestTimeout(_) => "The body did not arrive in time",
        ApiError::Conflict { .. } => {
            "Refused by the state: an idempotency key reused with another body, an illegal \
             transition, a terminal intent, a stale policy generation"
        }
        ApiError::PayloadTooLarge(_) => "The body is over the limit",
        ApiError::UriTooLong(_) => "The request target is over the limit",
        ApiError::HeadersTooLarge(_) => "Too many or too large headers",
        ApiError::SchemaInvalid(_) => "Well-formed JSON that breaks the contract",
        ApiError::Unavailable { .. } => {
            "No leader or quorum right now, or a commit of unknown outcome; retry after \
             `Retry-After` (with the same Idempotency-Key)"
        }
        ApiError::Internal(_) => "A bug or an IO failure; the detail is in the server's log",
    }
}

fn operations_mut(
    doc: &mut Document,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path, op))
    })
}

/// Every operation may answer every error status, each with the API's error JSON.
fn add_error_answers(doc: &mut Document) {
    let errors = documented_errors();
    for (_, op) in operations_mut(doc) {
        for e in &errors {
            let status = e.status().as_u16().to_string();
            op.responses.responses.entry(status).or_insert_with(|| {
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorAnswer")))
                    .build();
                RefOr::T(
                    ResponseBuilder::new()
                        .description(error_description(e))
                        .content("application/json", content)
                        .build(),
                )
            });
        }
    }
}

/// Both forms of the key the contract accepts; operations that declared their own security
/// (the public routes declare none) keep it.
fn add_security(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let keyed = vec![
        SecurityRequirement::new("api_key", Vec::<String>::new()),
        SecurityRequirement::new("bearer", Vec::<String>::new()),
    ];
    for (path, op) in operations_mut(doc) {
        if PUBLIC_PATHS.contains(&path.as_str()) {
            op.security = None;
        } else if op.security.is_none() {
            op.security = Some(keyed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// `(method, path)` of every `.route(path, method(..).method(..))` under `src/routes`,
    /// read from the sources, with axum's `{name}` parameters kept as they are.
    fn routed() -> BTreeSet<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        let mut routes = BTreeSet::new();
        for source in &sources {
            for (at, _) in source.match_indices(".route(") {
                let rest = &source[at + ".route(".len()..];
                // Only calls whose first argument is a path literal (not this scanner's own
                // strings, nor prose that mentions the method).
                let open = rest.len() - rest.trim_start().len();
                if !rest[open..].starts_with("\"/") {
                    continue;
                }
                let Some(len) = rest[open + 1..].find('"') else {
                    continue;
                };
                let path = &rest[open + 1..open + 1 + len];
                // The method routers up to the call's closing parenthesis.
                let mut depth = 1usize;
                let mut end = 0;
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                if end <= open + 1 + len {
                    continue;
                }
                let methods = &rest[open + 2 + len..end];
                for method in ["get", "post", "put", "delete", "patch"] {
                    let bare = format!("{method}(");
                    let chained = format!(".{method}(");
                    let starts = methods
                        .trim_start_matches([',', ' ', '\n'])
                        .starts_with(&bare);
                    if starts || methods.contains(&chained) {
                        routes.insert((method.to_string(), path.to_string()));
                    }
                }
            }
        }
        routes
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(&document().to_json().unwrap()).unwrap();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.clone(), path.clone()));
            }
        }
        ops
    }

    /// Whether an axum route pattern serves a documented path: parameters match any one
    /// segment, a trailing `{*rest}` any non-empty remainder.
    fn serves(route: &str, doc_path: &str) -> bool {
        let route: Vec<&str> = route.split('/').collect();
        let path: Vec<&str> = doc_path.split('/').collect();
        for (i, seg) in route.iter().enumerate() {
            if seg.starts_with("{*") {
                return path.len() > i;
            }
            let Some(p) = path.get(i) else { return false };
            let param = seg.starts_with('{') && p.starts_with('{');
            if !param && seg != p {
                return false;
            }
        }
        route.len() == path.len()
    }

    /// A wildcard route (`/v1/agents/{*rest}`) counts as documented by any operation under
    /// it: the suffixes it dispatches on are not visible to this scan, so those are held to
    /// the document by the Python suite and the schemathesis run instead.
    #[test]
    fn every_route_is_documented_and_every_operation_routed() {
        // The console's page and its script and style sheet are a web page, not the JSON API.
        let routed: BTreeSet<_> = routed()
            .into_iter()
            .filter(|(_, path)| path != "/ui" && !path.starts_with("/ui/"))
            .collect();
        let documented = documented();
        assert!(
            routed.len() > 40,
            "the route scan found too little: {routed:?}"
        );
        for (method, route) in &routed {
            assert!(
                documented
                    .iter()
                    .any(|(m, p)| m == method && serves(route, p)),
                "{} {route} is routed but not in the OpenAPI document",
                method.to_uppercase()
            );
        }
        for (method, path) in &documented {
            assert!(
                routed.iter().any(|(m, r)| m == method && serves(r, path)),
                "{} {path} is documented but not routed",
                method.to_uppercase()
            );
        }
    }

    #[test]
    fn every_operation_has_an_answer_errors_and_auth() {
        let doc: serde_json::Value = serde_json::from_str(&document().to_json().unwrap()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path} documents no success"
                );
                for status in ["400", "422", "503"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorAnswer",
                        "{method} {path} {status}"
                    );
                }
                let public = PUBLIC_PATHS.contains(&path.as_str());
                assert_eq!(
                    op.get("security").is_none(),
                    public,
                    "{method} {path} security"
                );
            }
        }
    }

    /// OpenAPI requires operation ids to be unique; utoipa takes them from the handlers'
    /// names, which repeat across modules (`list_events` of an intent and of the mesh).
    #[test]
    fn operation_ids_are_unique() {
        let doc: serde_json::Value = serde_json::from_str(&document().to_json().unwrap()).unwrap();
        let mut seen = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(
                    seen.insert(id.clone()),
                    "{method} {path}: operationId {id} repeats"
                );
            }
        }
    }

    #[test]
    fn error_statuses_are_the_edges() {
        let doc: serde_json::Value = serde_json::from_str(&document().to_json().unwrap()).unwrap();
        let create = &doc["paths"]["/v1/intents"]["post"]["responses"];
        for e in documented_errors() {
            let status = e.status().as_u16().to_string();
            assert!(create.get(&status).is_some(), "{status} missing");
        }
    }
}
