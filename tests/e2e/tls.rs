//! TLS everywhere, with certificates from `intentd certs init`: a three-node cluster whose
//! public ports are HTTPS and gRPC over TLS and whose internal plane is mutual TLS (a create
//! through a follower is forwarded over it), and a certificate reload on SIGHUP that new
//! connections see while an SSE stream opened before it stays open.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use intentd_tls::tokio_rustls::rustls;
use tokio::time::Instant;

use crate::support::api::intent_body;
use crate::support::cluster::{Cluster, ClusterOptions, FORM_DEADLINE};
use crate::support::sse::SseStream;

/// Runs `intentd certs init` with `args` into `dir`, failing the test on an error.
fn certs_init(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intentd"))
        .args(["certs", "init", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run intentd certs init");
    assert!(
        out.status.success(),
        "certs init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in intentd_tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(intentd_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The leaf certificate a new TLS connection to `addr` is served.
async fn served_leaf(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = intentd_tls::TlsConnector::from(client_config(ca))
        .connect(intentd_tls::server_name(&addr.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the node");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A gRPC channel over TLS that trusts `ca`.
mod grpc_tls {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use intentd_tls::tokio_rustls::client::TlsStream;
    use intentd_tls::tokio_rustls::rustls::ClientConfig;
    use tokio::net::TcpStream;
    use tonic::codegen::http::Uri;
    use tonic::codegen::Service;
    use tonic::transport::{Channel, Endpoint};

    #[derive(Clone)]
    struct Dial {
        addr: String,
        config: Arc<ClientConfig>,
    }

    impl Service<Uri> for Dial {
        type Response = TokioIo<TlsStream<TcpStream>>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let dial = self.clone();
            Box::pin(async move {
                let tcp = TcpStream::connect(&dial.addr).await?;
                let name = intentd_tls::server_name(&dial.addr).unwrap();
                let tls = intentd_tls::TlsConnector::from(dial.config)
                    .connect(name, tcp)
                    .await?;
                Ok(TokioIo::new(tls))
            })
        }
    }

    pub fn channel(addr: &str, config: Arc<ClientConfig>) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector_lazy(Dial {
                addr: addr.to_owned(),
                config,
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_everywhere_forwards_serves_https_and_grpc_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    certs_init(certs.path(), &[]);
    let ca = certs.path().join("ca.pem");
    let mut cluster = Cluster::start(
        3,
        ClusterOptions {
            tls_dir: Some(certs.path().to_owned()),
            ..ClusterOptions::default()
        },
    )
    .await;
    let leader = cluster.wait_formed(FORM_DEADLINE).await;
    let follower = *cluster.running().iter().find(|id| **id != leader).unwrap();
    let other = *cluster
        .running()
        .iter()
        .find(|id| **id != leader && **id != follower)
        .unwrap();

    // A create through a follower is forwarded to the leader over the mutual TLS plane.
    let id = cluster
        .api(follower)
        .create_ok(&intent_body("agent://acme/prod/worker"))
        .await;
    let read = cluster.api(other).get(&format!("/v1/intents/{id}")).await;
    assert_eq!(read.assert_ok(200)["intent"]["intent_id"], id.as_str());

    // The HTTP port speaks only TLS now.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", cluster.node(other).http_addr))
        .send()
        .await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");

    // gRPC over TLS, trusting the cluster CA.
    let channel = grpc_tls::channel(
        &cluster.node(follower).grpc_addr.to_string(),
        client_config(&ca),
    );
    let status =
        intentd_grpc_api::proto::cluster_service_client::ClusterServiceClient::new(channel)
            .status(intentd_grpc_api::proto::StatusRequest {})
            .await
            .expect("cluster status over gRPC with TLS")
            .into_inner();
    assert_eq!(status.node_id, follower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_streams() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    certs_init(d, &["--node", "1=localhost,127.0.0.1"]);
    let ca = d.join("ca.pem");
    let mut cluster = Cluster::start(
        1,
        ClusterOptions {
            tls_dir: Some(d.to_owned()),
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_formed(FORM_DEADLINE).await;
    let node = cluster.node(1);
    let api = cluster.api(1);
    let old = served_leaf(node.http_addr, &ca).await;
    assert_eq!(
        old,
        intentd_tls::load_certs(&d.join("node1.pem")).unwrap()[0].to_vec()
    );

    let id = api
        .create_ok(&intent_body("agent://acme/prod/worker"))
        .await;
    let path = format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=30");
    let mut stream = SseStream::open_ok(&api, &path, &[]).await;
    assert!(
        stream.next(Duration::from_secs(10)).await.is_some(),
        "the created event"
    );

    // A bad pair (the new certificate without its key) is refused: the old one stays.
    let old_key = std::fs::read(d.join("node1.key")).unwrap();
    certs_init(
        d,
        &["--reuse-ca", "--force", "--node", "1=localhost,127.0.0.1"],
    );
    let new_key = std::fs::read(d.join("node1.key")).unwrap();
    std::fs::write(d.join("node1.key"), &old_key).unwrap();
    let pid = i32::try_from(node.pid()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node
        .log_since_last_start()
        .contains("certificate reload failed")
    {
        assert!(Instant::now() < deadline, "{}", node.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_leaf(node.http_addr, &ca).await,
        old,
        "kept the old certificate"
    );

    // The right key next to it: the next handshakes get the new certificate.
    std::fs::write(d.join("node1.key"), &new_key).unwrap();
    let new = intentd_tls::load_certs(&d.join("node1.pem")).unwrap()[0].to_vec();
    assert_ne!(new, old);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_leaf(node.http_addr, &ca).await != new {
        assert!(Instant::now() < deadline, "{}", node.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_leaf(node.grpc_addr, &ca).await,
        new,
        "the gRPC port too"
    );

    // The stream opened before the reload is still open and still delivers.
    let resolved = api
        .post(
            &format!("/v1/intents/{id}/resolve"),
            &serde_json::json!({"status": "COMPLETED", "result": {"ok": true}}),
        )
        .await;
    resolved.assert_ok(200);
    // Frames still unread from before the reload come first; the terminal one must follow.
    loop {
        let frame = stream
            .next(Duration::from_secs(10))
            .await
            .expect("the stream opened before SIGHUP delivers after it");
        if frame.json()["status"] == "COMPLETED" {
            break;
        }
    }
}

/// Runs `intentd ARGS` (a client subcommand) against `server`, bounded in time; returns
/// (success, stdout, stderr).
async fn run_cli(server: &str, key: &str, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intentd"))
        .args(args)
        .env("INTENTD_SERVER", server)
        .env("INTENTD_API_KEY", key)
        .env_remove("INTENTD_CA_FILE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .unwrap_or_else(|_| panic!("`intentd {}` did not finish in 30s", args.join(" ")))
        .expect("run intentd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client subcommands trust a private CA given with `--ca-file` (or `INTENTD_CA_FILE`),
/// and without it refuse the HTTPS server whose certificate no public root signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subcommands_trust_a_private_ca_with_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    certs_init(certs.path(), &["--node", "1=localhost,127.0.0.1"]);
    let ca = certs.path().join("ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let mut cluster = Cluster::start(
        1,
        ClusterOptions {
            tls_dir: Some(certs.path().to_owned()),
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_formed(FORM_DEADLINE).await;
    let url = cluster.node(1).base_url();
    assert!(url.starts_with("https://"), "{url}");
    let key = cluster.admin_key.clone();

    // Without the CA the certificate is unknown: the command fails, naming no answer.
    let (ok, out, err) = run_cli(&url, &key, &["cluster", "status"]).await;
    assert!(!ok, "trusted a private CA it was not given: {out}");
    assert!(err.contains("calling intentd"), "{err}");

    // With it: a read, a write, an SSE follow and a scenario apply all go over HTTPS.
    let (ok, out, err) = run_cli(&url, &key, &["cluster", "--ca-file", ca_arg, "status"]).await;
    assert!(ok, "cluster status with --ca-file failed: {err}");
    assert!(out.contains("membership"), "{out}");

    let (ok, out, err) = run_cli(
        &url,
        &key,
        &[
            "intents",
            "send",
            "--ca-file",
            ca_arg,
            "--to",
            "agent://acme/prod/worker",
            "--type",
            "payment.charge.v1",
        ],
    )
    .await;
    assert!(ok, "intents send with --ca-file failed: {err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["intent_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (ok, out, err) =
        run_cli(&url, &key, &["intents", "events", &id, "--ca-file", ca_arg]).await;
    assert!(ok, "intents events with --ca-file failed: {err}");
    assert!(out.contains("intent.submitted"), "{out}");

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/replacing-webhooks.scenario.json"
    );
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intentd"))
        .args(["scenarios", "apply", fixture])
        .env("INTENTD_SERVER", &url)
        .env("INTENTD_API_KEY", &key)
        .env("INTENTD_CA_FILE", &ca)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("scenarios apply finished in 30s")
        .expect("run intentd");
    assert!(
        out.status.success(),
        "scenarios apply with INTENTD_CA_FILE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intent_id"));
}
