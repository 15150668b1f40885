//! The delivery and event streams against a real one-node cluster (Raft, WAL, sled): what
//! both edges rely on, checked once here.

use std::time::Duration;

use futures::StreamExt as _;
use intentd_consensus::Cluster;
use intentd_lifecycle::{EventType, IntentCommand, Resolution, Status};
use intentd_operations::intents::{now, write_intent};
use intentd_operations::{
    agent_deliveries, intent_events, Delivery, StatusFilter, StreamConsumers, StreamOptions, Watch,
};
use intentd_test_support::new_intent;
use intentd_test_support::node::single as node;
use serde_json::json;
use uuid::Uuid;

/// Bounds every wait on a stream: a hung stream fails the test instead of hanging it.
const ITEM: Duration = Duration::from_secs(10);
const AGENT: &str = "agent://acme/prod/payments";

async fn create(cluster: &Cluster) -> Uuid {
    let intent = new_intent(AGENT);
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

/// The next delivery of either stream, with the stream it came from (0 or 1).
async fn next_of_two<S>(streams: &mut [S; 2]) -> (usize, Delivery)
where
    S: futures::Stream<Item = Result<Watch<Delivery>, intentd_operations::OperationsError>> + Unpin,
{
    let [a, b] = streams;
    let (which, item) = tokio::time::timeout(ITEM, async {
        tokio::select! {
            item = a.next() => (0, item),
            item = b.next() => (1, item),
        }
    })
    .await
    .expect("a delivery in time");
    match item {
        Some(Ok(Watch::Next(delivery))) => (which, delivery),
        other => panic!("stream {which}: expected a delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn two_consumers_share_the_queue_and_a_closed_one_gives_its_leases_back() {
    let (_dir, cluster) = node().await;
    let consumers = StreamConsumers::default();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(create(&cluster).await);
    }
    let listen = |consumer: &str| {
        Box::pin(agent_deliveries(
            cluster.clone(),
            consumers.clone(),
            "acme/prod/payments".into(),
            0,
            StatusFilter::actionable(),
            consumer.into(),
            options(Some(ITEM)),
        ))
    };
    let mut streams = [listen("a"), listen("b")];
    let mut got: [Vec<Uuid>; 2] = Default::default();
    for _ in 0..ids.len() {
        let (which, delivery) = next_of_two(&mut streams).await;
        assert_eq!(delivery.intent.status, Status::Delivered);
        assert_eq!(delivery.intent.delivery_attempt, 1);
        let lease = delivery.intent.lease.as_ref().expect("sent with its lease");
        assert_eq!(lease.consumer, ["a", "b"][which]);
        got[which].push(delivery.intent.id);
    }
    assert_eq!(consumers.open_streams("acme/prod/payments"), 2);
    // Nobody settles anything, so the turns are exact: the stream that joined first takes
    // the first entry, then whoever holds fewer leases goes next.
    let first = usize::from(got[1].first() == Some(&ids[0]));
    let second = 1 - first;
    assert_eq!(got[first], [ids[0], ids[2]], "{got:?}");
    assert_eq!(got[second], [ids[1], ids[3]], "{got:?}");

    // The first stream's client goes away holding two leases: the other stream gets both at
    // once, as the next attempt.
    let [a, b] = streams;
    let (gone, mut b) = if first == 0 { (a, b) } else { (b, a) };
    drop(gone);
    let (gone_name, stays_name) = (["a", "b"][first], ["a", "b"][second]);
    let mut redelivered = Vec::new();
    for _ in 0..2 {
        let Some(Ok(Watch::Next(delivery))) = next(&mut b).await else {
            panic!("expected a redelivery");
        };
        assert_eq!(delivery.intent.delivery_attempt, 2, "{delivery:?}");
        assert_eq!(delivery.intent.lease.as_ref().unwrap().consumer, stays_name);
        redelivered.push(delivery.intent.id);
    }
    redelivered.sort();
    let mut expected = vec![ids[0], ids[2]];
    expected.sort();
    assert_eq!(redelivered, expected);
    for id in &ids {
        let events = cluster.reader().events(id, 0, 20).unwrap();
        let delivered = events
            .iter()
            .filter(|e| e.event_type == EventType::Delivered)
            .count();
        let released: Vec<_> = events
            .iter()
            .filter(|e| e.event_type == EventType::LeaseExpired)
            .collect();
        let was_gone = *id == ids[0] || *id == ids[2];
        assert_eq!(delivered, if was_gone { 2 } else { 1 }, "{events:?}");
        assert_eq!(released.len(), usize::from(was_gone), "{events:?}");
        if was_gone {
            assert_eq!(released[0].details["released"], json!(true));
            assert_eq!(released[0].details["consumer"], json!(gone_name));
        }
    }
    drop(b);
    assert_eq!(consumers.open_streams("acme/prod/payments"), 0);
}

#[tokio::test]
async fn a_filter_skips_unwanted_entries_but_moves_the_cursor() {
    let (_dir, cluster) = node().await;
    let id = create(&cluster).await;
    let mut completed_only = Box::pin(agent_deliveries(
        cluster.clone(),
        StreamConsumers::default(),
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
