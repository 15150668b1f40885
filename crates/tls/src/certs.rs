//! `intentd certs init`: a cluster CA and a certificate per node, signed by it.
//!
//! ```text
//!  DIR/ca.pem  ca.key           the cluster CA (10 years); ca.key signs, keep it offline
//!  DIR/node<ID>.pem  .key       one per node: server and client auth, SANs as given
//! ```
//!
//! A node certificate serves every port of its node: the public ports (clients trust
//! `ca.pem`, or a public certificate replaces it there) and the internal plane, where peers
//! check it against `ca.pem` in both directions. Key files are written mode 0600; nothing
//! is overwritten unless asked.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// The CA's subject. A reused CA (`reuse_ca`) is rebuilt from its key with this very name,
/// so that certificates it signs later chain to the `ca.pem` already deployed.
const CA_NAME: &str = "intentd cluster CA";
const CA_DAYS: i64 = 3650;

/// One node: its id (the file name) and the DNS names and IP addresses it is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    pub id: u64,
    pub names: Vec<String>,
}

impl std::str::FromStr for NodeNames {
    type Err = String;

    /// `ID=NAME[,NAME...]`, e.g. `1=node1,10.0.0.1`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (id, names) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}` is not ID=NAME[,NAME...]"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` is not a node id"))?;
        let names: Vec<String> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(format!("node {id} has no name or address"));
        }
        Ok(NodeNames { id, names })
    }
}

/// What `certs init` is asked to write.
#[derive(Debug, Clone)]
pub struct CertsPlan {
    pub dir: PathBuf,
    pub nodes: Vec<NodeNames>,
    /// Validity of the node certificates, from now.
    pub days: u32,
    /// Replace files that exist instead of refusing.
    pub force: bool,
    /// Sign with the CA already in `dir` (its `ca.key`) instead of making a new one: how a
    /// node certificate is renewed or a node added without touching the other nodes.
    pub reuse_ca: bool,
}

/// The files written, certificates and keys.
pub type Written = Vec<PathBuf>;

/// Writes the CA (unless reused) and every node's certificate and key into `plan.dir`.
/// Nothing is written if any target exists and `force` is not set.
pub fn init_certs(plan: &CertsPlan) -> Result<Written, TlsError> {
    if plan.nodes.is_empty() {
        return Err(TlsError::Generate("no nodes given".into()));
    }
    let ca_pem = plan.dir.join("ca.pem");
    let ca_key_path = plan.dir.join("ca.key");
    let mut targets = Vec::new();
    if !plan.reuse_ca {
        targets.extend([ca_pem.clone(), ca_key_path.clone()]);
    }
    for node in &plan.nodes {
        targets.push(node_file(&plan.dir, node.id, "pem"));
        targets.push(node_file(&plan.dir, node.id, "key"));
    }
    if !plan.force {
        if let Some(existing) = targets.iter().find(|p| p.exists()) {
            return Err(TlsError::Exists {
                path: existing.clone(),
            });
        }
    }
    std::fs::create_dir_all(&plan.dir).map_err(|source| TlsError::Write {
        path: plan.dir.clone(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let (ca_key, ca_cert) = if plan.reuse_ca {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|source| TlsError::Read {
            path: ca_key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Pem {
            path: ca_key_path.clone(),
            detail: e.to_string(),
        })?;
        let cert = ca_params(now)?.self_signed(&key).map_err(generate)?;
        (key, cert)
    } else {
        let key = KeyPair::generate().map_err(generate)?;
        let cert = ca_params(now)?.self_signed(&key).map_err(generate)?;
        write_file(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        (key, cert)
    };

    let mut written = if plan.reuse_ca {
        Vec::new()
    } else {
        vec![ca_pem, ca_key_path]
    };
    for node in &plan.nodes {
        let mut params = CertificateParams::new(node.names.clone()).map_err(generate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("intentd node {}", node.id));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // The internal plane is mutual: a node is a server to its peers and a client of them.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(i64::from(plan.days));
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(generate)?;
        let cert_path = node_file(&plan.dir, node.id, "pem");
        let key_path = node_file(&plan.dir, node.id, "key");
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    // It signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    Ok(params)
}

fn node_file(dir: &Path, id: u64, ext: &str) -> PathBuf {
    dir.join(format!("node{id}.{ext}"))
}

fn generate(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Writes `bytes` to `path` with `mode`, also when it replaces a file that had another mode.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}
