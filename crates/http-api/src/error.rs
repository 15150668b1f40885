//! The one error type of the HTTP edge.
//!
//! Every failure a handler or extractor can meet is converted into [`ApiError`] here, in one
//! place, so that clients always get the same JSON shape
//! (`{"ok": false, "error": {"code", "message", "retryable"}}`) and the mapping from domain
//! and cluster errors to status codes cannot drift between routes. Internal details are logged
//! and never sent to the client.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use intentd_consensus::ConsensusError;
use intentd_lifecycle::validate::ValidationError;
use intentd_lifecycle::{AccessError, Rejection};
use intentd_operations::OperationsError;
use intentd_storage::StorageError;
use serde_json::{json, Map, Value};

/// How long a client should wait before retrying a request that met an ambiguous commit.
const AMBIGUOUS_RETRY_AFTER_SECS: u64 = 1;

/// A request that failed, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, a value of the wrong JSON type, a bad query parameter or header.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401: no API key, or one the cluster does not know (or has revoked).
    #[error("{0}")]
    AuthFailed(String),
    /// 403: a known key acting outside its scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown intent, agent, key or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: a known route with a method it does not serve.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body did not arrive within the connection's body timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the state refused the change; `code` says which rule (see [`Rejection`]).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: the body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 414: a request target longer than the HTTP parser accepts.
    #[error("{0}")]
    UriTooLong(String),
    /// 431: more header bytes or header fields than the HTTP parser accepts.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 422: well-formed JSON that breaks the contract (pattern, enum, required field, ...).
    #[error("{0}")]
    SchemaInvalid(String),
    /// 503: no leader or no quorum right now, or a commit whose outcome is unknown. Retryable.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// 500: a bug or an IO failure. The detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::AuthFailed(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::SchemaInvalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::AuthFailed(_) => "auth_failed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Conflict { code, .. } => code,
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::SchemaInvalid(_) => "schema_invalid",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// Whether retrying the same request unchanged can succeed. Only 503s promise that; a
    /// 500 is a bug or a broken disk, which a retry does not fix. A 408 may succeed on a
    /// faster link, but the body the client failed to send in time is its own to judge.
    pub(crate) fn retryable(&self) -> bool {
        matches!(self, ApiError::Unavailable { .. })
    }

    /// The whole answer as bytes on the wire (HTTP/1.1, `connection: close`), for the
    /// connection layer that answers before any route runs (the connection cap, the HTTP
    /// parser's own refusals), so those answers carry the same JSON as every other error.
    pub(crate) fn raw_http1(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&Value::Object(self.body())).unwrap_or_default();
        let status = self.status();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let ApiError::Unavailable {
            retry_after_secs, ..
        } = self
        {
            head.push_str(&format!("retry-after: {}\r\n", retry_after_secs.max(&1)));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&body);
        raw
    }

    /// The message the client sees; internal errors never leak their detail.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; see the server log for this trace id".into(),
            other => other.to_string(),
        }
    }

    /// The JSON body of this error, `{"ok": false, "error": {...}}`.
    pub(crate) fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("ok".into(), Value::Bool(false));
        body.insert(
            "error".into(),
            json!({
                "code": self.code(),
                "message": self.public_message(),
                "retryable": self.retryable(),
            }),
        );
        body
    }

    /// The response with `extra` fields added next to `ok` and `error`; `/health` uses it to
    /// say which node answered even when it has no leader.
    pub(crate) fn into_response_with(self, extra: Map<String, Value>) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            other if other.status().is_server_error() => {
                tracing::warn!(code = other.code(), error = %other, "request failed")
            }
            other => tracing::debug!(code = other.code(), error = %other, "request refused"),
        }
        let mut body = self.body();
        for (k, v) in extra {
            body.entry(k).or_insert(v);
        }
        let mut response = (self.status(), Json(Value::Object(body))).into_response();
        if let ApiError::Unavailable {
            retry_after_secs, ..
        } = &self
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(&1).to_owned()),
            );
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with(Map::new())
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        let conflict = |code| ApiError::Conflict {
            code,
            message: message.clone(),
        };
        match rejection {
            Rejection::NotFound(_) => ApiError::NotFound(message),
            Rejection::AlreadyExists(_) => conflict("already_exists"),
            Rejection::IllegalTransition { .. } => conflict("invalid_transition"),
            Rejection::Terminal { .. } => conflict("intent_terminal"),
            Rejection::IdempotencyConflict => conflict("idempotency_conflict"),
            Rejection::StaleAttempt { .. } => conflict("stale_attempt"),
            Rejection::PolicyGenerationMismatch { .. } => conflict("policy_generation_mismatch"),
            Rejection::Invalid(_) => ApiError::SchemaInvalid(message),
        }
    }
}

impl From<ConsensusError> for ApiError {
    fn from(error: ConsensusError) -> Self {
        match error {
            ConsensusError::Rejected(rejection) => rejection.into(),
            ConsensusError::Unavailable { retry_after_secs } => ApiError::Unavailable {
                message: "the cluster has no leader or no quorum right now".into(),
                retry_after_secs,
            },
            // Safe to retry only because every write that matters carries an idempotency
            // key or a compare-and-set; the message says so for the ones that do not.
            ConsensusError::Ambiguous => ApiError::Unavailable {
                message: "leadership changed while the request was committing; it may or may \
                          not have been applied; retry with the same Idempotency-Key"
                    .into(),
                retry_after_secs: AMBIGUOUS_RETRY_AFTER_SECS,
            },
            ConsensusError::ClockUnsynchronized(detail) => ApiError::Unavailable {
                message: format!("this node may not accept writes right now: clock not synchronized ({detail}); retry"),
                retry_after_secs: 1,
            },
            ConsensusError::Refused(message) => ApiError::Conflict {
                code: "refused",
                message,
            },
            ConsensusError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        match error {
            ValidationError::Malformed(m) => ApiError::InvalidRequest(m),
            ValidationError::Rule(m) => ApiError::SchemaInvalid(m),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Unauthenticated(m) => ApiError::AuthFailed(m),
            AccessError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<OperationsError> for ApiError {
    fn from(error: OperationsError) -> Self {
        match error {
            OperationsError::Access(e) => e.into(),
            OperationsError::Consensus(e) => e.into(),
            OperationsError::Storage(e) => e.into(),
            OperationsError::ShuttingDown => ApiError::Unavailable {
                message: "this node is shutting down".into(),
                retry_after_secs: 1,
            },
            OperationsError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        ApiError::Internal(format!("storage: {error}"))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is larger than this route accepts".into())
        } else if crate::conn::is_body_timeout(&rejection) {
            ApiError::RequestTimeout(rejection.body_text())
        } else {
            ApiError::InvalidRequest(rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::Status;

    fn parts(e: ApiError) -> (StatusCode, &'static str, bool) {
        (e.status(), e.code(), e.retryable())
    }

    #[test]
    fn rejections_map_to_conflicts_with_distinct_codes() {
        let cases = [
            (
                Rejection::IllegalTransition {
                    from: Status::Submitted,
                    to: Status::Completed,
                },
                "invalid_transition",
            ),
            (
                Rejection::Terminal {
                    from: Status::Completed,
                    to: Some(Status::Failed),
                },
                "intent_terminal",
            ),
            (Rejection::IdempotencyConflict, "idempotency_conflict"),
            (
                Rejection::StaleAttempt {
                    expected: 1,
                    current: 2,
                },
                "stale_attempt",
            ),
            (
                Rejection::PolicyGenerationMismatch {
                    expected: 1,
                    current: 2,
                },
                "policy_generation_mismatch",
            ),
        ];
        for (rejection, code) in cases {
            assert_eq!(parts(rejection.into()), (StatusCode::CONFLICT, code, false));
        }
        assert_eq!(
            parts(Rejection::NotFound(uuid::Uuid::nil()).into()),
            (StatusCode::NOT_FOUND, "not_found", false)
        );
        assert_eq!(
            parts(Rejection::Invalid("x".into()).into()),
            (StatusCode::UNPROCESSABLE_ENTITY, "schema_invalid", false)
        );
    }

    #[test]
    fn illegal_transition_message_names_both_statuses() {
        let e: ApiError = Rejection::IllegalTransition {
            from: Status::Waiting,
            to: Status::Delivered,
        }
        .into();
        let msg = e.to_string();
        assert!(
            msg.contains("WAITING") && msg.contains("DELIVERED"),
            "{msg}"
        );
    }

    #[test]
    fn consensus_errors_are_retryable_503_or_500() {
        let e: ApiError = ConsensusError::Unavailable {
            retry_after_secs: 3,
        }
        .into();
        assert_eq!(
            parts(e),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", true)
        );
        let e: ApiError = ConsensusError::Ambiguous.into();
        assert_eq!(
            parts(e),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", true)
        );
        let e: ApiError = ConsensusError::Rejected(Rejection::IdempotencyConflict).into();
        assert_eq!(e.code(), "idempotency_conflict");
        let e: ApiError = ConsensusError::Internal("disk on fire".into()).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn internal_detail_never_reaches_the_body() {
        let body = ApiError::Internal("secret path /var/lib/x".into()).body();
        let text = serde_json::to_string(&body).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(body["error"]["code"], "internal_error");
    }

    #[tokio::test]
    async fn unavailable_sets_retry_after_and_json_body() {
        let response = ApiError::Unavailable {
            message: "no leader".into(),
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            json!({"ok": false, "error": {"code": "unavailable", "message": "no leader", "retryable": true}})
        );
    }
}
