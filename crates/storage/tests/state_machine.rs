//! The state machine through its public API: apply, reopen, snapshots, rebuild at open.

use std::path::Path;

use intentd_lifecycle::{
    ApiKey, Command, IntentCommand, NewIntent, Rejection, ResumeAction, Role, Status, Timestamp,
};
use intentd_storage::{
    LogStore, Response, StateMachine, StateReader, StorageError, StorageOptions, TypeConfig,
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
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
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
    Command::Intent {
        command: IntentCommand::Create {
            intent: NewIntent {
                id,
                intent_type: "test.v1".into(),
                correlation_id: Uuid::from_u128(7),
                from_agent: "agent://acme/sender".into(),
                to_agent: RECEIVER.into(),
                reply_to: None,
                payload: json!({ "n": 1 }),
                max_delivery_attempts: 3,
                deadline_at: None,
                remind_after_seconds: None,
                remind_interval_seconds: None,
                max_reminders: None,
                escalate_to: None,
                human_task: None,
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
    out.join("\n")
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
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
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
        responses[0],
        Response::Rejected(Rejection::StaleAttempt { .. })
    ));
    assert!(matches!(
        responses[1],
        Response::Rejected(Rejection::AlreadyExists(_))
    ));
    assert_eq!(sm.reader().events(&id, 0, 100).unwrap(), before);
    assert_eq!(sm.reader().intent_count().unwrap(), 1);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(3)));
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
    sm.apply(entries).await.unwrap();
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

    // Stream the bytes into the follower's receiving file, as the transfer would.
    let mut recv = follower.begin_receiving_snapshot().await.unwrap();
    let mut src = current.snapshot;
    tokio::io::copy(&mut *src, &mut *recv).await.unwrap();
    follower.install_snapshot(&snap.meta, recv).await.unwrap();

    assert_eq!(dump(&follower.reader(), &ids), dump(&leader.reader(), &ids));
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
    assert_eq!(
        follower.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
    assert_eq!(follower.reader().intent_count().unwrap(), 50);
    assert_eq!(follower.reader().api_keys().unwrap().len(), 2);

    // The follower keeps applying on top of the installed state.
    let next = snap.meta.last_log_id.unwrap().index + 1;
    let r = follower
        .apply([entry(next, deliver(ids[1], 0))])
        .await
        .unwrap();
    assert!(matches!(r[0], Response::Applied(_)));
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
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(14)));
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
