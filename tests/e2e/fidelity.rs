//! Issue 11, "programs written for the hosted platform, unchanged", against the real binary:
//! the owner's `approve_current_step` from every status an intent can be in, the seed's
//! published scenario bundle, and webhook callbacks whose names are judged at every push
//! rather than when they are registered.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::receiver::{new_secret, Mode, Receiver};
use crate::support::{address_path, assert_gapless, eventually, intent_body, within, Api, Server};

const LIMIT: Duration = Duration::from_secs(120);
/// The bundle the replacing-webhooks seed publishes, as a user would copy it.
const SEED_BUNDLE: &str = include_str!("../fixtures/replacing-webhooks.scenario.json");
const OWNER: &str = "agent://acme/prod/owner";

/// The resume the SDK's `resume_intent(id, body, owner_agent=...)` sends.
async fn approve(api: &Api, id: &str, owner: &str, body: Value) -> crate::support::api::Resp {
    api.post(
        &format!("/v1/intents/{id}/resume?owner_agent={owner}"),
        &body,
    )
    .await
}

/// Leases the agent's next intent through the poll receive: DELIVERED, attempt 1.
async fn lease(api: &Api, address: &str, id: &str) {
    let resp = api
        .post(
            &format!("/v1/agents/{}/intents/receive", address_path(address)),
            &json!({"max": 1, "wait_seconds": 10}),
        )
        .await;
    let body = resp.assert_ok(200);
    assert_eq!(body["deliveries"][0]["intent_id"], json!(id), "{body}");
    assert_eq!(api.intent(id).await["status"], json!("DELIVERED"));
}

/// Approves `id` at `generation` and checks the answer the contract gives: applied, the next
/// generation, the intent IN_PROGRESS; returns the event the approval appended.
async fn approved(api: &Api, id: &str, generation: u64, reason: &str) -> Value {
    let before = api.events(id).await.len();
    let resp = approve(
        api,
        id,
        OWNER,
        json!({"approve_current_step": true, "reason": reason,
               "expected_policy_generation": generation}),
    )
    .await;
    let body = resp.assert_ok(200);
    assert_eq!(body["applied"], json!(true), "{body}");
    assert_eq!(body["policy_generation"], json!(generation + 1), "{body}");
    assert_eq!(body["intent"]["intent_id"], json!(id), "{body}");
    assert_eq!(body["intent"]["status"], json!("IN_PROGRESS"), "{body}");
    assert_eq!(
        body["intent"]["policy_generation"],
        json!(generation + 1),
        "{body}"
    );
    let events = api.events(id).await;
    assert_gapless(id, &events);
    assert_eq!(events.len(), before + 1, "{events:#?}");
    let event = events.last().expect("an event").clone();
    assert_eq!(event["status"], json!("IN_PROGRESS"), "{event}");
    assert_eq!(event["actor"], json!(OWNER), "{event}");
    assert_eq!(event["details"]["reason"], json!(reason), "{event}");
    event
}

#[tokio::test]
async fn the_owner_approves_the_current_step_from_every_status_and_resolves() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (owner_key, _) = admin.create_key("owner-program", "client", None).await;
        let owner = admin.with_key(&owner_key);
        let receiver = "agent://acme/prod/approvals-worker";

        // SUBMITTED, right after the create: the hosted platform's pattern in full.
        let id = owner.create_ok(&intent_body(receiver)).await;
        assert_eq!(owner.intent(&id).await["status"], json!("SUBMITTED"));
        let event = approved(&owner, &id, 0, "gated by the program itself").await;
        assert_eq!(event["event_type"], json!("intent.resumed"), "{event}");
        assert_eq!(
            event["details"]["approved_in"],
            json!("SUBMITTED"),
            "{event}"
        );
        let done = owner
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "COMPLETED", "result": {"done": true}}),
            )
            .await;
        assert_eq!(done.assert_ok(200)["intent"]["status"], json!("COMPLETED"));
        let types = assert_gapless(&id, &owner.events(&id).await);
        assert_eq!(
            types,
            [
                "intent.created",
                "intent.submitted",
                "intent.resumed",
                "intent.completed"
            ]
        );
        // Terminal: 409, and nothing changes.
        approve(&owner, &id, OWNER, json!({"approve_current_step": true}))
            .await
            .assert_error(409, "intent_terminal");
        assert_eq!(owner.events(&id).await.len(), 4);
        assert_eq!(owner.intent(&id).await["policy_generation"], json!(1));

        // DELIVERED: leased to a consumer, which loses the lease to the approval.
        let id = owner.create_ok(&intent_body(receiver)).await;
        lease(&admin, receiver, &id).await;
        let event = approved(&owner, &id, 0, "delivered").await;
        assert_eq!(
            event["details"]["approved_in"],
            json!("DELIVERED"),
            "{event}"
        );

        // ACKNOWLEDGED.
        let id = owner.create_ok(&intent_body(receiver)).await;
        lease(&admin, receiver, &id).await;
        admin
            .post(
                &format!("/v1/intents/{id}/ack"),
                &json!({"delivery_attempt": 1}),
            )
            .await
            .assert_ok(200);
        assert_eq!(owner.intent(&id).await["status"], json!("ACKNOWLEDGED"));
        let event = approved(&owner, &id, 0, "acknowledged").await;
        assert_eq!(
            event["details"]["approved_in"],
            json!("ACKNOWLEDGED"),
            "{event}"
        );

        // WAITING for a person; then IN_PROGRESS, where the approval keeps the status but is
        // recorded and moves the generation, which is a compare-and-set.
        let mut body = intent_body(receiver);
        body["human_task"] = json!({"title": "Sign the refund", "task_type": "approval"});
        let id = owner.create_ok(&body).await;
        assert_eq!(owner.intent(&id).await["status"], json!("WAITING"));
        let event = approved(&owner, &id, 0, "signed off").await;
        assert_eq!(event["details"]["approved_in"], json!("WAITING"), "{event}");
        approve(
            &owner,
            &id,
            OWNER,
            json!({"approve_current_step": true, "expected_policy_generation": 0}),
        )
        .await
        .assert_error(409, "policy_generation_mismatch");
        let event = approved(&owner, &id, 1, "again, in progress").await;
        assert_eq!(
            event["event_type"],
            json!("intent.step_approved"),
            "{event}"
        );
        assert_eq!(
            event["details"]["approved_in"],
            json!("IN_PROGRESS"),
            "{event}"
        );
    })
    .await
}

#[tokio::test]
async fn an_agent_key_may_approve_the_intents_it_sent_but_only_as_itself() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = server.admin();
        let (key, _) = admin.create_key("owner-agent", "agent", Some(OWNER)).await;
        let agent = admin.with_key(&key);
        let id = agent
            .create_ok(&intent_body("agent://acme/prod/elsewhere"))
            .await;
        assert_eq!(agent.intent(&id).await["from_agent"], json!(OWNER));

        // Naming another owner is refused; so is the receiver's form of resume.
        approve(
            &agent,
            &id,
            "agent://acme/prod/someone-else",
            json!({"approve_current_step": true}),
        )
        .await
        .assert_error(403, "forbidden");
        agent
            .post(&format!("/v1/intents/{id}/resume"), &json!({"done": true}))
            .await
            .assert_error(403, "forbidden");
        assert_eq!(agent.events(&id).await.len(), 2);

        let event = approved(&agent, &id, 0, "mine to gate").await;
        assert_eq!(
            event["details"]["approved_in"],
            json!("SUBMITTED"),
            "{event}"
        );

        // A key for a third address may neither read nor approve it.
        let (other, _) = admin
            .create_key("third-agent", "agent", Some("agent://acme/prod/third"))
            .await;
        approve(
            &admin.with_key(&other),
            &id,
            "agent://acme/prod/third",
            json!({"approve_current_step": true}),
        )
        .await
        .assert_error(403, "forbidden");
    })
    .await
}

#[tokio::test]
async fn the_seed_scenario_bundle_applies_as_published() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let bundle: Value = serde_json::from_str(SEED_BUNDLE).expect("the fixture is JSON");

        let checked = api.post("/v1/scenarios/validate", &bundle).await;
        let body = checked.assert_ok(200);
        assert_eq!(body["valid"], json!(true), "{body}");
        assert_eq!(body["warnings"], json!([]), "{body}");
        assert_eq!(
            body["plan"]["agents"][0]["delivery_mode"],
            json!("stream"),
            "{body}"
        );

        let applied = api.post("/v1/scenarios/apply", &bundle).await;
        let body = applied.assert_ok(200).clone();
        assert_eq!(body["scenario_id"], json!("replacing-webhooks.demo.v1"));
        assert_eq!(body["warnings"], json!([]), "{body}");
        assert_eq!(
            body["agents"],
            json!([{"role": "payment_service", "address": "agent://payment-service-demo",
                    "created": true}])
        );
        let id = body["intent_id"].as_str().expect("intent_id").to_string();
        let intent = api.intent(&id).await;
        assert_eq!(intent["intent_type"], json!("intent.payment.process.v1"));
        assert_eq!(intent["to_agent"], json!("agent://payment-service-demo"));
        assert_eq!(intent["max_delivery_attempts"], json!(3));
        assert_eq!(intent["payload"], bundle["intent"]["payload"]);
        let agent = api.get("/v1/agents/payment-service-demo").await;
        let agent = agent.assert_ok(200);
        assert_eq!(
            agent.pointer("/agent/display_name"),
            Some(&json!("Payment Service (demo)")),
            "{agent}"
        );

        // Keys intentd does not know are named, not refused; the bundle still applies.
        let mut extended = bundle.clone();
        extended["colour"] = json!("teal");
        extended["agents"][0]["team"] = json!("payments");
        extended["workflow"]["steps"][0]["sla_tier"] = json!("gold");
        extended["idempotency_key"] = json!("seed-extended-1");
        let resp = api.post("/v1/scenarios/apply", &extended).await;
        let body = resp.assert_ok(200);
        assert_eq!(
            body["warnings"],
            json!([
                "unknown field ignored: colour",
                "unknown field ignored: agents[0].team",
                "unknown field ignored: workflow.steps[0].sla_tier",
            ]),
            "{body}"
        );
        assert_ne!(body["intent_id"], json!(id));
        assert_eq!(body["agents"][0]["created"], json!(false), "{body}");

        // What stays refused: a broken rule of a known field.
        let mut bad = bundle.clone();
        bad["scenario_id"] = json!("Replacing-Webhooks");
        api.post("/v1/scenarios/apply", &bad)
            .await
            .assert_error(422, "schema_invalid");
    })
    .await
}

/// `intentd_webhook_pushes_total{outcome="..."}` on the node, 0 when absent.
async fn pushes(api: &Api, outcome: &str) -> u64 {
    let resp = api.get("/metrics").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let series = format!("intentd_webhook_pushes_total{{outcome=\"{outcome}\"}} ");
    resp.text
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a counter"))
}

/// The counters of a published event, read by publishing it again with its key.
async fn counters(api: &Api, event: &Value, key: &str) -> Value {
    let resp = Api::send(
        api.builder(reqwest::Method::POST, "/v1/webhooks/events")
            .header("Idempotency-Key", key)
            .json(event),
    )
    .await;
    resp.assert_ok(200).clone()
}

#[tokio::test]
async fn webhook_callbacks_are_judged_at_every_push_not_at_upsert() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let subscribe = |url: &str, types: &[&str]| {
            json!({"callback_url": url, "event_types": types, "secret": new_secret()})
        };

        // A host that does not resolve from here right now is the integrator's business.
        let resp = api
            .post(
                "/v1/webhooks/subscriptions",
                &subscribe("https://integrator.example/hook", &["invite.accepted"]),
            )
            .await;
        let body = resp.assert_ok(200);
        assert_eq!(
            body["subscription"]["callback_url"],
            json!("https://integrator.example/hook")
        );
        // What can be judged without DNS still is: the shape and literal addresses.
        for url in [
            "http://10.1.2.3/hook",
            "http://[::1]:9/hook",
            "http://169.254.169.254/latest/meta-data",
            // IPv6 forms that reach a private or loopback IPv4 address, special-purpose blocks.
            "http://[2002:7f00:1::]/hook",
            "http://[64:ff9b::a00:1]/hook",
            "http://[::ffff:0:7f00:1]/hook",
            "http://[::7f00:1]/hook",
            "http://198.18.0.1/hook",
            "http://192.0.0.8/hook",
            "http://[2001:db8::1]/hook",
            "ftp://integrator.example/hook",
            "not a url at all",
        ] {
            api.post(
                "/v1/webhooks/subscriptions",
                &subscribe(url, &["invite.accepted"]),
            )
            .await
            .assert_error(422, "schema_invalid");
        }

        // A name that points inside is accepted at upsert but refused at the push, for good:
        // the receiver listening there never hears from the cluster.
        let secret = new_secret();
        let inside = Receiver::start(&secret, Mode::Succeed { body: None }).await;
        let inside_url = inside.url().replace("127.0.0.1", "localhost");
        api.post(
            "/v1/webhooks/subscriptions",
            &json!({"callback_url": inside_url, "event_types": ["inbox.thread_created"],
                    "secret": secret}),
        )
        .await
        .assert_ok(200);
        let inward = json!({"event_type": "inbox.thread_created", "source": "e2e",
                            "payload": {"n": 1}});
        let published = counters(&api, &inward, "inward-1").await;
        assert_eq!(published["queued_deliveries"], json!(1), "{published}");
        eventually(Duration::from_secs(60), "the inward push dead-lettered", || async {
            let c = counters(&api, &inward, "inward-1").await;
            (c["dead_lettered"] == json!(1)).then_some(())
        })
        .await;
        assert!(inside.pushes().is_empty(), "a push reached localhost");

        // A name that does not resolve at push time is a failed attempt, retried with
        // backoff, not a dead letter and not a crash.
        api.post(
            "/v1/webhooks/subscriptions",
            &subscribe("http://integrator.invalid:8080/hook", &["inbox.reply_received"]),
        )
        .await
        .assert_ok(200);
        let failed_before = pushes(&api, "failed").await;
        let unresolved = json!({"event_type": "inbox.reply_received", "source": "e2e",
                                "payload": {"n": 2}});
        counters(&api, &unresolved, "unresolved-1").await;
        eventually(Duration::from_secs(60), "two failed pushes", || async {
            (pushes(&api, "failed").await >= failed_before + 2).then_some(())
        })
        .await;
        let c = counters(&api, &unresolved, "unresolved-1").await;
        assert_eq!(
            (c["pending"].clone(), c["dead_lettered"].clone()),
            (json!(1), json!(0)),
            "{c}"
        );
        server_alive(&api).await;
    })
    .await
}

#[tokio::test]
async fn an_http_agent_whose_name_does_not_resolve_is_retried() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let address = "agent://acme/prod/integrator";
        api.put(
            &format!("/v1/agents/{}/binding", address_path(address)),
            &json!({"delivery_mode": "http", "url": "https://integrator.invalid/hook",
                    "secret": new_secret()}),
        )
        .await
        .assert_ok(200);
        // Enough attempts that the two looked at are retried, not the last.
        let mut body = intent_body(address);
        body["max_delivery_attempts"] = json!(10);
        let id = api.create_ok(&body).await;
        let events = eventually(Duration::from_secs(60), "two failed pushes", || async {
            let events = api.events(&id).await;
            let lost = events
                .iter()
                .filter(|e| e["event_type"] == json!("intent.lease_expired"))
                .count();
            (lost >= 2).then_some(events)
        })
        .await;
        let lost: Vec<&Value> = events
            .iter()
            .filter(|e| e["event_type"] == json!("intent.lease_expired"))
            .collect();
        for e in &lost {
            let error = e["details"]["error"].as_str().unwrap_or("");
            assert!(
                error.starts_with("cannot resolve integrator.invalid"),
                "{e}"
            );
            assert!(e["details"]["retry_at"].is_string(), "retried: {e}");
        }
        let intent = api.intent(&id).await;
        assert!(
            !["FAILED", "COMPLETED", "CANCELED", "TIMED_OUT"]
                .contains(&intent["status"].as_str().unwrap_or("")),
            "{intent}"
        );
        server_alive(&api).await;
    })
    .await
}

async fn server_alive(api: &Api) {
    let resp = api.get("/health").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}

#[tokio::test]
async fn a_subscription_without_a_secret_gets_one_that_signs_its_pushes() {
    within(LIMIT, async {
        let server = Server::start_with(&["--delivery-allow-hosts", "127.0.0.1"]).await;
        let api = server.admin();
        let rx = Receiver::start(&new_secret(), Mode::Succeed { body: None }).await;
        let resp = api
            .post(
                "/v1/webhooks/subscriptions",
                &json!({"callback_url": rx.url(), "event_types": ["inbox.thread_created"]}),
            )
            .await;
        let body = resp.assert_ok(200).clone();
        let secret = body["subscription"]["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no generated secret: {body}"))
            .to_string();
        assert!(secret.starts_with("whsec_"), "{secret}");
        assert_eq!(
            body["subscription"]["secret_hint"],
            json!(secret[secret.len() - 4..])
        );
        // Shown once: neither a later upsert nor the list shows it again.
        let again = api
            .post(
                "/v1/webhooks/subscriptions",
                &json!({"callback_url": rx.url(), "event_types": ["inbox.thread_created"]}),
            )
            .await;
        assert!(!again.text.contains(&secret), "{}", again.text);
        let listed = api.get("/v1/webhooks/subscriptions").await;
        assert!(!listed.text.contains(&secret), "{}", listed.text);

        // The pushes are signed with it (the receiver verifies every one).
        rx.set_secret(&secret);
        let event = json!({"event_type": "inbox.thread_created", "source": "e2e",
                           "payload": {"n": 1}});
        counters(&api, &event, "generated-1").await;
        let pushes = rx
            .wait("the signed push", Duration::from_secs(30), |p| !p.is_empty())
            .await;
        assert_eq!(pushes[0].bad_signature, None, "{}", pushes[0].body);
        eventually(Duration::from_secs(30), "the delivery counted", || async {
            let c = counters(&api, &event, "generated-1").await;
            (c["delivered"] == json!(1)).then_some(())
        })
        .await;

        // Secrets no push could be signed with are refused, with the reason.
        for bad in [
            "whsec_not base64 at all!!",
            "whsec_AAAAAAAAAAAAAAAAAAAA",
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "short",
        ] {
            let message = api
                .post(
                    "/v1/webhooks/subscriptions",
                    &json!({"callback_url": "https://integrator.example/hook",
                            "event_types": ["inbox.thread_created"], "secret": bad}),
                )
                .await
                .assert_error(422, "schema_invalid")
                .to_string();
            assert!(message.contains("secret"), "{bad}: {message}");
        }
        // And so is an HTTP agent's.
        api.put(
            &format!("/v1/agents/{}/binding", address_path("agent://acme/prod/hooked")),
            &json!({"delivery_mode": "http", "url": "https://integrator.example/hook",
                    "secret": "whsec_AAAAAAAAAAAAAAAAAAAA"}),
        )
        .await
        .assert_error(422, "schema_invalid");
    })
    .await
}
