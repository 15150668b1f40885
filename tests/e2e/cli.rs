//! The client subcommands talk to a running server through INTENTD_SERVER/INTENTD_API_KEY.

use std::time::Duration;

use crate::support::{intent_body, within, Server, PAYMENTS};

/// Runs `intentd ARGS` against `server`, bounded in time; returns (success, stdout, stderr).
async fn run_cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intentd"))
        .args(args)
        .env("INTENTD_SERVER", server.base_url())
        .env("INTENTD_API_KEY", &server.admin_key)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .unwrap_or_else(|_| panic!("`intentd {}` did not finish in 30s", args.join(" ")))
        .expect("run intentd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn client_subcommands_send_get_events_and_create_keys() {
    within(Duration::from_secs(90), async {
        let server = Server::start().await;
        let id = server.admin().create_ok(&intent_body(PAYMENTS)).await;

        let (ok, out, err) = run_cli(&server, &["intents", "get", &id]).await;
        assert!(ok, "intents get failed: {err}");
        assert!(out.contains(&id), "intents get output lacks the id: {out}");
        assert!(
            out.contains("SUBMITTED"),
            "intents get output lacks the status: {out}"
        );

        let (ok, out, err) = run_cli(&server, &["intents", "events", &id]).await;
        assert!(ok, "intents events failed: {err}");
        assert!(
            out.contains("intent.created") && out.contains("intent.submitted"),
            "{out}"
        );

        let (ok, out, err) = run_cli(
            &server,
            &[
                "intents",
                "send",
                "--to",
                PAYMENTS,
                "--type",
                "payment.refund.v1",
                "--payload",
                r#"{"amount_cents": 5}"#,
            ],
        )
        .await;
        assert!(ok, "intents send failed: {err}");
        let sent = first_uuid(&out).unwrap_or_else(|| panic!("no intent id in: {out}"));
        let intent = server.admin().intent(&sent).await;
        assert_eq!(
            intent["intent_type"],
            serde_json::json!("payment.refund.v1")
        );
        assert_eq!(intent["payload"], serde_json::json!({"amount_cents": 5}));

        let (ok, _, err) = run_cli(
            &server,
            &[
                "keys",
                "create",
                "--name",
                "cli-agent",
                "--role",
                "agent",
                "--address",
                PAYMENTS,
            ],
        )
        .await;
        assert!(ok, "keys create failed: {err}");
        let keys = server.admin().get("/v1/admin/keys").await;
        keys.assert_ok(200);
        assert!(keys.text.contains("cli-agent"), "{}", keys.text);

        let missing = uuid::Uuid::new_v4().to_string();
        let (ok, _, _) = run_cli(&server, &["intents", "get", &missing]).await;
        assert!(!ok, "intents get of an unknown id exited 0");
    })
    .await
}

/// The first UUID in `text`, wherever it stands (plain or inside JSON).
fn first_uuid(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|t| t.len() == 36 && uuid::Uuid::parse_str(t).is_ok())
        .map(str::to_string)
}

/// `intentd scenarios apply FILE --watch` applies a bundle and follows its intent until the
/// workflow ends; a bundle whose steps form a cycle is refused with the reason.
#[tokio::test]
async fn scenarios_apply_watches_the_workflow_to_its_end() {
    within(Duration::from_secs(90), async {
        let server = Server::start().await;
        let dir = server.data_dir().join("bundles");
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = serde_json::json!({
            "scenario_id": "cli.timer.v1",
            "agents": [{"role": "ops", "address": "agent://acme/prod/ops", "delivery_mode": "poll"}],
            "workflow": {"steps": [
                {"step_id": "wait", "runtime_type": "delay", "runtime_config": {"seconds": 1}},
                {"step_id": "tell", "runtime_type": "notification",
                 "runtime_config": {"message": "done waiting"}},
            ]},
            "intent": {"type": "ops.timer.v1"},
        });
        let file = dir.join("timer.json");
        std::fs::write(&file, bundle.to_string()).unwrap();
        let (ok, out, err) = run_cli(
            &server,
            &["scenarios", "apply", file.to_str().unwrap(), "--watch"],
        )
        .await;
        assert!(ok, "scenarios apply failed: {err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines[0]["workflow"]["current_step"], "wait", "{out}");
        let last = lines.last().unwrap();
        assert_eq!(last["event_type"], "intent.completed", "{out}");
        let walked: Vec<(&str, &str)> = lines[1..]
            .iter()
            .filter(|e| e["event_type"].as_str().unwrap().starts_with("workflow."))
            .map(|e| {
                (
                    e["event_type"].as_str().unwrap(),
                    e["details"]["step_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            walked,
            [
                ("workflow.step_started", "wait"),
                ("workflow.step_succeeded", "wait"),
                ("workflow.step_started", "tell"),
                ("workflow.step_succeeded", "tell"),
            ],
            "{out}"
        );

        let mut cyclic = bundle.clone();
        cyclic["workflow"]["steps"][0]["on_success"] = serde_json::json!("tell");
        cyclic["workflow"]["steps"][1]["on_success"] = serde_json::json!("wait");
        let file = dir.join("cyclic.json");
        std::fs::write(&file, cyclic.to_string()).unwrap();
        let (ok, _, err) = run_cli(&server, &["scenarios", "apply", file.to_str().unwrap()]).await;
        assert!(!ok, "a cyclic bundle was applied");
        assert!(err.contains("422") && err.contains("cycle: wait -> tell -> wait"), "{err}");
    })
    .await
}
