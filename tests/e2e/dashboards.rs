//! The Grafana dashboard in `deploy/grafana/intentd.json` is valid JSON and queries only
//! metrics the server exports: a renamed metric breaks this test, not a dashboard in the dark.

use std::time::Duration;

use serde_json::Value;

use crate::support::{within, Server};

/// Every `intentd_*` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("intentd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    within(Duration::from_secs(60), async {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/intentd.json"
        );
        let text = std::fs::read_to_string(path).expect("read the dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
        assert!(dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()));
        let mut exprs = Vec::new();
        queries(&dashboard, &mut exprs);
        let used: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            used.len() >= 10,
            "the dashboard queries too little: {used:?}"
        );

        let server = Server::start().await;
        let metrics = reqwest::get(format!("{}/metrics", server.base_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        // A histogram's series are its name plus _bucket/_count/_sum, declared by `# TYPE`.
        let declared: Vec<String> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        for name in &used {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                declared.iter().any(|d| d == name || d == base),
                "the dashboard queries {name}, which /metrics does not export"
            );
        }
    })
    .await;
}
