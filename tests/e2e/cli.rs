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
