//! The state machine through its public API: apply, reopen, snapshots, rebuild at open.

use std::path::Path;

use intentd_lifecycle::{
    AgentConfig, ApiKey, Binding, Command, DueKind, IntentCommand, NewIntent, Rejection,
    Resolution, ResumeAction, Role, Status, Subscription, Timestamp, WebhookEvent, WebhookOutcome,
};
use intentd_storage::{
    LogStore, Outcome, Proposal, Response, StateMachine, StateReader, StorageError, StorageOptions,
    TypeConfig,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder,
};
use serde_json::{json, Map};
use uuid::Uuid;

const RECEIVER: &str = "agent://acme/receiver";

fn at() -> Timestamp {
    chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    coalesced(index, &[command])
}

/// One entry carrying several commands, as the proposer coalesces concurrent writes.
fn coalesced(index: u64, commands: &[Command]) -> Entry<TypeConfig> {
    let parts: Vec<String> = commands
        .iter()
        .map(|c| Proposal::encode(c).unwrap())
        .collect();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal::join(parts.iter().map(String::as_str)).unwrap()),
    }
}

/// The outcome of an entry that carries one command.
fn single(response: &Response) -> &Outcome {
    match response {
        Response::Commands(outcomes) if outcomes.len() == 1 => &outcomes[0],
        other => panic!("expected one command's outcome, got {other:?}"),
    }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let nodes = [(1u64, BasicNode::new("127.0.0.1:1"))]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>();
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], nodes)),
    }
}

fn create(id: Uuid) -> Command {
    create_with(id, |_| {})
}

fn create_with(id: Uuid, edit: impl FnOnce(&mut NewIntent)) -> Command {
    let mut intent = new_intent(id);
    edit(&mut intent);
    Command::Intent {
        command: IntentCommand::Create { intent, at: at() },
        idempotency: None,
    }
}

fn new_intent(id: Uuid) -> NewIntent {
    match create_plain(id) {
        Command::Intent {
            command: IntentCommand::Create { intent, .. },
            ..
        } => intent,
        _ => unreachable!(),
    }
}

fn intent_cmd(command: IntentCommand) -> Command {
    Command::Intent {
        command,
        idempotency: None,
    }
}

fn secs(n: i64) -> Timestamp {
    at() + chrono::Duration::seconds(n)
}

fn create_plain(id: Uuid) -> Command {
    Command::Intent {
        command: IntentCommand::Create {
            intent: NewIntent {
                id,
                intent_type: "test.v1".into(),
                correlation_id: Uuid::from_u128(7),
                from_agent: "agent://acme/sender".into(),
                payload: json!({ "n": 1 }),
                max_delivery_attempts: 3,
                ..intentd_test_support::new_intent(RECEIVER)
            },
            at: at(),
        },
        idempotency: None,
    }
}

fn deliver(id: Uuid, expected_attempt: u32) -> Command {
    Command::Intent {
        command: IntentCommand::Deliver {
            intent_id: id,
            expected_attempt,
            consumer: "c1".into(),
            lease_until: at() + chrono::Duration::seconds(30),
            at: at(),
        },
        idempotency: None,
    }
}

fn resume(id: Uuid) -> Command {
    Command::Intent {
        command: IntentCommand::Resume {
            intent_id: id,
            action: ResumeAction::Progress {
                details: Map::new(),
            },
            actor: RECEIVER.into(),
            at: at(),
        },
        idempotency: None,
    }
}

fn put_key(n: u128) -> Command {
    Command::PutApiKey {
        key_hash: format!("hash-{n}"),
        key: ApiKey {
            id: Uuid::from_u128(1000 + n),
            name: format!("key{n}"),
            role: Role::Client,
            created_at: at(),
            revoked: false,
        },
    }
}

fn open(dir: &Path) -> (LogStore, StateMachine) {
    intentd_storage::open(dir, StorageOptions::default()).unwrap()
}

/// Everything a reader can see, for comparing two stores.
fn dump(r: &StateReader, ids: &[Uuid]) -> String {
    let mut out = Vec::new();
    for id in ids {
        out.push(format!("{:?}", r.intent(id).unwrap()));
        out.push(format!("{:?}", r.events(id, 0, 1000).unwrap()));
    }
    out.push(format!("{:?}", r.agent_queue(RECEIVER, 0, 1000).unwrap()));
    out.push(format!("{:?}", r.agents().unwrap()));
    out.push(format!("{:?}", r.api_keys().unwrap()));
    out.push(format!("{:?}", r.intent_count().unwrap()));
    out.push(format!("{:?}", r.applied_index()));
    out.push(format!("{:?}", r.agent_configs().unwrap()));
    out.push(format!(
        "{:?}",
        r.due_before(secs(1_000_000), 1000).unwrap()
    ));
    out.push(format!("{:?}", r.next_due().unwrap()));
    out.push(format!("{:?}", r.dead_letters(None, 1000).unwrap()));
    out.push(format!("{:?}", r.inbox_threads(RECEIVER).unwrap()));
    out.push(format!("{:?}", r.inbox_changes(RECEIVER, 0, 1000).unwrap()));
    out.push(format!("{:?}", r.subscriptions(SENDER).unwrap()));
    out.push(format!("{:?}", r.webhook_event(&EVENT).unwrap()));
    out.push(format!("{:?}", r.webhook_deliveries(&EVENT).unwrap()));
    out.join("\n")
}

const SENDER: &str = "agent://acme/sender";
const EVENT: Uuid = Uuid::from_u128(70_000);
const HUMAN: Uuid = Uuid::from_u128(70_001);
const DEAD: Uuid = Uuid::from_u128(70_002);
const HOOKED: &str = "acme/hooked";

/// One of every delivery record: an agent registration, a human task (thread, change feed,
/// reminder due), a dead letter, a subscription with a published event and its deliveries.
fn delivery_records() -> Vec<Command> {
    vec![
        Command::RegisterAgent {
            config: AgentConfig {
                address: intentd_lifecycle::AgentAddress::parse("address", HOOKED).unwrap(),
                binding: Binding::Http {
                    url: "https://hooked.example/in".into(),
                    secret: "s3cret".into(),
                    max_concurrency: 2,
                },
                ack_timeout_secs: 10,
                max_delivery_attempts: None,
                display_name: Some("Hooked".into()),
                created_at: at(),
                updated_at: at(),
            },
        },
        Command::UpsertSubscription {
            subscription: Subscription {
                id: Uuid::from_u128(70_100),
                owner: SENDER.into(),
                callback_url: "https://sender.example/hooks".into(),
                event_types: vec!["order.*".into()],
                secret: "whsec_x".into(),
                active: true,
                description: None,
                created_at: at(),
                updated_at: at(),
                revoked_at: None,
            },
        },
        Command::PublishEvent {
            event: WebhookEvent {
                event_id: EVENT,
                event_type: "order.paid".into(),
                source: "test".into(),
                owner: SENDER.into(),
                payload: json!({"n": 1}),
                at: secs(3),
            },
        },
        create_with(HUMAN, |i| {
            i.human_task = Some(json!({"title": "approve"}));
            i.remind_after_seconds = Some(60);
        }),
        create_with(DEAD, |i| {
            i.to_agent = format!("agent://{HOOKED}");
            i.max_delivery_attempts = 1;
        }),
        intent_cmd(IntentCommand::Deliver {
            intent_id: DEAD,
            expected_attempt: 0,
            consumer: "engine".into(),
            lease_until: secs(10),
            at: at(),
        }),
        intent_cmd(IntentCommand::DeliveryFailed {
            intent_id: DEAD,
            attempt: 1,
            error: "HTTP 500".into(),
            retry_at: Some(secs(20)),
            at: secs(1),
        }),
    ]
}

/// Create, deliver and resume of one intent in one apply call: each entry sees the writes of
/// the ones before it, and all of it survives a reopen.
#[tokio::test]
async fn one_batch_sees_its_own_writes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(1);
    {
        let (_log, mut sm) = open(dir.path());
        let mut applied = sm.reader().subscribe();
        let responses = sm
            .apply([
                membership(1),
                entry(2, create(id)),
                entry(3, deliver(id, 0)),
                entry(4, resume(id)),
            ])
            .await
            .unwrap();
        assert!(matches!(responses[0], Response::Empty));
        for r in &responses[1..] {
            assert!(matches!(single(r), Outcome::Applied(_)), "{r:?}");
        }
        applied.changed().await.unwrap();
        assert_eq!(*applied.borrow(), 4);
        // sled may lose unflushed applies on a crash (openraft re-applies them from the WAL);
        // this test has no WAL entries behind its applies, so it flushes before reopening.
        sm.flush().await.unwrap();
    }
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let intent = reader.intent(&id).unwrap().expect("intent stored");
    assert_eq!(intent.status, Status::InProgress);
    assert_eq!(intent.delivery_attempt, 1);
    let events = reader.events(&id, 0, 100).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=intent.last_seq).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().status, Status::InProgress);
    assert_eq!(reader.events(&id, 2, 1).unwrap()[0].seq, 3);
    assert_eq!(reader.agent_queue(RECEIVER, 0, 10).unwrap(), vec![(1, id)]);
    assert_eq!(
        reader.agent_queue("acme/receiver", 0, 10).unwrap(),
        vec![(1, id)]
    );
    assert!(reader.agent_queue(RECEIVER, 1, 10).unwrap().is_empty());
    let agents = reader.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].address, "acme/receiver");
    assert_eq!(agents[0].last_cursor, 1);
    assert_eq!(reader.intent_count().unwrap(), 1);
    assert_eq!(reader.applied_index(), 4);
    let (last, mem) = sm.applied_state().await.unwrap();
    assert_eq!(last, Some(log_id(4)));
    assert_eq!(mem.log_id(), &Some(log_id(1)));
}

#[tokio::test]
async fn a_rejection_writes_nothing_but_advances_last_applied() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(1);
    let (_log, mut sm) = open(dir.path());
    sm.apply([entry(1, create(id))]).await.unwrap();
    let before = sm.reader().events(&id, 0, 100).unwrap();
    let responses = sm
        .apply([entry(2, deliver(id, 5)), entry(3, create(id))])
        .await
        .unwrap();
    assert!(matches!(
        single(&responses[0]),
        Outcome::Rejected(Rejection::StaleAttempt { .. })
    ));
    assert!(matches!(
        single(&responses[1]),
        Outcome::Rejected(Rejection::AlreadyExists(_))
    ));
    assert_eq!(sm.reader().events(&id, 0, 100).unwrap(), before);
    assert_eq!(sm.reader().intent_count().unwrap(), 1);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(3)));
}

#[tokio::test]
async fn commands_coalesced_in_one_entry_see_each_other_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(1);
    let (_log, mut sm) = open(dir.path());
    let responses = sm
        .apply([coalesced(
            1,
            &[create(id), deliver(id, 0), create(id), resume(id)],
        )])
        .await
        .unwrap();
    let Response::Commands(outcomes) = &responses[0] else {
        panic!("{responses:?}");
    };
    assert_eq!(outcomes.len(), 4);
    assert!(matches!(outcomes[0], Outcome::Applied(_)), "{outcomes:?}");
    // The delivery sees the create of the same entry.
    assert!(matches!(outcomes[1], Outcome::Applied(_)), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], Outcome::Rejected(Rejection::AlreadyExists(_))),
        "{outcomes:?}"
    );
    // A rejection between two commands does not stop the ones after it.
    assert!(matches!(outcomes[3], Outcome::Applied(_)), "{outcomes:?}");
    let intent = sm.reader().intent(&id).unwrap().unwrap();
    assert_eq!(intent.status, Status::InProgress);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
}

/// Streams `from`'s current snapshot into `to`, as the transfer between nodes would, and
/// installs it.
async fn install_current(from: &mut StateMachine, to: &mut StateMachine) {
    let current = from.get_current_snapshot().await.unwrap().unwrap();
    let mut recv = to.begin_receiving_snapshot().await.unwrap();
    let mut src = current.snapshot;
    tokio::io::copy(&mut *src, &mut *recv).await.unwrap();
    to.install_snapshot(&current.meta, recv).await.unwrap();
}

async fn populate(sm: &mut StateMachine, ids: &[Uuid]) {
    let mut entries = vec![membership(1)];
    for id in ids {
        let next = entries.len() as u64 + 1;
        entries.push(entry(next, create(*id)));
    }
    let next = entries.len() as u64 + 1;
    entries.push(entry(next, deliver(ids[0], 0)));
    entries.push(entry(next + 1, put_key(1)));
    entries.push(entry(next + 2, put_key(2)));
    for command in delivery_records() {
        let next = entries.len() as u64 + 1;
        entries.push(entry(next, command));
    }
    let responses = sm.apply(entries).await.unwrap();
    for r in &responses[1..] {
        assert!(!matches!(single(r), Outcome::Rejected(_)), "{r:?}");
    }
    let r = sm.reader();
    assert_eq!(r.dead_letters(None, 10).unwrap().len(), 1);
    assert_eq!(r.inbox_threads(RECEIVER).unwrap().len(), 1);
    assert_eq!(r.webhook_deliveries(&EVENT).unwrap().len(), 1);
}

#[tokio::test]
async fn snapshot_installed_into_a_fresh_store_reads_the_same() {
    let ids: Vec<Uuid> = (1..=50).map(Uuid::from_u128).collect();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    let (_f, mut follower) = open(follower_dir.path());
    populate(&mut leader, &ids).await;

    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let current = leader.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    install_current(&mut leader, &mut follower).await;

    assert_eq!(dump(&follower.reader(), &ids), dump(&leader.reader(), &ids));
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
    assert_eq!(
        follower.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
    // 50 plus the human task and the dead-lettered intent of `delivery_records`.
    assert_eq!(follower.reader().intent_count().unwrap(), 52);
    assert_eq!(follower.reader().api_keys().unwrap().len(), 2);

    // The follower keeps applying on top of the installed state.
    let next = snap.meta.last_log_id.unwrap().index + 1;
    let r = follower
        .apply([entry(next, deliver(ids[1], 0))])
        .await
        .unwrap();
    assert!(matches!(single(&r[0]), Outcome::Applied(_)));
}

/// The small families apply and the edge read on every write are served from memory
/// (`hot.rs`): an install must replace them whole, and a reopen must load them again.
#[tokio::test]
async fn an_install_replaces_the_in_memory_records_and_a_reopen_reloads_them() {
    let ids: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    populate(&mut leader, &ids).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    {
        let (_f, mut follower) = open(follower_dir.path());
        // A key only the follower has: the snapshot says it never existed.
        follower
            .apply([membership(1), entry(2, put_key(9))])
            .await
            .unwrap();
        assert!(follower.reader().api_key("hash-9").unwrap().is_some());
        install_current(&mut leader, &mut follower).await;
        let r = follower.reader();
        assert!(r.api_key("hash-9").unwrap().is_none());
        assert!(r.api_key("hash-1").unwrap().is_some());
        assert_eq!(dump(&r, &ids), dump(&leader.reader(), &ids));
        // Apply reads the installed records too: the key the snapshot brought is revocable.
        let next = leader.applied_state().await.unwrap().0.unwrap().index + 1;
        let revoke = Command::RevokeApiKey {
            id: Uuid::from_u128(1001),
        };
        let out = follower.apply([entry(next, revoke)]).await.unwrap();
        assert!(matches!(single(&out[0]), Outcome::Applied(_)), "{out:?}");
        assert!(r.api_key("hash-1").unwrap().unwrap().revoked);
        follower.flush().await.unwrap();
    }
    let (_f, follower) = open(follower_dir.path());
    let r = follower.reader();
    assert!(r.api_key("hash-1").unwrap().unwrap().revoked);
    assert!(r.api_key("hash-9").unwrap().is_none());
    assert_eq!(r.api_keys().unwrap().len(), 2);
    assert_eq!(r.intent_count().unwrap(), 7);
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let ids: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    let (_f, mut follower) = open(follower_dir.path());
    populate(&mut leader, &ids).await;
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let mut bytes = Vec::new();
    let mut src = snap.snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut *src, &mut bytes)
        .await
        .unwrap();
    for damaged in [bytes[..bytes.len() - 5].to_vec(), {
        let mut b = bytes.clone();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        b
    }] {
        let mut recv = follower.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *recv, &damaged)
            .await
            .unwrap();
        assert!(follower.install_snapshot(&snap.meta, recv).await.is_err());
        assert_eq!(follower.applied_state().await.unwrap().0, None);
        assert!(follower.get_current_snapshot().await.unwrap().is_none());
        assert_eq!(follower.reader().intent_count().unwrap(), 0);
    }
}

#[tokio::test]
async fn deleted_sled_is_rebuilt_from_the_snapshot_at_open() {
    let ids: Vec<Uuid> = (1..=10).map(Uuid::from_u128).collect();
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let (_log, mut sm) = open(dir.path());
        populate(&mut sm, &ids).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        expected = dump(&sm.reader(), &ids);
    }
    std::fs::remove_dir_all(dir.path().join("sm")).unwrap();
    let (_log, mut sm) = open(dir.path());
    assert_eq!(dump(&sm.reader(), &ids), expected);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(21)));
}

/// A durable snapshot newer than sled (a crash between writing an installed snapshot and
/// switching the state over, or sled losing writes) is loaded at open.
#[tokio::test]
async fn sled_behind_the_newest_snapshot_is_rebuilt_at_open() {
    let ids: Vec<Uuid> = (1..=10).map(Uuid::from_u128).collect();
    let leader_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let (_l, mut leader) = open(leader_dir.path());
        populate(&mut leader, &ids).await;
        leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        expected = dump(&leader.reader(), &ids);
    }
    {
        let (_log, sm) = open(dir.path());
        assert_eq!(sm.reader().applied_index(), 0);
    }
    for f in std::fs::read_dir(leader_dir.path().join("snapshots")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("snapshots").join(f.file_name())).unwrap();
    }
    let (_log, sm) = open(dir.path());
    assert_eq!(dump(&sm.reader(), &ids), expected);
}

#[tokio::test]
async fn purged_log_without_a_covering_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        log.purge(log_id(5)).await.unwrap();
    }
    assert!(matches!(
        intentd_storage::open(dir.path(), StorageOptions::default()),
        Err(StorageError::Inconsistent(_))
    ));
}

/// The due index: time order, entries replaced and removed as intents change, and the same
/// index on a follower that installed a snapshot, which keeps maintaining it.
#[tokio::test]
async fn the_due_index_is_ordered_follows_changes_and_survives_a_snapshot_install() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    let (_f, mut follower) = open(follower_dir.path());
    let [a, b, c] = [1u128, 2, 3].map(Uuid::from_u128);
    let with_deadline = |id: Uuid, s: i64| create_with(id, |i| i.deadline_at = Some(secs(s)));
    leader
        .apply([
            membership(1),
            entry(2, with_deadline(a, 300)),
            entry(3, with_deadline(b, 100)),
            entry(4, with_deadline(c, 200)),
        ])
        .await
        .unwrap();
    let r = leader.reader();
    let due = |r: &StateReader, until: i64| -> Vec<(i64, DueKind, Uuid)> {
        r.due_before(secs(until), 100)
            .unwrap()
            .into_iter()
            .map(|e| ((e.at - at()).num_seconds(), e.kind, e.id))
            .collect()
    };
    assert_eq!(
        due(&r, 250),
        [(100, DueKind::Deadline, b), (200, DueKind::Deadline, c)]
    );
    assert_eq!(r.due_before(secs(250), 1).unwrap().len(), 1);
    assert!(due(&r, 99).is_empty());
    assert_eq!(r.next_due().unwrap(), Some(secs(100)));

    let cancel = intent_cmd(IntentCommand::Resolve {
        intent_id: b,
        resolution: Resolution::Canceled {
            reason: "no".into(),
        },
        actor: SENDER.into(),
        at: at(),
    });
    let ack = intent_cmd(IntentCommand::Acknowledge {
        intent_id: a,
        attempt: 1,
        actor: RECEIVER.into(),
        at: at(),
    });
    leader
        .apply([entry(5, deliver(a, 0)), entry(6, cancel)])
        .await
        .unwrap();
    assert_eq!(
        due(&r, 250),
        [(30, DueKind::LeaseExpiry, a), (200, DueKind::Deadline, c)]
    );
    assert_eq!(r.next_due().unwrap(), Some(secs(30)));
    leader.apply([entry(7, ack)]).await.unwrap();
    assert_eq!(
        due(&r, 1000),
        [(200, DueKind::Deadline, c), (300, DueKind::Deadline, a)]
    );

    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    install_current(&mut leader, &mut follower).await;
    let fr = follower.reader();
    assert_eq!(due(&fr, 1000), due(&r, 1000));

    let timeout = intent_cmd(IntentCommand::TimeOut {
        intent_id: c,
        at: secs(200),
    });
    let responses = follower.apply([entry(8, timeout)]).await.unwrap();
    assert!(
        matches!(single(&responses[0]), Outcome::Applied(_)),
        "{responses:?}"
    );
    assert_eq!(due(&fr, 1000), [(300, DueKind::Deadline, a)]);
    assert_eq!(fr.next_due().unwrap(), Some(secs(300)));
}

/// Delivery records read back through the reader, including across a webhook outcome.
#[tokio::test]
async fn delivery_records_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    populate(&mut sm, &[Uuid::from_u128(1)]).await;
    let r = sm.reader();
    let agent = r.agent_config("agent://acme/hooked").unwrap().unwrap();
    assert_eq!(agent.secret_hint().as_deref(), Some("cret"));
    assert_eq!(r.agent_configs().unwrap().len(), 1);
    assert!(r.agent_config("acme/nobody").unwrap().is_none());

    let letter = r.dead_letter(&DEAD).unwrap().unwrap();
    assert!(letter.reason.contains("HTTP 500"));
    assert!(r.dead_letters(Some(DEAD), 10).unwrap().is_empty());
    assert_eq!(r.dead_letters(Some(Uuid::nil()), 10).unwrap().len(), 1);

    let thread = r.inbox_thread(&HUMAN).unwrap().unwrap();
    assert_eq!(r.inbox_threads("acme/receiver").unwrap(), vec![thread]);
    assert_eq!(r.inbox_changes(RECEIVER, 0, 10).unwrap().len(), 1);
    assert!(r.inbox_changes(RECEIVER, 1, 10).unwrap().is_empty());
    assert_eq!(r.inbox_cursor(RECEIVER).unwrap(), 1);

    let subs = r.subscriptions("acme/sender").unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(r.subscription(&subs[0].id).unwrap().unwrap(), subs[0]);
    let deliveries = r.webhook_deliveries(&EVENT).unwrap();
    let d = &deliveries[0];
    assert_eq!(
        r.webhook_delivery(&d.delivery_id).unwrap().as_ref(),
        Some(d)
    );
    let kinds = |r: &StateReader| -> Vec<DueKind> {
        r.due_before(secs(1_000_000), 100)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    };
    // The push (at +3 s), the lease of the delivered intent (+30 s), the reminder (+60 s).
    assert_eq!(
        kinds(&r),
        [
            DueKind::WebhookDelivery,
            DueKind::LeaseExpiry,
            DueKind::Reminder
        ]
    );

    let outcome = Command::WebhookDeliveryOutcome {
        delivery_id: d.delivery_id,
        attempt: 0,
        replays: 0,
        outcome: WebhookOutcome::Delivered,
        at: secs(4),
    };
    let next = r.applied_index() + 1;
    sm.apply([entry(next, outcome)]).await.unwrap();
    assert_eq!(kinds(&r), [DueKind::LeaseExpiry, DueKind::Reminder]);
    assert_eq!(
        r.webhook_delivery(&d.delivery_id)
            .unwrap()
            .unwrap()
            .attempts,
        1
    );
}

/// Whether a per-key wait is over right now, without waiting.
fn woken(w: &mut intentd_storage::Waiter) -> Option<Result<(), intentd_storage::Closed>> {
    use std::future::Future;
    let fut = std::pin::pin!(w.changed());
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Apply wakes the waiters of the keys a batch wrote, and no one else.
#[tokio::test]
async fn apply_wakes_only_the_keys_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let (id, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
    // With and without the scheme: the same key.
    let mut queue = reader.watch_queue(RECEIVER);
    let mut queue_bare = reader.watch_queue("acme/receiver");
    let mut addressed = reader.watch_addressed_to(RECEIVER);
    let mut intent = reader.watch_intent(&id);
    let mut other_agent = reader.watch_queue("agent://acme/elsewhere");
    let mut other_addressed = reader.watch_addressed_to("acme/elsewhere");
    let mut other_intent = reader.watch_intent(&other);
    assert_eq!(reader.watched_keys(), 6);

    sm.apply([membership(1), entry(2, create(id))])
        .await
        .unwrap();
    for w in [&mut queue, &mut queue_bare, &mut addressed, &mut intent] {
        assert_eq!(woken(w), Some(Ok(())));
    }
    for w in [&mut other_agent, &mut other_addressed, &mut other_intent] {
        assert_eq!(woken(w), None);
    }

    // A lease writes the intent, not the queue.
    for w in [&mut queue, &mut addressed, &mut intent] {
        w.mark_seen();
    }
    sm.apply([entry(3, deliver(id, 0))]).await.unwrap();
    assert_eq!(woken(&mut queue), None);
    assert_eq!(woken(&mut addressed), Some(Ok(())));
    assert_eq!(woken(&mut intent), Some(Ok(())));

    // A rejected command writes nothing and wakes no one.
    intent.mark_seen();
    let r = sm.apply([entry(4, deliver(id, 0))]).await.unwrap();
    assert!(matches!(single(&r[0]), Outcome::Rejected(_)), "{r:?}");
    assert_eq!(woken(&mut intent), None);

    drop((queue, queue_bare, addressed, intent));
    drop((other_agent, other_addressed, other_intent));
    assert_eq!(reader.watched_keys(), 0, "no entry outlives its waiters");
}

/// An installed snapshot wakes every waiter: the whole state changed at once.
#[tokio::test]
async fn a_snapshot_install_wakes_every_waiter() {
    let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    let (_f, mut follower) = open(follower_dir.path());
    populate(&mut leader, &ids).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let reader = follower.reader();
    let mut waiters = vec![
        reader.watch_queue("acme/nobody-writes-this"),
        reader.watch_intent(&Uuid::from_u128(999)),
        reader.watch_addressed_to(RECEIVER),
    ];
    for w in &mut waiters {
        assert_eq!(woken(w), None);
    }
    install_current(&mut leader, &mut follower).await;
    for w in &mut waiters {
        assert_eq!(woken(w), Some(Ok(())));
    }
}

/// At shutdown every wait ends, and so does any wait that starts later.
#[tokio::test]
async fn closed_waits_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = open(dir.path());
    let reader = sm.reader();
    let mut before = reader.watch_queue(RECEIVER);
    sm.close_waits();
    assert_eq!(woken(&mut before), Some(Err(intentd_storage::Closed)));
    let mut after = reader.watch_intent(&Uuid::from_u128(1));
    assert_eq!(woken(&mut after), Some(Err(intentd_storage::Closed)));
    assert_eq!(reader.watched_keys(), 0);
}

/// A build no longer stops applies while it scans; whatever they change meanwhile, the file
/// must hold exactly the state at the log id it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_while_applies_go_on_holds_the_state_at_its_log_id() {
    let first: Vec<Uuid> = (1..=1500).map(Uuid::from_u128).collect();
    let later: Vec<Uuid> = (5001..=5600).map(Uuid::from_u128).collect();
    // Entries after the population: new intents (new keys), deliveries (changed intents, new
    // due entries) and progress reports that take those due entries away again (removals).
    let mut entries = vec![membership(1)];
    for id in &first {
        let next = entries.len() as u64 + 1;
        entries.push(entry(next, create(*id)));
    }
    let populated = entries.len();
    for (i, id) in later.iter().enumerate() {
        for command in [create(*id), deliver(first[i], 0), resume(first[i])] {
            let next = entries.len() as u64 + 1;
            entries.push(entry(next, command));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    sm.apply(entries[..populated].to_vec()).await.unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await.unwrap() });
    for chunk in entries[populated..].chunks(3) {
        sm.apply(chunk.to_vec()).await.unwrap();
    }
    let snap = build.await.unwrap();
    let at = snap.meta.last_log_id.unwrap().index as usize;

    // The reference: a fresh store that applied exactly the entries up to that log id.
    let reference_dir = tempfile::tempdir().unwrap();
    let (_rl, mut reference) = open(reference_dir.path());
    reference.apply(entries[..at].to_vec()).await.unwrap();

    let follower_dir = tempfile::tempdir().unwrap();
    let (_fl, mut follower) = open(follower_dir.path());
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
    install_current(&mut sm, &mut follower).await;

    let ids: Vec<Uuid> = first.iter().chain(&later).copied().collect();
    assert_eq!(
        dump(&follower.reader(), &ids),
        dump(&reference.reader(), &ids)
    );
}

/// Retention: a purge removes every record of the intent from sled (the key scan finds
/// nothing that names it, raw or as text), keeps the other intents, moves the record
/// counts, and a snapshot built afterwards and installed on another node holds none of it.
#[tokio::test]
async fn a_purge_leaves_nothing_of_the_intent_in_sled_or_in_a_snapshot() {
    let gone = Uuid::from_u128(80_001);
    let kept = Uuid::from_u128(80_002);
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = open(leader_dir.path());
    let (_f, mut follower) = open(follower_dir.path());
    let retention = intentd_lifecycle::Retention {
        terminal_secs: 60,
        dead_letter_secs: 600,
    };
    let mut commands = vec![
        Command::SetRetention { retention },
        Command::UpsertSubscription {
            subscription: Subscription {
                id: Uuid::from_u128(80_100),
                owner: SENDER.into(),
                callback_url: "https://sender.example/hooks".into(),
                event_types: vec!["intent.*".into()],
                secret: "whsec_x".into(),
                active: true,
                description: None,
                created_at: at(),
                updated_at: at(),
                revoked_at: None,
            },
        },
    ];
    for id in [gone, kept] {
        let Command::Intent { command, .. } = create_with(id, |i| {
            i.reply_to = Some(SENDER.into());
        }) else {
            unreachable!()
        };
        commands.push(Command::Intent {
            command,
            idempotency: Some(intentd_lifecycle::IdempotencyClaim {
                scope: "k1".into(),
                key: format!("order-{id}"),
                request_hash: "h".into(),
                expires_at: secs(86_400),
            }),
        });
        // Two deliveries (the first lease expires): two queue entries of the intent.
        commands.push(deliver(id, 0));
        commands.push(intent_cmd(IntentCommand::ExpireLease {
            intent_id: id,
            attempt: 1,
            retry_at: secs(31),
            at: secs(31),
        }));
        commands.push(deliver(id, 1));
        commands.push(intent_cmd(IntentCommand::Resolve {
            intent_id: id,
            resolution: Resolution::Completed { result: json!({}) },
            actor: RECEIVER.into(),
            at: secs(40),
        }));
    }
    let mut entries = vec![membership(1)];
    for c in commands {
        let next = entries.len() as u64 + 1;
        entries.push(entry(next, c));
    }
    let responses = leader.apply(entries).await.unwrap();
    for r in &responses[1..] {
        assert!(!matches!(single(r), Outcome::Rejected(_)), "{r:?}");
    }
    let r = leader.reader();
    assert_eq!(r.retention().unwrap(), retention);
    let due_at = secs(100);
    assert_eq!(r.intent(&gone).unwrap().unwrap().purge_at, Some(due_at));
    assert!(r
        .due_before(due_at, 100)
        .unwrap()
        .iter()
        .any(|e| e.kind == DueKind::Purge && e.id == gone));
    assert!(!r.keys_mentioning(&gone).unwrap().is_empty());
    assert_eq!(r.inbox_threads(SENDER).unwrap().len(), 2);
    let counts = r.record_counts().unwrap();
    assert_eq!((counts.intents, counts.idempotency_records), (2, 2));

    let mut index = responses.len() as u64 + 1;
    let early = leader
        .apply([entry(
            index,
            Command::Purge {
                intent_id: gone,
                at: due_at - chrono::Duration::milliseconds(1),
            },
        )])
        .await
        .unwrap();
    assert!(matches!(single(&early[0]), Outcome::Rejected(_)));
    index += 1;
    let purged = leader
        .apply([entry(
            index,
            Command::Purge {
                intent_id: gone,
                at: due_at,
            },
        )])
        .await
        .unwrap();
    assert!(matches!(single(&purged[0]), Outcome::Applied(_)));

    let check = |r: &StateReader| {
        assert_eq!(r.keys_mentioning(&gone).unwrap(), Vec::<Vec<u8>>::new());
        assert!(r.intent(&gone).unwrap().is_none());
        assert!(r.intent(&kept).unwrap().is_some());
        assert_eq!(r.events(&kept, 0, 100).unwrap().len(), 7);
        assert_eq!(r.inbox_threads(SENDER).unwrap().len(), 1);
        let counts = r.record_counts().unwrap();
        assert_eq!(
            (counts.intents, counts.events, counts.idempotency_records),
            (1, 7, 1)
        );
        assert!(r
            .due_before(secs(1_000_000), 100)
            .unwrap()
            .iter()
            .all(|e| e.id != gone));
    };
    check(&leader.reader());

    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    install_current(&mut leader, &mut follower).await;
    check(&follower.reader());
    assert_eq!(
        dump(&follower.reader(), &[gone, kept]),
        dump(&leader.reader(), &[gone, kept])
    );
}

/// The newest record segment of the live generation.
fn newest_record_segment(dir: &Path) -> std::path::PathBuf {
    let generation = std::fs::read_dir(dir.join("records"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::read_dir(generation)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap()
}

/// The bytes of the live generation's record segments.
fn record_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(newest_record_segment(dir).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Applies `ids`' creates, then a delivery and four progress resumes of each (rewriting every
/// intent five times), each command its own entry and batch, from index 2.
async fn churn(sm: &mut StateMachine, ids: &[Uuid]) -> u64 {
    let mut index = 1;
    sm.apply(vec![membership(1)]).await.unwrap();
    let commands = ids
        .iter()
        .map(|id| create(*id))
        .chain(ids.iter().map(|id| deliver(*id, 0)))
        .chain((0..4).flat_map(|_| ids.iter().map(|id| resume(*id))));
    for command in commands {
        index += 1;
        let responses = sm.apply(vec![entry(index, command)]).await.unwrap();
        assert!(!matches!(single(&responses[0]), Outcome::Rejected(_)));
    }
    index
}

/// Records the segments lost although sled's batches point at them (a power loss that kept
/// sled's writes and not the segment's) are not trusted: the open rebuilds the state machine
/// from the snapshot, and openraft re-applies the log after it.
#[tokio::test]
async fn records_missing_under_sleds_mark_are_rebuilt_from_the_snapshot_at_open() {
    let ids: Vec<Uuid> = (1..=10).map(Uuid::from_u128).collect();
    let later = Uuid::from_u128(99);
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let (_log, mut sm) = open(dir.path());
        populate(&mut sm, &ids).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        expected = dump(&sm.reader(), &ids);
        sm.apply(vec![entry(22, create(later))]).await.unwrap();
        assert!(sm.reader().intent(&later).unwrap().is_some());
        sm.flush().await.unwrap();
    }
    let segment = newest_record_segment(dir.path());
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 1).unwrap();
    drop(file);
    let (_log, mut sm) = open(dir.path());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(21)));
    assert_eq!(dump(&sm.reader(), &ids), expected);
    assert_eq!(sm.reader().intent(&later).unwrap(), None);
}

/// A state tree written before the record store (intents and events in sled) is rebuilt at
/// open from the snapshot, which puts them in the record store.
#[tokio::test]
async fn a_tree_holding_intents_itself_is_rebuilt_from_the_snapshot_at_open() {
    let ids: Vec<Uuid> = (1..=10).map(Uuid::from_u128).collect();
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let (_log, mut sm) = open(dir.path());
        populate(&mut sm, &ids).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        expected = dump(&sm.reader(), &ids);
        sm.flush().await.unwrap();
    }
    {
        let db = sled::open(dir.path().join("sm")).unwrap();
        let live = db.get(b"current_tree").unwrap().unwrap();
        let tree = db.open_tree(live).unwrap();
        let mut old_layout = vec![b'i'];
        old_layout.extend_from_slice(Uuid::from_u128(5000).as_bytes());
        tree.insert(old_layout, b"{}".to_vec()).unwrap();
        db.flush().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("records")).unwrap();
    let (_log, sm) = open(dir.path());
    assert_eq!(dump(&sm.reader(), &ids), expected);
    assert_eq!(sm.reader().intent(&Uuid::from_u128(5000)).unwrap(), None);
}

/// Tiny record segments make compaction copy live records forward and delete dead segments
/// on nearly every batch: the state read back, after a snapshot install and after a reopen,
/// is the one a store with one big segment holds.
#[tokio::test]
async fn compaction_keeps_the_state_through_installs_and_reopens() {
    let ids: Vec<Uuid> = (1..=60).map(Uuid::from_u128).collect();
    let small = StorageOptions {
        record_segment_bytes: 2048,
        ..StorageOptions::default()
    };
    let (big_dir, small_dir, to_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (_l1, mut big) = open(big_dir.path());
    churn(&mut big, &ids).await;
    let expected = dump(&big.reader(), &ids);
    {
        let (_l2, mut sm) = intentd_storage::open(small_dir.path(), small.clone()).unwrap();
        churn(&mut sm, &ids).await;
        assert_eq!(dump(&sm.reader(), &ids), expected);
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let (_l3, mut to) = intentd_storage::open(to_dir.path(), small.clone()).unwrap();
        install_current(&mut sm, &mut to).await;
        assert_eq!(dump(&to.reader(), &ids), expected);
        // An install writes only live records.
        let (kept, written, live) = (
            record_bytes(small_dir.path()),
            record_bytes(big_dir.path()),
            record_bytes(to_dir.path()),
        );
        assert!(
            kept < written && kept <= 2 * live + 2 * 2048,
            "dead segments are deleted: {kept} bytes kept, {live} live, {written} written"
        );
    }
    let (_l2, sm) = intentd_storage::open(small_dir.path(), small).unwrap();
    assert_eq!(dump(&sm.reader(), &ids), expected);
}
