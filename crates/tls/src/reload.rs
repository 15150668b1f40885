//! A certificate that can be swapped while the process runs (SIGHUP).
//!
//! rustls asks the resolver for a certificate at every handshake, so a swap reaches every
//! connection made after it and none made before: open connections, SSE streams and gRPC
//! streams keep the session they negotiated.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::{load_certs, load_key, provider, TlsError};

/// The certificate and key files of one identity, and what was last loaded from them.
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// Loads the pair once; an unreadable file or a key that does not fit is an error naming
    /// the file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let current = RwLock::new(read_pair(cert_path, key_path)?);
        Ok(Arc::new(ReloadableCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current,
        }))
    }

    /// Reads the files again and, only if they load, makes them the certificate of every
    /// later handshake. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = read_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().expect("certificate lock poisoned") = fresh;
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().expect("certificate lock poisoned"))
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let pair = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(Arc::new(pair))
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// On the internal plane a node dials with the same certificate it serves with.
impl ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
