//! `certs init` checked the way its users rely on it: the node certificates chain to the CA
//! for the names given (as servers and as clients), keys are private, nothing is overwritten
//! unless asked, a reused CA signs certificates the deployed `ca.pem` accepts, and a reload
//! keeps the old certificate when the new files are bad.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use intentd_tls::tokio_rustls::rustls;
use intentd_tls::{init_certs, CertsPlan, NodeNames, ReloadableCert, TlsError};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::ResolvesClientCert as _;
use rustls::pki_types::{ServerName, UnixTime};

fn plan(dir: &Path, nodes: &[&str]) -> CertsPlan {
    CertsPlan {
        dir: dir.to_owned(),
        nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
        days: 365,
        force: false,
        reuse_ca: false,
    }
}

fn roots(ca: &Path) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in intentd_tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

/// Whether the leaf in `cert` verifies against `ca` as a server named `name`.
fn serves_as(ca: &Path, cert: &Path, name: &str) -> bool {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(ca),
        intentd_tls::provider(),
    )
    .build()
    .unwrap();
    let leaf = &intentd_tls::load_certs(cert).unwrap()[0];
    verifier
        .verify_server_cert(
            leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Whether the leaf in `cert` verifies against `ca` as a client certificate.
fn authenticates_as_client(ca: &Path, cert: &Path) -> bool {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca),
        intentd_tls::provider(),
    )
    .build()
    .unwrap();
    let leaf = &intentd_tls::load_certs(cert).unwrap()[0];
    verifier
        .verify_client_cert(leaf, &[], UnixTime::now())
        .is_ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_a_ca_and_node_certificates_that_verify_for_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let written = init_certs(&plan(
        d,
        &["1=node1,10.0.0.1", "2=node2,10.0.0.2", "3=node3,::1"],
    ))
    .unwrap();
    assert_eq!(written.len(), 8, "{written:?}");
    let ca = d.join("ca.pem");
    assert_eq!(mode(&ca), 0o644);
    assert_eq!(mode(&d.join("ca.key")), 0o600);
    for id in 1..=3 {
        assert_eq!(mode(&d.join(format!("node{id}.pem"))), 0o644);
        assert_eq!(mode(&d.join(format!("node{id}.key"))), 0o600);
        // The pair loads and fits (what `serve` does at start).
        ReloadableCert::load(
            &d.join(format!("node{id}.pem")),
            &d.join(format!("node{id}.key")),
        )
        .unwrap();
        assert!(authenticates_as_client(
            &ca,
            &d.join(format!("node{id}.pem"))
        ));
    }
    let node1 = d.join("node1.pem");
    assert!(serves_as(&ca, &node1, "node1"));
    assert!(serves_as(&ca, &node1, "10.0.0.1"));
    assert!(!serves_as(&ca, &node1, "node2"), "a SAN that was not given");
    assert!(!serves_as(&ca, &node1, "10.0.0.2"));
    assert!(serves_as(&ca, &d.join("node3.pem"), "::1"));

    // Another CA's certificates do not verify against this one.
    let other = tempfile::tempdir().unwrap();
    init_certs(&plan(other.path(), &["1=node1"])).unwrap();
    assert!(!serves_as(&ca, &other.path().join("node1.pem"), "node1"));
    assert!(!authenticates_as_client(
        &ca,
        &other.path().join("node1.pem")
    ));
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_certs(&plan(d, &["1=node1"])).unwrap();
    let before = std::fs::read(d.join("ca.key")).unwrap();
    match init_certs(&plan(d, &["1=node1"])) {
        Err(TlsError::Exists { path }) => assert_eq!(path, d.join("ca.pem")),
        other => panic!("overwrote: {other:?}"),
    }
    // A node that is new still refuses when the CA files are there: nothing is written.
    assert!(init_certs(&plan(d, &["2=node2"])).is_err());
    assert!(!d.join("node2.pem").exists());
    assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), before);

    // A key file made world-readable is 0600 again after a forced rewrite.
    std::fs::set_permissions(d.join("node1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    init_certs(&CertsPlan {
        force: true,
        ..plan(d, &["1=node1"])
    })
    .unwrap();
    assert_ne!(std::fs::read(d.join("ca.key")).unwrap(), before);
    assert_eq!(mode(&d.join("node1.key")), 0o600);
}

#[test]
fn a_reused_ca_signs_certificates_that_the_deployed_ca_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_certs(&plan(d, &["1=node1", "2=node2", "3=node3"])).unwrap();
    let deployed = tempfile::tempdir().unwrap();
    let ca = deployed.path().join("ca.pem");
    std::fs::copy(d.join("ca.pem"), &ca).unwrap();

    init_certs(&CertsPlan {
        reuse_ca: true,
        ..plan(d, &["4=node4,10.0.0.4"])
    })
    .unwrap();
    assert_eq!(
        std::fs::read(d.join("ca.pem")).unwrap(),
        std::fs::read(&ca).unwrap(),
        "the CA files are left alone"
    );
    assert!(serves_as(&ca, &d.join("node4.pem"), "node4"));
    assert!(authenticates_as_client(&ca, &d.join("node4.pem")));
}

#[test]
fn a_failed_reload_keeps_the_certificate_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_certs(&plan(d, &["1=node1", "2=node2"])).unwrap();
    let cert = ReloadableCert::load(&d.join("node1.pem"), &d.join("node1.key")).unwrap();
    let leaf = |c: &ReloadableCert| c.resolve(&[], &[]).unwrap().cert[0].clone();
    let first = leaf(&cert);

    // node2's key does not fit node1's certificate: refused, naming both files.
    std::fs::copy(d.join("node2.key"), d.join("node1.key")).unwrap();
    let err = cert.reload().unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("node1.key"), "{err}");
    assert_eq!(leaf(&cert), first);

    // With node2's certificate beside it, the pair fits and is swapped in.
    std::fs::copy(d.join("node2.pem"), d.join("node1.pem")).unwrap();
    cert.reload().unwrap();
    assert_ne!(leaf(&cert), first);

    // A missing file is named too.
    let missing = ReloadableCert::load(&d.join("nope.pem"), &d.join("node2.key")).unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
}

#[test]
fn node_specs_parse() {
    let n: NodeNames = "7=a.example, 10.1.2.3".parse().unwrap();
    assert_eq!(n.id, 7);
    assert_eq!(n.names, vec!["a.example", "10.1.2.3"]);
    assert!("x=a".parse::<NodeNames>().is_err());
    assert!("1=".parse::<NodeNames>().is_err());
    assert!("node1".parse::<NodeNames>().is_err());
}
