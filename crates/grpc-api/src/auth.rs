//! Who is calling: the same keys, lookup and rules as the HTTP edge, read from metadata.

use intentd_consensus::Cluster;
use intentd_lifecycle::{presented_secret, ApiKey};
use tonic::metadata::MetadataMap;

use crate::GrpcError;

/// Authenticates a call by its `x-api-key` or `authorization: Bearer` metadata. A value that
/// is not visible ASCII counts as present but empty, so a garbled `x-api-key` is refused
/// rather than bypassed for the bearer token (as on HTTP).
pub(crate) async fn caller(cluster: &Cluster, metadata: &MetadataMap) -> Result<ApiKey, GrpcError> {
    let get = |name: &str| metadata.get(name).map(|v| v.to_str().unwrap_or(""));
    let secret = presented_secret(get("x-api-key"), get("authorization"));
    Ok(intentd_operations::intents::authenticate(cluster, secret).await?)
}
