//! What the crates' tests build again and again, built once: a new intent with every
//! optional field empty ([`new_intent`]), and, with the `node` feature, a node on loopback
//! ([`node`]). A field added to `NewIntent` or a setting added to `NodeConfig` is then added
//! here, not in every test file.
//!
//! A test that cares about a value says so where it builds the value, with struct update
//! syntax: `NewIntent { max_delivery_attempts: 3, ..new_intent(RECEIVER) }`.

use intentd_lifecycle::NewIntent;
use serde_json::json;
use uuid::Uuid;

#[cfg(feature = "node")]
pub mod node;

/// The sender tests send as: an admin key's default identity.
pub const TEST_SENDER: &str = "agent://intentd/keys/test";

/// An intent to `to_agent` with a fresh id and correlation id, a small payload, five
/// delivery attempts, and no deadline, reminders, escalation, human task, delay or workflow.
pub fn new_intent(to_agent: &str) -> NewIntent {
    NewIntent {
        id: Uuid::new_v4(),
        intent_type: "payment.charge.v1".into(),
        correlation_id: Uuid::new_v4(),
        from_agent: TEST_SENDER.into(),
        to_agent: to_agent.into(),
        reply_to: None,
        payload: json!({"amount_cents": 1}),
        max_delivery_attempts: 5,
        deadline_at: None,
        remind_after_seconds: None,
        remind_interval_seconds: None,
        max_reminders: None,
        escalate_to: None,
        human_task: None,
        deliver_at: None,
        workflow: None,
    }
}
