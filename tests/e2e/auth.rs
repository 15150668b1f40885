//! Authentication (401) and scopes (403): admin, client and agent keys.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{address_path, intent_body, within, Api, Server, SseStream, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);
const LEDGER: &str = "agent://acme/prod/ledger";

#[tokio::test]
async fn missing_or_unknown_key_is_401() {
    within(LIMIT, async {
        let server = Server::start().await;
        let anon = server.anonymous();
        anon.get("/v1/capabilities")
            .await
            .assert_error(401, "auth_failed");
        anon.create(&intent_body(PAYMENTS), None)
            .await
            .assert_error(401, "auth_failed");
        let id = server.admin().create_ok(&intent_body(PAYMENTS)).await;
        anon.get(&format!("/v1/intents/{id}"))
            .await
            .assert_error(401, "auth_failed");

        let stranger = anon.with_key("no-such-key-0000000000000000");
        stranger
            .get(&format!("/v1/intents/{id}"))
            .await
            .assert_error(401, "auth_failed");
        let bearer = Api::send(
            anon.builder(Method::GET, &format!("/v1/intents/{id}"))
                .header("Authorization", "Bearer no-such-key-0000000000000000"),
        )
        .await;
        bearer.assert_error(401, "auth_failed");
        anon.get("/v1/admin/keys")
            .await
            .assert_error(401, "auth_failed");
        match SseStream::open(
            &anon,
            &format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=1"),
            &[],
        )
        .await
        {
            Ok(_) => panic!("anonymous intent stream was accepted"),
            Err(resp) => {
                resp.assert_error(401, "auth_failed");
            }
        }
    })
    .await
}

#[tokio::test]
async fn agent_key_is_confined_to_its_own_address() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (agent_key, _) = admin
            .create_key("payments-agent", "agent", Some(PAYMENTS))
            .await;
        let agent = admin.with_key(&agent_key);

        let mine = admin.create_ok(&intent_body(PAYMENTS)).await;
        let theirs = admin.create_ok(&intent_body(LEDGER)).await;

        // Listening: own address yes, another no.
        let own = format!(
            "/v1/agents/{}/intents/stream?since=0&wait_seconds=1",
            address_path(PAYMENTS)
        );
        SseStream::open_ok(&agent, &own, &[]).await;
        let other = format!(
            "/v1/agents/{}/intents/stream?since=0&wait_seconds=1",
            address_path(LEDGER)
        );
        match SseStream::open(&agent, &other, &[]).await {
            Ok(_) => panic!("agent key could listen on another address"),
            Err(resp) => {
                resp.assert_error(403, "forbidden");
            }
        }

        // Resume and resolve: own intents yes, others no (and nothing changes).
        agent
            .post(
                &format!("/v1/intents/{theirs}/resume"),
                &json!({"action": "progress"}),
            )
            .await
            .assert_error(403, "forbidden");
        agent
            .post(
                &format!("/v1/intents/{theirs}/resolve"),
                &json!({"status": "COMPLETED", "result": {}}),
            )
            .await
            .assert_error(403, "forbidden");
        assert_eq!(admin.intent(&theirs).await["status"], json!("SUBMITTED"));

        let r = agent
            .post(
                &format!("/v1/intents/{mine}/resume"),
                &json!({"action": "progress"}),
            )
            .await;
        r.assert_ok(200);
        let r = agent
            .post(
                &format!("/v1/intents/{mine}/resolve"),
                &json!({"status": "COMPLETED", "result": {"n": 1}}),
            )
            .await;
        r.assert_ok(200);

        // No admin routes for an agent key.
        agent
            .get("/v1/admin/keys")
            .await
            .assert_error(403, "forbidden");
        agent
            .post(
                "/v1/admin/keys",
                &json!({"name": "sneaky", "role": "admin"}),
            )
            .await
            .assert_error(403, "forbidden");
    })
    .await
}

#[tokio::test]
async fn client_key_cannot_administer_and_revoked_keys_stop_working() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (client_key, client_id) = admin.create_key("checkout", "client", None).await;
        let client = admin.with_key(&client_key);

        let id = client.create_ok(&intent_body(PAYMENTS)).await;
        assert_eq!(client.intent(&id).await["intent_id"], json!(id));
        client
            .get("/v1/admin/keys")
            .await
            .assert_error(403, "forbidden");
        client
            .post(
                "/v1/admin/keys",
                &json!({"name": "escalate", "role": "admin"}),
            )
            .await
            .assert_error(403, "forbidden");

        let list = admin.get("/v1/admin/keys").await;
        let body = list.assert_ok(200);
        assert!(
            list.text.contains(&client_id),
            "created key id missing from the key list: {body}"
        );
        assert!(
            !list.text.contains(&client_key),
            "the key list leaks a secret: {body}"
        );

        admin
            .delete(&format!("/v1/admin/keys/{client_id}"))
            .await
            .assert_ok(200);
        client
            .get(&format!("/v1/intents/{id}"))
            .await
            .assert_error(401, "auth_failed");
    })
    .await
}

/// Who asks, in the columns of the README's role table.
const WHO: [&str; 5] = ["admin", "sender", "other client", "receiver", "other agent"];

/// What a cell of the role table allows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    /// The request succeeds (2xx).
    Ok,
    /// The request is not refused for the key's role: it may still fail for another reason
    /// (an ack of an attempt never delivered is a 409), never with 401 or 403.
    Allowed,
    /// 403 `forbidden`.
    Forbidden,
}

use Cell::{Allowed, Forbidden, Ok as Yes};

/// One row: a request made by each key in turn, on a fresh intent sent by the `sender`
/// client key to `PAYMENTS` (the `receiver` agent key's address).
struct Row {
    action: &'static str,
    method: Method,
    /// `{id}` is replaced by the fresh intent's id, `{receiver}` by the receiver's path.
    path: &'static str,
    body: Option<serde_json::Value>,
    cells: [Cell; 5],
}

fn row(
    action: &'static str,
    method: Method,
    path: &'static str,
    body: Option<serde_json::Value>,
    cells: [Cell; 5],
) -> Row {
    Row {
        action,
        method,
        path,
        body,
        cells,
    }
}

/// Every cell of the role table over HTTP. Before the roles were tightened, the `other
/// client` column answered 200 everywhere a receiver's or owner's right was needed (it
/// completed another agent's intent, leased its queue, rebound it and read its inbox).
#[tokio::test]
async fn every_cell_of_the_role_table() {
    within(Duration::from_secs(240), async {
        let server = Server::start().await;
        let admin = server.admin();
        let (sender, _) = admin.create_key("checkout", "client", None).await;
        let (other_client, _) = admin.create_key("stranger", "client", None).await;
        let (receiver, _) = admin
            .create_key("payments-agent", "agent", Some(PAYMENTS))
            .await;
        let (other_agent, _) = admin
            .create_key("ledger-agent", "agent", Some(LEDGER))
            .await;
        let keys = [
            admin.clone(),
            admin.with_key(&sender),
            admin.with_key(&other_client),
            admin.with_key(&receiver),
            admin.with_key(&other_agent),
        ];
        let sending = &keys[1];
        let rows = [
            row(
                "read the intent",
                Method::GET,
                "/v1/intents/{id}",
                None,
                [Yes, Yes, Forbidden, Yes, Forbidden],
            ),
            row(
                "read its events",
                Method::GET,
                "/v1/intents/{id}/events",
                None,
                [Yes, Yes, Forbidden, Yes, Forbidden],
            ),
            row(
                "resolve",
                Method::POST,
                "/v1/intents/{id}/resolve",
                Some(json!({"status": "COMPLETED", "result": {"n": 1}})),
                [Yes, Yes, Forbidden, Yes, Forbidden],
            ),
            row(
                "cancel",
                Method::POST,
                "/v1/intents/{id}/resolve",
                Some(json!({"status": "CANCELED", "reason": "no longer needed"})),
                [Yes, Yes, Forbidden, Yes, Forbidden],
            ),
            row(
                "resume as the receiver",
                Method::POST,
                "/v1/intents/{id}/resume",
                Some(json!({"action": "progress"})),
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
            row(
                "complete by resume",
                Method::POST,
                "/v1/intents/{id}/resume",
                Some(json!({"action": "complete", "done": true})),
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
            row(
                "approve_current_step",
                Method::POST,
                "/v1/intents/{id}/resume",
                Some(json!({"approve_current_step": true, "reason": "gated by the owner"})),
                [Yes, Yes, Forbidden, Yes, Forbidden],
            ),
            row(
                "controls",
                Method::POST,
                "/v1/intents/{id}/controls",
                Some(json!({"controls_patch": {"priority": "high"}})),
                [Yes, Yes, Forbidden, Forbidden, Forbidden],
            ),
            row(
                "policy",
                Method::POST,
                "/v1/intents/{id}/policy",
                Some(json!({"grants_patch": {"refund": true}})),
                [Yes, Yes, Forbidden, Forbidden, Forbidden],
            ),
            row(
                "ack a delivery",
                Method::POST,
                "/v1/intents/{id}/ack",
                Some(json!({"delivery_attempt": 1})),
                [Allowed, Forbidden, Forbidden, Allowed, Forbidden],
            ),
            row(
                "read the receiver's inbox",
                Method::GET,
                "/v1/inbox?owner_agent={receiver}",
                None,
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
            row(
                "read the receiver's inbox changes",
                Method::GET,
                "/v1/inbox/changes?owner_agent={receiver}",
                None,
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
            row(
                "read one's own inbox",
                Method::GET,
                "/v1/inbox",
                None,
                [Yes, Yes, Yes, Yes, Yes],
            ),
            row(
                "list dead letters",
                Method::GET,
                "/v1/deliveries",
                None,
                [Yes, Yes, Yes, Yes, Yes],
            ),
            row(
                "read the agent directory",
                Method::GET,
                "/v1/agents",
                None,
                [Yes, Yes, Yes, Yes, Yes],
            ),
            row(
                "rebind the receiver",
                Method::PUT,
                "/v1/agents/{receiver}/binding",
                Some(json!({"delivery_mode": "stream"})),
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
            row(
                "create keys",
                Method::POST,
                "/v1/admin/keys",
                Some(json!({"name": "made-in-the-table", "role": "client"})),
                [Yes, Forbidden, Forbidden, Forbidden, Forbidden],
            ),
            row(
                "read cluster status",
                Method::GET,
                "/v1/cluster/status",
                None,
                [Yes, Forbidden, Forbidden, Forbidden, Forbidden],
            ),
            // Last: these lease the receiver's queue, so they go after the rows that expect
            // fresh intents.
            row(
                "receive (long poll)",
                Method::POST,
                "/v1/agents/{receiver}/intents/receive",
                Some(json!({"max": 1, "wait_seconds": 0})),
                [Yes, Forbidden, Forbidden, Yes, Forbidden],
            ),
        ];
        for r in &rows {
            for (column, (key, cell)) in keys.iter().zip(r.cells).enumerate() {
                let id = sending.create_ok(&intent_body(PAYMENTS)).await;
                let path = r
                    .path
                    .replace("{id}", &id)
                    .replace("{receiver}", address_path(PAYMENTS));
                let mut rb = key.builder(r.method.clone(), &path);
                if let Some(body) = &r.body {
                    rb = rb.json(body);
                }
                let resp = Api::send(rb).await;
                let who = WHO[column];
                match cell {
                    Yes => assert!(
                        (200..300).contains(&resp.status),
                        "{who} / {}: expected success, got {}: {}",
                        r.action,
                        resp.status,
                        resp.text
                    ),
                    Allowed => assert!(
                        resp.status != 401 && resp.status != 403,
                        "{who} / {}: refused for its role: {}",
                        r.action,
                        resp.text
                    ),
                    Forbidden => {
                        assert_eq!(
                            resp.status, 403,
                            "{who} / {}: expected 403, got {}",
                            r.action, resp.text
                        );
                        resp.assert_error(403, "forbidden");
                        let after = admin.intent(&id).await;
                        assert_eq!(
                            (after["status"].clone(), after["policy_generation"].clone()),
                            (json!("SUBMITTED"), json!(0)),
                            "{who} / {}: a refused request changed the intent",
                            r.action
                        );
                    }
                }
            }
        }

        // The two SSE streams: the intent's events (observers) and the receiver's deliveries
        // (its key or admin; opening it leases the receiver's intents).
        let id = sending.create_ok(&intent_body(PAYMENTS)).await;
        let events = format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=1");
        let listen = format!(
            "/v1/agents/{}/intents/stream?since=0&wait_seconds=1",
            address_path(PAYMENTS)
        );
        for (column, key) in keys.iter().enumerate() {
            let observer = [true, true, false, true, false][column];
            let listener = [true, false, false, true, false][column];
            for (path, allowed) in [(&events, observer), (&listen, listener)] {
                match (SseStream::open(key, path, &[]).await, allowed) {
                    (Ok(_), true) => {}
                    (Err(resp), false) => {
                        resp.assert_error(403, "forbidden");
                    }
                    (Ok(_), false) => panic!("{} opened {path}", WHO[column]),
                    (Err(resp), true) => panic!("{} refused {path}: {}", WHO[column], resp.text),
                }
            }
        }
    })
    .await
}

/// A client key sends as itself: a `from_agent` it names is not honoured (it would make it
/// the owner of intents it could never see, or of another key's intents), while an admin key
/// relaying on behalf of a sender is. An owner program names its agent address as
/// `owner_agent` when it approves its own intent, as on the hosted platform.
#[tokio::test]
async fn only_admin_keys_send_on_behalf_of_others() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (key, _) = admin.create_key("checkout", "client", None).await;
        let client = admin.with_key(&key);
        let mut body = intent_body(PAYMENTS);
        body["from_agent"] = json!(LEDGER);
        let id = client.create_ok(&body).await;
        let intent = client.intent(&id).await;
        assert_eq!(intent["from_agent"], json!("agent://intentd/keys/checkout"));
        let relayed = admin.create_ok(&body).await;
        assert_eq!(admin.intent(&relayed).await["from_agent"], json!(LEDGER));
        // The client owns only what it sent as itself.
        client
            .get(&format!("/v1/intents/{relayed}"))
            .await
            .assert_error(403, "forbidden");

        let approved = client
            .post(
                &format!("/v1/intents/{id}/resume?owner_agent=agent://acme/prod/checkout"),
                &json!({"approve_current_step": true}),
            )
            .await;
        approved.assert_ok(200);
        let events = client.events(&id).await;
        assert_eq!(events[2]["actor"], json!("agent://acme/prod/checkout"));
        // Naming another owner for its inbox or webhooks is refused.
        client
            .get("/v1/inbox?owner_agent=agent://acme/prod/checkout")
            .await
            .assert_error(403, "forbidden");
    })
    .await
}

/// The directory shows an HTTP agent's endpoint and secret hint to the agent and admins only;
/// before, any key read them for every agent.
#[tokio::test]
async fn the_agent_directory_hides_other_agents_endpoints() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (own, _) = admin
            .create_key("hook-agent", "agent", Some(PAYMENTS))
            .await;
        let (other, _) = admin.create_key("ledger", "agent", Some(LEDGER)).await;
        let (client, _) = admin.create_key("checkout", "client", None).await;
        let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";
        admin
            .put(
                &format!("/v1/agents/{}/binding", address_path(PAYMENTS)),
                &json!({"delivery_mode": "http", "url": "https://hooks.example.com/payments",
                        "secret": secret}),
            )
            .await
            .assert_ok(200);
        let one = format!("/v1/agents/{}", address_path(PAYMENTS));
        for (api, sees) in [
            (admin.clone(), true),
            (admin.with_key(&own), true),
            (admin.with_key(&other), false),
            (admin.with_key(&client), false),
        ] {
            let single = api.get(&one).await;
            let binding = &single.assert_ok(200)["agent"]["binding"];
            assert_eq!(binding["delivery_mode"], json!("http"));
            let list = api.get("/v1/agents").await;
            let listed = list.assert_ok(200)["agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["address"] == json!(PAYMENTS))
                .expect("the agent is listed")
                .clone();
            for view in [binding, &listed["binding"]] {
                assert_eq!(view.get("url").is_some(), sees, "{view}");
                assert_eq!(view.get("secret_hint").is_some(), sees, "{view}");
            }
            assert!(!list.text.contains(secret) && !single.text.contains(secret));
            if !sees {
                assert!(!list.text.contains("hooks.example.com"), "{}", list.text);
            }
        }
    })
    .await
}

/// A client may apply a scenario that brings up new agents, and apply it again unchanged,
/// but not change the binding of an agent that is registered and not its own.
#[tokio::test]
async fn a_scenario_does_not_rebind_another_agent() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (key, _) = admin.create_key("planner", "client", None).await;
        let client = admin.with_key(&key);
        let bundle = |mode: &str| {
            json!({
                "scenario_id": "roles.check.v1",
                "title": "Roles",
                "agents": [{"role": "worker", "address": "acme/prod/roles-worker",
                            "delivery_mode": mode}],
                "workflow": {"steps": [{"step_id": "work", "tool_id": "tool.agent.task.v1",
                                        "assigned_to": "worker"}]},
                "intent": {"type": "intent.payment.process.v1", "payload": {"n": 1}},
            })
        };
        client
            .post("/v1/scenarios/apply", &bundle("stream"))
            .await
            .assert_ok(200);
        client
            .post("/v1/scenarios/apply", &bundle("stream"))
            .await
            .assert_ok(200);
        client
            .post("/v1/scenarios/apply", &bundle("poll"))
            .await
            .assert_error(403, "forbidden");
        let agent = admin.get("/v1/agents/acme/prod/roles-worker").await;
        assert_eq!(
            agent.assert_ok(200)["agent"]["binding"]["delivery_mode"],
            json!("stream")
        );
        admin
            .post("/v1/scenarios/apply", &bundle("poll"))
            .await
            .assert_ok(200);
    })
    .await
}

/// Dead-letters one intent to `address`: an HTTP binding whose host never resolves and a
/// single attempt, so the first push fails for good.
async fn dead_letter_to(admin: &Api, address: &str) -> String {
    admin
        .put(
            &format!("/v1/agents/{}/binding", address_path(address)),
            &json!({"delivery_mode": "http", "url": "https://unresolvable.invalid/hook",
                    "secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
                    "max_delivery_attempts": 1}),
        )
        .await
        .assert_ok(200);
    admin.create_ok(&intent_body(address)).await
}

/// `/v1/deliveries` pages hold only what the key may see, and the cursor is the last of
/// them: before, a page's cursor was the last dead letter scanned, another agent's intent id.
#[tokio::test]
async fn delivery_cursors_never_name_other_agents_intents() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (ledger_key, _) = admin.create_key("ledger", "agent", Some(LEDGER)).await;
        let ledger = admin.with_key(&ledger_key);
        // Ids grow with time: the other agent's dead letters come first in the scan.
        let theirs = [
            dead_letter_to(&admin, PAYMENTS).await,
            dead_letter_to(&admin, PAYMENTS).await,
        ];
        let mine = [
            dead_letter_to(&admin, LEDGER).await,
            dead_letter_to(&admin, LEDGER).await,
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let all = admin.get("/v1/deliveries?limit=100").await;
            if all.assert_ok(200)["deliveries"].as_array().unwrap().len() == 4 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "four dead letters: {}",
                all.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut seen = Vec::new();
        let mut after = String::new();
        for _ in 0..10 {
            let page = ledger
                .get(&format!("/v1/deliveries?limit=1&after={after}"))
                .await;
            let body = page.assert_ok(200).clone();
            for id in &theirs {
                assert!(!page.text.contains(id.as_str()), "{}", page.text);
            }
            for d in body["deliveries"].as_array().unwrap() {
                seen.push(d["intent_id"].as_str().unwrap().to_string());
            }
            match body["next_cursor"].as_str() {
                Some(cursor) => after = cursor.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, mine);
    })
    .await
}
