//! SSE: the intent event stream (framing, resume by `since` and `Last-Event-ID`, close after
//! a terminal event, `stream.timeout`) and the agent delivery stream, including competing
//! streams on one address (one node and two nodes of a cluster).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::cluster::{Cluster, ClusterOptions, FORM_DEADLINE};
use crate::support::{address_path, intent_body, within, Api, Frame, Server, SseStream, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);
const FRAME: Duration = Duration::from_secs(10);

/// Asserts a frame is the intent event `seq` of type `event_type`, framed as the contract says.
#[track_caller]
fn assert_event_frame(frame: &Frame, intent_id: &str, seq: u64, event_type: &str) {
    assert_eq!(frame.event(), event_type, "{frame:?}");
    assert_eq!(
        frame.id.as_deref(),
        Some(seq.to_string().as_str()),
        "{frame:?}"
    );
    let data = frame.json();
    assert_eq!(data["seq"], json!(seq), "{frame:?}");
    assert_eq!(data["event_type"], json!(event_type), "{frame:?}");
    assert_eq!(data["intent_id"], json!(intent_id), "{frame:?}");
    assert!(data["status"].is_string(), "{frame:?}");
}

#[tokio::test]
async fn intent_stream_frames_events_and_closes_after_the_terminal_one() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;

        let path = format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=30");
        let mut stream = SseStream::open_ok(&api, &path, &[]).await;
        let f1 = stream.next(FRAME).await.expect("first frame");
        assert_event_frame(&f1, &id, 1, "intent.created");
        let f2 = stream.next(FRAME).await.expect("second frame");
        assert_event_frame(&f2, &id, 2, "intent.submitted");

        // Live events arrive on the open stream.
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"action": "progress"}),
        )
        .await
        .assert_ok(200);
        let f3 = stream.next(FRAME).await.expect("live frame");
        assert_event_frame(&f3, &id, 3, "intent.in_progress");
        assert_eq!(f3.json()["status"], json!("IN_PROGRESS"));

        api.post(
            &format!("/v1/intents/{id}/resolve"),
            &json!({"status": "COMPLETED", "result": {"a": 1}}),
        )
        .await
        .assert_ok(200);
        let f4 = stream.next(FRAME).await.expect("terminal frame");
        assert_event_frame(&f4, &id, 4, "intent.completed");
        assert_eq!(f4.json()["status"], json!("COMPLETED"));

        // Closed right after the terminal event, long before wait_seconds.
        let started = Instant::now();
        let rest = stream.rest(FRAME).await;
        assert!(rest.is_empty(), "frames after the terminal event: {rest:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stream lingered after terminal event"
        );
    })
    .await
}

#[tokio::test]
async fn intent_stream_resumes_from_since_and_last_event_id() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"action": "progress"}),
        )
        .await
        .assert_ok(200);
        api.post(
            &format!("/v1/intents/{id}/resume"),
            &json!({"action": "wait", "waiting_reason": "WAITING_FOR_AGENT"}),
        )
        .await
        .assert_ok(200);
        api.post(
            &format!("/v1/intents/{id}/resolve"),
            &json!({"status": "COMPLETED", "result": {}}),
        )
        .await
        .assert_ok(200);
        let all = api.events(&id).await;
        assert_eq!(all.len(), 5, "{all:#?}");

        let since = format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=5");
        let frames = SseStream::open_ok(&api, &since, &[])
            .await
            .rest(FRAME)
            .await;
        let seqs: Vec<_> = frames.iter().map(|f| f.json()["seq"].clone()).collect();
        assert_eq!(seqs, [json!(3), json!(4), json!(5)], "{frames:?}");
        for (f, ev) in frames.iter().zip(&all[2..]) {
            assert_eq!(f.json(), *ev, "stream and list disagree");
            assert_eq!(Some(f.event()), ev["event_type"].as_str());
        }

        let plain = format!("/v1/intents/{id}/events/stream?wait_seconds=5");
        let frames = SseStream::open_ok(&api, &plain, &[("Last-Event-ID", "4")])
            .await
            .rest(FRAME)
            .await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_event_frame(&frames[0], &id, 5, "intent.completed");
    })
    .await
}

#[tokio::test]
async fn intent_stream_times_out_with_stream_timeout() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        let started = Instant::now();
        let path = format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=1");
        let frames = SseStream::open_ok(&api, &path, &[]).await.rest(FRAME).await;
        let elapsed = started.elapsed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].event(), "stream.timeout", "{frames:?}");
        assert!(
            elapsed >= Duration::from_millis(900),
            "timed out too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(6),
            "timed out too late: {elapsed:?}"
        );
    })
    .await
}

#[tokio::test]
async fn agent_stream_delivers_and_resumes_from_its_cursor() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let first = api.create_ok(&intent_body(PAYMENTS)).await;
        let second = api.create_ok(&intent_body(PAYMENTS)).await;
        let elsewhere = api
            .create_ok(&intent_body("agent://acme/prod/ledger"))
            .await;

        let listen = |since: u64| {
            format!(
                "/v1/agents/{}/intents/stream?since={since}&wait_seconds=1",
                address_path(PAYMENTS)
            )
        };
        let frames = SseStream::open_ok(&api, &listen(0), &[])
            .await
            .rest(FRAME)
            .await;
        let (deliveries, tail) = frames.split_at(frames.len().saturating_sub(1));
        assert_eq!(
            tail.first().map(Frame::event),
            Some("stream.timeout"),
            "{frames:?}"
        );
        let ids: Vec<_> = deliveries
            .iter()
            .map(|f| f.json()["intent_id"].clone())
            .collect();
        assert_eq!(ids, [json!(first), json!(second)], "{frames:?}");
        let mut last_seq = 0;
        for f in deliveries {
            assert_eq!(f.event(), "intent.delivered", "{f:?}");
            let d = f.json();
            let seq = d["seq"].as_u64().expect("seq");
            assert!(seq > last_seq, "agent cursor went backwards: {frames:?}");
            assert_eq!(f.id.as_deref(), Some(seq.to_string().as_str()), "{f:?}");
            last_seq = seq;
            assert_eq!(d["status"], json!("DELIVERED"), "{d}");
            assert_eq!(d["intent_type"], json!("payment.charge.v1"), "{d}");
            assert_eq!(d["to_agent"], json!(PAYMENTS), "{d}");
            assert!(d["from_agent"].is_string(), "{d}");
            assert_eq!(d["payload"]["order"], json!("ord-42"), "{d}");
            assert_eq!(d["delivery_attempt"], json!(1), "{d}");
        }
        for id in [&first, &second] {
            let intent = api.intent(id).await;
            assert_eq!(intent["status"], json!("DELIVERED"), "{intent}");
            assert_eq!(intent["delivery_attempt"], json!(1), "{intent}");
            let events = api.events(id).await;
            assert_eq!(
                events[2]["event_type"],
                json!("intent.delivered"),
                "{events:#?}"
            );
        }
        assert_eq!(api.intent(&elsewhere).await["status"], json!("SUBMITTED"));

        // Resuming from the cursor yields only what is newer.
        let third = api.create_ok(&intent_body(PAYMENTS)).await;
        let frames = SseStream::open_ok(&api, &listen(last_seq), &[])
            .await
            .rest(FRAME)
            .await;
        let delivered: Vec<_> = frames
            .iter()
            .filter(|f| f.event() == "intent.delivered")
            .map(|f| f.json())
            .collect();
        assert_eq!(delivered.len(), 1, "{frames:?}");
        assert_eq!(delivered[0]["intent_id"], json!(third));
        assert!(delivered[0]["seq"].as_u64().expect("seq") > last_seq);

        // Terminal intents are not offered by default.
        api.post(
            &format!("/v1/intents/{third}/resolve"),
            &json!({"status": "COMPLETED", "result": {}}),
        )
        .await
        .assert_ok(200);
        let frames = SseStream::open_ok(&api, &listen(last_seq), &[])
            .await
            .rest(FRAME)
            .await;
        assert!(
            frames.iter().all(|f| f.event() == "stream.timeout"),
            "a completed intent was offered again: {frames:?}"
        );
    })
    .await
}

/// The next intent frame of either stream, with which one sent it (0 or 1).
async fn next_of_two(a: &mut SseStream, b: &mut SseStream) -> (usize, Value) {
    let (which, frame) = tokio::select! {
        frame = a.next(FRAME) => (0, frame),
        frame = b.next(FRAME) => (1, frame),
    };
    let frame = frame.unwrap_or_else(|| panic!("stream {which} closed"));
    assert_eq!(
        frame.event(),
        "intent.delivered",
        "stream {which}: {frame:?}"
    );
    (which, frame.json())
}

/// The next frame of `stream`, which must be a delivery.
async fn next_delivery(stream: &mut SseStream) -> Value {
    let frame = stream.next(FRAME).await.expect("a delivery, not a close");
    assert_eq!(frame.event(), "intent.delivered", "{frame:?}");
    frame.json()
}

/// Stream bindings whose leases outlast the test: an intent changes hands quickly only if
/// the stream holding it gave it back.
async fn long_leases(api: &Api) {
    api.put(
        &format!("/v1/agents/{}/binding", address_path(PAYMENTS)),
        &json!({"delivery_mode": "stream", "ack_timeout_seconds": 600}),
    )
    .await
    .assert_ok(200);
}

fn consumer_path() -> String {
    format!(
        "/v1/agents/{}/intents/stream?since=0&wait_seconds=60",
        address_path(PAYMENTS)
    )
}

/// The `intent.delivered` and `intent.lease_expired` events of an intent.
async fn delivery_events(api: &Api, id: &str) -> (Vec<Value>, Vec<Value>) {
    let events = api.events(id).await;
    let of = |t: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event_type"] == json!(t))
            .cloned()
            .collect()
    };
    (of("intent.delivered"), of("intent.lease_expired"))
}

#[tokio::test]
async fn two_agent_streams_take_turns_and_a_closed_one_hands_its_leases_over() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        long_leases(&api).await;
        let mut a = SseStream::open_ok(&api, &consumer_path(), &[]).await;
        let mut b = SseStream::open_ok(&api, &consumer_path(), &[]).await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(api.create_ok(&intent_body(PAYMENTS)).await);
        }
        let mut got: [Vec<String>; 2] = Default::default();
        for _ in 0..ids.len() {
            let (which, d) = next_of_two(&mut a, &mut b).await;
            assert_eq!(d["delivery_attempt"], json!(1), "{d}");
            got[which].push(d["intent_id"].as_str().expect("intent_id").to_string());
        }
        // Each intent went to one stream, and (nobody settling anything) the turns alternate.
        let mut all: Vec<_> = got.concat();
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected, "{got:?}");
        assert_eq!((got[0].len(), got[1].len()), (2, 2), "{got:?}");

        // Stream a's client goes away mid-lease: b gets a's intents at once, as attempt 2.
        drop(a);
        let started = Instant::now();
        let mut handed: Vec<String> = Vec::new();
        for _ in 0..2 {
            let d = next_delivery(&mut b).await;
            assert_eq!(d["delivery_attempt"], json!(2), "{d}");
            handed.push(d["intent_id"].as_str().expect("intent_id").to_string());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "handed over after {:?}, not at once",
            started.elapsed()
        );
        handed.sort();
        got[0].sort();
        assert_eq!(handed, got[0]);
        for id in &ids {
            let (delivered, lost) = delivery_events(&api, id).await;
            if got[0].contains(id) {
                assert_eq!(delivered.len(), 2, "{delivered:?}");
                assert_eq!(lost.len(), 1, "{lost:?}");
                assert_eq!(lost[0]["details"]["released"], json!(true), "{lost:?}");
            } else {
                assert_eq!(delivered.len(), 1, "{delivered:?}");
                assert!(lost.is_empty(), "{lost:?}");
            }
        }
    })
    .await
}

#[tokio::test]
async fn agent_streams_on_two_nodes_never_both_send_an_attempt() {
    within(Duration::from_secs(180), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(FORM_DEADLINE).await;
        let followers: Vec<u64> = cluster
            .running()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let api = cluster.api(leader);
        long_leases(&api).await;

        // Stream a, on one follower, takes the first intent while it is alone.
        let mut a = SseStream::open_ok(&cluster.api(followers[0]), &consumer_path(), &[]).await;
        let first = api.create_ok(&intent_body(PAYMENTS)).await;
        let d = next_delivery(&mut a).await;
        assert_eq!(
            (d["intent_id"].as_str(), &d["delivery_attempt"]),
            (Some(first.as_str()), &json!(1))
        );

        // Stream b opens on the other follower; both nodes race for every new intent, and the
        // replicated compare-and-set lets exactly one stream send each.
        let mut b = SseStream::open_ok(&cluster.api(followers[1]), &consumer_path(), &[]).await;
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(api.create_ok(&intent_body(PAYMENTS)).await);
        }
        let mut got: [Vec<String>; 2] = [vec![first.clone()], Vec::new()];
        for _ in 0..ids.len() {
            let (which, d) = next_of_two(&mut a, &mut b).await;
            assert_eq!(d["delivery_attempt"], json!(1), "{d}");
            got[which].push(d["intent_id"].as_str().expect("intent_id").to_string());
        }
        let mut all: Vec<_> = got.concat();
        all.sort();
        let mut expected = ids.clone();
        expected.push(first.clone());
        expected.sort();
        assert_eq!(all, expected, "every intent sent once: {got:?}");

        // a's client goes away: b, on another node, gets everything a held as attempt 2.
        drop(a);
        let mut handed = Vec::new();
        for _ in 0..got[0].len() {
            let d = next_delivery(&mut b).await;
            assert_eq!(d["delivery_attempt"], json!(2), "{d}");
            handed.push(d["intent_id"].as_str().expect("intent_id").to_string());
        }
        handed.sort();
        got[0].sort();
        assert_eq!(handed, got[0]);
        for id in &expected {
            let (delivered, lost) = delivery_events(&api, id).await;
            let released = usize::from(got[0].contains(id));
            assert_eq!(delivered.len(), 1 + released, "{id}: {delivered:?}");
            assert_eq!(lost.len(), released, "{id}: {lost:?}");
        }
    })
    .await
}
