//! The console's routes end to end: the embedded assets at `/ui` with their security
//! headers, the admin-wide intent listing and its filters, the live intent feed (admin only,
//! resumable by log index, answering `feed.reset` for a cursor from before the node's
//! memory), the webhook overview and the status stream that feeds the charts.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::support::{intent_body, within, Api, Server, SseStream, PAYMENTS};

const FRAME: Duration = Duration::from_secs(15);

fn ids(listing: &Value) -> Vec<String> {
    listing["intents"]
        .as_array()
        .expect("intents")
        .iter()
        .map(|i| i["intent_id"].as_str().expect("intent_id").to_string())
        .collect()
}

/// Reads frames until one whose intent is `id` carries `event_type`; answers it and the
/// `id:` of the last frame that had one.
async fn until_event(
    stream: &mut SseStream,
    id: &str,
    event_type: &str,
) -> (Value, Option<String>) {
    let mut last_id = None;
    loop {
        let frame = stream.next(FRAME).await.expect("the feed stayed open");
        if frame.id.is_some() {
            last_id = frame.id.clone();
        }
        assert_eq!(frame.event(), "intent.changed", "{frame:?}");
        let data = frame.json();
        if data["intent"]["intent_id"] == json!(id) && data["event"]["event_type"] == event_type {
            return (data, last_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_is_served_with_a_strict_policy() {
    within(Duration::from_secs(60), async {
        let server = Server::start().await;
        let http = reqwest::Client::new();
        let page = http
            .get(format!("{}/ui/", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert!(page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = page.text().await.unwrap();
        assert!(html.contains("<label for=\"api-key\">"), "the login form");
        for (path, kind) in [
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let asset = http
                .get(format!("{}{path}", server.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(asset.status(), 200, "{path}");
            assert!(asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind));
        }
        let bare = http
            .get(format!("{}/ui", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.url().path(), "/ui/", "/ui redirects to the page");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_intent_listing_filters_and_the_feed_follows_and_resumes() {
    within(Duration::from_secs(90), async {
        let mut server = Server::start().await;
        let admin = server.admin();
        let (client_key, _) = admin.create_key("client", "client", None).await;
        let client = admin.with_key(&client_key);
        for path in [
            "/v1/admin/intents",
            "/v1/admin/intents/stream",
            "/v1/admin/webhooks",
            "/v1/admin/console/stream",
        ] {
            client.get(path).await.assert_error(403, "forbidden");
        }

        let first = admin.create_ok(&intent_body(PAYMENTS)).await;
        let mut other = intent_body("agent://acme/prod/ledger");
        other["intent_type"] = json!("ledger.post.v1");
        let second = admin.create_ok(&other).await;

        let listing = admin.get("/v1/admin/intents").await;
        let body = listing.assert_ok(200).clone();
        assert_eq!(
            ids(&body),
            vec![second.clone(), first.clone()],
            "newest first"
        );
        assert_eq!(body["next_before"], Value::Null, "everything was listed");
        let cursor = body["cursor"].as_u64().expect("cursor");
        let by_type = admin
            .get("/v1/admin/intents?intent_type=ledger.post.v1")
            .await;
        assert_eq!(ids(by_type.assert_ok(200)), vec![second.clone()]);
        let by_agent = admin
            .get("/v1/admin/intents?agent=acme/prod/payments")
            .await;
        assert_eq!(ids(by_agent.assert_ok(200)), vec![first.clone()]);
        let by_status = admin.get("/v1/admin/intents?status=completed").await;
        assert!(ids(by_status.assert_ok(200)).is_empty());
        let paged = admin.get("/v1/admin/intents?limit=1").await;
        let paged = paged.assert_ok(200).clone();
        assert_eq!(ids(&paged), vec![second.clone()]);
        let rest = admin
            .get(&format!(
                "/v1/admin/intents?before={}",
                paged["next_before"].as_str().expect("next_before")
            ))
            .await;
        assert_eq!(ids(rest.assert_ok(200)), vec![first.clone()]);
        admin
            .get("/v1/admin/intents?status=LOST")
            .await
            .assert_error(400, "invalid_request");

        let detail = admin.get(&format!("/v1/admin/intents/{first}")).await;
        let detail = detail.assert_ok(200);
        assert_eq!(detail["summary"]["status"], json!("SUBMITTED"), "{detail}");
        assert_eq!(detail["events"][0]["event_type"], json!("intent.created"));

        // The feed from the listing's cursor: a new intent's events, each with its summary.
        let mut feed = SseStream::open_ok(
            &admin,
            &format!("/v1/admin/intents/stream?since={cursor}&wait_seconds=30"),
            &[],
        )
        .await;
        let third = admin.create_ok(&intent_body(PAYMENTS)).await;
        let (data, last_id) = until_event(&mut feed, &third, "intent.submitted").await;
        assert_eq!(data["intent"]["status"], json!("SUBMITTED"), "{data}");
        let resume_at = last_id.expect("entries carry their index as the frame id");
        drop(feed);

        // Resuming from the last id sees what came after, and nothing before it again.
        let fourth = admin.create_ok(&intent_body(PAYMENTS)).await;
        let mut resumed = SseStream::open_ok(
            &admin,
            "/v1/admin/intents/stream?wait_seconds=30",
            &[("Last-Event-ID", &resume_at)],
        )
        .await;
        let frame = resumed.next(FRAME).await.expect("a frame");
        assert_eq!(
            frame.json()["intent"]["intent_id"],
            json!(fourth),
            "{frame:?}"
        );
        drop(resumed);

        // Quiet: the feed ends with stream.timeout and the cursor to resume from.
        let quiet = SseStream::open_ok(
            &admin,
            "/v1/admin/intents/stream?since=100000&wait_seconds=1",
            &[],
        )
        .await
        .rest(FRAME)
        .await;
        assert_eq!(quiet.len(), 1, "{quiet:?}");
        assert_eq!(quiet[0].event(), "stream.timeout");

        // After a restart the node cannot prove it has the events after an old cursor.
        server.stop().await;
        server.restart().await;
        let admin: Api = server.admin();
        let reset = SseStream::open_ok(
            &admin,
            &format!("/v1/admin/intents/stream?since={cursor}"),
            &[],
        )
        .await
        .rest(FRAME)
        .await;
        assert_eq!(reset.len(), 1, "{reset:?}");
        assert_eq!(reset[0].event(), "feed.reset");
        let horizon = reset[0].json()["horizon"].as_u64().expect("horizon");
        assert!(horizon > cursor, "{reset:?}");
        let listing = admin.get("/v1/admin/intents").await;
        assert_eq!(
            ids(listing.assert_ok(200)).len(),
            4,
            "the reload lists everything"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_overview_and_the_status_stream_answer_admins() {
    within(Duration::from_secs(60), async {
        let server = Server::start().await;
        let admin = server.admin();
        let overview = admin.get("/v1/admin/webhooks").await;
        let body = overview.assert_ok(200);
        assert_eq!(body["subscriptions"], json!([]));
        assert_eq!(body["truncated"], json!(false));

        let mut status = SseStream::open_ok(
            &admin,
            "/v1/admin/console/stream?interval_seconds=1&wait_seconds=3",
            &[],
        )
        .await;
        let frame = status.next(FRAME).await.expect("a status frame");
        assert_eq!(frame.event(), "status");
        let data = frame.json();
        assert_eq!(data["node"]["role"], json!("leader"), "{data}");
        assert!(data["membership"]["voters"].is_array(), "{data}");
        assert!(
            data["metrics"]
                .as_str()
                .unwrap()
                .contains("intentd_raft_applied_index"),
            "{data}"
        );
        let rest = status.rest(FRAME).await;
        assert_eq!(
            rest.last().map(|f| f.event().to_string()),
            Some("stream.timeout".into()),
            "{rest:?}"
        );
    })
    .await;
}

/// Under concurrent creates the proposer coalesces many commands into one log entry; the
/// feed still carries every event of every intent, in log order, each entry whole (its
/// index is the `id` of its last frame only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_carries_every_event_of_coalesced_entries() {
    within(Duration::from_secs(120), async {
        let server = Server::start().await;
        let admin = server.admin();
        let cursor = admin.get("/v1/admin/intents?limit=1").await.assert_ok(200)["cursor"]
            .as_u64()
            .expect("cursor");
        let mut feed = SseStream::open_ok(
            &admin,
            &format!("/v1/admin/intents/stream?since={cursor}&wait_seconds=30"),
            &[],
        )
        .await;
        const N: usize = 400;
        let creates = (0..N).map(|_| {
            let admin = admin.clone();
            async move { admin.create_ok(&intent_body(PAYMENTS)).await }
        });
        let created: std::collections::BTreeSet<String> = futures::stream::iter(creates)
            .buffer_unordered(32)
            .collect()
            .await;
        let mut submitted = std::collections::BTreeSet::new();
        let mut last_cursor = cursor;
        let mut frames_per_id = std::collections::BTreeMap::<u64, usize>::new();
        while submitted.len() < N {
            let frame = feed.next(FRAME).await.expect("the feed stayed open");
            let data = frame.json();
            let at = data["cursor"].as_u64().expect("cursor");
            assert!(at >= last_cursor, "log order: {at} after {last_cursor}");
            *frames_per_id.entry(at).or_default() += 1;
            if let Some(id) = &frame.id {
                assert_eq!(id.parse::<u64>().unwrap(), at, "an id is its entry's index");
                last_cursor = at;
            }
            if data["event"]["event_type"] == "intent.submitted" {
                submitted.insert(data["intent"]["intent_id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(
            submitted, created,
            "every created intent came through the feed"
        );
        assert!(
            frames_per_id.values().any(|&n| n > 2),
            "some entry carried several creates: {frames_per_id:?}"
        );
    })
    .await;
}
