//! Resolve, resume (progress / wait / complete / fail / the control form), controls and
//! policy patches with their compare-and-set on `policy_generation`. The control form from
//! every status is in `fidelity.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_gapless, intent_body, within, Api, Server, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);

async fn resume(api: &Api, id: &str, body: Value) -> Value {
    let resp = api.post(&format!("/v1/intents/{id}/resume"), &body).await;
    resp.assert_ok(200);
    assert!(resp.body["applied"].is_boolean(), "{}", resp.text);
    assert!(resp.body["policy_generation"].is_u64(), "{}", resp.text);
    assert_eq!(resp.body["intent"]["intent_id"], json!(id), "{}", resp.text);
    resp.body.clone()
}

#[tokio::test]
async fn resolve_completes_once_and_a_second_resolve_is_409() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;

        let result = json!({"charge_id": "ch_1", "captured": true});
        let resp = api
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "COMPLETED", "result": result}),
            )
            .await;
        let body = resp.assert_ok(200);
        assert_eq!(body["intent"]["status"], json!("COMPLETED"), "{body}");
        assert_eq!(
            body["event"]["event_type"],
            json!("intent.completed"),
            "{body}"
        );
        assert_eq!(body["event"]["status"], json!("COMPLETED"), "{body}");
        assert!(
            body["completion_delivery"]["delivered"].is_boolean(),
            "{body}"
        );

        let intent = api.intent(&id).await;
        assert_eq!(intent["status"], json!("COMPLETED"));
        assert_eq!(intent["lifecycle_status"], json!("COMPLETED"));
        assert_eq!(intent["result"], result);

        // SUBMITTED -> COMPLETED records the implied IN_PROGRESS step.
        let events = api.events(&id).await;
        assert_eq!(
            assert_gapless(&id, &events),
            [
                "intent.created",
                "intent.submitted",
                "intent.in_progress",
                "intent.completed"
            ]
        );
        assert_eq!(body["event"]["seq"], json!(4), "{body}");

        let second = api
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "FAILED", "error": {"code": "late"}}),
            )
            .await;
        assert_eq!(second.status, 409, "{}", second.text);
        let code = second.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            code == "intent_terminal" || code == "invalid_transition",
            "second resolve code {code:?}: {}",
            second.text
        );
        let message = second.assert_error(409, code);
        assert!(
            message.contains("COMPLETED") && message.contains("FAILED"),
            "409 message must name the from and to statuses (COMPLETED -> FAILED): {message:?}"
        );

        // Nothing changed.
        assert_eq!(api.events(&id).await.len(), 4);
        assert_eq!(api.intent(&id).await["result"], result);
    })
    .await
}

#[tokio::test]
async fn resolve_with_reply_to_reports_completion_delivery() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let mut body = intent_body(PAYMENTS);
        body["reply_to"] = json!("agent://acme/prod/checkout");
        let id = api.create_ok(&body).await;
        let resp = api
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "COMPLETED", "result": {"ok": 1}}),
            )
            .await;
        let b = resp.assert_ok(200);
        assert_eq!(b["completion_delivery"]["delivered"], json!(true), "{b}");
        assert_eq!(
            b["completion_delivery"]["reply_to"],
            json!("agent://acme/prod/checkout"),
            "{b}"
        );
    })
    .await
}

#[tokio::test]
async fn resolve_cancel_and_fail() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let b = api
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "CANCELED", "reason": "customer left"}),
            )
            .await;
        assert_eq!(b.assert_ok(200)["intent"]["status"], json!("CANCELED"));
        let events = api.events(&id).await;
        assert_eq!(
            assert_gapless(&id, &events).last().map(String::as_str),
            Some("intent.canceled")
        );

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let error = json!({"code": "card_declined", "message": "insufficient funds"});
        let b = api
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "FAILED", "error": error}),
            )
            .await;
        assert_eq!(b.assert_ok(200)["intent"]["status"], json!("FAILED"));
        assert_eq!(api.intent(&id).await["error"], error);
    })
    .await
}

#[tokio::test]
async fn resume_progress_wait_approve_and_complete() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;

        let r = resume(&api, &id, json!({"action": "progress", "note": "charging"})).await;
        assert_eq!(r["applied"], json!(true), "{r}");
        assert_eq!(r["intent"]["status"], json!("IN_PROGRESS"), "{r}");

        // Progress while IN_PROGRESS keeps the status and still records an event.
        let before = api.events(&id).await.len();
        let r = resume(&api, &id, json!({"action": "progress", "pct": 50})).await;
        assert_eq!(r["intent"]["status"], json!("IN_PROGRESS"), "{r}");
        let events = api.events(&id).await;
        assert_eq!(events.len(), before + 1, "{events:#?}");
        assert_eq!(events.last().expect("event")["status"], json!("IN_PROGRESS"));

        let r = resume(&api, &id, json!({"action": "wait", "waiting_reason": "WAITING_FOR_TOOL"})).await;
        assert_eq!(r["intent"]["status"], json!("WAITING"), "{r}");
        let events = api.events(&id).await;
        let last = events.last().expect("event");
        assert_eq!(last["event_type"], json!("intent.waiting"), "{last}");
        assert_eq!(last["waiting_reason"], json!("WAITING_FOR_TOOL"), "{last}");
        assert_eq!(api.intent(&id).await["status"], json!("WAITING"));

        // The control form is a CAS on policy_generation: a stale one is refused and changes
        // nothing.
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"approve_current_step": true, "expected_policy_generation": 7}),
        )
        .await
        .assert_error(409, "policy_generation_mismatch");
        let intent = api.intent(&id).await;
        assert_eq!(intent["status"], json!("WAITING"));
        assert_eq!(intent["policy_generation"], json!(0));

        let r = resume(
            &api,
            &id,
            json!({"approve_current_step": true, "expected_policy_generation": 0, "reason": "ok by ops"}),
        )
        .await;
        assert_eq!(r["applied"], json!(true), "{r}");
        assert_eq!(r["policy_generation"], json!(1), "{r}");
        assert_eq!(r["intent"]["status"], json!("IN_PROGRESS"), "{r}");

        // A body without `action` completes with the body as result.
        let result = json!({"charge_id": "ch_9"});
        let r = resume(&api, &id, result.clone()).await;
        assert_eq!(r["intent"]["status"], json!("COMPLETED"), "{r}");
        let intent = api.intent(&id).await;
        assert_eq!(intent["result"], result);

        let events = api.events(&id).await;
        let types = assert_gapless(&id, &events);
        assert_eq!(types.first().map(String::as_str), Some("intent.created"));
        assert_eq!(types.last().map(String::as_str), Some("intent.completed"));

        // Terminal: any further resume is 409.
        let again = api.post(&format!("/v1/intents/{id}/resume"), &json!({"action": "progress"})).await;
        assert_eq!(again.status, 409, "{}", again.text);
        assert_eq!(api.events(&id).await.len(), events.len());
    })
    .await
}

#[tokio::test]
async fn resume_fail_and_explicit_complete() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let r = resume(
            &api,
            &id,
            json!({"action": "fail", "code": "card_declined"}),
        )
        .await;
        assert_eq!(r["intent"]["status"], json!("FAILED"), "{r}");
        let intent = api.intent(&id).await;
        assert_eq!(intent["error"]["code"], json!("card_declined"), "{intent}");
        let events = api.events(&id).await;
        assert_eq!(
            assert_gapless(&id, &events).last().map(String::as_str),
            Some("intent.failed")
        );

        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let r = resume(
            &api,
            &id,
            json!({"action": "complete", "charge_id": "ch_2"}),
        )
        .await;
        assert_eq!(r["intent"]["status"], json!("COMPLETED"), "{r}");
        assert_eq!(api.intent(&id).await["result"]["charge_id"], json!("ch_2"));
    })
    .await
}

#[tokio::test]
async fn illegal_transition_is_409_naming_both_statuses() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        resume(
            &api,
            &id,
            json!({"action": "wait", "waiting_reason": "WAITING_FOR_TOOL"}),
        )
        .await;
        // WAITING -> WAITING is not in the table.
        let resp = api
            .post(
                &format!("/v1/intents/{id}/resume"),
                &json!({"action": "wait", "waiting_reason": "WAITING_FOR_AGENT"}),
            )
            .await;
        let message = resp.assert_error(409, "invalid_transition");
        assert!(
            message.contains("from WAITING to WAITING"),
            "message lacks the statuses: {message:?}"
        );
        assert_eq!(api.events(&id).await.len(), 3);
    })
    .await
}

#[tokio::test]
async fn controls_and_policy_patches_bump_generation_with_cas() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let controls = format!("/v1/intents/{id}/controls");
        let policy = format!("/v1/intents/{id}/policy");

        api.post(
            &controls,
            &json!({"controls_patch": {"priority": "high"}, "expected_policy_generation": 0}),
        )
        .await
        .assert_ok(200);
        assert_eq!(api.intent(&id).await["policy_generation"], json!(1));

        // Stale expectation: 409, generation unchanged.
        api.post(
            &controls,
            &json!({"controls_patch": {"priority": "low"}, "expected_policy_generation": 0}),
        )
        .await
        .assert_error(409, "policy_generation_mismatch");
        assert_eq!(api.intent(&id).await["policy_generation"], json!(1));

        // No expectation: always applies.
        api.post(&policy, &json!({"grants_patch": {"refund": true}}))
            .await
            .assert_ok(200);
        assert_eq!(api.intent(&id).await["policy_generation"], json!(2));

        api.post(
            &policy,
            &json!({"envelope_patch": {"ttl": 60}, "expected_policy_generation": 1}),
        )
        .await
        .assert_error(409, "policy_generation_mismatch");
        api.post(
            &policy,
            &json!({"envelope_patch": {"ttl": 60}, "expected_policy_generation": 2}),
        )
        .await
        .assert_ok(200);
        assert_eq!(api.intent(&id).await["policy_generation"], json!(3));

        // Every accepted patch is an event; rejected ones are not.
        let events = api.events(&id).await;
        assert_eq!(assert_gapless(&id, &events).len(), 5, "{events:#?}");

        // A terminal intent takes no patch.
        api.post(
            &format!("/v1/intents/{id}/resolve"),
            &json!({"status": "CANCELED", "reason": "x"}),
        )
        .await
        .assert_ok(200);
        api.post(&controls, &json!({"controls_patch": {"priority": "low"}}))
            .await
            .assert_error(409, "intent_terminal");
        assert_eq!(api.intent(&id).await["policy_generation"], json!(3));
    })
    .await
}
