//! The delivery and event streams against a real one-node cluster (Raft, WAL, sled): what
//! both edges rely on, checked once here.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use intentd_consensus::{Cluster, NodeConfig, RaftTimings};
use intentd_delivery::intents::{now, write_intent};
use intentd_delivery::{
    agent_deliveries, intent_events, Delivery, StatusFilter, StreamOptions, Watch,
};
use intentd_lifecycle::{EventType, IntentCommand, NewIntent, Resolution, Status};
use serde_json::json;
use uuid::Uuid;

/// Bounds every wait on a stream: a hung stream fails the test instead of hanging it.
const ITEM: Duration = Duration::from_secs(10);
const AGENT: &str = "agent://acme/prod/payments";

async fn node() -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let (log, sm) = intentd_storage::open(dir.path(), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = NodeConfig {
        node_id: 1,
        peers: BTreeMap::from([(1, addr)]),
        timings: RaftTimings::default(),
        request_timeout: Duration::from_secs(5),
        join: false,
        clock: Default::default(),
    };
    let cluster = intentd_consensus::start(config, log, sm, listener, std::future::pending())
        .await
        .unwrap();
    (dir, cluster)
}

async fn create(cluster: &Cluster) -> Uuid {
    let intent = NewIntent {
        id: Uuid::new_v4(),
        intent_type: "payment.charge.v1".into(),
        correlation_id: Uuid::new_v4(),
        from_agent: "agent://intentd/keys/test".into(),
        to_agent: AGENT.into(),
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
    };
    let id = intent.id;
    write_intent(cluster, IntentCommand::Create { intent, at: now() }, None)
        .await
        .unwrap();
    id
}

fn options(idle: Option<Duration>) -> StreamOptions {
    StreamOptions {
        idle,
        batch: 2,
        default_ack_timeout_secs: intentd_lifecycle::agent::DEFAULT_ACK_TIMEOUT_SECS,
    }
}

async fn next<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin)) -> Option<T> {
    tokio::time::timeout(ITEM, stream.next())
        .await
        .expect("the stream answered in time")
}

#[tokio::test]
async fn two_listeners_racing_deliver_once_and_both_see_the_winner() {
    let (_dir, cluster) = node().await;
    let ids = [
        create(&cluster).await,
        create(&cluster).await,
        create(&cluster).await,
    ];
    let listen = |consumer: &str| {
        Box::pin(agent_deliveries(
            cluster.clone(),
            "acme/prod/payments".into(),
            0,
            StatusFilter::actionable(),
            consumer.into(),
            options(Some(Duration::from_millis(300))),
        ))
    };
    let (mut a, mut b) = (listen("a"), listen("b"));
    for (i, id) in ids.iter().enumerate() {
        let (da, db) = tokio::join!(next(&mut a), next(&mut b));
        for d in [da, db] {
            let Some(Ok(Watch::Next(Delivery { cursor, intent }))) = d else {
                panic!("expected a delivery, got {d:?}");
            };
            assert_eq!(cursor, i as u64 + 1);
            assert_eq!(intent.id, *id);
            assert_eq!(intent.status, Status::Delivered);
            // The compare-and-set let only one consumer deliver: one attempt, not two.
            assert_eq!(intent.delivery_attempt, 1);
        }
    }
    // Nothing more: each stream goes quiet at the last cursor and ends.
    for s in [&mut a, &mut b] {
        assert!(matches!(
            next(s).await,
            Some(Ok(Watch::Quiet { cursor: 3 }))
        ));
        assert!(next(s).await.is_none());
    }
    let events = cluster.reader().events(&ids[0], 0, 10).unwrap();
    let delivered = events
        .iter()
        .filter(|e| e.event_type == EventType::Delivered)
        .count();
    assert_eq!(delivered, 1, "{events:?}");
}

#[tokio::test]
async fn a_filter_skips_unwanted_entries_but_moves_the_cursor() {
    let (_dir, cluster) = node().await;
    let id = create(&cluster).await;
    let mut completed_only = Box::pin(agent_deliveries(
        cluster.clone(),
        AGENT.into(),
        0,
        StatusFilter::of(vec![Status::Completed]),
        "c".into(),
        options(Some(Duration::from_millis(300))),
    ));
    assert!(matches!(
        next(&mut completed_only).await,
        Some(Ok(Watch::Quiet { cursor: 1 }))
    ));
    // Not delivered: the listener did not want DELIVERED intents.
    let intent = cluster.reader().intent(&id).unwrap().unwrap();
    assert_eq!(intent.status, Status::Submitted);
}

#[tokio::test]
async fn intent_events_follow_live_and_end_after_the_terminal_event() {
    let (_dir, cluster) = node().await;
    let id = create(&cluster).await;
    let mut events = Box::pin(intent_events(cluster.clone(), id, 1, options(None)));
    let Some(Ok(Watch::Next(submitted))) = next(&mut events).await else {
        panic!("expected the submitted event");
    };
    assert_eq!(
        (submitted.seq, submitted.event_type),
        (2, EventType::Submitted)
    );

    let resolve = IntentCommand::Resolve {
        intent_id: id,
        resolution: Resolution::Canceled {
            reason: "test".into(),
        },
        actor: "ops".into(),
        at: now(),
    };
    write_intent(&cluster, resolve, None).await.unwrap();
    let Some(Ok(Watch::Next(canceled))) = next(&mut events).await else {
        panic!("expected the terminal event");
    };
    assert_eq!(
        (canceled.seq, canceled.event_type),
        (3, EventType::Canceled)
    );
    assert!(
        next(&mut events).await.is_none(),
        "ended after the terminal event"
    );

    // Past the terminal event there is nothing to wait for: quiet at once, even unbounded.
    let mut late = Box::pin(intent_events(cluster.clone(), id, 3, options(None)));
    assert!(matches!(
        next(&mut late).await,
        Some(Ok(Watch::Quiet { cursor: 3 }))
    ));
    assert!(next(&mut late).await.is_none());
}

#[tokio::test]
async fn a_quiet_intent_stream_says_so_after_its_idle_limit() {
    let (_dir, cluster) = node().await;
    let id = create(&cluster).await;
    let mut events = Box::pin(intent_events(
        cluster.clone(),
        id,
        2,
        options(Some(Duration::from_millis(200))),
    ));
    assert!(matches!(
        next(&mut events).await,
        Some(Ok(Watch::Quiet { cursor: 2 }))
    ));
    assert!(next(&mut events).await.is_none());
}
