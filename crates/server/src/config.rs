//! Server configuration in layers: built-in defaults, then a TOML file (`--config`), then
//! `INTENTD_*` environment variables, then command-line flags. clap merges the last two
//! (a flag beats its variable); [`ServeArgs::resolve`] lays them over the file and the
//! defaults, and [`Config::validate`] checks the result once, before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use intentd_delivery::AllowList;
use intentd_http_api::ConnLimits;
use intentd_lifecycle::Retention;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The flags of `intentd serve`. Every one is optional here so that an absent flag lets the
/// file or the default decide.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and INTENTD_* variables win over it).
    #[arg(long, env = "INTENTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the Raft log, snapshots and the state machine live [default: ./data].
    #[arg(long, env = "INTENTD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public HTTP API (REST + SSE) [default: 127.0.0.1:8080].
    #[arg(long, env = "INTENTD_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Public gRPC port (gRPC health checking) [default: 127.0.0.1:9090].
    #[arg(long, env = "INTENTD_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Internal Raft plane; never expose it publicly [default: 127.0.0.1:7000].
    #[arg(long, env = "INTENTD_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// This node's id in the cluster [default: 1].
    #[arg(long, env = "INTENTD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Raft addresses of all voters at first formation: `1=HOST:PORT,2=HOST:PORT,...`.
    /// Without it the node forms a one-node cluster on its own --raft-addr.
    #[arg(long, env = "INTENTD_PEERS")]
    pub peers: Option<String>,
    /// An admin API key to ensure exists. Without it, a fresh cluster creates one, prints it
    /// once and writes it to DATA_DIR/admin.key (mode 0600).
    #[arg(long, env = "INTENTD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Largest accepted intent body, in bytes [default: 131072].
    #[arg(long, env = "INTENTD_MAX_INTENT_BYTES")]
    pub max_intent_bytes: Option<usize>,
    /// Delivery attempts before an intent fails with delivery_failed [default: 5].
    #[arg(long, env = "INTENTD_MAX_DELIVERY_ATTEMPTS")]
    pub max_delivery_attempts: Option<u32>,
    /// How long a write or linearizable read may wait for the cluster, in ms [default: 5000].
    #[arg(long, env = "INTENTD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "INTENTD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Never form a cluster; wait to be added by one (a new node, or one whose data was lost).
    #[arg(long, env = "INTENTD_JOIN")]
    pub join: bool,
    /// Build a snapshot after this many log entries since the last one [default: 20000].
    #[arg(long, env = "INTENTD_SNAPSHOT_AFTER_LOGS")]
    pub snapshot_after_logs: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers [default: 1000].
    #[arg(long, env = "INTENTD_SNAPSHOT_LOGS_TO_KEEP")]
    pub snapshot_logs_to_keep: Option<u64>,
    /// Hosts and ranges HTTP pushes may reach although they are private, loopback or
    /// link-local: a comma list of CIDRs (10.0.0.0/8), IPs or host names [default: none].
    #[arg(long, env = "INTENTD_DELIVERY_ALLOW_HOSTS")]
    pub delivery_allow_hosts: Option<String>,
    /// First retry backoff of a failed push, in ms; it doubles per attempt [default: 1000].
    #[arg(long, env = "INTENTD_DELIVERY_BASE_BACKOFF_MS")]
    pub delivery_base_backoff_ms: Option<u64>,
    /// Cap of the retry backoff, in ms [default: 300000].
    #[arg(long, env = "INTENTD_DELIVERY_MAX_BACKOFF_MS")]
    pub delivery_max_backoff_ms: Option<u64>,
    /// Timeout of one HTTP push, in ms [default: 10000].
    #[arg(long, env = "INTENTD_DELIVERY_TIMEOUT_MS")]
    pub delivery_timeout_ms: Option<u64>,
    /// Lease length of a delivery to an agent that registered none, in s [default: 30].
    #[arg(long, env = "INTENTD_ACK_TIMEOUT_SECS")]
    pub ack_timeout_secs: Option<u64>,
    /// PEM file of certificates to trust for HTTPS pushes besides the bundled public roots
    /// (the private CA of the receivers) [default: none].
    #[arg(long, env = "INTENTD_DELIVERY_CA_FILE")]
    pub delivery_ca_file: Option<PathBuf>,
    /// Largest disagreement of this node's wall clock with the other nodes', in ms, before it
    /// refuses writes and leadership [default: 500].
    #[arg(long, env = "INTENTD_MAX_CLOCK_OFFSET_MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// Longest time a client may take to send a request's headers, from its first byte, in ms;
    /// on the gRPC port, to send the HTTP/2 preface after connecting [default: 10000].
    #[arg(long, env = "INTENTD_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Longest time a client may take to send a request body after its headers, in ms; a 408
    /// beyond it [default: 30000].
    #[arg(long, env = "INTENTD_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// How long an HTTP connection may wait for its next request, in ms (open streams and
    /// long polls are requests in progress, never idle) [default: 60000].
    #[arg(long, env = "INTENTD_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Open connections on each public port (HTTP, gRPC); more are refused, over HTTP with a
    /// 503 [default: 16384].
    #[arg(long, env = "INTENTD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long an ended intent (with its events, inbox thread, idempotency claims, queue
    /// entries and webhook deliveries) is kept before it is purged: a number with s, m, h or
    /// d, or `off` (or 0) to keep it forever [default: 7d]. The leader's value is the
    /// cluster's: set the same on every node.
    #[arg(long, env = "INTENTD_RETAIN_TERMINAL_FOR")]
    pub retain_terminal_for: Option<String>,
    /// How long a dead-lettered intent that was not replayed is kept, same form [default:
    /// 30d]. A replayed one is kept like any ended intent from the replay on.
    #[arg(long, env = "INTENTD_RETAIN_DEAD_LETTERS_FOR")]
    pub retain_dead_letters_for: Option<String>,
    /// PEM certificate (chain) of the public ports: with --tls-key, HTTP is HTTPS and gRPC is
    /// TLS. Reloaded on SIGHUP [default: plain TCP].
    #[arg(long, env = "INTENTD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (mode 0600).
    #[arg(long, env = "INTENTD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Longest time a client may take to finish the TLS handshake, in ms [default: 10000].
    #[arg(long, env = "INTENTD_TLS_HANDSHAKE_TIMEOUT_MS")]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// PEM bundle of the cluster CA: with --cluster-cert and --cluster-key the internal plane
    /// is mutual TLS, and only nodes with a certificate it signed may talk to this one
    /// [default: plain TCP].
    #[arg(long, env = "INTENTD_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate on the internal plane, signed by --cluster-ca and naming the
    /// host of its Raft address. Reloaded on SIGHUP.
    #[arg(long, env = "INTENTD_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,
    /// PEM private key of --cluster-cert (mode 0600).
    #[arg(long, env = "INTENTD_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,
    /// TEST-ONLY (jepsen harness): acknowledge Raft log appends without fdatasync, so a power
    /// loss can lose acknowledged writes. Hidden; never use it outside the chaos harness.
    #[arg(long, hide = true)]
    pub unsafe_skip_log_fsync: bool,
}

/// The same settings as they may appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    raft_addr: Option<SocketAddr>,
    node_id: Option<u64>,
    peers: Option<String>,
    admin_key: Option<String>,
    max_intent_bytes: Option<usize>,
    max_delivery_attempts: Option<u32>,
    request_timeout_ms: Option<u64>,
    log_format: Option<String>,
    join: Option<bool>,
    snapshot_after_logs: Option<u64>,
    snapshot_logs_to_keep: Option<u64>,
    delivery_allow_hosts: Option<String>,
    delivery_base_backoff_ms: Option<u64>,
    delivery_max_backoff_ms: Option<u64>,
    delivery_timeout_ms: Option<u64>,
    ack_timeout_secs: Option<u64>,
    delivery_ca_file: Option<PathBuf>,
    max_clock_offset_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    retain_terminal_for: Option<String>,
    retain_dead_letters_for: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_handshake_timeout_ms: Option<u64>,
    cluster_ca: Option<PathBuf>,
    cluster_cert: Option<PathBuf>,
    cluster_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The certificate and key of the public ports (HTTPS, gRPC over TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The internal plane's mutual TLS: the cluster CA and this node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub node_id: u64,
    /// Voters at first formation, this node included.
    pub peers: BTreeMap<u64, String>,
    pub admin_key: Option<String>,
    pub max_intent_bytes: usize,
    pub max_delivery_attempts: u32,
    pub request_timeout: Duration,
    pub log_format: LogFormat,
    pub join: bool,
    pub snapshot_after_logs: u64,
    pub snapshot_logs_to_keep: u64,
    /// Where pushes may go despite the SSRF guard.
    pub delivery_allow_hosts: AllowList,
    pub delivery_base_backoff: Duration,
    pub delivery_max_backoff: Duration,
    pub delivery_timeout: Duration,
    pub ack_timeout_secs: u64,
    /// The contents of `delivery_ca_file`, checked to hold at least one certificate.
    pub delivery_ca_pem: Option<Vec<u8>>,
    pub max_clock_offset: Duration,
    /// TEST-ONLY (jepsen): see `ServeArgs::unsafe_skip_log_fsync`; handed to the WAL as a
    /// storage option.
    pub unsafe_skip_log_fsync: bool,
    /// Bounds on what clients send and how many connections they hold (public ports).
    pub connections: ConnLimits,
    /// TLS of the public ports; `None`: plain HTTP and gRPC.
    pub tls: Option<PublicTls>,
    /// Mutual TLS of the internal plane; `None`: plain.
    pub cluster_tls: Option<ClusterTls>,
    /// How long ended intents are kept (0: forever); the leader makes it the cluster's.
    pub retention: Retention,
}

/// Seven days: a week to look at how an intent ended, well past the 24 h idempotency window
/// (a purge frees the intent's idempotency keys).
pub const DEFAULT_RETAIN_TERMINAL_SECS: u64 = 7 * 24 * 3600;
/// Thirty days: dead letters wait for a person to look at and replay them.
pub const DEFAULT_RETAIN_DEAD_LETTERS_SECS: u64 = 30 * 24 * 3600;

/// A retention period: `off` or `0` (forever), or a whole number with `s`, `m`, `h` or `d`.
pub fn parse_retention_secs(field: &'static str, spec: &str) -> Result<u64, ConfigError> {
    let spec = spec.trim();
    if spec == "off" || spec == "0" {
        return Ok(0);
    }
    let split = spec
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| invalid(field, format!("{spec:?} has no unit (s, m, h or d)")))?;
    let (number, unit) = spec.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| invalid(field, format!("{spec:?} is not a number with a unit")))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        other => {
            return Err(invalid(
                field,
                format!("unknown unit {other:?} (s, m, h or d)"),
            ))
        }
    };
    number
        .checked_mul(scale)
        .filter(|secs| i64::try_from(*secs).is_ok())
        .ok_or_else(|| invalid(field, format!("{spec:?} is too long")))
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_id = self.node_id.or(file.node_id).unwrap_or(1);
        let raft_addr = self
            .raft_addr
            .or(file.raft_addr)
            .unwrap_or_else(|| "127.0.0.1:7000".parse().expect("literal address"));
        let peers = match self.peers.or(file.peers) {
            Some(spec) => parse_peers(&spec)?,
            None => BTreeMap::from([(node_id, raft_addr.to_string())]),
        };
        let log_format = match self.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("log_format", format!("unknown format {other}"))),
        };
        let allow_spec = self
            .delivery_allow_hosts
            .or(file.delivery_allow_hosts)
            .unwrap_or_default();
        let delivery_allow_hosts = AllowList::parse(&allow_spec)
            .map_err(|e| invalid("delivery_allow_hosts", e.to_string()))?;
        let retain = |flag: Option<String>,
                      file: Option<String>,
                      field: &'static str,
                      default: u64| match flag.or(file) {
            Some(spec) => parse_retention_secs(field, &spec),
            None => Ok(default),
        };
        let retention = Retention {
            terminal_secs: retain(
                self.retain_terminal_for,
                file.retain_terminal_for,
                "retain_terminal_for",
                DEFAULT_RETAIN_TERMINAL_SECS,
            )?,
            dead_letter_secs: retain(
                self.retain_dead_letters_for,
                file.retain_dead_letters_for,
                "retain_dead_letters_for",
                DEFAULT_RETAIN_DEAD_LETTERS_SECS,
            )?,
        };
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(PublicTls { cert, key }),
            _ => return Err(invalid("tls_cert", "tls_cert and tls_key go together")),
        };
        let cluster_tls = match (
            self.cluster_ca.or(file.cluster_ca),
            self.cluster_cert.or(file.cluster_cert),
            self.cluster_key.or(file.cluster_key),
        ) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(ClusterTls { ca, cert, key }),
            _ => {
                return Err(invalid(
                    "cluster_ca",
                    "cluster_ca, cluster_cert and cluster_key go together",
                ))
            }
        };
        let config = Config {
            tls,
            cluster_tls,
            retention,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            http_addr: self
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal address")),
            grpc_addr: self
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| "127.0.0.1:9090".parse().expect("literal address")),
            raft_addr,
            node_id,
            peers,
            admin_key: self.admin_key.or(file.admin_key),
            max_intent_bytes: self
                .max_intent_bytes
                .or(file.max_intent_bytes)
                .unwrap_or(128 * 1024),
            max_delivery_attempts: self
                .max_delivery_attempts
                .or(file.max_delivery_attempts)
                .unwrap_or(5),
            request_timeout: Duration::from_millis(
                self.request_timeout_ms
                    .or(file.request_timeout_ms)
                    .unwrap_or(5_000),
            ),
            log_format,
            join: self.join || file.join.unwrap_or(false),
            snapshot_after_logs: self
                .snapshot_after_logs
                .or(file.snapshot_after_logs)
                .unwrap_or(20_000),
            snapshot_logs_to_keep: self
                .snapshot_logs_to_keep
                .or(file.snapshot_logs_to_keep)
                .unwrap_or(1_000),
            delivery_allow_hosts,
            delivery_base_backoff: Duration::from_millis(
                self.delivery_base_backoff_ms
                    .or(file.delivery_base_backoff_ms)
                    .unwrap_or(1_000),
            ),
            delivery_max_backoff: Duration::from_millis(
                self.delivery_max_backoff_ms
                    .or(file.delivery_max_backoff_ms)
                    .unwrap_or(300_000),
            ),
            delivery_timeout: Duration::from_millis(
                self.delivery_timeout_ms
                    .or(file.delivery_timeout_ms)
                    .unwrap_or(10_000),
            ),
            ack_timeout_secs: self
                .ack_timeout_secs
                .or(file.ack_timeout_secs)
                .unwrap_or(intentd_lifecycle::DEFAULT_ACK_TIMEOUT_SECS),
            delivery_ca_pem: match self.delivery_ca_file.or(file.delivery_ca_file) {
                Some(path) => Some(read_ca_file(&path)?),
                None => None,
            },
            max_clock_offset: Duration::from_millis(
                self.max_clock_offset_ms
                    .or(file.max_clock_offset_ms)
                    .unwrap_or(500),
            ),
            unsafe_skip_log_fsync: self.unsafe_skip_log_fsync,
            connections: {
                let defaults = ConnLimits::default();
                let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
                    flag.or(file).map_or(default, Duration::from_millis)
                };
                ConnLimits {
                    header_timeout: ms(
                        self.header_timeout_ms,
                        file.header_timeout_ms,
                        defaults.header_timeout,
                    ),
                    body_timeout: ms(
                        self.body_timeout_ms,
                        file.body_timeout_ms,
                        defaults.body_timeout,
                    ),
                    idle_timeout: ms(
                        self.idle_timeout_ms,
                        file.idle_timeout_ms,
                        defaults.idle_timeout,
                    ),
                    max_connections: self
                        .max_connections
                        .or(file.max_connections)
                        .unwrap_or(defaults.max_connections),
                    handshake_timeout: ms(
                        self.tls_handshake_timeout_ms,
                        file.tls_handshake_timeout_ms,
                        defaults.handshake_timeout,
                    ),
                }
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// Reads a PEM bundle and makes sure it holds certificates, so a wrong path or file fails at
/// start instead of at the first HTTPS push.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| invalid("delivery_ca_file", format!("{}: {e}", path.display())))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(invalid(
            "delivery_ca_file",
            format!("{} holds no PEM certificate", path.display()),
        )),
        Err(e) => Err(invalid(
            "delivery_ca_file",
            format!("{}: {e}", path.display()),
        )),
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be at least 1"));
        }
        if !self.peers.contains_key(&self.node_id) {
            return Err(invalid(
                "peers",
                format!("node {} is not among the peers", self.node_id),
            ));
        }
        let ports = [self.http_addr, self.grpc_addr, self.raft_addr];
        for (i, a) in ports.iter().enumerate() {
            if ports[i + 1..].contains(a) {
                return Err(invalid(
                    "addresses",
                    format!("{a} is used for two listeners; the internal plane needs its own port"),
                ));
            }
        }
        if let Some(key) = &self.admin_key {
            if key.len() < 16 {
                return Err(invalid("admin_key", "must be at least 16 characters"));
            }
        }
        if self.max_intent_bytes < 1024 {
            return Err(invalid("max_intent_bytes", "must be at least 1024"));
        }
        if self.max_delivery_attempts == 0 {
            return Err(invalid("max_delivery_attempts", "must be at least 1"));
        }
        if self.snapshot_after_logs == 0 {
            return Err(invalid("snapshot_after_logs", "must be at least 1"));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(invalid("request_timeout_ms", "must be at least 100"));
        }
        if self.delivery_base_backoff.is_zero() {
            return Err(invalid("delivery_base_backoff_ms", "must be at least 1"));
        }
        if self.delivery_max_backoff < self.delivery_base_backoff {
            return Err(invalid(
                "delivery_max_backoff_ms",
                "must be at least delivery_base_backoff_ms",
            ));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(invalid("delivery_timeout_ms", "must be at least 100"));
        }
        if self.ack_timeout_secs == 0 {
            return Err(invalid("ack_timeout_secs", "must be at least 1"));
        }
        // Below a few ms the probes' own round trip would fence healthy nodes; above a minute
        // lease and retry times could be off by more than their own length.
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.max_clock_offset) {
            return Err(invalid(
                "max_clock_offset_ms",
                "must be between 10 and 60000",
            ));
        }
        let c = &self.connections;
        for (field, value) in [
            ("header_timeout_ms", c.header_timeout),
            ("body_timeout_ms", c.body_timeout),
            ("idle_timeout_ms", c.idle_timeout),
            ("tls_handshake_timeout_ms", c.handshake_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(field, "must be at least 100"));
            }
        }
        // The permits of every connection are taken back at once at shutdown.
        if c.max_connections == 0 || u32::try_from(c.max_connections).is_err() {
            return Err(invalid("max_connections", "must be between 1 and 2^32-1"));
        }
        Ok(())
    }

    /// The settings as a log line, without secrets.
    pub fn describe(&self) -> String {
        format!(
            "node_id={} data_dir={} http={} grpc={} raft={} peers={:?} join={} admin_key={} max_intent_bytes={} max_delivery_attempts={} request_timeout={:?} snapshot_after_logs={} snapshot_logs_to_keep={} delivery_allow_hosts=[{}] delivery_base_backoff={:?} delivery_max_backoff={:?} delivery_timeout={:?} ack_timeout_secs={} delivery_ca={} max_clock_offset={:?} header_timeout={:?} body_timeout={:?} idle_timeout={:?} max_connections={} retain_terminal_secs={} retain_dead_letters_secs={} tls={} cluster_tls={}",
            self.node_id,
            self.data_dir.display(),
            self.http_addr,
            self.grpc_addr,
            self.raft_addr,
            self.peers,
            self.join,
            if self.admin_key.is_some() { "<set>" } else { "<none>" },
            self.max_intent_bytes,
            self.max_delivery_attempts,
            self.request_timeout,
            self.snapshot_after_logs,
            self.snapshot_logs_to_keep,
            self.delivery_allow_hosts,
            self.delivery_base_backoff,
            self.delivery_max_backoff,
            self.delivery_timeout,
            self.ack_timeout_secs,
            if self.delivery_ca_pem.is_some() { "<set>" } else { "<none>" },
            self.max_clock_offset,
            self.connections.header_timeout,
            self.connections.body_timeout,
            self.connections.idle_timeout,
            self.connections.max_connections,
            self.retention.terminal_secs,
            self.retention.dead_letter_secs,
            match &self.tls {
                Some(tls) => format!("{}", tls.cert.display()),
                None => "<off>".into(),
            },
            match &self.cluster_tls {
                Some(tls) => format!("ca={},cert={}", tls.ca.display(), tls.cert.display()),
                None => "<off>".into(),
            },
        )
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| invalid("peers", format!("`{part}` is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid("peers", format!("`{id}` is not a node id")))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(invalid("peers", format!("`{addr}` is not HOST:PORT")));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(invalid("peers", format!("node {id} is named twice")));
        }
    }
    if peers.is_empty() {
        return Err(invalid("peers", "no peers given"));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_form_a_one_node_cluster() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.node_id, 1);
        assert!(c.delivery_allow_hosts.is_empty());
        assert_eq!(c.delivery_base_backoff, Duration::from_secs(1));
        assert_eq!(c.delivery_max_backoff, Duration::from_secs(300));
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert_eq!(c.ack_timeout_secs, 30);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.peers, BTreeMap::from([(1, "127.0.0.1:7000".to_string())]));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = 2\nhttp_addr = \"127.0.0.1:8082\"\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            http_addr: Some("127.0.0.1:9999".parse().unwrap()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9999");
        assert_eq!(c.peers.len(), 2);
    }

    #[test]
    fn a_ca_file_must_exist_and_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [empty, dir.path().join("missing.pem")] {
            let args = ServeArgs {
                delivery_ca_file: Some(path.clone()),
                ..Default::default()
            };
            match args.resolve() {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "delivery_ca_file"),
                other => panic!("{} accepted: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn connection_limits_layer_and_are_checked() {
        let c = ServeArgs::default().resolve().unwrap().connections;
        assert_eq!(
            (
                c.header_timeout,
                c.body_timeout,
                c.idle_timeout,
                c.max_connections
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(60),
                16_384
            )
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "header_timeout_ms = 2000\nidle_timeout_ms = 4000\nmax_connections = 50\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            idle_timeout_ms: Some(3000),
            body_timeout_ms: Some(7000),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.connections.header_timeout, Duration::from_secs(2));
        assert_eq!(c.connections.body_timeout, Duration::from_secs(7));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(3));
        assert_eq!(c.connections.max_connections, 50);
        assert!(
            c.describe().contains("max_connections=50"),
            "{}",
            c.describe()
        );
        for (args, field) in [
            (
                ServeArgs {
                    header_timeout_ms: Some(10),
                    ..Default::default()
                },
                "header_timeout_ms",
            ),
            (
                ServeArgs {
                    max_connections: Some(0),
                    ..Default::default()
                },
                "max_connections",
            ),
        ] {
            match args.resolve() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: accepted {other:?}"),
            }
        }
    }

    #[test]
    fn retention_layers_parses_units_and_refuses_nonsense() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.retention.terminal_secs, DEFAULT_RETAIN_TERMINAL_SECS);
        assert_eq!(
            c.retention.dead_letter_secs,
            DEFAULT_RETAIN_DEAD_LETTERS_SECS
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "retain_terminal_for = \"2h\"\nretain_dead_letters_for = \"off\"\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (c.retention.terminal_secs, c.retention.dead_letter_secs),
            (7200, 0)
        );
        let c = ServeArgs {
            config: Some(path),
            retain_terminal_for: Some("90s".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.retention.terminal_secs, 90);
        assert!(c.describe().contains("retain_terminal_secs=90"));
        for (spec, secs) in [("0", 0), ("5m", 300), ("3d", 259_200), ("1s", 1)] {
            assert_eq!(parse_retention_secs("f", spec).unwrap(), secs, "{spec}");
        }
        for bad in ["", "7", "d", "7w", "-1d", "1.5h", "99999999999999999999d"] {
            let args = ServeArgs {
                retain_dead_letters_for: Some(bad.into()),
                ..Default::default()
            };
            match args.resolve() {
                Err(ConfigError::Invalid { field, .. }) => {
                    assert_eq!(field, "retain_dead_letters_for", "{bad}")
                }
                other => panic!("{bad:?}: accepted {other:?}"),
            }
        }
    }

    #[test]
    fn tls_settings_layer_and_come_in_whole_sets() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!((c.tls, c.cluster_tls), (None, None), "plain unless asked");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "tls_cert = \"/etc/intentd/node1.pem\"\ntls_key = \"/etc/intentd/node1.key\"\ncluster_ca = \"/etc/intentd/ca.pem\"\ncluster_cert = \"/etc/intentd/node1.pem\"\ncluster_key = \"/etc/intentd/node1.key\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            tls_cert: Some("/flag/cert.pem".into()),
            tls_handshake_timeout_ms: Some(2500),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(
            c.tls,
            Some(PublicTls {
                cert: "/flag/cert.pem".into(),
                key: "/etc/intentd/node1.key".into()
            })
        );
        assert_eq!(
            c.cluster_tls.unwrap().ca,
            PathBuf::from("/etc/intentd/ca.pem")
        );
        assert_eq!(c.connections.handshake_timeout, Duration::from_millis(2500));
        for (args, field) in [
            (
                ServeArgs {
                    tls_cert: Some("a.pem".into()),
                    ..Default::default()
                },
                "tls_cert",
            ),
            (
                ServeArgs {
                    cluster_ca: Some("ca.pem".into()),
                    cluster_cert: Some("n.pem".into()),
                    ..Default::default()
                },
                "cluster_ca",
            ),
        ] {
            match args.resolve() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: accepted {other:?}"),
            }
        }
    }

    #[test]
    fn clock_offset_bounds_are_enforced() {
        for ms in [5, 60_001] {
            let args = ServeArgs {
                max_clock_offset_ms: Some(ms),
                ..Default::default()
            };
            match args.resolve() {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "max_clock_offset_ms"),
                other => panic!("{ms} ms accepted: {other:?}"),
            }
        }
        assert_eq!(
            ServeArgs::default().resolve().unwrap().max_clock_offset,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let unknown_peer = ServeArgs {
            node_id: Some(4),
            peers: Some("1=a:1,2=b:2".into()),
            ..Default::default()
        };
        assert!(unknown_peer
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("peers"));
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        let same_port = ServeArgs {
            http_addr: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        assert!(same_port.resolve().is_err());
    }

    #[test]
    fn delivery_settings_layer_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "delivery_allow_hosts = \"127.0.0.1, 10.0.0.0/8\"\ndelivery_timeout_ms = 2500\nack_timeout_secs = 12\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ack_timeout_secs: Some(45),
            delivery_base_backoff_ms: Some(50),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert!(c
            .delivery_allow_hosts
            .allows_ip("10.2.3.4".parse().unwrap()));
        assert_eq!(c.delivery_timeout, Duration::from_millis(2500));
        assert_eq!(c.delivery_base_backoff, Duration::from_millis(50));
        assert_eq!(c.ack_timeout_secs, 45);
        assert!(c
            .describe()
            .contains("delivery_allow_hosts=[127.0.0.1/32,10.0.0.0/8]"));
        let bad_list = ServeArgs {
            delivery_allow_hosts: Some("10.0.0.0/99".into()),
            ..Default::default()
        };
        assert!(bad_list
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("delivery_allow_hosts"));
        let inverted = ServeArgs {
            delivery_base_backoff_ms: Some(5_000),
            delivery_max_backoff_ms: Some(1_000),
            ..Default::default()
        };
        assert!(inverted.resolve().is_err());
    }
}
