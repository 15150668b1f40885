//! Property tests of the lifecycle rules: whatever commands arrive, in whatever order, the
//! event log of an intent stays gapless, only allowed transitions appear, a terminal status
//! never changes and there is exactly one terminal event; the due index always holds exactly
//! the entries the intent's times call for. Unit tests below cover each delivery rule.

use std::collections::{BTreeMap, BTreeSet};

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
    /// (agent, cursor) -> intent
    queue: BTreeMap<(String, u64), Uuid>,
    keys: BTreeMap<String, ApiKey>,
    agents: BTreeMap<String, AgentConfig>,
    due: BTreeSet<DueEntry>,
    dead: BTreeMap<Uuid, DeadLetter>,
    threads: BTreeMap<Uuid, InboxThread>,
    changes: BTreeMap<(String, u64), InboxChange>,
    subs: BTreeMap<Uuid, Subscription>,
    webhook_events: BTreeMap<Uuid, WebhookEvent>,
    deliveries: BTreeMap<Uuid, WebhookDelivery>,
    retention: Retention,
    /// The newest feed `seq` of each owner (feed entries of purged threads are removed).
    feed_cursors: BTreeMap<String, u64>,
    mesh: BTreeMap<String, mesh::MeshAgent>,
    holds: BTreeSet<(String, Uuid)>,
    mesh_events: BTreeMap<u64, mesh::MeshEvent>,
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
    fn agent_config(&self, address: &str) -> Option<AgentConfig> {
        self.agents.get(address).cloned()
    }
    fn subscriptions_of(&self, owner: &str) -> Vec<Subscription> {
        self.subs
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect()
    }
    fn subscription(&self, id: &Uuid) -> Option<Subscription> {
        self.subs.get(id).cloned()
    }
    fn inbox_thread(&self, id: &Uuid) -> Option<InboxThread> {
        self.threads.get(id).cloned()
    }
    fn inbox_cursor(&self, owner: &str) -> u64 {
        self.feed_cursors.get(owner).copied().unwrap_or(0)
    }
    fn webhook_event(&self, id: &Uuid) -> Option<WebhookEvent> {
        self.webhook_events.get(id).cloned()
    }
    fn webhook_delivery(&self, id: &Uuid) -> Option<WebhookDelivery> {
        self.deliveries.get(id).cloned()
    }
    fn webhook_deliveries(&self, event_id: &Uuid) -> Vec<WebhookDelivery> {
        self.deliveries
            .values()
            .filter(|d| d.event_id == *event_id)
            .cloned()
            .collect()
    }
    fn dead_letter(&self, id: &Uuid) -> Option<DeadLetter> {
        self.dead.get(id).cloned()
    }
    fn retention(&self) -> Retention {
        self.retention
    }
    fn mesh_agent(&self, address: &str) -> Option<mesh::MeshAgent> {
        self.mesh.get(address).cloned()
    }
    fn mesh_holds(&self, agent: &str) -> Vec<Uuid> {
        self.holds
            .iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, id)| *id)
            .collect()
    }
    fn mesh_event_cursor(&self) -> u64 {
        self.mesh_events.keys().next_back().copied().unwrap_or(0)
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
                Write::AgentQueue {
                    agent,
                    cursor,
                    intent_id,
                } => {
                    let last = self.cursors.entry(agent.clone()).or_default();
                    assert!(cursor > *last, "agent cursors must only grow");
                    *last = cursor;
                    self.queue.insert((agent, cursor), intent_id);
                }
                Write::ApiKey { key_hash, key } => {
                    self.keys.insert(key_hash, key);
                }
                Write::AgentConfig(c) => {
                    self.agents.insert(c.address.path().to_string(), *c);
                }
                Write::RemoveAgent { address } => {
                    self.agents.remove(&address);
                }
                Write::Due { at, kind, id } => {
                    let fresh = self.due.insert(DueEntry { at, kind, id });
                    assert!(fresh, "due entry {kind:?} {at} {id} written twice");
                }
                Write::Undue { at, kind, id } => {
                    let existed = self.due.remove(&DueEntry { at, kind, id });
                    assert!(
                        existed,
                        "removed a due entry {kind:?} {at} that was not there"
                    );
                }
                Write::DeadLetter(d) => {
                    self.dead.insert(d.intent_id, d);
                }
                Write::InboxThread(t) => {
                    self.threads.insert(t.thread_id, *t);
                }
                Write::InboxChange { owner, change } => {
                    assert_eq!(
                        change.seq,
                        self.inbox_cursor(&owner) + 1,
                        "inbox feed gapless"
                    );
                    self.feed_cursors.insert(owner.clone(), change.seq);
                    self.changes.insert((owner, change.seq), change);
                }
                Write::Subscription(sub) => {
                    self.subs.insert(sub.id, *sub);
                }
                Write::WebhookEvent(e) => {
                    let prev = self.webhook_events.insert(e.event_id, *e);
                    assert!(prev.is_none(), "a webhook event was published twice");
                }
                Write::WebhookDelivery(d) => {
                    self.deliveries.insert(d.delivery_id, *d);
                }
                Write::Retention(r) => self.retention = r,
                // The model finds what belongs to the intent by looking at everything, so a
                // record the store's per-intent keys would miss shows up as left behind.
                Write::Purge(i) => {
                    let id = i.id;
                    assert!(
                        self.intents.remove(&id).is_some(),
                        "purged a missing intent"
                    );
                    self.events.retain(|(of, _), _| *of != id);
                    self.idem.retain(|_, r| r.intent_id != id);
                    self.queue.retain(|_, of| *of != id);
                    self.dead.remove(&id);
                    self.threads.remove(&id);
                    self.changes.retain(|_, c| c.thread_id != id);
                    let gone: BTreeSet<Uuid> = self
                        .webhook_events
                        .values()
                        .filter(|e| e.payload["intent_id"] == json!(id))
                        .map(|e| e.event_id)
                        .collect();
                    self.webhook_events.retain(|e, _| !gone.contains(e));
                    let dropped: Vec<WebhookDelivery> = self
                        .deliveries
                        .values()
                        .filter(|d| gone.contains(&d.event_id))
                        .cloned()
                        .collect();
                    for d in dropped {
                        self.deliveries.remove(&d.delivery_id);
                        if let Some(at) = d.next_attempt_at {
                            self.due.remove(&DueEntry {
                                at,
                                kind: DueKind::WebhookDelivery,
                                id: d.delivery_id,
                            });
                        }
                    }
                }
                Write::MeshAgent(a) => {
                    self.mesh.insert(a.address.clone(), *a);
                }
                Write::MeshHold { agent, intent_id } => {
                    assert!(self.holds.insert((agent, intent_id)), "held twice");
                }
                Write::MeshUnhold { agent, intent_id } => {
                    self.holds.remove(&(agent, intent_id));
                }
                Write::MeshEvent(e) => {
                    assert_eq!(e.seq, self.mesh_event_cursor() + 1, "mesh log gapless");
                    self.mesh_events.insert(e.seq, *e);
                }
            }
        }
        Ok(applied.reply)
    }

    fn due_of(&self, id: Uuid) -> BTreeSet<(DueKind, DateTime<Utc>)> {
        self.due
            .iter()
            .filter(|e| e.id == id)
            .map(|e| (e.kind, e.at))
            .collect()
    }

    /// Runs an intent command without an idempotency key.
    fn intent_cmd(&mut self, command: IntentCommand) -> Result<Reply, Rejection> {
        self.run(&Command::Intent {
            command,
            idempotency: None,
        })
    }

    fn events_of(&self, id: Uuid) -> Vec<Event> {
        self.events
            .range((id, 0)..=(id, u64::MAX))
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn event_types(&self, id: Uuid) -> Vec<String> {
        self.events_of(id)
            .iter()
            .map(|e| e.event_type.as_str().to_owned())
            .collect()
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn new_intent(id: Uuid, max_attempts: u32, deadline: Option<i64>) -> NewIntent {
    NewIntent {
        id,
        correlation_id: Uuid::from_u128(7),
        from_agent: "agent://acme/prod/sender".into(),
        payload: json!({"amount": 10}),
        max_delivery_attempts: max_attempts,
        deadline_at: deadline.map(|s| t0() + Duration::seconds(s)),
        ..intentd_test_support::new_intent("agent://acme/prod/payments")
    }
}

const SENDER: &str = "acme/prod/sender";
const RECEIVER: &str = "acme/prod/payments";

fn register(state: &mut MemState, binding: Binding) {
    state
        .run(&Command::RegisterAgent {
            config: AgentConfig {
                address: intentd_lifecycle::AgentAddress::parse("address", RECEIVER).unwrap(),
                binding,
                ack_timeout_secs: 30,
                max_delivery_attempts: None,
                display_name: None,
                created_at: t0(),
                updated_at: t0(),
            },
        })
        .unwrap();
}

fn http() -> Binding {
    Binding::Http {
        url: "https://receiver.example/hook".into(),
        secret: "whsec_abc".into(),
        max_concurrency: 4,
    }
}

fn subscribe(state: &mut MemState, n: u128, owner: &str, types: &[&str]) -> Uuid {
    let reply = state
        .run(&Command::UpsertSubscription {
            subscription: Subscription {
                id: Uuid::from_u128(900 + n),
                owner: owner.into(),
                callback_url: format!("https://hooks.example/{n}"),
                event_types: types.iter().map(|t| t.to_string()).collect(),
                secret: "s".into(),
                active: true,
                description: None,
                created_at: t0(),
                updated_at: t0(),
                revoked_at: None,
            },
        })
        .unwrap();
    match reply {
        Reply::Subscription(s) => s.id,
        other => panic!("unexpected {other:?}"),
    }
}

/// One step of a random scenario; `attempt_skew` makes some acks and deliveries stale.
#[derive(Debug, Clone)]
enum Step {
    Deliver {
        attempt_skew: u32,
    },
    Ack {
        attempt_skew: u32,
    },
    Complete,
    Fail,
    Progress,
    Wait,
    Approve {
        generation_skew: Option<u64>,
    },
    ResolveCompleted,
    ResolveFailed,
    Cancel,
    TimeOut {
        at_seconds: i64,
    },
    Controls {
        generation_skew: Option<u64>,
    },
    Policy {
        generation_skew: Option<u64>,
    },
    /// `early`: before the lease ends (refused).
    ExpireLease {
        attempt_skew: u32,
        early: bool,
    },
    DeliveryFailed {
        attempt_skew: u32,
        give_up: bool,
    },
    Release,
    /// `early`: before the reminder is due (refused).
    Remind {
        early: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let skew = prop_oneof![3 => Just(0u32), 1 => 1u32..3];
    let skew_ = skew.clone();
    let gen_skew =
        prop_oneof![2 => Just(None), 2 => Just(Some(0u64)), 1 => (1u64..3).prop_map(Some)];
    prop_oneof![
        skew.clone()
            .prop_map(|attempt_skew| Step::Deliver { attempt_skew }),
        skew_.prop_map(|attempt_skew| Step::Ack { attempt_skew }),
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
        (skew.clone(), any::<bool>()).prop_map(|(attempt_skew, early)| Step::ExpireLease {
            attempt_skew,
            early
        }),
        (skew.clone(), any::<bool>()).prop_map(|(attempt_skew, give_up)| {
            Step::DeliveryFailed {
                attempt_skew,
                give_up,
            }
        }),
        Just(Step::Release),
        any::<bool>().prop_map(|early| Step::Remind { early }),
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
            lease_until: at + Duration::seconds(30),
            at,
        },
        Step::ExpireLease {
            attempt_skew,
            early,
        } => IntentCommand::ExpireLease {
            intent_id: id,
            attempt: cur.delivery_attempt + attempt_skew,
            retry_at: at + Duration::seconds(5),
            at: match (&cur.lease, early) {
                (Some(l), false) => l.expires_at,
                (Some(l), true) => l.expires_at - Duration::milliseconds(1),
                (None, _) => at,
            },
        },
        Step::DeliveryFailed {
            attempt_skew,
            give_up,
        } => IntentCommand::DeliveryFailed {
            intent_id: id,
            attempt: cur.delivery_attempt + attempt_skew,
            error: "HTTP 503".into(),
            retry_at: (!give_up).then(|| at + Duration::seconds(2)),
            at,
        },
        Step::Release => IntentCommand::Release {
            intent_id: id,
            at: cur.not_before.unwrap_or(at),
        },
        Step::Remind { early } => IntentCommand::Remind {
            intent_id: id,
            at: match (cur.next_reminder_at, early) {
                (Some(t), false) => t,
                (Some(t), true) => t - Duration::seconds(1),
                (None, _) => at,
            },
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
    if event.event_type.keeps_status() {
        event.status == prev && !prev.is_terminal()
    } else {
        prev.can_transition_to(event.status)
    }
}

/// The due entries an intent's times call for: what the index must hold for it, no more.
fn expected_due(i: &Intent) -> BTreeSet<(DueKind, DateTime<Utc>)> {
    let mut out = BTreeSet::new();
    if i.status.is_terminal() {
        if let Some(t) = i.purge_at {
            out.insert((DueKind::Purge, t));
        }
        return out;
    }
    if let Some(l) = &i.lease {
        out.insert((DueKind::LeaseExpiry, l.expires_at));
    }
    if let Some(t) = i.not_before {
        let held_back = i.status == Status::Submitted && i.agent_cursor == 0;
        let kind = if held_back {
            DueKind::Release
        } else {
            DueKind::Deliver
        };
        out.insert((kind, t));
    }
    if let Some(t) = i.deadline_at {
        out.insert((DueKind::Deadline, t));
    }
    if let Some(t) = i.next_reminder_at {
        out.insert((DueKind::Reminder, t));
    }
    if let Some(t) = i.workflow.as_ref().and_then(Workflow::due_at) {
        out.insert((DueKind::WorkflowStep, t));
    }
    out
}

/// How the receiver takes intents in a scenario.
#[derive(Debug, Clone, Copy)]
enum Setup {
    Stream,
    Http,
    Inbox,
    Delayed,
}

fn setup() -> impl Strategy<Value = Setup> {
    prop_oneof![
        Just(Setup::Stream),
        Just(Setup::Http),
        Just(Setup::Inbox),
        Just(Setup::Delayed)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_keeps_the_invariants(
        steps in prop::collection::vec(step(), 0..40),
        max_attempts in 1u32..4,
        deadline in prop::option::of(0i64..100),
        setup in setup(),
        reminders in prop::option::of((1u64..20, prop::option::of(1u32..3), any::<bool>())),
        webhooks in any::<bool>(),
    ) {
        let id = Uuid::from_u128(1);
        let mut state = MemState::default();
        match setup {
            Setup::Http => register(&mut state, http()),
            Setup::Inbox => register(&mut state, Binding::Inbox),
            Setup::Stream | Setup::Delayed => {}
        }
        if webhooks {
            subscribe(&mut state, 1, SENDER, &["intent.*"]);
        }
        let mut new = new_intent(id, max_attempts, deadline);
        if let Setup::Delayed = setup {
            new.deliver_at = Some(t0() + Duration::seconds(10));
        }
        if let Some((after, max, escalate)) = reminders {
            new.remind_after_seconds = Some(after);
            new.max_reminders = max;
            new.escalate_to = escalate.then(|| "agent://acme/prod/boss".to_string());
        }
        let create = Command::Intent {
            command: IntentCommand::Create { intent: new, at: t0() },
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
                    prop_assert!(!events.is_empty() || matches!(s, Step::Release),
                        "only a release changes an intent without an event: {s:?}");
                }
                Ok(other) => prop_assert!(false, "intent commands reply with the intent: {other:?}"),
                Err(_) => prop_assert_eq!(&state, &before, "a rejection changed the state"),
            }
            let intent = &state.intents[&id];
            prop_assert_eq!(state.due_of(id), expected_due(intent), "due index after {:?}", s);
            if let Some(lease) = &intent.lease {
                prop_assert_eq!(intent.status, Status::Delivered);
                prop_assert_eq!(lease.attempt, intent.delivery_attempt);
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
            prop_assert!(state.due.iter().all(|e| e.kind == DueKind::WebhookDelivery),
                "a terminal intent leaves nothing due");
        } else {
            prop_assert!(terminal.is_empty());
        }
        prop_assert_eq!(events.last().unwrap().status, intent.status);
        prop_assert!(intent.delivery_attempt <= intent.max_delivery_attempts);
        prop_assert_eq!(intent.dead_lettered, state.dead.contains_key(&id));
        if webhooks {
            // Every lifecycle event went out once, to the one subscription.
            prop_assert_eq!(state.webhook_events.len(), events.len());
            prop_assert_eq!(state.deliveries.len(), events.len());
        } else {
            prop_assert!(state.webhook_events.is_empty());
        }
        if let Some(thread) = state.threads.get(&id) {
            prop_assert_eq!(thread.status == ThreadStatus::Resolved, intent.status.is_terminal());
            let owner = intent.inbox_owner.as_deref().map(state_key);
            prop_assert_eq!(Some(thread.owner.as_str()), owner);
        }
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

    /// The owner's `approve_current_step`, wherever a random history left the intent: from
    /// every non-terminal status it ends IN_PROGRESS with the generation one higher and one
    /// event (`intent.resumed` when the status changed, `intent.step_approved` when it was
    /// already IN_PROGRESS), holding no lease and nothing due but its deadline; a terminal
    /// intent or a stale generation is refused and nothing changes. Then the owner's resolve
    /// completes it, as programs written for the hosted platform do.
    #[test]
    fn approve_current_step_from_any_reachable_status(
        steps in prop::collection::vec(step(), 0..30),
        setup in setup(),
        deadline in prop::option::of(0i64..100),
        generation_skew in prop_oneof![
            2 => Just(None), 2 => Just(Some(0u64)), 1 => (1u64..3).prop_map(Some)
        ],
    ) {
        let (mut state, id) = scenario_start(setup, deadline);
        for (i, s) in steps.iter().enumerate() {
            let cmd = command_for(&state, id, s, i as i64 + 1);
            let _ = state.run(&cmd);
        }
        let before = state.clone();
        let was = before.intents[&id].clone();
        let approve = command_for(&state, id, &Step::Approve { generation_skew }, 40);
        let outcome = state.run(&approve);
        if was.status.is_terminal() {
            prop_assert!(matches!(outcome, Err(Rejection::Terminal { .. })), "{outcome:?}");
            prop_assert_eq!(&state, &before);
            return Ok(());
        }
        if generation_skew.is_some_and(|skew| skew > 0) {
            prop_assert!(
                matches!(outcome, Err(Rejection::PolicyGenerationMismatch { .. })),
                "{outcome:?}"
            );
            prop_assert_eq!(&state, &before);
            return Ok(());
        }
        prop_assert!(was.status != Status::Created);
        let Ok(Reply::Intent { intent, events, replayed }) = outcome else {
            return Err(TestCaseError::fail(format!("approval refused: {outcome:?}")));
        };
        prop_assert!(!replayed);
        prop_assert_eq!(intent.status, Status::InProgress);
        prop_assert_eq!(intent.policy_generation, was.policy_generation + 1);
        prop_assert_eq!(intent.waiting_reason, None);
        prop_assert!(intent.lease.is_none());
        prop_assert_eq!(
            intent.pending_with.as_ref().map(|p| p.kind),
            Some(PendingWithKind::Agent)
        );
        prop_assert_eq!(events.len(), 1);
        let expected_type = if was.status == Status::InProgress {
            EventType::StepApproved
        } else {
            EventType::Resumed
        };
        prop_assert_eq!(events[0].event_type, expected_type);
        prop_assert_eq!(events[0].seq, was.last_seq + 1);
        prop_assert_eq!(events[0].status, Status::InProgress);
        prop_assert_eq!(&events[0].details["approved_in"], &json!(was.status));
        let due: BTreeSet<(DueKind, DateTime<Utc>)> =
            intent.deadline_at.map(|t| (DueKind::Deadline, t)).into_iter().collect();
        prop_assert_eq!(state.due_of(id), due);

        let resolve = command_for(&state, id, &Step::ResolveCompleted, 41);
        let Ok(Reply::Intent { intent, .. }) = state.run(&resolve) else {
            return Err(TestCaseError::fail("the owner's resolve after the approval was refused"));
        };
        prop_assert_eq!(intent.status, Status::Completed);
        prop_assert!(state.due_of(id).is_empty());
    }
}

/// A fresh intent (created at `t0`) for a receiver taking intents as `setup` says.
fn scenario_start(setup: Setup, deadline: Option<i64>) -> (MemState, Uuid) {
    let id = Uuid::from_u128(1);
    let mut state = MemState::default();
    match setup {
        Setup::Http => register(&mut state, http()),
        Setup::Inbox => register(&mut state, Binding::Inbox),
        Setup::Stream | Setup::Delayed => {}
    }
    let mut new = new_intent(id, 3, deadline);
    if let Setup::Delayed = setup {
        new.deliver_at = Some(t0() + Duration::seconds(10));
    }
    new.remind_after_seconds = Some(5);
    create_with(&mut state, new);
    (state, id)
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
        .intent_cmd(IntentCommand::Create {
            intent: new_intent(id, 2, None),
            at: t0(),
        })
        .unwrap();
    for i in 0..2 {
        let deliver = command_for(&state, id, &Step::Deliver { attempt_skew: 0 }, i * 100 + 1);
        state.run(&deliver).unwrap();
        // A second consumer cannot take a leased intent.
        assert!(state.run(&deliver).is_err());
        let expire = Step::ExpireLease {
            attempt_skew: 0,
            early: false,
        };
        state
            .run(&command_for(&state, id, &expire, i * 100 + 2))
            .unwrap();
    }
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Failed);
    assert!(intent.dead_lettered);
    assert_eq!(intent.delivery_attempt, 2);
    assert_eq!(intent.error.as_ref().unwrap()["code"], "delivery_failed");
    assert!(state.dead[&id].replayed_as.is_none());
    let types = state.event_types(id);
    assert_eq!(
        types,
        [
            "intent.created",
            "intent.submitted",
            "intent.delivered",
            "intent.lease_expired",
            "intent.delivered",
            "intent.lease_expired",
            "intent.failed"
        ]
    );
    // The lease expiry keeps the status; the queue offered the intent again in between.
    assert_eq!(state.events_of(id)[3].status, Status::Delivered);
    let cursors: Vec<u64> = state.queue.keys().map(|(_, c)| *c).collect();
    assert_eq!(cursors, [1, 2]);
    assert!(state.due.is_empty());
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
    let types = state.event_types(id);
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

/// The hosted platform's pattern, one status at a time: the owner creates an intent,
/// approves its current step at once, and resolves it. Each status the intent can be in when
/// the approval arrives goes to IN_PROGRESS and drops what that status had the engine wait
/// for (a push, a lease, a reminder); IN_PROGRESS stays and records the approval; a terminal
/// intent refuses it.
#[test]
fn approve_current_step_from_each_status() {
    let approve = |id: Uuid, expected: Option<u64>, at: i64| IntentCommand::Resume {
        intent_id: id,
        action: ResumeAction::ApproveCurrentStep {
            expected_policy_generation: expected,
            reason: Some("go".into()),
        },
        actor: "agent://acme/prod/sender".into(),
        at: secs(at),
    };
    let approved = |state: &mut MemState, id: Uuid, expected: Option<u64>| -> (Intent, Event) {
        match state.intent_cmd(approve(id, expected, 50)) {
            Ok(Reply::Intent {
                intent, mut events, ..
            }) => {
                assert_eq!(events.len(), 1, "{events:?}");
                (*intent, events.remove(0))
            }
            other => panic!("approval refused: {other:?}"),
        }
    };

    // SUBMITTED, with an HTTP push due: the push is no longer due.
    let mut state = MemState::default();
    register(&mut state, http());
    let id = create_with(&mut state, new_intent(Uuid::from_u128(70), 3, None));
    assert_eq!(state.due_of(id), BTreeSet::from([(DueKind::Deliver, t0())]));
    let (intent, event) = approved(&mut state, id, Some(0));
    assert_eq!(
        (intent.status, intent.policy_generation),
        (Status::InProgress, 1)
    );
    assert_eq!(
        (event.event_type, event.status),
        (EventType::Resumed, Status::InProgress)
    );
    assert_eq!(event.details["approved_in"], json!("SUBMITTED"));
    assert_eq!(event.details["reason"], json!("go"));
    assert_eq!(event.details["policy_generation"], json!(1));
    assert_eq!(event.actor, "agent://acme/prod/sender");
    assert!(state.due_of(id).is_empty());
    // The owner resolves it: COMPLETED, with no implied step (it is IN_PROGRESS already).
    state
        .intent_cmd(IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Completed {
                result: json!({"done": true}),
            },
            actor: "agent://acme/prod/sender".into(),
            at: secs(51),
        })
        .unwrap();
    let types = state.event_types(id);
    assert_eq!(
        types,
        [
            "intent.created",
            "intent.submitted",
            "intent.resumed",
            "intent.completed"
        ]
    );
    // Terminal: refused, nothing changes.
    let before = state.clone();
    assert_eq!(
        state.intent_cmd(approve(id, None, 52)),
        Err(Rejection::Terminal {
            from: Status::Completed,
            to: None
        })
    );
    assert_eq!(state, before);

    // DELIVERED: the lease and its expiry go.
    let mut state = MemState::default();
    let id = create_with(&mut state, new_intent(Uuid::from_u128(71), 3, None));
    deliver_at(&mut state, id, 1).unwrap();
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::LeaseExpiry, secs(31))])
    );
    let (intent, event) = approved(&mut state, id, None);
    assert_eq!(intent.status, Status::InProgress);
    assert!(intent.lease.is_none());
    assert_eq!(event.details["approved_in"], json!("DELIVERED"));
    assert!(state.due_of(id).is_empty());

    // ACKNOWLEDGED.
    let mut state = MemState::default();
    let id = create_with(&mut state, new_intent(Uuid::from_u128(72), 3, None));
    deliver_at(&mut state, id, 1).unwrap();
    state
        .intent_cmd(IntentCommand::Acknowledge {
            intent_id: id,
            attempt: 1,
            actor: "agent://acme/prod/payments".into(),
            at: secs(2),
        })
        .unwrap();
    let (intent, event) = approved(&mut state, id, None);
    assert_eq!(intent.status, Status::InProgress);
    assert_eq!(event.details["approved_in"], json!("ACKNOWLEDGED"));

    // WAITING for a person: the reminders stop, the intent is with its agent again.
    let mut state = MemState::default();
    let mut new = new_intent(Uuid::from_u128(73), 3, Some(600));
    new.human_task = Some(json!({"title": "Sign"}));
    new.remind_after_seconds = Some(60);
    let id = create_with(&mut state, new);
    assert_eq!(state.intents[&id].status, Status::Waiting);
    let (intent, event) = approved(&mut state, id, Some(0));
    assert_eq!(intent.status, Status::InProgress);
    assert_eq!(intent.waiting_reason, None);
    assert_eq!(intent.pending_with.unwrap().kind, PendingWithKind::Agent);
    assert_eq!(event.details["approved_in"], json!("WAITING"));
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Deadline, secs(600))])
    );

    // IN_PROGRESS: the status stays, the approval is on the record and moves the generation.
    state
        .intent_cmd(approve(id, Some(0), 53))
        .expect_err("generation 0 is stale now");
    let (intent, event) = approved(&mut state, id, Some(1));
    assert_eq!(
        (intent.status, intent.policy_generation),
        (Status::InProgress, 2)
    );
    assert_eq!(
        (event.event_type, event.status),
        (EventType::StepApproved, Status::InProgress)
    );
    assert!(event.event_type.keeps_status());
    assert_eq!(event.details["approved_in"], json!("IN_PROGRESS"));
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

fn secs(n: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(n)
}

fn create_with(state: &mut MemState, new: NewIntent) -> Uuid {
    let id = new.id;
    state
        .intent_cmd(IntentCommand::Create {
            intent: new,
            at: t0(),
        })
        .unwrap();
    id
}

fn deliver_at(state: &mut MemState, id: Uuid, at: i64) -> Result<Reply, Rejection> {
    let attempt = state.intents[&id].delivery_attempt;
    state.intent_cmd(IntentCommand::Deliver {
        intent_id: id,
        expected_attempt: attempt,
        consumer: "c1".into(),
        lease_until: secs(at + 30),
        at: secs(at),
    })
}

fn resume_complete(
    state: &mut MemState,
    id: Uuid,
    result: serde_json::Value,
) -> Result<Reply, Rejection> {
    state.intent_cmd(IntentCommand::Resume {
        intent_id: id,
        action: ResumeAction::Complete { result },
        actor: "agent://acme/prod/payments".into(),
        at: secs(5),
    })
}

#[test]
fn an_expired_lease_is_offered_again_and_stale_attempts_change_nothing() {
    let mut state = MemState::default();
    let id = create_with(&mut state, new_intent(Uuid::from_u128(20), 3, None));
    deliver_at(&mut state, id, 1).unwrap();
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::LeaseExpiry, secs(31))])
    );
    let expire = |attempt: u32, at: i64| IntentCommand::ExpireLease {
        intent_id: id,
        attempt,
        retry_at: secs(at + 5),
        at: secs(at),
    };
    let before = state.clone();
    assert_eq!(
        state.intent_cmd(expire(2, 31)),
        Err(Rejection::StaleAttempt {
            expected: 2,
            current: 1
        })
    );
    assert!(matches!(
        state.intent_cmd(expire(1, 30)),
        Err(Rejection::Invalid(_))
    ));
    assert_eq!(state, before);
    state.intent_cmd(expire(1, 31)).unwrap();
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Delivered);
    assert!(intent.lease.is_none());
    assert_eq!(intent.agent_cursor, 2, "re-enqueued at a new cursor");
    assert!(state.due_of(id).is_empty());
    // The same expiry again is refused: that lease is gone.
    assert!(state.intent_cmd(expire(1, 40)).is_err());
    // A stale ack is refused; the current attempt's late ack is fine.
    assert!(matches!(
        state.intent_cmd(IntentCommand::Acknowledge {
            intent_id: id,
            attempt: 0,
            actor: "a".into(),
            at: secs(41)
        }),
        Err(Rejection::StaleAttempt { .. })
    ));
    deliver_at(&mut state, id, 42).unwrap();
    assert_eq!(state.intents[&id].delivery_attempt, 2);
    state
        .intent_cmd(IntentCommand::Acknowledge {
            intent_id: id,
            attempt: 2,
            actor: "a".into(),
            at: secs(43),
        })
        .unwrap();
    assert_eq!(state.intents[&id].status, Status::Acknowledged);
    assert!(state.intents[&id].lease.is_none());
    assert!(
        state.due_of(id).is_empty(),
        "an ack removes the lease expiry"
    );
}

#[test]
fn a_released_lease_is_offered_again_at_once_and_only_by_its_holder() {
    let mut state = MemState::default();
    let id = create_with(&mut state, new_intent(Uuid::from_u128(22), 2, None));
    deliver_at(&mut state, id, 1).unwrap();
    let holder = state.intents[&id].lease.clone().unwrap().consumer;
    let release = |attempt: u32, consumer: &str, at: i64| IntentCommand::ReleaseLease {
        intent_id: id,
        attempt,
        consumer: consumer.into(),
        at: secs(at),
    };
    let before = state.clone();
    assert!(matches!(
        state.intent_cmd(release(1, "someone-else", 2)),
        Err(Rejection::Invalid(_))
    ));
    assert!(matches!(
        state.intent_cmd(release(2, &holder, 2)),
        Err(Rejection::StaleAttempt { .. })
    ));
    assert_eq!(state, before, "refused releases change nothing");
    // Long before the lease would run out (at 31), the release re-enqueues the intent.
    state.intent_cmd(release(1, &holder, 2)).unwrap();
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Delivered);
    assert!(intent.lease.is_none());
    assert_eq!(intent.agent_cursor, 2, "re-enqueued at a new cursor");
    assert!(state.due_of(id).is_empty(), "no lease expiry left");
    let last = state.events_of(id).pop().unwrap();
    assert_eq!(last.event_type, EventType::LeaseExpired);
    assert_eq!(last.details["released"], true);
    assert_eq!(last.details["delivery_attempt"], 1);
    assert!(
        state.intent_cmd(release(1, &holder, 3)).is_err(),
        "released once"
    );
    // The release counts the attempt: the last one released dead-letters the intent.
    deliver_at(&mut state, id, 4).unwrap();
    state.intent_cmd(release(2, &holder, 5)).unwrap();
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Failed);
    assert!(intent.dead_lettered);
    assert!(
        state.dead[&id].reason.contains("released"),
        "{:?}",
        state.dead[&id]
    );
}

#[test]
fn http_pushes_are_due_retried_and_finally_dead_lettered() {
    let mut state = MemState::default();
    register(&mut state, http());
    let id = create_with(&mut state, new_intent(Uuid::from_u128(21), 3, Some(600)));
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Deliver, t0()), (DueKind::Deadline, secs(600))])
    );
    deliver_at(&mut state, id, 1).unwrap();
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([
            (DueKind::LeaseExpiry, secs(31)),
            (DueKind::Deadline, secs(600))
        ])
    );
    let failed = |attempt: u32, retry: Option<i64>| IntentCommand::DeliveryFailed {
        intent_id: id,
        attempt,
        error: "HTTP 503".into(),
        retry_at: retry.map(secs),
        at: secs(2),
    };
    state.intent_cmd(failed(1, Some(10))).unwrap();
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Deliver, secs(10)), (DueKind::Deadline, secs(600))])
    );
    let last = state.events_of(id).pop().unwrap();
    assert_eq!(last.event_type, EventType::LeaseExpired);
    assert_eq!(last.details["error"], "HTTP 503");
    deliver_at(&mut state, id, 10).unwrap();
    state.intent_cmd(failed(2, None)).unwrap();
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Failed);
    assert!(intent.dead_lettered);
    assert!(state.dead[&id].reason.contains("HTTP 503"));
    assert!(
        state.due.is_empty(),
        "a failed intent has nothing due, not even its deadline"
    );
}

#[test]
fn failed_pushes_count_on_the_agent_until_it_settles_a_delivery() {
    let mut state = MemState::default();
    register(&mut state, http());
    let id = create_with(&mut state, new_intent(Uuid::from_u128(23), 10, None));
    let agent = "acme/prod/payments";
    for n in 1..=3u32 {
        deliver_at(&mut state, id, i64::from(n) * 10).unwrap();
        state
            .intent_cmd(IntentCommand::DeliveryFailed {
                intent_id: id,
                attempt: n,
                error: format!("HTTP 503 (try {n})"),
                retry_at: Some(secs(i64::from(n) * 10 + 5)),
                at: secs(i64::from(n) * 10 + 1),
            })
            .unwrap();
        assert_eq!(state.mesh[agent].push_failures, n);
    }
    let record = &state.mesh[agent];
    assert_eq!(record.last_push_error.as_deref(), Some("HTTP 503 (try 3)"));
    assert_eq!(record.last_push_failed_at, Some(secs(31)));
    let (health, reason) = record.push_health().unwrap();
    assert_eq!(health, mesh::Health::Degraded);
    assert!(reason.contains("the last 3 pushes failed"), "{reason}");

    // Someone else's acknowledgement says nothing about the agent's endpoint.
    deliver_at(&mut state, id, 40).unwrap();
    let ack = |actor: &str| IntentCommand::Acknowledge {
        intent_id: id,
        attempt: 4,
        actor: actor.into(),
        at: secs(41),
    };
    let mut other = state.clone();
    other.intent_cmd(ack("agent://acme/ops/admin")).unwrap();
    assert_eq!(other.mesh[agent].push_failures, 3);
    // The agent's own does: its pushes get through again.
    state.intent_cmd(ack("agent://acme/prod/payments")).unwrap();
    let record = &state.mesh[agent];
    assert_eq!(record.push_failures, 0);
    assert_eq!(record.push_health(), None);
    assert_eq!(
        record.observed_health(secs(42)).map(|(h, _)| h),
        Some(mesh::Health::Healthy),
        "judged by its pushes once one failed"
    );
}

#[test]
fn a_delayed_intent_waits_for_its_release() {
    let mut state = MemState::default();
    register(&mut state, http());
    let mut new = new_intent(Uuid::from_u128(22), 3, None);
    new.deliver_at = Some(secs(60));
    let id = create_with(&mut state, new);
    assert!(state.queue.is_empty());
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Release, secs(60))])
    );
    assert!(matches!(
        deliver_at(&mut state, id, 1),
        Err(Rejection::Invalid(_))
    ));
    let release = |at: i64| IntentCommand::Release {
        intent_id: id,
        at: secs(at),
    };
    assert!(state.intent_cmd(release(59)).is_err());
    state.intent_cmd(release(60)).unwrap();
    assert_eq!(state.queue.len(), 1);
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Deliver, secs(60))])
    );
    assert!(
        state.intent_cmd(release(61)).is_ok(),
        "a push due for a non-http agent is cleared"
    );
    assert!(state.due_of(id).is_empty());
    // A deliver_at in the past enqueues at once.
    let mut past = new_intent(Uuid::from_u128(23), 3, None);
    past.deliver_at = Some(t0() - Duration::seconds(1));
    create_with(&mut state, past);
    assert_eq!(state.queue.len(), 2);
}

fn approval_task(state: &mut MemState, n: u128) -> Uuid {
    let mut new = new_intent(Uuid::from_u128(n), 3, None);
    new.human_task = Some(json!({
        "title": "Approve the refund",
        "task_type": "approval",
        "allowed_outcomes": ["approved", "rejected"],
        "required_comment": true,
    }));
    create_with(state, new)
}

#[test]
fn inbox_approval_checks_outcomes_and_the_required_comment() {
    let mut state = MemState::default();
    let id = approval_task(&mut state, 30);
    let intent = &state.intents[&id];
    assert_eq!(intent.status, Status::Waiting);
    assert_eq!(intent.waiting_reason, Some(WaitingReason::WaitingForHuman));
    assert_eq!(
        intent.pending_with.as_ref().unwrap().kind,
        PendingWithKind::Human
    );
    assert!(
        state.queue.is_empty(),
        "a human task is not put on the agent queue"
    );
    let thread = &state.threads[&id];
    assert_eq!(
        (thread.owner.as_str(), thread.status, thread.title.as_str()),
        (RECEIVER, ThreadStatus::Open, "Approve the refund")
    );
    assert_eq!(state.inbox_cursor(RECEIVER), 1);

    let before = state.clone();
    for bad in [
        json!({"outcome": "maybe", "comment": "hm"}),
        json!({"outcome": "approved"}),
        json!({"outcome": "approved", "comment": "  "}),
        json!({"comment": "no outcome"}),
    ] {
        assert!(
            matches!(
                resume_complete(&mut state, id, bad.clone()),
                Err(Rejection::Invalid(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(state, before);
    resume_complete(
        &mut state,
        id,
        json!({"outcome": "rejected", "comment": "no budget"}),
    )
    .unwrap();
    assert_eq!(state.intents[&id].status, Status::Completed);
    assert_eq!(state.threads[&id].status, ThreadStatus::Resolved);
    let feed: Vec<InboxChangeKind> = state.changes.values().map(|c| c.kind).collect();
    assert_eq!(feed, [InboxChangeKind::Added, InboxChangeKind::Resolved]);
    assert_eq!(state.threads[&id].change_seq, 2);
}

#[test]
fn an_inbox_bound_receiver_gets_every_intent_as_a_thread() {
    let mut state = MemState::default();
    register(&mut state, Binding::Inbox);
    let id = create_with(&mut state, new_intent(Uuid::from_u128(31), 3, None));
    assert_eq!(state.intents[&id].status, Status::Waiting);
    assert_eq!(state.threads[&id].title, "payment.charge.v1");
    // Without a human_task any answer completes it.
    resume_complete(&mut state, id, json!({"ok": true})).unwrap();
    assert_eq!(state.intents[&id].status, Status::Completed);
}

#[test]
fn reminders_then_escalation() {
    let mut state = MemState::default();
    let mut new = new_intent(Uuid::from_u128(40), 3, None);
    new.human_task = Some(json!({"title": "Sign"}));
    new.remind_after_seconds = Some(60);
    new.remind_interval_seconds = Some(30);
    new.max_reminders = Some(2);
    new.escalate_to = Some("agent://acme/prod/boss".into());
    let id = create_with(&mut state, new);
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Reminder, secs(60))])
    );
    let remind = |at: i64| IntentCommand::Remind {
        intent_id: id,
        at: secs(at),
    };
    assert!(matches!(
        state.intent_cmd(remind(59)),
        Err(Rejection::Invalid(_))
    ));
    state.intent_cmd(remind(60)).unwrap();
    assert_eq!(state.intents[&id].remind_count, 1);
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::Reminder, secs(90))])
    );
    state.intent_cmd(remind(90)).unwrap();
    let intent = &state.intents[&id];
    assert_eq!(intent.remind_count, 2);
    assert_eq!(
        intent.escalated_to.as_deref(),
        Some("agent://acme/prod/boss")
    );
    assert_eq!(
        intent.pending_with,
        Some(PendingWith {
            kind: PendingWithKind::Human,
            reference: "agent://acme/prod/boss".into()
        })
    );
    assert!(
        state.due_of(id).is_empty(),
        "no reminders after the escalation"
    );
    let tail: Vec<(EventType, Status)> = state.events_of(id)[3..]
        .iter()
        .map(|e| (e.event_type, e.status))
        .collect();
    assert_eq!(
        tail,
        [
            (EventType::ReminderSent, Status::Waiting),
            (EventType::ReminderSent, Status::Waiting),
            (EventType::Escalated, Status::Waiting)
        ]
    );
    assert_eq!(state.threads[&id].owner, "acme/prod/boss");
    assert_eq!(
        state.changes.get(&(RECEIVER.to_string(), 2)).unwrap().kind,
        InboxChangeKind::Removed
    );
    assert_eq!(
        state
            .changes
            .get(&("acme/prod/boss".to_string(), 1))
            .unwrap()
            .kind,
        InboxChangeKind::Added
    );
    assert!(state.intent_cmd(remind(200)).is_err());
}

#[test]
fn delegation_moves_the_thread_and_pending_with() {
    let mut state = MemState::default();
    let id = approval_task(&mut state, 41);
    let delegate = |to: &str| Command::InboxDelegate {
        thread_id: id,
        to: to.into(),
        actor: "agent://acme/prod/payments".into(),
        at: secs(3),
    };
    assert!(state.run(&delegate(RECEIVER)).is_err(), "already there");
    state.run(&delegate("agent://acme/prod/deputy")).unwrap();
    assert_eq!(state.threads[&id].owner, "acme/prod/deputy");
    assert_eq!(
        state.intents[&id].pending_with.as_ref().unwrap().reference,
        "agent://acme/prod/deputy"
    );
    // Replies and deletions go to the new owner's feed.
    let reply = Command::InboxReply {
        thread_id: id,
        message_id: Uuid::from_u128(500),
        author: "deputy".into(),
        text: "looking".into(),
        at: secs(4),
    };
    state.run(&reply).unwrap();
    assert_eq!(
        state.run(&reply),
        Err(Rejection::AlreadyExists(Uuid::from_u128(500)))
    );
    state
        .run(&Command::InboxDeleteMessages {
            thread_id: id,
            message_ids: vec![Uuid::from_u128(500)],
            actor: "deputy".into(),
            at: secs(5),
        })
        .unwrap();
    let m = &state.threads[&id].messages[0];
    assert!(m.deleted && m.text.is_empty());
    assert!(state
        .run(&Command::InboxDeleteMessages {
            thread_id: id,
            message_ids: vec![Uuid::from_u128(501)],
            actor: "deputy".into(),
            at: secs(5),
        })
        .is_err());
    assert_eq!(state.inbox_cursor("acme/prod/deputy"), 3);
}

#[test]
fn reply_to_gets_a_completion_thread() {
    let mut state = MemState::default();
    let mut new = new_intent(Uuid::from_u128(42), 3, None);
    new.reply_to = Some("agent://acme/prod/caller".into());
    let id = create_with(&mut state, new);
    assert!(state.threads.is_empty());
    resume_complete(&mut state, id, json!({"paid": true})).unwrap();
    let thread = &state.threads[&id];
    assert_eq!(thread.owner, "acme/prod/caller");
    assert_eq!(thread.status, ThreadStatus::Resolved);
    assert!(thread.messages[0].text.contains("\"paid\":true"));
    assert_eq!(state.inbox_cursor("acme/prod/caller"), 1);
}

#[test]
fn replay_creates_a_new_intent_and_the_old_stays_failed() {
    let mut state = MemState::default();
    register(&mut state, http());
    let old = create_with(&mut state, new_intent(Uuid::from_u128(50), 3, None));
    let replay = |new: u128| IntentCommand::Replay {
        intent_id: old,
        new_intent_id: Uuid::from_u128(new),
        at: secs(100),
    };
    assert!(matches!(
        state.intent_cmd(replay(51)),
        Err(Rejection::Invalid(_))
    ));
    deliver_at(&mut state, old, 1).unwrap();
    state
        .intent_cmd(IntentCommand::DeliveryFailed {
            intent_id: old,
            attempt: 1,
            error: "HTTP 410".into(),
            retry_at: None,
            at: secs(2),
        })
        .unwrap();
    let old_events = state.events_of(old);
    let reply = state.intent_cmd(replay(51)).unwrap();
    let Reply::Intent { intent, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(intent.id, Uuid::from_u128(51));
    assert_eq!(intent.replayed_from, Some(old));
    assert_eq!(intent.status, Status::Submitted);
    assert_eq!(intent.delivery_attempt, 0);
    assert_eq!(intent.payload, state.intents[&old].payload);
    assert_eq!(state.intents[&old].status, Status::Failed);
    assert_eq!(
        state.events_of(old),
        old_events,
        "the old intent never changes"
    );
    assert_eq!(state.dead[&old].replayed_as, Some(Uuid::from_u128(51)));
    assert!(matches!(
        state.intent_cmd(replay(52)),
        Err(Rejection::Invalid(_))
    ));
    assert_eq!(
        state.due_of(Uuid::from_u128(51)),
        BTreeSet::from([(DueKind::Deliver, secs(100))])
    );
}

#[test]
fn webhook_fan_out_counts_and_cas() {
    let mut state = MemState::default();
    let owner = "acme/shop";
    let broad = subscribe(&mut state, 1, owner, &["order.*"]);
    let exact = subscribe(&mut state, 2, owner, &["order.paid"]);
    let revoked = subscribe(&mut state, 3, owner, &["order.*"]);
    subscribe(&mut state, 4, "acme/other", &["order.*"]);
    subscribe(&mut state, 5, owner, &["order.shipped"]);
    state
        .run(&Command::RevokeSubscription {
            id: revoked,
            at: t0(),
        })
        .unwrap();
    // Upsert by (owner, callback_url) keeps the id.
    assert_eq!(
        subscribe(&mut state, 1, owner, &["order.*", "refund.*"]),
        broad
    );

    let event_id = Uuid::from_u128(600);
    let publish = Command::PublishEvent {
        event: WebhookEvent {
            event_id,
            event_type: "order.paid".into(),
            source: "shop".into(),
            owner: format!("agent://{owner}"),
            payload: json!({"order": 7}),
            at: secs(1),
        },
    };
    let Reply::WebhookEvent { deliveries, .. } = state.run(&publish).unwrap() else {
        panic!()
    };
    let subs: BTreeSet<Uuid> = deliveries.iter().map(|d| d.subscription_id).collect();
    assert_eq!(subs, BTreeSet::from([broad, exact]));
    assert_eq!(state.run(&publish), Err(Rejection::AlreadyExists(event_id)));
    let counters = |state: &MemState| WebhookCounters::of(&state.webhook_deliveries(&event_id));
    let c = counters(&state);
    assert_eq!((c.queued_deliveries, c.pending), (2, 2));
    assert_eq!(state.due.len(), 2);

    let (d1, d2) = (deliveries[0].delivery_id, deliveries[1].delivery_id);
    let outcome =
        |id: Uuid, attempt: u32, outcome: WebhookOutcome| Command::WebhookDeliveryOutcome {
            delivery_id: id,
            attempt,
            replays: 0,
            outcome,
            at: secs(2),
        };
    let before = state.clone();
    assert_eq!(
        state.run(&outcome(d1, 1, WebhookOutcome::Delivered)),
        Err(Rejection::StaleAttempt {
            expected: 1,
            current: 0
        })
    );
    assert_eq!(state, before);
    state
        .run(&outcome(d1, 0, WebhookOutcome::Delivered))
        .unwrap();
    assert!(
        state
            .run(&outcome(d1, 0, WebhookOutcome::Delivered))
            .is_err(),
        "CAS"
    );
    let retry = WebhookOutcome::Failed {
        error: "HTTP 500".into(),
        retry_at: Some(secs(9)),
    };
    state.run(&outcome(d2, 0, retry)).unwrap();
    assert_eq!(
        state
            .due
            .iter()
            .map(|e| (e.kind, e.at, e.id))
            .collect::<Vec<_>>(),
        [(DueKind::WebhookDelivery, secs(9), d2)]
    );
    let give_up = WebhookOutcome::Failed {
        error: "HTTP 500".into(),
        retry_at: None,
    };
    state.run(&outcome(d2, 1, give_up)).unwrap();
    let c = counters(&state);
    assert_eq!(
        (
            c.queued_deliveries,
            c.processed_deliveries,
            c.delivered,
            c.pending,
            c.dead_lettered
        ),
        (2, 2, 1, 0, 1)
    );
    assert!(state.due.is_empty());

    state
        .run(&Command::ReplayWebhookEvent {
            event_id,
            at: secs(20),
        })
        .unwrap();
    let c = counters(&state);
    assert_eq!((c.pending, c.processed_deliveries), (2, 0));
    assert!(state.deliveries.values().all(|d| d.attempts == 0));
    assert_eq!(state.due.len(), 2);

    // The outcome of a push that began before the replay (attempt 0 of the first round)
    // arrives after it: it must not settle the replayed delivery, which was never sent again.
    let before = state.clone();
    assert!(state
        .run(&outcome(d1, 0, WebhookOutcome::Delivered))
        .is_err());
    assert_eq!(state, before);
    let replayed = Command::WebhookDeliveryOutcome {
        delivery_id: d1,
        attempt: 0,
        replays: 1,
        outcome: WebhookOutcome::Delivered,
        at: secs(21),
    };
    state.run(&replayed).unwrap();
    assert_eq!(counters(&state).delivered, 1);
}

#[test]
fn lifecycle_events_go_to_the_senders_matching_subscriptions() {
    let mut state = MemState::default();
    subscribe(&mut state, 1, SENDER, &["intent.completed"]);
    subscribe(&mut state, 2, RECEIVER, &["intent.*"]);
    let id = create_with(&mut state, new_intent(Uuid::from_u128(60), 3, None));
    assert!(state.webhook_events.is_empty());
    resume_complete(&mut state, id, json!({})).unwrap();
    let events: Vec<&WebhookEvent> = state.webhook_events.values().collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "intent.completed");
    assert_eq!(events[0].owner, SENDER);
    assert_eq!(events[0].payload["seq"], state.intents[&id].last_seq);
    assert_eq!(events[0].payload["event_type"], "intent.completed");
    assert_eq!(state.deliveries.len(), 1);
}

#[test]
fn agent_registration_is_an_upsert_that_keeps_created_at() {
    let mut state = MemState::default();
    register(&mut state, Binding::Poll);
    let mut config = state.agents[RECEIVER].clone();
    config.binding = http();
    config.created_at = secs(99);
    config.updated_at = secs(99);
    let Reply::Agent(stored) = state.run(&Command::RegisterAgent { config }).unwrap() else {
        panic!()
    };
    assert_eq!(stored.created_at, t0());
    assert_eq!(stored.secret_hint().as_deref(), Some("_abc"));
    let mut bad = stored.as_ref().clone();
    bad.ack_timeout_secs = 0;
    assert!(state.run(&Command::RegisterAgent { config: bad }).is_err());
    state
        .run(&Command::RemoveAgent {
            address: format!("agent://{RECEIVER}"),
            at: secs(1),
        })
        .unwrap();
    assert!(state.agents.is_empty());
}

/// Found by the Jepsen clock nemesis: with one node's clock 88 758 s behind, two creates with
/// one key, through it and through a good node, made two intents, because a claim's expiry
/// is the proposer's `at + ttl` and apply compares it with the next command's `at`. Apply
/// cannot repair a wrong stamp (it reads no clock), so the consensus layer fences nodes whose
/// clock strays (at most 60 s, by configuration) and leaders refuse stamps from the future.
/// What apply owes in return: within any skew the fence admits, one key is one intent.
#[test]
fn idempotency_holds_across_any_skew_the_clock_fence_admits() {
    let create = |id: u128, at: DateTime<Utc>| Command::Intent {
        command: IntentCommand::Create {
            intent: new_intent(Uuid::from_u128(id), 3, None),
            at,
        },
        idempotency: Some(IdempotencyClaim {
            scope: "k1".into(),
            key: "order-1".into(),
            request_hash: "h".into(),
            expires_at: at + Duration::hours(24),
        }),
    };
    for skew in [-60_000i64, -500, 0, 500, 60_000] {
        let mut state = MemState::default();
        state
            .run(&create(1, t0() + Duration::milliseconds(skew)))
            .unwrap();
        state.run(&create(2, t0())).unwrap();
        assert_eq!(
            state.intents.len(),
            1,
            "skew {skew} ms: one key, two intents"
        );
    }
}

/// Everything `state` holds for intent `id`, to compare before and after a purge.
fn records_of(state: &MemState, id: Uuid) -> usize {
    usize::from(state.intents.contains_key(&id))
        + state.events.keys().filter(|(of, _)| *of == id).count()
        + state.idem.values().filter(|r| r.intent_id == id).count()
        + state.queue.values().filter(|of| **of == id).count()
        + usize::from(state.dead.contains_key(&id))
        + usize::from(state.threads.contains_key(&id))
        + state.changes.values().filter(|c| c.thread_id == id).count()
        + state.due.iter().filter(|e| e.id == id).count()
        + state
            .webhook_events
            .values()
            .filter(|e| e.payload["intent_id"] == json!(id))
            .count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The purge rule. Whatever history an intent had, `Purge` at `at` is accepted exactly
    /// when the intent has ended and its purge time (the end plus the terminal retention, or
    /// the dead-letter retention for a dead letter; 0 keeps it forever) is not after `at`.
    /// An accepted purge leaves nothing of the intent (events, idempotency claim, every
    /// queue entry it ever had, dead letter, inbox thread, webhook records, due entries) and
    /// nothing of the other intent changes; a refused purge changes nothing at all.
    #[test]
    fn purge_removes_exactly_an_ended_intent_whose_retention_ran_out(
        steps in prop::collection::vec(step(), 0..30),
        setup in setup(),
        webhooks in any::<bool>(),
        reply_to in any::<bool>(),
        terminal_secs in prop_oneof![1 => Just(0u64), 4 => 1u64..100],
        dead_letter_secs in prop_oneof![1 => Just(0u64), 4 => 1u64..100],
        offset in -5i64..200,
    ) {
        let (id, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut state = MemState::default();
        let retention = Retention { terminal_secs, dead_letter_secs };
        if retention != Retention::default() {
            state.run(&Command::SetRetention { retention }).unwrap();
        }
        match setup {
            Setup::Http => register(&mut state, http()),
            Setup::Inbox => register(&mut state, Binding::Inbox),
            Setup::Stream | Setup::Delayed => {}
        }
        if webhooks {
            subscribe(&mut state, 1, SENDER, &["intent.*"]);
        }
        let mut new = new_intent(id, 2, None);
        if let Setup::Delayed = setup {
            new.deliver_at = Some(t0() + Duration::seconds(10));
        }
        if reply_to {
            new.reply_to = Some("agent://acme/prod/sender".into());
        }
        state.run(&Command::Intent {
            command: IntentCommand::Create { intent: new, at: t0() },
            idempotency: Some(IdempotencyClaim {
                scope: "k1".into(),
                key: "order-1".into(),
                request_hash: "h".into(),
                expires_at: t0() + Duration::hours(24),
            }),
        }).unwrap();
        create_with(&mut state, new_intent(other, 2, None));
        for (i, s) in steps.iter().enumerate() {
            let cmd = command_for(&state, id, s, i as i64 + 1);
            let _ = state.run(&cmd);
        }
        let intent = state.intents[&id].clone();
        // Every queue entry of the intent is one the purge can name without a scan.
        let named: BTreeSet<u64> = intent.earlier_cursors.iter().copied()
            .chain((intent.agent_cursor != 0).then_some(intent.agent_cursor)).collect();
        let queued: BTreeSet<u64> = state.queue.iter()
            .filter(|(_, of)| **of == id).map(|((_, c), _)| *c).collect();
        prop_assert_eq!(named, queued);

        let ended = state.events_of(id).last().unwrap().at;
        let secs = if intent.dead_lettered { dead_letter_secs } else { terminal_secs };
        let purge_at = (intent.status.is_terminal() && secs > 0)
            .then(|| ended + Duration::seconds(secs as i64));
        prop_assert_eq!(intent.purge_at, purge_at);
        let at = purge_at.unwrap_or(ended) + Duration::seconds(offset);
        let before = state.clone();
        let other_before = records_of(&state, other);
        let outcome = state.run(&Command::Purge { intent_id: id, at });
        if purge_at.is_some_and(|p| p <= at) {
            prop_assert_eq!(outcome, Ok(Reply::Done));
            prop_assert_eq!(records_of(&state, id), 0, "left behind: {:?}", state);
            prop_assert_eq!(records_of(&state, other), other_before);
            prop_assert_eq!(&state.intents[&other], &before.intents[&other]);
            // Purging again is refused: the intent is gone.
            prop_assert_eq!(
                state.run(&Command::Purge { intent_id: id, at }),
                Err(Rejection::NotFound(id))
            );
        } else {
            prop_assert!(outcome.is_err(), "{outcome:?}");
            prop_assert_eq!(&state, &before, "a refused purge changed the state");
        }
    }
}

#[test]
fn a_replayed_dead_letter_is_kept_like_any_ended_intent_from_the_replay() {
    let id = Uuid::from_u128(1);
    let mut state = MemState::default();
    let retention = Retention {
        terminal_secs: 10,
        dead_letter_secs: 1000,
    };
    state.run(&Command::SetRetention { retention }).unwrap();
    assert!(
        state.run(&Command::SetRetention { retention }).is_err(),
        "setting the same retention again is refused"
    );
    create_with(&mut state, new_intent(id, 1, None));
    let failed = t0() + Duration::seconds(5);
    state
        .intent_cmd(IntentCommand::Deliver {
            intent_id: id,
            expected_attempt: 0,
            consumer: "c".into(),
            lease_until: failed,
            at: t0(),
        })
        .unwrap();
    state
        .intent_cmd(IntentCommand::ExpireLease {
            intent_id: id,
            attempt: 1,
            retry_at: failed,
            at: failed,
        })
        .unwrap();
    assert!(state.intents[&id].dead_lettered);
    let kept = failed + Duration::seconds(1000);
    assert_eq!(state.due_of(id), BTreeSet::from([(DueKind::Purge, kept)]));
    let replayed = failed + Duration::seconds(50);
    state
        .intent_cmd(IntentCommand::Replay {
            intent_id: id,
            new_intent_id: Uuid::from_u128(3),
            at: replayed,
        })
        .unwrap();
    let kept = replayed + Duration::seconds(10);
    assert_eq!(state.intents[&id].purge_at, Some(kept));
    assert_eq!(state.due_of(id), BTreeSet::from([(DueKind::Purge, kept)]));
    assert!(state
        .run(&Command::Purge {
            intent_id: id,
            at: kept - Duration::milliseconds(1)
        })
        .is_err());
    state
        .run(&Command::Purge {
            intent_id: id,
            at: kept,
        })
        .unwrap();
    assert!(!state.intents.contains_key(&id) && !state.dead.contains_key(&id));
    assert!(state.intents.contains_key(&Uuid::from_u128(3)));
}

// ---------------------------------------------------------------------------------------
// Workflows (issue 11): the walk over the steps, ticks as compare-and-set, and the invariant
// that a running workflow has exactly one active step.

const AGENT_B: &str = "agent://acme/prod/shipping";
const LEAD: &str = "agent://acme/people/lead";

fn agent_step(id: &str, address: &str) -> WorkflowStep {
    WorkflowStep::new(
        id.into(),
        StepKind::Agent {
            address: address.into(),
        },
    )
}

fn human_step(id: &str) -> WorkflowStep {
    let mut s = WorkflowStep::new(
        id.into(),
        StepKind::Human {
            address: LEAD.into(),
        },
    );
    s.human_task = Some(json!({
        "title": "Ship it?",
        "allowed_outcomes": ["approved", "rejected"],
    }));
    s
}

fn timer_step(id: &str, kind: StepKind) -> WorkflowStep {
    WorkflowStep::new(id.into(), kind)
}

fn workflow_intent(state: &mut MemState, n: u128, mut steps: Vec<WorkflowStep>) -> Uuid {
    intentd_lifecycle::workflow::normalise(&mut steps).unwrap();
    let mut new = new_intent(Uuid::from_u128(n), 3, None);
    new.workflow = Some(Workflow::new(steps));
    create_with(state, new)
}

fn wf(state: &MemState, id: Uuid) -> &Workflow {
    state.intents[&id].workflow.as_ref().unwrap()
}

fn step_states(state: &MemState, id: Uuid) -> Vec<(String, StepState, u32)> {
    wf(state, id)
        .steps
        .iter()
        .map(|s| (s.step_id.clone(), s.state, s.attempt))
        .collect()
}

fn tick(
    state: &mut MemState,
    id: Uuid,
    step: &str,
    attempt: u32,
    at: i64,
) -> Result<Reply, Rejection> {
    state.intent_cmd(IntentCommand::AdvanceWorkflow {
        intent_id: id,
        step_id: step.into(),
        attempt,
        at: secs(at),
    })
}

fn answer(
    state: &mut MemState,
    id: Uuid,
    result: serde_json::Value,
    at: i64,
) -> Result<Reply, Rejection> {
    state.intent_cmd(IntentCommand::Resume {
        intent_id: id,
        action: ResumeAction::Complete { result },
        actor: "agent://acme/prod/any".into(),
        at: secs(at),
    })
}

#[test]
fn an_agent_step_a_human_approval_and_a_timeout_run_in_turn() {
    let mut state = MemState::default();
    let id = workflow_intent(
        &mut state,
        500,
        vec![
            agent_step("charge", "agent://acme/prod/payments"),
            human_step("approve"),
            timer_step("settle", StepKind::Timeout { seconds: 60 }),
        ],
    );
    // The first step is a plain delivery to its agent.
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::Submitted);
    assert_eq!(wf(&state, id).current.as_deref(), Some("charge"));
    assert_eq!(state.queue.len(), 1);
    deliver_at(&mut state, id, 1).unwrap();
    resume_complete(&mut state, id, json!({"charged": true})).unwrap();

    // The agent's result ends its step; the person's task is next, in the lead's inbox.
    let i = &state.intents[&id];
    assert_eq!(
        (i.status, i.waiting_reason),
        (Status::Waiting, Some(WaitingReason::WaitingForHuman))
    );
    assert_eq!(i.pending_with.as_ref().unwrap().reference, LEAD);
    assert_eq!(state.threads[&id].owner, "acme/people/lead");
    assert_eq!(state.threads[&id].status, ThreadStatus::Open);
    assert_eq!(
        wf(&state, id).step("charge").unwrap().outcome,
        Some(json!({"charged": true}))
    );
    // The task's rules hold for the answer.
    let before = state.clone();
    assert!(answer(&mut state, id, json!({"outcome": "maybe"}), 6).is_err());
    assert_eq!(state, before);
    answer(
        &mut state,
        id,
        json!({"outcome": "approved", "decision": "approve"}),
        10,
    )
    .unwrap();

    // The timeout waits for its time; an early or stale tick changes nothing.
    let i = &state.intents[&id];
    assert_eq!(i.waiting_reason, Some(WaitingReason::WaitingForTime));
    assert_eq!(
        i.pending_with.as_ref().unwrap().kind,
        PendingWithKind::Internal
    );
    assert_eq!(state.threads[&id].status, ThreadStatus::Resolved);
    assert_eq!(
        state.due_of(id),
        BTreeSet::from([(DueKind::WorkflowStep, secs(70))])
    );
    let before = state.clone();
    // A timer step is not ended by an answer: the previous step's agent cannot skip it.
    assert!(resume_complete(&mut state, id, json!({"charged": true})).is_err());
    assert!(tick(&mut state, id, "settle", 1, 69).is_err());
    assert!(tick(&mut state, id, "approve", 1, 70).is_err());
    assert!(tick(&mut state, id, "settle", 2, 70).is_err());
    assert_eq!(state, before);
    tick(&mut state, id, "settle", 1, 70).unwrap();
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::Failed);
    assert_eq!(i.error.as_ref().unwrap()["code"], "step_timeout");
    assert!(state.due_of(id).is_empty());
    assert_eq!(
        step_states(&state, id),
        [
            ("charge".into(), StepState::Succeeded, 1),
            ("approve".into(), StepState::Succeeded, 1),
            ("settle".into(), StepState::Failed, 1)
        ]
    );
    // A repeat of the last tick (a new leader proposing it again) is refused.
    let before = state.clone();
    assert!(tick(&mut state, id, "settle", 1, 71).is_err());
    assert_eq!(state, before);
    let walk: Vec<String> = state
        .event_types(id)
        .into_iter()
        .filter(|e| e.starts_with("workflow."))
        .collect();
    assert_eq!(
        walk,
        [
            "workflow.step_started",
            "workflow.step_succeeded",
            "workflow.step_started",
            "workflow.step_succeeded",
            "workflow.step_started",
            "workflow.step_failed",
        ]
    );
}

#[test]
fn a_step_deadline_retries_then_follows_on_failure() {
    let mut state = MemState::default();
    let mut ship = agent_step("ship", AGENT_B);
    ship.step_deadline_seconds = Some(10);
    ship.max_retries = 1;
    ship.on_success = Some("done".into());
    ship.on_failure = Some("tell".into());
    let tell = timer_step(
        "tell",
        StepKind::Notification {
            message: Some(json!("late")),
        },
    );
    let done = timer_step("done", StepKind::Delay { seconds: 5 });
    let id = workflow_intent(&mut state, 501, vec![ship, done, tell]);
    assert_eq!(state.intents[&id].to_agent, AGENT_B);
    tick(&mut state, id, "ship", 1, 10).unwrap();
    assert_eq!(
        step_states(&state, id)[0],
        ("ship".into(), StepState::Active, 2),
        "the deadline started the retry"
    );
    // Never delivered, so the retry offers it again as it was: SUBMITTED, on a new cursor.
    assert_eq!(state.intents[&id].status, Status::Submitted);
    assert_eq!(state.intents[&id].delivery_attempt, 0);
    assert_eq!(state.queue.len(), 2);
    // The first attempt's tick comes again: stale.
    assert!(tick(&mut state, id, "ship", 1, 20).is_err());
    tick(&mut state, id, "ship", 2, 20).unwrap();
    // Retries used up: on_failure runs the notification, which ends at once, and the
    // workflow completes (the failure was handled).
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::Completed);
    assert_eq!(
        step_states(&state, id),
        [
            ("ship".into(), StepState::Failed, 2),
            ("done".into(), StepState::Pending, 0),
            ("tell".into(), StepState::Succeeded, 1)
        ]
    );
    assert!(state
        .event_types(id)
        .contains(&"workflow.step_retried".to_string()));
}

#[test]
fn a_retry_delay_holds_the_next_attempt_until_its_time() {
    let mut state = MemState::default();
    let mut ship = agent_step("ship", AGENT_B);
    ship.step_deadline_seconds = Some(10);
    ship.max_retries = 1;
    ship.retry_delay_seconds = Some(30);
    let id = workflow_intent(&mut state, 503, vec![ship]);
    tick(&mut state, id, "ship", 1, 10).unwrap();
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::Waiting, "the retry waits for its time");
    assert!(i.lease.is_none());
    let step = &wf(&state, id).steps[0];
    assert_eq!(
        (step.state, step.attempt, step.retry_at, step.deadline_at),
        (StepState::Active, 2, Some(secs(40)), None)
    );
    assert!(state
        .due_of(id)
        .contains(&(DueKind::WorkflowStep, secs(40))));
    // Before its time nothing starts or answers the waiting attempt.
    let before = state.clone();
    assert!(resume_complete(&mut state, id, json!({"shipped": true})).is_err());
    assert!(tick(&mut state, id, "ship", 2, 39).is_err());
    assert!(tick(&mut state, id, "ship", 1, 40).is_err());
    assert_eq!(state, before);
    tick(&mut state, id, "ship", 2, 40).unwrap();
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::InProgress);
    let step = &wf(&state, id).steps[0];
    assert_eq!(
        (
            step.attempt,
            step.retry_at,
            step.started_at,
            step.deadline_at
        ),
        (2, None, Some(secs(40)), Some(secs(50)))
    );
    // The same tick again (a new leader proposing it) is refused.
    let before = state.clone();
    assert!(tick(&mut state, id, "ship", 2, 41).is_err());
    assert_eq!(state, before);
    resume_complete(&mut state, id, json!({"shipped": true})).unwrap();
    assert_eq!(state.intents[&id].status, Status::Completed);
    let walk: Vec<String> = state
        .event_types(id)
        .into_iter()
        .filter(|e| e.starts_with("workflow."))
        .collect();
    assert_eq!(
        walk,
        [
            "workflow.step_started",
            "workflow.step_retried",
            "workflow.step_started",
            "workflow.step_succeeded",
        ]
    );
}

#[test]
fn approve_current_step_advances_a_workflow() {
    let mut state = MemState::default();
    let id = workflow_intent(
        &mut state,
        502,
        vec![human_step("approve"), agent_step("ship", AGENT_B)],
    );
    assert_eq!(state.intents[&id].status, Status::Waiting);
    state
        .intent_cmd(IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::ApproveCurrentStep {
                expected_policy_generation: Some(0),
                reason: Some("go".into()),
            },
            actor: "agent://acme/prod/sender".into(),
            at: secs(3),
        })
        .unwrap();
    let i = &state.intents[&id];
    assert_eq!(i.status, Status::InProgress);
    assert_eq!(i.policy_generation, 1);
    assert_eq!(i.to_agent, AGENT_B);
    assert_eq!(wf(&state, id).current.as_deref(), Some("ship"));
    assert!(state
        .queue
        .contains_key(&("acme/prod/shipping".to_string(), 1)));
    // The agent of the step fails it: no retries, no on_failure, the intent fails.
    state
        .intent_cmd(IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Fail {
                error: json!({"code": "no_stock"}),
            },
            actor: AGENT_B.into(),
            at: secs(4),
        })
        .unwrap();
    assert_eq!(state.intents[&id].status, Status::Failed);
    assert_eq!(wf(&state, id).current, None);
}

#[test]
fn a_reject_fails_the_human_step_and_cancel_skips_the_active_one() {
    let mut state = MemState::default();
    let mut approve = human_step("approve");
    approve.on_failure = Some("wait".into());
    let id = workflow_intent(
        &mut state,
        503,
        vec![approve, timer_step("wait", StepKind::Delay { seconds: 30 })],
    );
    answer(
        &mut state,
        id,
        json!({"outcome": "rejected", "decision": "reject"}),
        2,
    )
    .unwrap();
    assert_eq!(wf(&state, id).current.as_deref(), Some("wait"));
    assert_eq!(state.intents[&id].status, Status::Waiting);
    state
        .intent_cmd(IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Canceled {
                reason: "enough".into(),
            },
            actor: "agent://acme/prod/sender".into(),
            at: secs(3),
        })
        .unwrap();
    assert_eq!(
        step_states(&state, id),
        [
            ("approve".into(), StepState::Failed, 1),
            ("wait".into(), StepState::Skipped, 1)
        ]
    );
    assert!(state.due_of(id).is_empty());
}

/// What happens to a workflow intent next, in the property test.
#[derive(Debug, Clone)]
enum WorkflowMove {
    /// A tick for the step at this index (modulo the steps), this attempt, at this time.
    Tick(usize, u32, i64),
    /// The active step's agent or person answers.
    Complete,
    Reject,
    Fail,
    Approve,
    Deliver,
    Cancel,
}

fn workflow_move() -> impl Strategy<Value = WorkflowMove> {
    prop_oneof![
        4 => (0usize..5, 0u32..4, 0i64..200).prop_map(|(s, a, t)| WorkflowMove::Tick(s, a, t)),
        2 => Just(WorkflowMove::Complete),
        1 => Just(WorkflowMove::Reject),
        1 => Just(WorkflowMove::Fail),
        1 => Just(WorkflowMove::Approve),
        1 => Just(WorkflowMove::Deliver),
        1 => Just(WorkflowMove::Cancel),
    ]
}

/// A step of a random workflow: its kind, deadline, retries and, for graphs, its edges
/// (always forward, so the graph is acyclic as the edge guarantees).
type StepSpec = (u8, Option<u64>, u32, Option<usize>, Option<usize>);

fn workflow_step_spec() -> impl Strategy<Value = StepSpec> {
    (
        0u8..7,
        prop::option::of(1u64..50),
        0u32..3,
        prop::option::of(1usize..5),
        prop::option::of(1usize..5),
    )
}

fn build_steps(specs: &[StepSpec], graph: bool) -> Vec<WorkflowStep> {
    let n = specs.len();
    let mut steps: Vec<WorkflowStep> = specs
        .iter()
        .enumerate()
        .map(|(i, (kind, deadline, retries, ok, ko))| {
            let id = format!("s{i}");
            let mut s = match kind {
                0 => agent_step(&id, "agent://acme/prod/payments"),
                1 => agent_step(&id, AGENT_B),
                2 => human_step(&id),
                3 => timer_step(&id, StepKind::Delay { seconds: 20 }),
                4 => timer_step(&id, StepKind::Timeout { seconds: 30 }),
                5 => timer_step(
                    &id,
                    StepKind::Reminder {
                        seconds: 5,
                        to: LEAD.into(),
                    },
                ),
                _ => timer_step(&id, StepKind::Notification { message: None }),
            };
            s.step_deadline_seconds = *deadline;
            s.max_retries = *retries;
            // Some retries wait before they start (a tick ends the wait).
            s.retry_delay_seconds = (*retries == 2).then_some(15);
            if graph {
                // Forward edges only; an edge past the end means "none".
                s.on_success = ok
                    .map(|d| i + d)
                    .filter(|&j| j < n)
                    .map(|j| format!("s{j}"));
                s.on_failure = ko
                    .map(|d| i + d)
                    .filter(|&j| j < n)
                    .map(|j| format!("s{j}"));
            }
            s
        })
        .collect();
    if graph {
        // Every step reachable: chain each unreached one from its predecessor's success.
        for i in 1..n {
            let id = format!("s{i}");
            let reached = steps[..i].iter().any(|s| {
                s.on_success.as_deref() == Some(&id) || s.on_failure.as_deref() == Some(&id)
            });
            if !reached {
                steps[i - 1].on_success = Some(id);
            }
        }
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Whatever answers and ticks arrive, in whatever order: a running workflow has exactly
    /// one active step and `current` names it, a terminal intent has none, every rejected
    /// command leaves the state as it was, and the event log stays legal and gapless.
    #[test]
    fn any_sequence_of_ticks_leaves_one_active_step_or_a_terminal_intent(
        specs in prop::collection::vec(workflow_step_spec(), 1..6),
        graph in any::<bool>(),
        moves in prop::collection::vec(workflow_move(), 0..30),
    ) {
        let mut steps = build_steps(&specs, graph);
        prop_assume!(intentd_lifecycle::workflow::normalise(&mut steps).is_ok());
        let mut state = MemState::default();
        let mut new = new_intent(Uuid::from_u128(600), 3, None);
        new.workflow = Some(Workflow::new(steps));
        let id = create_with(&mut state, new);
        for (n, mv) in moves.iter().enumerate() {
            let at = secs(n as i64 + 1);
            let cmd = match mv {
                WorkflowMove::Tick(s, attempt, t) => IntentCommand::AdvanceWorkflow {
                    intent_id: id,
                    step_id: format!("s{}", s % specs.len()),
                    attempt: *attempt,
                    at: secs(*t),
                },
                WorkflowMove::Complete => IntentCommand::Resume {
                    intent_id: id,
                    action: ResumeAction::Complete { result: json!({"outcome": "approved"}) },
                    actor: "x".into(),
                    at,
                },
                WorkflowMove::Reject => IntentCommand::Resume {
                    intent_id: id,
                    action: ResumeAction::Complete { result: json!({"outcome": "rejected", "decision": "reject"}) },
                    actor: "x".into(),
                    at,
                },
                WorkflowMove::Fail => IntentCommand::Resume {
                    intent_id: id,
                    action: ResumeAction::Fail { error: json!({"code": "x"}) },
                    actor: "x".into(),
                    at,
                },
                WorkflowMove::Approve => IntentCommand::Resume {
                    intent_id: id,
                    action: ResumeAction::ApproveCurrentStep { expected_policy_generation: None, reason: None },
                    actor: "x".into(),
                    at,
                },
                WorkflowMove::Deliver => IntentCommand::Deliver {
                    intent_id: id,
                    expected_attempt: state.intents[&id].delivery_attempt,
                    consumer: "c".into(),
                    lease_until: at + Duration::seconds(30),
                    at,
                },
                WorkflowMove::Cancel => IntentCommand::Resolve {
                    intent_id: id,
                    resolution: Resolution::Canceled { reason: "r".into() },
                    actor: "x".into(),
                    at,
                },
            };
            let before = state.clone();
            if state.intent_cmd(cmd).is_err() {
                prop_assert_eq!(&state, &before, "a refused command changed the state");
            }
            let i = &state.intents[&id];
            let w = i.workflow.as_ref().unwrap();
            let active: Vec<&str> = w.steps.iter().filter(|s| s.state == StepState::Active).map(|s| s.step_id.as_str()).collect();
            if i.status.is_terminal() {
                prop_assert!(active.is_empty(), "terminal with active steps {:?}", active);
                prop_assert_eq!(w.current.as_deref(), None);
            } else {
                prop_assert_eq!(active.len(), 1, "steps {:?}", w.steps);
                prop_assert_eq!(w.current.as_deref(), Some(active[0]));
            }
            prop_assert_eq!(state.due_of(id), expected_due(i));
        }
        let events = state.events_of(id);
        let mut prev = Status::Created;
        for (k, e) in events.iter().enumerate() {
            prop_assert_eq!(e.seq, k as u64 + 1);
            if k > 0 {
                prop_assert!(allowed_step(prev, e), "{:?} after {:?}", e.event_type, prev);
            }
            prev = e.status;
        }
        prop_assert!(events.iter().filter(|e| e.event_type.is_terminal()).count() <= 1);
    }
}
