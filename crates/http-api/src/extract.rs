//! Extractors for request bodies and headers, so handlers only see checked input and every
//! rejection comes out as an [`ApiError`] (never axum's plain-text rejections).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use intentd_lifecycle::validate::ValidationError;
use serde_json::Value;

use crate::error::ApiError;

/// A request body that parsed as JSON. Route body-size limits (`DefaultBodyLimit`) apply
/// while reading it, and an oversized body is a 413.
pub(crate) struct JsonBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::InvalidRequest(
                "a JSON request body is required".into(),
            ));
        }
        intentd_lifecycle::json::parse(&bytes)
            .map(JsonBody)
            .map_err(|e| ValidationError::from(e).into())
    }
}

/// `axum::extract::Path` with its rejection turned into an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct PathParam<T>(pub(crate) T);

/// `axum::extract::Query` with its rejection (a 400) turned into an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct QueryParams<T>(pub(crate) T);

/// The owner a request names: the `owner_agent` query parameter, else the gateway's
/// `x-owner-agent` header (the SDK sends the parameter; other gateway clients the header).
/// Whether the caller may act for it is `Caller::owner`'s decision.
pub(crate) struct NamedOwner(pub(crate) Option<String>);

#[derive(serde::Deserialize)]
struct OwnerParam {
    owner_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for NamedOwner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let QueryParams(param) =
            QueryParams::<OwnerParam>::from_request_parts(parts, state).await?;
        if let Some(owner) = param.owner_agent.filter(|o| !o.trim().is_empty()) {
            return Ok(NamedOwner(Some(owner)));
        }
        let header = match parts.headers.get("x-owner-agent") {
            None => None,
            Some(raw) => Some(
                raw.to_str()
                    .map_err(|_| ApiError::InvalidRequest("x-owner-agent must be ASCII".into()))?
                    .trim()
                    .to_string(),
            ),
        };
        Ok(NamedOwner(header.filter(|h| !h.is_empty())))
    }
}

/// The optional `Idempotency-Key` header.
pub(crate) struct IdempotencyKey(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = raw
            .to_str()
            .map_err(|_| ApiError::InvalidRequest("Idempotency-Key must be ASCII".into()))?;
        // The length rule is shared with gRPC's `idempotency_key` field.
        Ok(IdempotencyKey(Some(
            intentd_lifecycle::validate::idempotency_key(key)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn json(body: &'static str) -> Result<Value, ApiError> {
        let req = Request::builder().uri("/").body(Body::from(body)).unwrap();
        JsonBody::from_request(req, &()).await.map(|b| b.0)
    }

    #[tokio::test]
    async fn bad_or_empty_json_is_400() {
        assert_eq!(json("{").await.unwrap_err().code(), "invalid_request");
        assert_eq!(json("  ").await.unwrap_err().code(), "invalid_request");
        assert_eq!(json(r#"{"a":1}"#).await.unwrap()["a"], 1);
    }

    async fn owner(uri: &str, header: Option<&str>) -> Option<String> {
        let mut builder = Request::builder().uri(uri);
        if let Some(h) = header {
            builder = builder.header("x-owner-agent", h);
        }
        let mut parts = builder.body(()).unwrap().into_parts().0;
        NamedOwner::from_request_parts(&mut parts, &())
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn the_owner_comes_from_the_query_then_the_header() {
        assert_eq!(
            owner("/?owner_agent=a/b/c", Some("x/y")).await.as_deref(),
            Some("a/b/c")
        );
        assert_eq!(
            owner("/?owner_agent=", Some("x/y")).await.as_deref(),
            Some("x/y")
        );
        assert_eq!(owner("/", None).await, None);
    }

    #[tokio::test]
    async fn idempotency_key_header() {
        let mut parts = Request::builder()
            .header("Idempotency-Key", "abc")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let key = IdempotencyKey::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(key.0.as_deref(), Some("abc"));
        let long = "k".repeat(256);
        let mut parts = Request::builder()
            .header("Idempotency-Key", long)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(IdempotencyKey::from_request_parts(&mut parts, &())
            .await
            .is_err());
    }
}
