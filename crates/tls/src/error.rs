use std::path::PathBuf;

/// What can go wrong with certificates and TLS settings. Each names the file at fault, so a
/// bad path or a key that does not fit its certificate is a clear startup (or reload) error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("the key in {key} does not fit the certificate in {cert}: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn config(e: impl std::fmt::Display) -> Self {
        TlsError::Config(e.to_string())
    }
}
