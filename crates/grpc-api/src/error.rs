//! The one place where a failure becomes a `tonic::Status`.
//!
//! Codes follow the HTTP edge's classes: 400/422 are INVALID_ARGUMENT, 401 UNAUTHENTICATED,
//! 403 PERMISSION_DENIED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE; the 409s
//! split by what a client should do: ALREADY_EXISTS (the id or idempotency key is taken),
//! ABORTED (a compare-and-set lost: re-read and retry), FAILED_PRECONDITION (the intent's
//! status does not allow the change; retrying will not help). The HTTP API's error code rides
//! along in the `x-error-code` trailer so clients can tell the 409s apart exactly. Internal
//! details go to the log, never to the client.

use intentd_consensus::ConsensusError;
use intentd_lifecycle::validate::ValidationError;
use intentd_lifecycle::{AccessError, Rejection};
use intentd_operations::OperationsError;
use intentd_storage::StorageError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// How long a client should wait before retrying after an ambiguous commit or a shutdown.
const RETRY_AFTER_SECS: u64 = 1;

/// Why a call failed, before it is told to the client.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(transparent)]
    Operation(#[from] OperationsError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request message is larger than the call accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The server could not be set up or stopped serving (not a per-call error).
    #[error("grpc server: {0}")]
    Setup(String),
}

impl From<AccessError> for GrpcError {
    fn from(e: AccessError) -> Self {
        GrpcError::Operation(e.into())
    }
}

impl From<ConsensusError> for GrpcError {
    fn from(e: ConsensusError) -> Self {
        GrpcError::Operation(e.into())
    }
}

impl From<Rejection> for GrpcError {
    fn from(e: Rejection) -> Self {
        GrpcError::Operation(e.into())
    }
}

impl From<StorageError> for GrpcError {
    fn from(e: StorageError) -> Self {
        GrpcError::Operation(e.into())
    }
}

/// The parts of a status: code, the HTTP API's error code, the message, a retry hint.
struct Parts {
    code: Code,
    error_code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

fn parts(code: Code, error_code: &'static str, message: impl Into<String>) -> Parts {
    Parts {
        code,
        error_code,
        message: message.into(),
        retry_after_secs: None,
    }
}

fn rejection(r: Rejection) -> Parts {
    let message = r.to_string();
    match r {
        Rejection::NotFound(_) => parts(Code::NotFound, "not_found", message),
        Rejection::AlreadyExists(_) => parts(Code::AlreadyExists, "already_exists", message),
        Rejection::IdempotencyConflict => {
            parts(Code::AlreadyExists, "idempotency_conflict", message)
        }
        Rejection::IllegalTransition { .. } => {
            parts(Code::FailedPrecondition, "invalid_transition", message)
        }
        Rejection::Terminal { .. } => parts(Code::FailedPrecondition, "intent_terminal", message),
        Rejection::StaleAttempt { .. } => parts(Code::Aborted, "stale_attempt", message),
        Rejection::PolicyGenerationMismatch { .. } => {
            parts(Code::Aborted, "policy_generation_mismatch", message)
        }
        Rejection::Invalid(_) => parts(Code::InvalidArgument, "schema_invalid", message),
    }
}

fn internal(detail: String) -> Parts {
    tracing::error!(error = %detail, "internal error");
    parts(
        Code::Internal,
        "internal_error",
        "internal error; see the server log",
    )
}

fn classify(error: GrpcError) -> Parts {
    let delivery = match error {
        GrpcError::Invalid(ValidationError::Malformed(m)) => {
            return parts(Code::InvalidArgument, "invalid_request", m)
        }
        GrpcError::Invalid(ValidationError::Rule(m)) => {
            return parts(Code::InvalidArgument, "schema_invalid", m)
        }
        GrpcError::TooLarge(m) => return parts(Code::ResourceExhausted, "payload_too_large", m),
        GrpcError::Setup(detail) => return internal(detail),
        GrpcError::Operation(e) => e,
    };
    let unavailable = |message: &str, secs: u64| Parts {
        retry_after_secs: Some(secs.max(1)),
        ..parts(Code::Unavailable, "unavailable", message)
    };
    match delivery {
        OperationsError::Access(AccessError::Unauthenticated(m)) => {
            parts(Code::Unauthenticated, "auth_failed", m)
        }
        OperationsError::Access(AccessError::Forbidden(m)) => {
            parts(Code::PermissionDenied, "forbidden", m)
        }
        OperationsError::Consensus(ConsensusError::Rejected(r)) => rejection(r),
        OperationsError::Consensus(ConsensusError::Unavailable { retry_after_secs }) => unavailable(
            "the cluster has no leader or no quorum right now",
            retry_after_secs,
        ),
        // Safe to retry only because every write that matters carries an idempotency key or
        // a compare-and-set; the message says so for the ones that do not.
        OperationsError::Consensus(ConsensusError::Ambiguous) => unavailable(
            "leadership changed while the request was committing; it may or may not have \
             been applied; retry with the same idempotency_key",
            RETRY_AFTER_SECS,
        ),
        OperationsError::Consensus(ConsensusError::ClockUnsynchronized(detail)) => unavailable(
            &format!("this node may not accept writes right now: clock not synchronized ({detail}); retry"),
            RETRY_AFTER_SECS,
        ),
        OperationsError::Consensus(ConsensusError::Refused(m)) => {
            parts(Code::FailedPrecondition, "refused", m)
        }
        OperationsError::Consensus(ConsensusError::Internal(detail)) => internal(detail),
        OperationsError::Storage(e) => internal(format!("storage: {e}")),
        OperationsError::ShuttingDown => unavailable(
            "this node is shutting down; retry elsewhere",
            RETRY_AFTER_SECS,
        ),
        OperationsError::Internal(detail) => internal(detail),
    }
}

impl From<GrpcError> for Status {
    fn from(error: GrpcError) -> Status {
        let p = classify(error);
        if p.code == Code::Unavailable {
            tracing::warn!(message = %p.message, "call failed");
        } else if p.code != Code::Internal {
            tracing::debug!(code = ?p.code, message = %p.message, "call refused");
        }
        let mut status = Status::new(p.code, p.message);
        let md = status.metadata_mut();
        md.insert("x-error-code", MetadataValue::from_static(p.error_code));
        if let Some(secs) = p.retry_after_secs {
            md.insert("retry-after", MetadataValue::from(secs));
            // The gRPC retry design's server pushback: clients with a retry policy honour it.
            md.insert("grpc-retry-pushback-ms", MetadataValue::from(secs * 1000));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::Status as Lifecycle;

    fn status(e: impl Into<GrpcError>) -> Status {
        Status::from(e.into())
    }

    fn error_code(s: &Status) -> &str {
        s.metadata().get("x-error-code").unwrap().to_str().unwrap()
    }

    #[test]
    fn rejections_map_by_what_the_client_should_do() {
        let cases = [
            (
                Rejection::IllegalTransition {
                    from: Lifecycle::Submitted,
                    to: Lifecycle::Acknowledged,
                },
                Code::FailedPrecondition,
                "invalid_transition",
            ),
            (
                Rejection::Terminal {
                    from: Lifecycle::Completed,
                    to: Some(Lifecycle::Failed),
                },
                Code::FailedPrecondition,
                "intent_terminal",
            ),
            (
                Rejection::IdempotencyConflict,
                Code::AlreadyExists,
                "idempotency_conflict",
            ),
            (
                Rejection::StaleAttempt {
                    expected: 1,
                    current: 2,
                },
                Code::Aborted,
                "stale_attempt",
            ),
            (
                Rejection::PolicyGenerationMismatch {
                    expected: 1,
                    current: 2,
                },
                Code::Aborted,
                "policy_generation_mismatch",
            ),
            (
                Rejection::NotFound(uuid::Uuid::nil()),
                Code::NotFound,
                "not_found",
            ),
            (
                Rejection::Invalid("x".into()),
                Code::InvalidArgument,
                "schema_invalid",
            ),
        ];
        for (rejection, code, error) in cases {
            let s = status(rejection);
            assert_eq!((s.code(), error_code(&s)), (code, error));
        }
    }

    #[test]
    fn no_quorum_is_unavailable_with_a_retry_hint() {
        let s = status(ConsensusError::Unavailable {
            retry_after_secs: 3,
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get("retry-after").unwrap(), "3");
        assert_eq!(s.metadata().get("grpc-retry-pushback-ms").unwrap(), "3000");
        let s = status(ConsensusError::Ambiguous);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("idempotency_key"));
    }

    #[test]
    fn access_and_validation() {
        let s = status(AccessError::Unauthenticated("unknown API key".into()));
        assert_eq!(s.code(), Code::Unauthenticated);
        let s = status(AccessError::Forbidden("no".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
        let s = status(ValidationError::Malformed("x".into()));
        assert_eq!(
            (s.code(), error_code(&s)),
            (Code::InvalidArgument, "invalid_request")
        );
        let s = status(ValidationError::Rule("x".into()));
        assert_eq!(
            (s.code(), error_code(&s)),
            (Code::InvalidArgument, "schema_invalid")
        );
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let s = status(ConsensusError::Internal("secret path /var/lib/x".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"), "{}", s.message());
    }
}
