//! Create, get, events, idempotency: the calls every sender makes.

use std::time::Duration;

use serde_json::json;

use crate::support::{assert_gapless, intent_body, within, Server, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn health_reports_a_leader() {
    within(LIMIT, async {
        let server = Server::start().await;
        let resp = server.anonymous().get("/health").await;
        let body = resp.assert_ok(200);
        assert_eq!(body["node_id"], json!(1), "{body}");
        assert_eq!(body["role"], json!("leader"), "{body}");
        assert_eq!(body["leader_id"], json!(1), "{body}");
    })
    .await
}

#[tokio::test]
async fn create_get_and_events_happy_path() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let body = intent_body(PAYMENTS);

        let trace = "e2e-trace-0001";
        let created = crate::support::Api::send(
            api.builder(reqwest::Method::POST, "/v1/intents")
                .header("X-Trace-Id", trace)
                .json(&body),
        )
        .await;
        created.assert_ok(200);
        assert_eq!(
            created.header("x-trace-id"),
            Some(trace),
            "trace id not echoed"
        );
        assert!(created
            .header("x-request-id")
            .is_some_and(|v| !v.is_empty()));
        let id = created.body["intent_id"]
            .as_str()
            .expect("intent_id")
            .to_string();
        uuid::Uuid::parse_str(&id).expect("intent_id is a UUID");
        assert_eq!(
            created.body["status"],
            json!("SUBMITTED"),
            "{}",
            created.text
        );
        assert!(created.body["created_at"].is_string(), "{}", created.text);

        let intent = api.intent(&id).await;
        assert_eq!(intent["intent_id"], json!(id));
        assert_eq!(intent["status"], json!("SUBMITTED"));
        assert_eq!(intent["lifecycle_status"], intent["status"]);
        assert_eq!(intent["intent_type"], body["intent_type"]);
        assert_eq!(intent["correlation_id"], body["correlation_id"]);
        assert_eq!(intent["to_agent"], json!(PAYMENTS));
        assert_eq!(intent["payload"], body["payload"]);
        assert!(
            intent["from_agent"].as_str().is_some_and(|s| !s.is_empty()),
            "{intent}"
        );
        assert_eq!(intent["created_at"], created.body["created_at"]);
        assert!(intent["updated_at"].is_string(), "{intent}");
        assert_eq!(intent["delivery_attempt"], json!(0));
        assert!(
            intent["max_delivery_attempts"]
                .as_u64()
                .is_some_and(|n| n >= 1),
            "{intent}"
        );
        assert_eq!(intent["policy_generation"], json!(0));
        assert_eq!(intent["pending_with"]["type"], json!("agent"), "{intent}");
        assert_eq!(intent["pending_with"]["ref"], json!(PAYMENTS), "{intent}");
        for absent in ["result", "error"] {
            let v = intent.get(absent);
            assert!(
                v.is_none() || v == Some(&json!(null)),
                "{absent} set on a fresh intent: {intent}"
            );
        }

        let events = api.events(&id).await;
        let types = assert_gapless(&id, &events);
        assert_eq!(types, ["intent.created", "intent.submitted"]);
        assert_eq!(events[0]["status"], json!("CREATED"));
        assert_eq!(events[1]["status"], json!("SUBMITTED"));
        for ev in &events {
            assert!(ev["at"].is_string(), "{ev}");
            assert!(ev["actor"].as_str().is_some_and(|s| !s.is_empty()), "{ev}");
            assert!(ev["details"].is_object(), "{ev}");
        }

        // Bearer auth is the other accepted form.
        let bearer = crate::support::Api::send(
            server
                .anonymous()
                .builder(reqwest::Method::GET, &format!("/v1/intents/{id}"))
                .header("Authorization", format!("Bearer {}", server.admin_key)),
        )
        .await;
        bearer.assert_ok(200);
        assert_eq!(bearer.body["intent"]["intent_id"], json!(id));
    })
    .await
}

#[tokio::test]
async fn events_since_returns_only_newer_events_in_order() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"action": "progress"}),
        )
        .await
        .assert_ok(200);
        api.post(&format!("/v1/intents/{id}/resume"), &json!({"done": true}))
            .await
            .assert_ok(200);

        let all = api.events(&id).await;
        assert_gapless(&id, &all);
        assert!(all.len() >= 4, "{all:#?}");
        let n = all.len() as u64;
        for since in [0, 1, 2, n - 1, n, n + 5] {
            let resp = api
                .get(&format!("/v1/intents/{id}/events?since={since}"))
                .await;
            resp.assert_ok(200);
            let got = resp.body["events"].as_array().expect("events").clone();
            let want: Vec<_> = all
                .iter()
                .filter(|e| e["seq"].as_u64() > Some(since))
                .cloned()
                .collect();
            assert_eq!(got, want, "since={since}");
        }
    })
    .await
}

#[tokio::test]
async fn idempotency_key_replays_same_body_and_rejects_a_changed_one() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let body = intent_body(PAYMENTS);

        let first = api.create(&body, Some("idem-charge-1")).await;
        first.assert_ok(200);
        let id = first.body["intent_id"]
            .as_str()
            .expect("intent_id")
            .to_string();

        let again = api.create(&body, Some("idem-charge-1")).await;
        again.assert_ok(200);
        assert_eq!(
            again.body["intent_id"],
            json!(id),
            "replay created a new intent"
        );
        assert_eq!(again.body["created_at"], first.body["created_at"]);

        // The replay appended nothing.
        let events = api.events(&id).await;
        assert_eq!(
            assert_gapless(&id, &events),
            ["intent.created", "intent.submitted"]
        );

        let mut changed = body.clone();
        changed["payload"]["amount_cents"] = json!(999_999);
        api.create(&changed, Some("idem-charge-1"))
            .await
            .assert_error(409, "idempotency_conflict");

        // A different key is a different intent, even with the same body.
        let other = api.create(&body, Some("idem-charge-2")).await;
        other.assert_ok(200);
        assert_ne!(other.body["intent_id"], json!(id));

        // No key: every create is new.
        let a = api.create_ok(&body).await;
        let b = api.create_ok(&body).await;
        assert_ne!(a, b);
    })
    .await
}

#[tokio::test]
async fn capabilities_lists_intent_types() {
    within(LIMIT, async {
        let server = Server::start().await;
        let resp = server.admin().get("/v1/capabilities").await;
        let body = resp.assert_ok(200);
        let caps = body["capabilities"].as_array().expect("capabilities array");
        assert!(!caps.is_empty());
        assert!(caps.iter().all(|c| c.is_string()), "{body}");
        let types = body["supported_intent_types"]
            .as_array()
            .expect("types array");
        assert!(!types.is_empty());
        for t in types {
            let t = t.as_str().expect("string");
            assert!(
                t.starts_with("intent.") && t.ends_with(".v1"),
                "bad intent type {t}"
            );
        }
    })
    .await
}
