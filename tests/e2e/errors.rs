//! Every error status of the contract, each with the JSON error body.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{intent_body, raw, within, Api, Server, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn oversized_intent_is_413_and_one_under_the_limit_is_accepted() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();

        let mut big = intent_body(PAYMENTS);
        big["payload"] = json!({ "blob": "x".repeat(129 * 1024) });
        api.post_raw("/v1/intents", serde_json::to_vec(&big).expect("json"))
            .await
            .assert_error(413, "payload_too_large");

        let mut fits = intent_body(PAYMENTS);
        fits["payload"] = json!({ "blob": "x".repeat(100 * 1024) });
        api.create_ok(&fits).await;
    })
    .await
}

#[tokio::test]
async fn contract_violations_are_422_schema_invalid() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();

        let mut bad_type = intent_body(PAYMENTS);
        bad_type["intent_type"] = json!("Payment Charge");
        api.create(&bad_type, None)
            .await
            .assert_error(422, "schema_invalid");

        let mut unversioned = intent_body(PAYMENTS);
        unversioned["intent_type"] = json!("payment.charge");
        api.create(&unversioned, None)
            .await
            .assert_error(422, "schema_invalid");

        let mut bad_corr = intent_body(PAYMENTS);
        bad_corr["correlation_id"] = json!("not-a-uuid");
        api.create(&bad_corr, None)
            .await
            .assert_error(422, "schema_invalid");

        let mut no_target = intent_body(PAYMENTS);
        no_target
            .as_object_mut()
            .expect("object")
            .remove("to_agent");
        api.create(&no_target, None)
            .await
            .assert_error(422, "schema_invalid");

        let mut scalar_payload = intent_body(PAYMENTS);
        scalar_payload["payload"] = json!("a string");
        api.create(&scalar_payload, None)
            .await
            .assert_error(422, "schema_invalid");

        for path in ["/v1/intents/not-a-uuid", "/v1/intents/not-a-uuid/events"] {
            api.get(path).await.assert_error(422, "schema_invalid");
        }
        api.post(
            "/v1/intents/1234/resolve",
            &json!({"status": "COMPLETED", "result": {}}),
        )
        .await
        .assert_error(422, "schema_invalid");

        // None of the refused creates left anything behind.
        let ok = api.create_ok(&intent_body(PAYMENTS)).await;
        assert_eq!(api.events(&ok).await.len(), 2);
    })
    .await
}

#[tokio::test]
async fn malformed_json_and_parameters_are_400() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        api.post_raw("/v1/intents", r#"{"intent_type": "payment.charge.v1", "#)
            .await
            .assert_error(400, "invalid_request");
        api.post_raw("/v1/intents", "not json at all")
            .await
            .assert_error(400, "invalid_request");

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        api.post_raw(&format!("/v1/intents/{id}/resume"), "{oops")
            .await
            .assert_error(400, "invalid_request");
        api.get(&format!("/v1/intents/{id}/events?since=abc"))
            .await
            .assert_error(400, "invalid_request");
    })
    .await
}

#[tokio::test]
async fn unknown_intent_is_404() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = uuid::Uuid::new_v4();
        api.get(&format!("/v1/intents/{id}"))
            .await
            .assert_error(404, "not_found");
        api.get(&format!("/v1/intents/{id}/events"))
            .await
            .assert_error(404, "not_found");
        api.post(
            &format!("/v1/intents/{id}/resolve"),
            &json!({"status": "COMPLETED", "result": {}}),
        )
        .await
        .assert_error(404, "not_found");
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"action": "progress"}),
        )
        .await
        .assert_error(404, "not_found");
        api.post(
            &format!("/v1/intents/{id}/controls"),
            &json!({"controls_patch": {"a": 1}}),
        )
        .await
        .assert_error(404, "not_found");
    })
    .await
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        api.get("/v1/no-such-thing")
            .await
            .assert_error(404, "not_found");
        api.get("/definitely/not/here")
            .await
            .assert_error(404, "not_found");
        let wrong_method = Api::send(api.builder(Method::DELETE, "/v1/intents")).await;
        assert!(
            wrong_method.status == 405 || wrong_method.status == 404,
            "DELETE /v1/intents answered {}",
            wrong_method.status
        );
        assert_eq!(
            wrong_method.body["ok"],
            json!(false),
            "non-JSON error body: {:?}",
            wrong_method.text
        );
        assert!(
            wrong_method.body["error"]["code"].is_string(),
            "{}",
            wrong_method.text
        );
    })
    .await
}

/// An object naming a key twice has no single meaning: before, the last one won, and this
/// body made an admin key. Refused wherever a body is read, at any depth.
#[tokio::test]
async fn duplicate_json_keys_are_400() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let resp = api
            .post_raw(
                "/v1/admin/keys",
                r#"{"name":"dup-role","role":"client","role":"admin"}"#,
            )
            .await;
        let message = resp.assert_error(400, "invalid_request");
        assert!(message.contains("duplicate key"), "{message}");
        let keys = api.get("/v1/admin/keys").await;
        keys.assert_ok(200);
        assert!(!keys.text.contains("dup-role"), "{}", keys.text);

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        for (path, body) in [
            (
                "/v1/intents".to_string(),
                r#"{"intent_type":"payment.charge.v1","correlation_id":"6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10","to_agent":"agent://acme/prod/payments","to_agent":"agent://acme/prod/other","payload":{}}"#,
            ),
            (
                format!("/v1/intents/{id}/resume"),
                r#"{"action":"progress","result":{"a":1,"a":2}}"#,
            ),
            (
                format!("/v1/intents/{id}/resolve"),
                r#"{"status":"COMPLETED","status":"FAILED"}"#,
            ),
        ] {
            api.post_raw(&path, body)
                .await
                .assert_error(400, "invalid_request");
        }
        assert_eq!(api.intent(&id).await["status"], json!("SUBMITTED"));
    })
    .await
}

/// `to_agent` follows the one address rule keys and bindings follow: before, `agent://`, an
/// address with NUL or a newline (a forged log line) and `http://evil/x` were all accepted.
#[tokio::test]
async fn malformed_addresses_are_refused_at_every_entry_point() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        for bad in [
            "agent://",
            "agent://acme/prod/a\u{0}b",
            "agent://acme/prod/a\nINFO intentd: forged",
            "http://evil/x",
        ] {
            let mut body = intent_body(PAYMENTS);
            body["to_agent"] = json!(bad);
            api.create(&body, None)
                .await
                .assert_error(422, "schema_invalid");
            let mut body = intent_body(PAYMENTS);
            body["reply_to"] = json!(bad);
            api.create(&body, None)
                .await
                .assert_error(422, "schema_invalid");
            api.post(
                "/v1/admin/keys",
                &json!({"name": "bad-address", "role": "agent", "address": bad}),
            )
            .await
            .assert_error(422, "schema_invalid");
        }
        // A percent-encoded newline in a path is decoded, then refused like the others.
        api.get("/v1/agents/acme%0Aforged/intents/stream?wait_seconds=1")
            .await
            .assert_error(422, "schema_invalid");
        api.put(
            "/v1/agents/acme%0Aforged/binding",
            &json!({"delivery_mode": "stream"}),
        )
        .await
        .assert_error(422, "schema_invalid");
        // Every spelling of one address is one address.
        let mut body = intent_body("acme/prod/payments/");
        body["reply_to"] = json!("acme/prod/replies");
        let id = api.create_ok(&body).await;
        let intent = api.intent(&id).await;
        assert_eq!(intent["to_agent"], json!(PAYMENTS));
        assert_eq!(intent["reply_to"], json!("agent://acme/prod/replies"));
    })
    .await
}

/// Integers that fit neither i64 nor u64 are refused instead of silently rounded to a float;
/// those that fit come back exactly.
#[tokio::test]
async fn integers_beyond_64_bits_are_400_and_the_others_exact() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let body = r#"{"intent_type":"payment.charge.v1","correlation_id":"6f1c2a7e-1b8f-4a1c-9a8e-3f4f7e2d9c10","to_agent":"agent://acme/prod/payments","payload":{"n":123456789012345678901234567890}}"#;
        let message = api
            .post_raw("/v1/intents", body)
            .await
            .assert_error(400, "invalid_request")
            .to_string();
        assert!(message.contains("123456789012345678901234567890"), "{message}");

        let mut body = intent_body(PAYMENTS);
        body["payload"] = json!({"max": u64::MAX, "min": i64::MIN, "big": 9007199254740993u64});
        let id = api.create_ok(&body).await;
        let got = api.get(&format!("/v1/intents/{id}")).await;
        got.assert_ok(200);
        assert!(got.text.contains("18446744073709551615"), "{}", got.text);
        assert!(got.text.contains("-9223372036854775808"), "{}", got.text);
        assert!(got.text.contains("9007199254740993"), "{}", got.text);
    })
    .await
}

/// What the HTTP parser refuses before any route runs answers with the JSON error too.
#[tokio::test]
async fn unparseable_requests_answer_json_errors() {
    within(LIMIT, async {
        let server = Server::start().await;
        let bound = Duration::from_secs(10);
        let exchange = |request: Vec<u8>| async move {
            let mut conn = raw::connect(server.http_addr).await;
            raw::send_and_read(&mut conn, &request, bound).await
        };
        exchange(b"GARBAGE\r\n\r\n".to_vec())
            .await
            .assert_error(400, "invalid_request");
        exchange(b"GET /health HTTP/1.1\r\nHost: x\r\ncontent-length: abc\r\n\r\n".to_vec())
            .await
            .assert_error(400, "invalid_request");
        let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
        exchange(format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes())
            .await
            .assert_error(431, "headers_too_large");
        let long = "a".repeat(70_000);
        exchange(format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
            .await
            .assert_error(414, "uri_too_long");
        // A body that is not JSON, through the routes' own extractors.
        let body = "{\"a\":";
        let request = format!(
            "POST /v1/intents HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            server.admin_key,
            body.len()
        );
        exchange(request.into_bytes())
            .await
            .assert_error(400, "invalid_request");
        // The node still serves.
        server.admin().get("/health").await.assert_ok(200);
    })
    .await
}
