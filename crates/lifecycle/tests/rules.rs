//! Property tests of the lifecycle rules: whatever commands arrive, in whatever order, the
//! event log of an intent stays gapless, only allowed transitions appear, a terminal status
//! never changes and there is exactly one terminal event.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Map};
use uuid::Uuid;

use intentd_lifecycle::*;

#[derive(Default, Clone, PartialEq, Debug)]
struct MemState {
    intents: BTreeMap<Uuid, Intent>,
    events: BTreeMap<(Uuid, u64), Event>,
    idem: BTreeMap<String, IdempotencyRecord>,
    cursors: BTreeMap<String, u64>,
    keys: BTreeMap<String, ApiKey>,
}

impl StateView for MemState {
    fn intent(&self, id: &Uuid) -> Option<Intent> {
        self.intents.get(id).cloned()
    }
    fn idempotency(&self, key: &str) -> Option<IdempotencyRecord> {
        self.idem.get(key).cloned()
    }
    fn agent_cursor(&self, agent: &str) -> u64 {
        self.cursors.get(agent).copied().unwrap_or(0)
    }
    fn api_key_by_id(&self, id: &Uuid) -> Option<(String, ApiKey)> {
        self.keys
            .iter()
            .find(|(_, k)| k.id == *id)
            .map(|(h, k)| (h.clone(), k.clone()))
    }
}

impl MemState {
    fn run(&mut self, cmd: &Command) -> Result<Reply, Rejection> {
        let applied = apply(self, cmd)?;
        for w in applied.writes {
            match w {
                Write::Intent(i) => {
                    self.intents.insert(i.id, *i);
                }
                Write::Event(e) => {
                    let prev = self.events.insert((e.intent_id, e.seq), e);
                    assert!(prev.is_none(), "an event seq was written twice");
                }
                Write::Idempotency { key, record } => {
                    self.idem.insert(key, record);
                }
                Write::AgentQueue { agent, cursor, .. } => {
                    let last = self.cursors.entry(agent).or_default();
                    assert!(cursor > *last, "agent cursors must only grow");
                    *last = cursor;
                }
                Write::ApiKey { key_hash, key } => {
                    self.keys.insert(key_hash, key);
                }
            }
        }
        Ok(applied.reply)
    }

    fn events_of(&self, id: Uuid) -> Vec<Event> {
        self.events
            .range((id, 0)..=(id, u64::MAX))
            .map(|(_, e)| e.clone())
            .collect()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn new_intent(id: Uuid, max_attempts: u32, deadline: Option<i64>) -> NewIntent {
    NewIntent {
        id,
        intent_type: "payment.charge.v1".into(),
        correlation_id: Uuid::from_u128(7),
        from_agent: "agent://acme/prod/sender".into(),
        to_agent: "agent://acme/prod/payments".into(),
        reply_to: None,
        payload: json!({"amount": 10}),
        max_delivery_attempts: max_attempts,
        deadline_at: deadline.map(|s| t0() + Duration::seconds(s)),
        remind_after_seconds: None,
        remind_interval_seconds: None,
        max_reminders: None,
        escalate_to: None,
        human_task: None,
    }
}

/// One step of a random scenario; `attempt_skew` makes some acks and deliveries stale.
#[derive(Debug, Clone)]
enum Step {
    Deliver { attempt_skew: u32 },
    Ack { attempt_skew: u32 },
    Complete,
    Fail,
    Progress,
    Wait,
    Approve { generation_skew: Option<u64> },
    ResolveCompleted,
    ResolveFailed,
    Cancel,
    TimeOut { at_seconds: i64 },
    Controls { generation_skew: Option<u64> },
    Policy { generation_skew: Option<u64> },
}

fn step() -> impl Strategy<Value = Step> {
    let skew = prop_oneof![3 => Just(0u32), 1 => 1u32..3];
    let gen_skew =
        prop_oneof![2 => Just(None), 2 => Just(Some(0u64)), 1 => (1u64..3).prop_map(Some)];
    prop_oneof![
        skew.clone()
            .prop_map(|attempt_skew| Step::Deliver { attempt_skew }),
        skew.prop_map(|attempt_skew| Step::Ack { attempt_skew }),
        Just(Step::Complete),
        Just(Step::Fail),
        Just(Step::Progress),
        Just(Step::Wait),
        gen_skew
            .clone()
            .prop_map(|generation_skew| Step::Approve { generation_skew }),
        Just(Step::ResolveCompleted),
        Just(Step::ResolveFailed),
        Just(Step::Cancel),
        (0i64..200).prop_map(|at_seconds| Step::TimeOut { at_seconds }),
        gen_skew
            .clone()
            .prop_map(|generation_skew| Step::Controls { generation_skew }),
        gen_skew.prop_map(|generation_skew| Step::Policy { generation_skew }),
    ]
}

fn command_for(state: &MemState, id: Uuid, step: &Step, i: i64) -> Command {
    let at = t0() + Duration::seconds(i);
    let cur = state.intents.get(&id).expect("created first");
    let generation = |skew: &Option<u64>| skew.map(|s| cur.policy_generation + s);
    let actor = "agent://acme/prod/payments".to_string();
    let command = match step {
        Step::Deliver { attempt_skew } => IntentCommand::Deliver {
            intent_id: id,
            expected_attempt: cur.delivery_attempt + attempt_skew,
            consumer: "c1".into(),
            at,
        },
        Step::Ack { attempt_skew } => IntentCommand::Acknowledge {
            intent_id: id,
            attempt: cur.delivery_attempt + attempt_skew,
            actor,
            at,
        },
        Step::Complete => IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Complete {
                result: json!({"ok": 1}),
            },
            actor,
            at,
        },
        Step::Fail => IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Fail {
                error: json!({"code": "x"}),
            },
            actor,
            at,
        },
        Step::Progress => IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Progress {
                details: Map::new(),
            },
            actor,
            at,
        },
        Step::Wait => IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Wait {
                reason: WaitingReason::WaitingForHuman,
                details: Map::new(),
            },
            actor,
            at,
        },
        Step::Approve { generation_skew } => IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::ApproveCurrentStep {
                expected_policy_generation: generation(generation_skew),
                reason: None,
            },
            actor,
            at,
        },
        Step::ResolveCompleted => IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Completed { result: json!({}) },
            actor,
            at,
        },
        Step::ResolveFailed => IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Failed { error: json!({}) },
            actor,
            at,
        },
        Step::Cancel => IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Canceled {
                reason: "no".into(),
            },
            actor,
            at,
        },
        Step::TimeOut { at_seconds } => IntentCommand::TimeOut {
            intent_id: id,
            at: t0() + Duration::seconds(*at_seconds),
        },
        Step::Controls { generation_skew } => IntentCommand::UpdateControls {
            intent_id: id,
            patch: serde_json::from_value(json!({"paused": i % 2 == 0})).unwrap(),
            expected_policy_generation: generation(generation_skew),
            actor,
            reason: None,
            at,
        },
        Step::Policy { generation_skew } => IntentCommand::UpdatePolicy {
            intent_id: id,
            grants_patch: Some(serde_json::from_value(json!({"g": i})).unwrap()),
            envelope_patch: None,
            expected_policy_generation: generation(generation_skew),
            actor,
            reason: None,
            at,
        },
    };
    Command::Intent {
        command,
        idempotency: None,
    }
}

/// Statuses an event may report relative to the previous one: a real transition, or the same
/// status for events that change no status (progress, controls, policy).
fn allowed_step(prev: Status, event: &Event) -> bool {
    match event.event_type {
        EventType::Progress | EventType::ControlsUpdated | EventType::PolicyUpdated => {
            event.status == prev && !prev.is_terminal()
        }
        _ => prev.can_transition_to(event.status),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_keeps_the_invariants(
        steps in prop::collection::vec(step(), 0..40),
        max_attempts in 1u32..4,
        deadline in prop::option::of(0i64..100),
    ) {
        let id = Uuid::from_u128(1);
        let mut state = MemState::default();
        let create = Command::Intent {
            command: IntentCommand::Create { intent: new_intent(id, max_attempts, deadline), at: t0() },
            idempotency: None,
        };
        state.run(&create).unwrap();
        for (i, s) in steps.iter().enumerate() {
            let cmd = command_for(&state, id, s, i as i64 + 1);
            let before = state.clone();
            let was_terminal = before.intents[&id].status.is_terminal();
            match state.run(&cmd) {
                Ok(Reply::Intent { events, .. }) => {
                    prop_assert!(!was_terminal, "a terminal intent changed: {s:?}");
                    prop_assert!(!events.is_empty());
                }
                Ok(Reply::Done) => prop_assert!(false, "intent commands reply with the intent"),
                Err(_) => prop_assert_eq!(&state, &before, "a rejection changed the state"),
            }
        }

        let intent = &state.intents[&id];
        let events = state.events_of(id);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=intent.last_seq).collect();
        prop_assert_eq!(seqs, expected, "seq must be gapless from 1");
        prop_assert_eq!(events[0].event_type, EventType::Created);
        prop_assert_eq!(events[0].status, Status::Created);
        for pair in events.windows(2) {
            prop_assert!(allowed_step(pair[0].status, &pair[1]),
                "{} -> {:?} {}", pair[0].status, pair[1].event_type, pair[1].status);
        }
        let terminal: Vec<&Event> = events.iter().filter(|e| e.event_type.is_terminal()).collect();
        if intent.status.is_terminal() {
            prop_assert_eq!(terminal.len(), 1, "exactly one terminal event");
            prop_assert_eq!(events.last().unwrap().event_type.is_terminal(), true, "nothing after the terminal event");
        } else {
            prop_assert!(terminal.is_empty());
        }
        prop_assert_eq!(events.last().unwrap().status, intent.status);
        prop_assert!(intent.delivery_attempt <= intent.max_delivery_attempts);
    }

    #[test]
    fn apply_is_deterministic(steps in prop::collection::vec(step(), 0..30)) {
        let id = Uuid::from_u128(9);
        let run = || {
            let mut state = MemState::default();
            let create = Command::Intent {
                command: IntentCommand::Create { intent: new_intent(id, 3, Some(50)), at: t0() },
                idempotency: None,
            };
            let mut replies = vec![state.run(&create)];
            for (i, s) in steps.iter().enumerate() {
                let cmd = command_for(&state, id, s, i as i64 + 1);
                replies.push(state.run(&cmd));
            }
            (state, replies)
        };
        prop_assert_eq!(run(), run());
    }
}

#[test]
fn idempotent_create_replays_and_a_changed_body_conflicts() {
    let mut state = MemState::default();
    let claim = |hash: &str| IdempotencyClaim {
        scope: "k1".into(),
        key: "order-1".into(),
        request_hash: hash.into(),
        expires_at: t0() + Duration::hours(24),
    };
    let create = |id: u128, hash: &str, at: DateTime<Utc>| Command::Intent {
        command: IntentCommand::Create {
            intent: new_intent(Uuid::from_u128(id), 3, None),
            at,
        },
        idempotency: Some(claim(hash)),
    };
    let first = state.run(&create(1, "h", t0())).unwrap();
    let again = state
        .run(&create(2, "h", t0() + Duration::minutes(1)))
        .unwrap();
    match (first, again) {
        (
            Reply::Intent { intent: a, .. },
            Reply::Intent {
                intent: b,
                replayed,
                ..
            },
        ) => {
            assert_eq!(a.id, b.id);
            assert!(replayed);
        }
        other => panic!("unexpected replies {other:?}"),
    }
    assert_eq!(state.intents.len(), 1);
    assert_eq!(
        state.run(&create(3, "other", t0() + Duration::minutes(2))),
        Err(Rejection::IdempotencyConflict)
    );
    // After expiry the key is free again and creates a new intent.
    state
        .run(&create(4, "other", t0() + Duration::hours(25)))
        .unwrap();
    assert_eq!(state.intents.len(), 2);
}

#[test]
fn delivery_attempts_run_out_into_a_dead_lettered_failure() {
    let mut state = MemState::default();
    let id = Uuid::from_u128(5);
    state
        .run(&Command::Intent {
            command: IntentCommand::Create {
                intent: new_intent(id, 2, None),
                at: t0(),
            },
            idempotency: None,
        })
        .unwrap();
    for i in 0..3 {
        let cmd = command_for(&state, id, &Step::Deliver { attempt_skew: 0 }, i + 1);
        state.run(&cmd).unwrap();
    }
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Failed);
    assert!(intent.dead_lettered);
    assert_eq!(intent.delivery_attempt, 2);
    assert_eq!(intent.error.as_ref().unwrap()["code"], "delivery_failed");
}

#[test]
fn completing_from_delivered_records_the_implied_in_progress_step() {
    let mut state = MemState::default();
    let id = Uuid::from_u128(6);
    state
        .run(&Command::Intent {
            command: IntentCommand::Create {
                intent: new_intent(id, 3, None),
                at: t0(),
            },
            idempotency: None,
        })
        .unwrap();
    state
        .run(&command_for(
            &state,
            id,
            &Step::Deliver { attempt_skew: 0 },
            1,
        ))
        .unwrap();
    state
        .run(&command_for(&state, id, &Step::Complete, 2))
        .unwrap();
    let types: Vec<&str> = state
        .events_of(id)
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "intent.created",
            "intent.submitted",
            "intent.delivered",
            "intent.in_progress",
            "intent.completed"
        ]
    );
    let second = state.run(&command_for(&state, id, &Step::ResolveCompleted, 3));
    assert_eq!(
        second,
        Err(Rejection::Terminal {
            from: Status::Completed,
            to: Some(Status::Completed)
        })
    );
}

#[test]
fn a_timeout_before_the_deadline_is_refused() {
    let mut state = MemState::default();
    let id = Uuid::from_u128(8);
    state
        .run(&Command::Intent {
            command: IntentCommand::Create {
                intent: new_intent(id, 3, Some(60)),
                at: t0(),
            },
            idempotency: None,
        })
        .unwrap();
    let early = command_for(&state, id, &Step::TimeOut { at_seconds: 59 }, 1);
    assert!(matches!(state.run(&early), Err(Rejection::Invalid(_))));
    let late = command_for(&state, id, &Step::TimeOut { at_seconds: 60 }, 2);
    state.run(&late).unwrap();
    assert_eq!(state.intents[&id].status, Status::TimedOut);
}
