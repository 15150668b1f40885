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
