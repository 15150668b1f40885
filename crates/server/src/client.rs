//! Client subcommands: thin wrappers over the public HTTP API, printing JSON.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::sse::FrameReader;

/// Where and as whom the client talks.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Base URL of any node's HTTP API.
    #[arg(
        long,
        global = true,
        env = "INTENTD_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API key; defaults to the key in ./data/admin.key when that file exists.
    #[arg(long, global = true, env = "INTENTD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM certificates to trust for an `https://` server besides the bundled public roots:
    /// the cluster CA of `intentd certs init` (`certs/ca.pem`) for a private deployment.
    #[arg(long, global = true, env = "INTENTD_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The HTTP client, built once from `ca_file` on first use.
    #[arg(skip)]
    http: std::sync::OnceLock<reqwest::Client>,
}

/// A client that trusts the certificates of `ca_file` besides the bundled public roots.
pub(crate) fn http_client(
    ca_file: Option<&std::path::Path>,
    builder: reqwest::ClientBuilder,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = builder;
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM bundle", path.display()))?;
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the HTTP client")
}

impl Conn {
    /// The client every call of this command shares (one connection pool, one TLS setup).
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        if let Some(client) = self.http.get() {
            return Ok(client.clone());
        }
        let client = http_client(self.ca_file.as_deref(), reqwest::Client::builder())?;
        Ok(self.http.get_or_init(|| client).clone())
    }

    fn key(&self) -> anyhow::Result<String> {
        if let Some(k) = &self.api_key {
            return Ok(k.clone());
        }
        let path = PathBuf::from("./data/admin.key");
        match std::fs::read_to_string(&path) {
            Ok(k) => Ok(k.trim().to_string()),
            Err(_) => bail!("no API key: pass --api-key or set INTENTD_API_KEY"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.trim_end_matches('/'), path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .header("x-api-key", self.key()?)
            .send()
            .await
            .context("calling intentd")?;
        let status = resp.status();
        let body: Value = resp.json().await.context("reading the answer")?;
        if !status.is_success() {
            bail!("{status}: {body}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http()?.get(self.url(path))).await
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http()?.put(self.url(path)).json(body)).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http()?.delete(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value, idem: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.http()?.post(self.url(path)).json(body);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req).await
    }

    /// Follows an SSE stream, calling `on_event(name, id, data)` per event; returns when the
    /// server closes the stream. Returns whether the stream ended with `stream.timeout`.
    async fn sse(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, Option<u64>, Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let resp = self
            .http()?
            .get(self.url(path))
            .header("x-api-key", self.key()?)
            .header("accept", "text/event-stream")
            .send()
            .await
            .context("opening the stream")?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("{status}: {body}");
        }
        let mut stream = resp.bytes_stream();
        let mut reader = FrameReader::default();
        while let Some(chunk) = stream.next().await {
            for frame in reader.feed(&chunk.context("reading the stream")?) {
                if frame.name == "stream.timeout" {
                    return Ok(true);
                }
                if !frame.data.is_empty() {
                    on_event(&frame.name, frame.id, serde_json::from_str(&frame.data)?)?;
                }
            }
        }
        Ok(false)
    }
}

fn print(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

#[derive(Debug, clap::Args)]
pub struct IntentsCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: IntentsAction,
}

#[derive(Debug, clap::Subcommand)]
enum IntentsAction {
    /// Submit an intent.
    Send {
        /// Receiving agent, e.g. agent://acme/prod/payments.
        #[arg(long)]
        to: String,
        /// Intent type, e.g. payment.charge.v1.
        #[arg(long = "type")]
        intent_type: String,
        /// JSON object payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        reply_to: Option<String>,
        /// RFC 3339 deadline after which the intent times out.
        #[arg(long)]
        deadline_at: Option<String>,
    },
    /// Show an intent.
    Get { id: String },
    /// List an intent's events after `since`.
    Events {
        id: String,
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Follow an intent's events until it reaches a terminal status.
    Watch {
        id: String,
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Resume an intent as its receiver with a JSON body (see the API's resume actions).
    Resume {
        id: String,
        #[arg(long, default_value = "{}")]
        body: String,
    },
    /// Resolve an intent: COMPLETED (with --result), FAILED (with --error) or CANCELED.
    Resolve {
        id: String,
        #[arg(long)]
        status: String,
        #[arg(long)]
        result: Option<String>,
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn json_arg(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--{name} is not valid JSON"))
}

impl IntentsCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        match self.action {
            IntentsAction::Send {
                to,
                intent_type,
                payload,
                idempotency_key,
                reply_to,
                deadline_at,
            } => {
                let mut body = json!({
                    "intent_type": intent_type,
                    "correlation_id": uuid::Uuid::new_v4(),
                    "to_agent": to,
                    "payload": json_arg("payload", &payload)?,
                });
                if let Some(r) = reply_to {
                    body["reply_to"] = json!(r);
                }
                if let Some(d) = deadline_at {
                    body["deadline_at"] = json!(d);
                }
                print(
                    &c.post("/v1/intents", &body, idempotency_key.as_deref())
                        .await?,
                );
            }
            IntentsAction::Get { id } => print(&c.get(&format!("/v1/intents/{id}")).await?),
            IntentsAction::Events { id, since } => print(
                &c.get(&format!("/v1/intents/{id}/events?since={since}"))
                    .await?,
            ),
            IntentsAction::Watch { id, since } => watch(c, &id, since).await?,
            IntentsAction::Resume { id, body } => print(
                &c.post(
                    &format!("/v1/intents/{id}/resume"),
                    &json_arg("body", &body)?,
                    None,
                )
                .await?,
            ),
            IntentsAction::Resolve {
                id,
                status,
                result,
                error,
                reason,
            } => {
                let mut body = json!({ "status": status });
                if let Some(r) = result {
                    body["result"] = json_arg("result", &r)?;
                }
                if let Some(e) = error {
                    body["error"] = json_arg("error", &e)?;
                }
                if let Some(r) = reason {
                    body["reason"] = json!(r);
                }
                print(
                    &c.post(&format!("/v1/intents/{id}/resolve"), &body, None)
                        .await?,
                )
            }
        }
        Ok(())
    }
}

/// Prints an intent's events after `since`, one JSON line each, until the terminal one
/// (reconnecting after every `stream.timeout`).
async fn watch(c: &Conn, id: &str, mut since: u64) -> anyhow::Result<()> {
    loop {
        let mut terminal = false;
        let timed_out = c
            .sse(
                &format!("/v1/intents/{id}/events/stream?since={since}&wait_seconds=30"),
                |_, seq, event| {
                    since = seq.unwrap_or(since).max(since);
                    let status = event["status"].as_str().unwrap_or_default();
                    terminal = matches!(status, "COMPLETED" | "FAILED" | "CANCELED" | "TIMED_OUT");
                    println!("{event}");
                    Ok(())
                },
            )
            .await?;
        if terminal || !timed_out {
            return Ok(());
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ScenariosCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: ScenariosAction,
}

#[derive(Debug, clap::Subcommand)]
enum ScenariosAction {
    /// Apply a scenario bundle (a JSON file, `-` for stdin): register its agents and start
    /// its intent and workflow. Prints the answer.
    Apply {
        file: PathBuf,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Then follow the intent's events (one JSON line each) until it is terminal.
        #[arg(long)]
        watch: bool,
    },
    /// Check a bundle without applying it and print the plan, or why it would be refused.
    Validate { file: PathBuf },
}

fn read_bundle(file: &PathBuf) -> anyhow::Result<Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the bundle from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
}

impl ScenariosCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        match self.action {
            ScenariosAction::Apply {
                file,
                idempotency_key,
                watch: follow,
            } => {
                let bundle = read_bundle(&file)?;
                let answer = c
                    .post("/v1/scenarios/apply", &bundle, idempotency_key.as_deref())
                    .await?;
                if !follow {
                    print(&answer);
                    return Ok(());
                }
                // One line per record while watching, so the output stays line-oriented.
                println!("{answer}");
                let id = answer["intent_id"]
                    .as_str()
                    .context("the answer has no intent_id")?;
                watch(c, id, 0).await?;
            }
            ScenariosAction::Validate { file } => print(
                &c.post("/v1/scenarios/validate", &read_bundle(&file)?, None)
                    .await?,
            ),
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct AgentsCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: AgentsAction,
}

#[derive(Debug, clap::Subcommand)]
enum AgentsAction {
    /// Print every delivery for ADDRESS as one JSON line, reconnecting until interrupted.
    Listen {
        address: String,
        /// Resume after this agent-stream cursor.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// List known agents.
    List,
    /// Register ADDRESS and choose how it receives its intents.
    Register {
        address: String,
        /// stream, poll, http, inbox or internal.
        #[arg(long)]
        mode: String,
        /// For http: where the engine POSTs each delivery.
        #[arg(long)]
        url: Option<String>,
        /// For http: the signing secret (a Standard Webhooks `whsec_...` value or any text
        /// of 16+ characters). Shown once here, never by the server.
        #[arg(long, env = "INTENTD_AGENT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// For http: concurrent pushes to the endpoint.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// How long a delivery is leased before it is offered again.
        #[arg(long)]
        ack_timeout_seconds: Option<u64>,
        #[arg(long)]
        max_delivery_attempts: Option<u32>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Lease waiting intents of a poll agent (long-poll) and print them as JSON lines.
    Receive {
        address: String,
        /// At most this many intents (1..=100).
        #[arg(long, default_value_t = 10)]
        max: u32,
        /// Wait up to this long for one when none is waiting (0..=60).
        #[arg(long, default_value_t = 30)]
        wait_seconds: u32,
        /// Acknowledge each leased intent at once.
        #[arg(long)]
        ack: bool,
    },
}

/// The address as a path: the server takes it with or without the scheme.
fn address_path(address: &str) -> &str {
    address.trim_start_matches("agent://").trim_matches('/')
}

/// The body of `PUT /v1/agents/{address}/binding` from the CLI flags.
#[allow(clippy::too_many_arguments)]
fn binding_body(
    mode: String,
    url: Option<String>,
    secret: Option<String>,
    max_concurrency: Option<u32>,
    ack_timeout_seconds: Option<u64>,
    max_delivery_attempts: Option<u32>,
    display_name: Option<String>,
) -> Value {
    let mut body = json!({ "delivery_mode": mode });
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body[k] = v;
        }
    };
    put("url", url.map(Value::from));
    put("secret", secret.map(Value::from));
    put("max_concurrency", max_concurrency.map(Value::from));
    put("ack_timeout_seconds", ack_timeout_seconds.map(Value::from));
    put(
        "max_delivery_attempts",
        max_delivery_attempts.map(Value::from),
    );
    put("display_name", display_name.map(Value::from));
    body
}

impl AgentsCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        match self.action {
            AgentsAction::Listen { address, mut since } => {
                let path = address_path(&address).to_string();
                loop {
                    c.sse(
                        &format!("/v1/agents/{path}/intents/stream?since={since}&wait_seconds=30"),
                        |_, cursor, delivery| {
                            since = cursor.unwrap_or(since).max(since);
                            println!("{delivery}");
                            Ok(())
                        },
                    )
                    .await?;
                }
            }
            AgentsAction::List => print(&c.get("/v1/agents").await?),
            AgentsAction::Register {
                address,
                mode,
                url,
                secret,
                max_concurrency,
                ack_timeout_seconds,
                max_delivery_attempts,
                display_name,
            } => {
                let body = binding_body(
                    mode,
                    url,
                    secret,
                    max_concurrency,
                    ack_timeout_seconds,
                    max_delivery_attempts,
                    display_name,
                );
                let path = format!("/v1/agents/{}/binding", address_path(&address));
                print(&c.put(&path, &body).await?);
            }
            AgentsAction::Receive {
                address,
                max,
                wait_seconds,
                ack,
            } => {
                let path = format!("/v1/agents/{}/intents/receive", address_path(&address));
                let body = json!({ "max": max, "wait_seconds": wait_seconds });
                let answer = c.post(&path, &body, None).await?;
                for delivery in answer["deliveries"].as_array().into_iter().flatten() {
                    println!("{delivery}");
                    if ack {
                        let id = delivery["intent_id"].as_str().unwrap_or_default();
                        let ack_body = json!({ "delivery_attempt": delivery["delivery_attempt"] });
                        c.post(&format!("/v1/intents/{id}/ack"), &ack_body, None)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct DeliveriesCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: DeliveriesAction,
}

#[derive(Debug, clap::Subcommand)]
enum DeliveriesAction {
    /// List dead-lettered deliveries, oldest first.
    List {
        #[arg(long, default_value = "dead_lettered")]
        status: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after this cursor (the `next_cursor` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show an intent's delivery record: attempts, last error, dead letter.
    Get { id: String },
    /// Send a dead-lettered intent again, as a new intent; prints the new id.
    Replay {
        id: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

impl DeliveriesCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        let answer = match self.action {
            DeliveriesAction::List {
                status,
                limit,
                after,
            } => {
                let mut path = format!("/v1/deliveries?status={status}");
                if let Some(l) = limit {
                    path.push_str(&format!("&limit={l}"));
                }
                if let Some(a) = after {
                    path.push_str(&format!("&after={a}"));
                }
                c.get(&path).await?
            }
            DeliveriesAction::Get { id } => c.get(&format!("/v1/deliveries/{id}")).await?,
            DeliveriesAction::Replay {
                id,
                idempotency_key,
            } => {
                c.post(
                    &format!("/v1/deliveries/{id}/replay"),
                    &json!({}),
                    idempotency_key.as_deref(),
                )
                .await?
            }
        };
        print(&answer);
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct WebhooksCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: WebhooksAction,
}

#[derive(Debug, clap::Subcommand)]
enum WebhooksAction {
    /// Subscribe a callback URL to event types (updates the subscription of the same URL).
    Subscribe {
        #[arg(long)]
        url: String,
        /// Comma-separated event types; a trailing `*` matches a prefix (`intent.*`).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Signing secret (16..=128 characters).
        #[arg(long, env = "INTENTD_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Subscribe for this owner instead of the key's own address.
        #[arg(long)]
        owner: Option<String>,
    },
    /// List subscriptions.
    List {
        #[arg(long)]
        owner: Option<String>,
        /// Include paused and revoked subscriptions.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a subscription.
    Revoke {
        id: String,
        #[arg(long)]
        owner: Option<String>,
    },
}

/// `?owner_agent=...` (URL-encoded) or nothing.
fn owner_query(owner: Option<&str>, first: bool) -> String {
    match owner {
        None => String::new(),
        Some(o) => {
            let encoded: String = o
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect();
            format!("{}owner_agent={encoded}", if first { '?' } else { '&' })
        }
    }
}

impl WebhooksCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        let answer = match self.action {
            WebhooksAction::Subscribe {
                url,
                events,
                secret,
                description,
                owner,
            } => {
                let mut body = json!({ "callback_url": url, "event_types": events });
                if let Some(s) = secret {
                    body["secret"] = json!(s);
                }
                if let Some(d) = description {
                    body["description"] = json!(d);
                }
                let path = format!(
                    "/v1/webhooks/subscriptions{}",
                    owner_query(owner.as_deref(), true)
                );
                c.post(&path, &body, None).await?
            }
            WebhooksAction::List { owner, all } => {
                let path = format!(
                    "/v1/webhooks/subscriptions?include_inactive={all}{}",
                    owner_query(owner.as_deref(), false)
                );
                c.get(&path).await?
            }
            WebhooksAction::Revoke { id, owner } => {
                let path = format!(
                    "/v1/webhooks/subscriptions/{id}{}",
                    owner_query(owner.as_deref(), true)
                );
                c.delete(&path).await?
            }
        };
        print(&answer);
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct KeysCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Create a key; the secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// admin, client or agent.
        #[arg(long, default_value = "client")]
        role: String,
        /// For agent keys: the only address the key may act for.
        #[arg(long)]
        address: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

impl KeysCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        match self.action {
            KeysAction::Create {
                name,
                role,
                address,
            } => {
                let mut body = json!({ "name": name, "role": role });
                if let Some(a) = address {
                    body["address"] = json!(a);
                }
                print(&c.post("/v1/admin/keys", &body, None).await?);
            }
            KeysAction::List => print(&c.get("/v1/admin/keys").await?),
            KeysAction::Revoke { id } => print(&c.delete(&format!("/v1/admin/keys/{id}")).await?),
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct ClusterCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterAction {
    /// This node's view of the cluster: role, leader, term, indexes and membership.
    Status,
    /// Add a non-voting member; returns once it has caught up with the log.
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// The new node's raft (internal plane) address, HOST:PORT.
        #[arg(long)]
        raft_addr: String,
    },
    /// Turn a learner into a voter.
    Promote { node_id: u64 },
    /// Remove a voter or learner.
    Remove { node_id: u64 },
}

impl ClusterCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let c = &self.conn;
        let answer = match self.action {
            ClusterAction::Status => c.get("/v1/cluster/status").await?,
            ClusterAction::AddLearner { node_id, raft_addr } => {
                let body = json!({ "node_id": node_id, "raft_addr": raft_addr });
                c.post("/v1/cluster/learners", &body, None).await?
            }
            ClusterAction::Promote { node_id } => {
                c.post(
                    &format!("/v1/cluster/members/{node_id}/promote"),
                    &json!({}),
                    None,
                )
                .await?
            }
            ClusterAction::Remove { node_id } => {
                let req = c
                    .http()?
                    .delete(c.url(&format!("/v1/cluster/members/{node_id}")));
                c.send(req).await?
            }
        };
        print(&answer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_bodies_carry_only_the_flags_given() {
        let body = binding_body("poll".into(), None, None, None, Some(5), None, None);
        assert_eq!(
            body,
            json!({"delivery_mode": "poll", "ack_timeout_seconds": 5})
        );
        let body = binding_body(
            "http".into(),
            Some("https://h.example.com".into()),
            Some("0123456789abcdef".into()),
            Some(2),
            None,
            Some(3),
            Some("Hooks".into()),
        );
        assert_eq!(body["url"], "https://h.example.com");
        assert_eq!(body["max_concurrency"], 2);
        assert_eq!(body["max_delivery_attempts"], 3);
        assert_eq!(body["display_name"], "Hooks");
    }

    #[test]
    fn owners_are_url_encoded() {
        assert_eq!(owner_query(None, true), "");
        assert_eq!(
            owner_query(Some("agent://a/b"), true),
            "?owner_agent=agent%3A%2F%2Fa%2Fb"
        );
        assert_eq!(owner_query(Some("x"), false), "&owner_agent=x");
        assert_eq!(address_path("agent://a/b/c/"), "a/b/c");
    }
}
