//! TLS for intentd's three ports, on one crypto provider (ring, which reqwest's rustls already
//! brings in):
//!
//! ```text
//!  HTTP edge, public gRPC   server TLS, certificate from --tls-cert/--tls-key
//!                           (a `ReloadableCert`: SIGHUP swaps it for new handshakes)
//!  internal Raft plane      mutual TLS: both ends present a certificate signed by the
//!                           cluster CA (--cluster-ca) and check the other's against it,
//!                           so a host that is not a member cannot append, vote or read
//!                           snapshots
//! ```
//!
//! Every port stays plain TCP when its options are absent (tests, the chaos harness).
//! `certs` writes a CA and node certificates for a deployment (`intentd certs init`).

mod certs;
mod error;
mod load;
mod reload;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use certs::{init_certs, CertsPlan, NodeNames, Written};
pub use error::TlsError;
pub use load::{load_certs, load_key};
pub use reload::ReloadableCert;
pub use socket::{accept, Socket};
pub use tokio_rustls::{self, TlsAcceptor, TlsConnector};

/// The process's one crypto provider, named explicitly so that no config depends on which
/// provider happens to be installed as the process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How long a client may take to finish the TLS handshake after connecting; the port's own
/// header or preface timeout starts after it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A public port's server config: no client certificate, the certificate from `cert` (so a
/// reload reaches every later handshake), offering `alpn` in order.
pub fn public_server_config(
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::config)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The internal plane's TLS, both ends of it: a node serves with `server` (a client must
/// present a certificate the cluster CA signed) and dials with `client` (the peer's
/// certificate must chain to the same CA and name the address dialled; this node presents
/// its own).
#[derive(Clone)]
pub struct MutualTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The node's certificate, shared by both configs: one reload renews both.
    pub cert: Arc<ReloadableCert>,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualTls")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl MutualTls {
    /// Builds both configs from the CA bundle at `ca` and the node's certificate.
    pub fn new(ca: &std::path::Path, cert: Arc<ReloadableCert>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for der in load_certs(ca)? {
            roots.add(der).map_err(|e| TlsError::Pem {
                path: ca.to_owned(),
                detail: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(TlsError::config)?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::config)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::config)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(cert.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(MutualTls {
            server: Arc::new(server),
            client: Arc::new(client),
            cert,
        })
    }
}

/// The name a dialled `host:port` address must carry in the peer's certificate: a DNS name
/// or an IP address (brackets of an IPv6 literal removed).
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError::Config(format!("`{addr}` has no usable host name: {e}")))
}
