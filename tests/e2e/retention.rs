//! Retention on a three-node cluster started with `--retain-terminal-for 3s`: an intent that
//! ended is purged by the leader's engine through a replicated command, after which every
//! node answers 404 for it and its events, its idempotency key is free again (a repeat
//! creates a new intent), an intent still open is untouched, and `/metrics` shows the record
//! counts and the data directory's size.

use std::time::Duration;

use serde_json::json;

use crate::support::cluster::{Cluster, ClusterOptions};
use crate::support::{eventually, intent_body, within, PAYMENTS};

/// The value of the series `name` (with its labels, as written) in Prometheus text.
fn series(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_intent_is_purged_on_every_node_and_its_key_is_free_again() {
    within(Duration::from_secs(180), async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                extra_args: vec!["--retain-terminal-for".into(), "3s".into()],
                ..ClusterOptions::default()
            },
        )
        .await;
        let api = cluster.api(1);
        let body = intent_body(PAYMENTS);
        let created = api.create(&body, Some("retention-order-1")).await;
        created.assert_ok(200);
        let ended = created.body["intent_id"].as_str().unwrap().to_string();
        let open = api.create_ok(&intent_body(PAYMENTS)).await;
        api.post(
            &format!("/v1/intents/{ended}/resolve"),
            &json!({"status": "COMPLETED", "result": {"ok": true}}),
        )
        .await
        .assert_ok(200);
        // Until the purge, the key answers with the ended intent.
        let repeat = api.create(&body, Some("retention-order-1")).await;
        assert_eq!(repeat.assert_ok(200)["intent_id"], json!(ended));

        for node in [1, 2, 3] {
            let api = cluster.api(node);
            let path = format!("/v1/intents/{ended}");
            eventually(
                Duration::from_secs(60),
                &format!("the purge of {ended} to reach node {node}"),
                || {
                    let api = api.clone();
                    let path = path.clone();
                    async move { (api.get(&path).await.status == 404).then_some(()) }
                },
            )
            .await;
            api.get(&format!("{path}/events"))
                .await
                .assert_error(404, "not_found");
            // The open intent is kept: retention only ever takes ended ones.
            let still = api.intent(&open).await;
            assert_eq!(still["intent_id"], json!(open));
            assert!(
                !["COMPLETED", "FAILED", "CANCELED", "TIMED_OUT"]
                    .contains(&still["status"].as_str().unwrap_or_default()),
                "{still}"
            );
        }

        // The purge took the idempotency claim with the intent: the same key and body now
        // create a new intent (documented in the README).
        let again = api.create(&body, Some("retention-order-1")).await;
        let fresh = again.assert_ok(200)["intent_id"].clone();
        assert_ne!(fresh, json!(ended));
        assert_eq!(
            api.intent(fresh.as_str().unwrap()).await["intent_id"],
            fresh
        );

        // Every node counts what it holds: the open intent and the new one, each with its
        // events, and the new claim; and the size of its data directory.
        for node in [1, 2, 3] {
            let api = cluster.api(node);
            let text = api.get("/metrics").await.text;
            let settled = eventually(
                Duration::from_secs(30),
                &format!("node {node}'s record counts"),
                || {
                    let api = api.clone();
                    async move {
                        let text = api.get("/metrics").await.text;
                        (series(&text, "intentd_records{kind=\"intents\"}") == Some(2)
                            && series(&text, "intentd_records{kind=\"idempotency_records\"}")
                                == Some(1))
                        .then_some(text)
                    }
                },
            )
            .await;
            assert!(series(&settled, "intentd_records{kind=\"events\"}").unwrap() >= 4);
            assert_eq!(
                series(&settled, "intentd_records{kind=\"dead_letters\"}"),
                Some(0)
            );
            assert!(
                series(&text, "intentd_data_dir_bytes").unwrap() > 0,
                "{text}"
            );
        }
        // One purge, by whichever engine led (a purge is never proposed twice successfully).
        let mut purged = 0;
        for node in [1, 2, 3] {
            let text = cluster.api(node).get("/metrics").await.text;
            purged += series(&text, "intentd_purged_intents_total").unwrap_or(0);
        }
        assert_eq!(purged, 1);
    })
    .await;
}
