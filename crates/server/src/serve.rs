//! `intentd serve`: opens the stores, starts Raft and the internal plane, then the public
//! HTTP and gRPC listeners, and runs until Ctrl-C or SIGTERM.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use intentd_consensus::{ClockPolicy, Cluster, ConsensusError, NodeConfig, RaftTimings};
use intentd_delivery::backoff::Backoff;
use intentd_delivery::{Engine, EngineConfig, Metrics};
use intentd_http_api::auth::{generate_key, hash_key};
use intentd_http_api::ApiConfig;
use intentd_lifecycle::{ApiKey, Command, Role};
use intentd_tls::{MutualTls, ReloadableCert, TlsAcceptor};

use crate::config::Config;

const ADMIN_KEY_FILE: &str = "admin.key";
/// How long a forming node waits for its cluster to elect a leader before giving up.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);

/// The storage options a node's configuration asks for.
fn storage_options(config: &Config) -> intentd_storage::StorageOptions {
    if config.unsafe_skip_log_fsync {
        tracing::warn!(
            "--unsafe-skip-log-fsync: the Raft log is NOT fsynced; acknowledged writes can be \
             lost on power failure. For the chaos harness only."
        );
    }
    intentd_storage::StorageOptions {
        unsafe_skip_log_fsync: config.unsafe_skip_log_fsync,
        ..Default::default()
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = %config.describe(), "starting intentd");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let (log_store, state_machine) =
        intentd_storage::open(&config.data_dir, storage_options(&config))
            .with_context(|| format!("opening storage in {}", config.data_dir.display()))?;

    // Certificates load before anything binds: a wrong path or a key that does not fit is a
    // startup error naming the file.
    let public_cert = match &config.tls {
        Some(tls) => Some(
            ReloadableCert::load(&tls.cert, &tls.key)
                .context("loading the public TLS certificate")?,
        ),
        None => None,
    };
    let acceptor = |alpn: &[&[u8]]| -> anyhow::Result<Option<TlsAcceptor>> {
        public_cert
            .as_ref()
            .map(|cert| {
                intentd_tls::public_server_config(Arc::clone(cert), alpn).map(TlsAcceptor::from)
            })
            .transpose()
            .context("configuring TLS of the public ports")
    };
    let http_tls = acceptor(&[b"h2", b"http/1.1"])?;
    let grpc_tls = acceptor(&[b"h2"])?;
    let cluster_tls = match &config.cluster_tls {
        Some(tls) => {
            let cert = ReloadableCert::load(&tls.cert, &tls.key)
                .context("loading the cluster (internal plane) certificate")?;
            Some(MutualTls::new(&tls.ca, cert).context("loading the cluster CA")?)
        }
        None => None,
    };
    let reloadable: Vec<Arc<ReloadableCert>> = public_cert
        .iter()
        .cloned()
        .chain(cluster_tls.iter().map(|tls| Arc::clone(&tls.cert)))
        .collect();
    if !reloadable.is_empty() {
        tokio::spawn(reload_on_sighup(reloadable));
    }

    // Bind every listener before anything starts, so a taken port fails fast and clearly.
    let raft_listener = TcpListener::bind(config.raft_addr)
        .await
        .with_context(|| format!("binding the raft address {}", config.raft_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the http address {}", config.http_addr))?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the grpc address {}", config.grpc_addr))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let state_handle = state_machine.clone();
    let cluster = intentd_consensus::start(
        NodeConfig {
            node_id: config.node_id,
            peers: config.peers.clone(),
            timings: RaftTimings {
                snapshot_after_logs: config.snapshot_after_logs,
                logs_to_keep: config.snapshot_logs_to_keep,
                ..RaftTimings::default()
            },
            request_timeout: config.request_timeout,
            join: config.join,
            clock: ClockPolicy {
                max_offset: config.max_clock_offset,
                ..ClockPolicy::default()
            },
            tls: cluster_tls,
        },
        log_store,
        state_machine,
        raft_listener,
        stopped(stop_rx.clone()),
    )
    .await
    .context("starting raft")?;

    // Every node runs the engine; it only works while its node leads.
    let metrics = Metrics::new();
    metrics.bind_data_dir(config.data_dir.clone());
    let engine = Engine::new(
        cluster.clone(),
        EngineConfig {
            allow: config.delivery_allow_hosts.clone(),
            backoff: Backoff {
                base: config.delivery_base_backoff,
                cap: config.delivery_max_backoff,
            },
            request_timeout: config.delivery_timeout,
            default_ack_timeout_secs: config.ack_timeout_secs,
            extra_roots_pem: config.delivery_ca_pem.clone().map(Arc::new),
            retention: Some(config.retention),
            ..EngineConfig::default()
        },
        metrics.clone(),
    )
    .context("starting the delivery engine")?;
    let engine = tokio::spawn(engine.run(stopped(stop_rx.clone())));

    if !config.join && config.peers.keys().next() == Some(&config.node_id) {
        ensure_admin_key(&cluster, &config).await?;
    }

    // One per node: its HTTP and gRPC streams of an address take turns with each other.
    let stream_consumers = intentd_operations::StreamConsumers::default();
    metrics.bind_streams(&stream_consumers);
    let api = intentd_http_api::app(
        cluster.clone(),
        ApiConfig {
            max_intent_body_bytes: config.max_intent_bytes,
            default_max_delivery_attempts: config.max_delivery_attempts,
            delivery_allow_hosts: config.delivery_allow_hosts.clone(),
            default_ack_timeout_secs: config.ack_timeout_secs,
            stream_consumers: stream_consumers.clone(),
            ..ApiConfig::default()
        },
        metrics,
    );
    let http = tokio::spawn(intentd_http_api::serve(
        http_listener,
        api,
        config.connections.clone(),
        http_tls,
        stopped(stop_rx.clone()),
    ));
    let grpc = tokio::spawn(intentd_grpc_api::serve(
        grpc_listener,
        cluster.clone(),
        intentd_grpc_api::GrpcConfig {
            max_intent_bytes: config.max_intent_bytes,
            default_max_delivery_attempts: config.max_delivery_attempts,
            default_ack_timeout_secs: config.ack_timeout_secs,
            stream_consumers,
            preface_timeout: config.connections.header_timeout,
            max_connections: config.connections.max_connections,
            tls: grpc_tls,
            handshake_timeout: config.connections.handshake_timeout,
            ..intentd_grpc_api::GrpcConfig::default()
        },
        stopped(stop_rx.clone()),
    ));
    tracing::info!(
        http = %config.http_addr,
        grpc = %config.grpc_addr,
        raft = %config.raft_addr,
        tls = config.tls.is_some(),
        cluster_tls = config.cluster_tls.is_some(),
        "intentd is serving"
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Open streams and long polls end now (their clients reconnect, elsewhere if need be)
    // rather than holding the HTTP and gRPC servers' graceful shutdown open to its limit.
    state_handle.close_waits();
    if let Ok(Err(e)) = http.await {
        tracing::warn!(error = %e, "http server ended with an error");
    }
    if let Ok(Err(e)) = grpc.await {
        tracing::warn!(error = %e, "grpc server ended with an error");
    }
    // The engine drops its in-flight pushes when told to stop; their leases expire and a
    // later leader pushes again.
    if let Err(e) = engine.await {
        tracing::warn!(error = %e, "the delivery engine ended abnormally");
    }
    cluster.shutdown().await;
    if let Err(e) = state_handle.flush().await {
        tracing::warn!(error = %e, "flushing the state machine at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Makes sure the cluster has an admin key. An explicit key is stored (hashed) if missing; a
/// cluster without any admin key gets a generated one, shown once and kept in a 0600 file.
async fn ensure_admin_key(cluster: &Cluster, config: &Config) -> anyhow::Result<()> {
    // A restarted node may not have re-applied its log yet; catch up with the leader before
    // deciding that a key is missing (re-storing a revoked key would revive it). A forming
    // cluster may need a few elections before it can answer, so this retries for a while.
    let deadline = tokio::time::Instant::now() + BOOTSTRAP_TIMEOUT;
    loop {
        match cluster.read_barrier().await {
            Ok(()) => break,
            Err(ConsensusError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tracing::info!("waiting for a leader before checking the admin key");
            }
            Err(e) => return Err(e).context("waiting for the state to catch up"),
        }
    }
    if let Some(secret) = &config.admin_key {
        let hash = hash_key(secret);
        if cluster.reader().api_key(&hash)?.is_none() {
            put_admin_key(cluster, hash, "admin").await?;
            tracing::info!("stored the configured admin key");
        }
        return Ok(());
    }
    let has_admin = cluster
        .reader()
        .api_keys()?
        .iter()
        .any(|(_, k)| k.role == Role::Admin && !k.revoked);
    if has_admin {
        return Ok(());
    }
    let secret = generate_key();
    put_admin_key(cluster, hash_key(&secret), "bootstrap-admin").await?;
    let path = config.data_dir.join(ADMIN_KEY_FILE);
    write_secret_file(&path, &secret)?;
    println!(
        "intentd: created an admin API key (shown once, also in {}):",
        path.display()
    );
    println!("{secret}");
    Ok(())
}

async fn put_admin_key(cluster: &Cluster, key_hash: String, name: &str) -> anyhow::Result<()> {
    let command = Command::PutApiKey {
        key_hash: key_hash.clone(),
        key: ApiKey {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            role: Role::Admin,
            created_at: chrono::Utc::now(),
            revoked: false,
        },
    };
    // The very first write of a fresh node may race its own election; retry until it lands.
    // After an ambiguous answer the key may already be stored, so look before each retry.
    let deadline = tokio::time::Instant::now() + BOOTSTRAP_TIMEOUT;
    loop {
        match cluster.write(command.clone()).await {
            Ok(_) => return Ok(()),
            Err(ConsensusError::Unavailable { .. } | ConsensusError::Ambiguous)
                if tokio::time::Instant::now() < deadline =>
            {
                if cluster.read_barrier().await.is_ok()
                    && cluster.reader().api_key(&key_hash)?.is_some()
                {
                    return Ok(());
                }
            }
            // Right after start the clock probes may not have answered yet.
            Err(ConsensusError::ClockUnsynchronized(detail))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(%detail, "waiting for the clock check before storing the admin key");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("storing the admin key"),
        }
    }
}

fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(())
}

/// Reads every certificate again on each SIGHUP. A certificate that loads serves every later
/// handshake; open connections and streams keep the session they have. One that does not
/// load (missing file, key that does not fit) is reported and the one in use stays.
async fn reload_on_sighup(certs: Vec<Arc<ReloadableCert>>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates will not reload");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        for cert in &certs {
            match cert.reload() {
                Ok(()) => {
                    tracing::info!(cert = %cert.cert_path().display(), "reloaded the TLS certificate")
                }
                Err(e) => tracing::warn!(
                    cert = %cert.cert_path().display(),
                    error = %e,
                    "certificate reload failed; keeping the certificate in use"
                ),
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
