//! The public gRPC API against the real binary: the same operations, rules and errors as the
//! HTTP API, shared state between the two edges, streams, health and reflection.

use std::time::Duration;

use futures::StreamExt as _;
use intentd_grpc_api::proto::cluster_service_client::ClusterServiceClient;
use intentd_grpc_api::proto::intent_service_client::IntentServiceClient;
use intentd_grpc_api::proto::resume_intent_request::{Action, Complete, Progress};
use intentd_grpc_api::proto::status_response::Role;
use intentd_grpc_api::proto::{
    self, AckRequest, GetIntentRequest, ListEventsRequest, ListenRequest, ResolveIntentRequest,
    ResumeIntentRequest, SendIntentRequest, StatusRequest, WatchEventsRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{within, Server, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);
/// How long one streamed item may take to arrive.
const ITEM: Duration = Duration::from_secs(10);

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("grpc uri")
        .connect()
        .await
        .expect("connect to the grpc port")
}

async fn intents(server: &Server) -> IntentServiceClient<Channel> {
    IntentServiceClient::new(channel(server).await)
}

/// A request carrying `x-api-key`.
fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().expect("ascii key"));
    request
}

/// A request carrying `authorization: Bearer`.
fn bearer<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    request
}

fn send_request(to_agent: &str, payload: Value) -> SendIntentRequest {
    SendIntentRequest {
        intent_type: "payment.charge.v1".into(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        to_agent: to_agent.into(),
        payload_json: payload.to_string(),
        ..Default::default()
    }
}

#[track_caller]
fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, error_code: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    let got = status
        .metadata()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok());
    assert_eq!(got, Some(error_code), "{status:?}");
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(ITEM, stream.next())
        .await
        .expect("a streamed item in time")
        .expect("the stream to go on")
        .expect("an item, not an error")
}

fn status_of(intent: &Option<proto::Intent>) -> proto::Status {
    intent.as_ref().expect("an intent").status()
}

#[tokio::test]
async fn send_watch_listen_ack_resume_over_grpc() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = &server.admin_key;
        let (agent_key, _) = server
            .admin()
            .create_key("payments-agent", "agent", Some(PAYMENTS))
            .await;
        let mut client = intents(&server).await;

        let sent = client
            .send_intent(keyed(
                send_request(PAYMENTS, json!({"amount_cents": 4200})),
                admin,
            ))
            .await
            .expect("send")
            .into_inner();
        assert_eq!(sent.status(), proto::Status::Submitted);
        assert!(!sent.replayed);
        let id = sent.intent_id.clone();

        let got = client
            .get_intent(keyed(
                GetIntentRequest {
                    intent_id: id.clone(),
                },
                admin,
            ))
            .await
            .expect("get")
            .into_inner();
        let intent = got.intent.expect("intent");
        assert_eq!(intent.to_agent, PAYMENTS);
        assert_eq!(
            serde_json::from_str::<Value>(&intent.payload_json).unwrap(),
            json!({"amount_cents": 4200})
        );
        assert_eq!(intent.from_agent, "agent://intentd/keys/admin");

        let mut watch = client
            .watch_events(keyed(
                WatchEventsRequest {
                    intent_id: id.clone(),
                    since: 0,
                    idle_timeout_seconds: Some(30),
                },
                admin,
            ))
            .await
            .expect("watch")
            .into_inner();
        let first = next(&mut watch).await;
        assert_eq!(
            (first.seq, first.event_type.as_str()),
            (1, "intent.created")
        );
        let second = next(&mut watch).await;
        assert_eq!((second.seq, second.status()), (2, proto::Status::Submitted));

        // The agent listens with a bearer token; the delivery itself moves the intent on.
        let mut listen = client
            .listen(bearer(
                ListenRequest {
                    address: PAYMENTS.into(),
                    since: 0,
                    statuses: Vec::new(),
                    idle_timeout_seconds: Some(30),
                },
                &agent_key,
            ))
            .await
            .expect("listen")
            .into_inner();
        let delivery = next(&mut listen).await;
        assert!(delivery.cursor >= 1);
        let delivered = delivery.intent.expect("delivered intent");
        assert_eq!(delivered.intent_id, id);
        assert_eq!(delivered.status(), proto::Status::Delivered);
        assert_eq!(delivered.delivery_attempt, 1);
        let third = next(&mut watch).await;
        assert_eq!(third.event_type, "intent.delivered");

        // An ack names the attempt it acknowledges; an old one is a lost compare-and-set.
        assert_status(
            client
                .ack(keyed(
                    AckRequest {
                        intent_id: id.clone(),
                        delivery_attempt: 0,
                    },
                    &agent_key,
                ))
                .await,
            Code::Aborted,
            "stale_attempt",
        );
        let acked = client
            .ack(keyed(
                AckRequest {
                    intent_id: id.clone(),
                    delivery_attempt: 1,
                },
                &agent_key,
            ))
            .await
            .expect("ack")
            .into_inner();
        assert_eq!(status_of(&acked.intent), proto::Status::Acknowledged);
        let fourth = next(&mut watch).await;
        assert_eq!(fourth.event_type, "intent.acknowledged");
        assert_eq!(fourth.actor, PAYMENTS);

        let resumed = client
            .resume_intent(keyed(
                ResumeIntentRequest {
                    intent_id: id.clone(),
                    action: Some(Action::Complete(Complete {
                        result_json: json!({"charge_id": "ch_1"}).to_string(),
                    })),
                    ..Default::default()
                },
                &agent_key,
            ))
            .await
            .expect("resume")
            .into_inner();
        assert!(resumed.applied);
        assert_eq!(status_of(&resumed.intent), proto::Status::Completed);

        let in_progress = next(&mut watch).await;
        assert_eq!(in_progress.event_type, "intent.in_progress");
        let terminal = next(&mut watch).await;
        assert_eq!(terminal.event_type, "intent.completed");
        assert_eq!(terminal.seq, 6);
        // The watch ends right after the terminal event, long before its idle limit.
        let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch ends after the terminal event");
        assert!(end.is_none(), "more after the terminal event: {end:?}");

        // The HTTP edge sees the same intent, result and gapless log.
        let http = server.admin().intent(&id).await;
        assert_eq!(http["status"], "COMPLETED");
        assert_eq!(http["result"], json!({"charge_id": "ch_1"}));
        let listed = client
            .list_events(keyed(
                ListEventsRequest {
                    intent_id: id.clone(),
                    since: 2,
                    limit: None,
                },
                admin,
            ))
            .await
            .expect("list events")
            .into_inner()
            .events;
        let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);

        // A terminal intent with nothing after `since` ends the watch at once.
        let mut late = client
            .watch_events(keyed(
                WatchEventsRequest {
                    intent_id: id.clone(),
                    since: 6,
                    idle_timeout_seconds: None,
                },
                admin,
            ))
            .await
            .expect("late watch")
            .into_inner();
        let end = tokio::time::timeout(ITEM, late.next())
            .await
            .expect("a terminal intent's watch ends");
        assert!(end.is_none(), "{end:?}");

        let status = ClusterServiceClient::new(channel(&server).await)
            .status(StatusRequest {})
            .await
            .expect("cluster status")
            .into_inner();
        assert_eq!(status.node_id, 1);
        assert_eq!(status.role(), Role::Leader);
        assert_eq!(status.leader_id, Some(1));
        assert!(status.term >= 1 && status.applied_index >= 1, "{status:?}");
        assert_eq!(status.members, [1]);
    })
    .await
}

#[tokio::test]
async fn grpc_refuses_what_http_refuses() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = &server.admin_key;
        let (other_agent, _) = server
            .admin()
            .create_key("other-agent", "agent", Some("agent://acme/prod/other"))
            .await;
        let mut client = intents(&server).await;
        let request = || send_request(PAYMENTS, json!({"amount_cents": 1}));

        let no_key = client.send_intent(Request::new(request())).await;
        assert_status(no_key, Code::Unauthenticated, "auth_failed");
        let unknown = client.send_intent(keyed(request(), "not-a-key")).await;
        assert_status(unknown, Code::Unauthenticated, "auth_failed");

        let mut bad_type = request();
        bad_type.intent_type = "Payment".into();
        assert_status(
            client.send_intent(keyed(bad_type, admin)).await,
            Code::InvalidArgument,
            "schema_invalid",
        );
        let mut bad_json = request();
        bad_json.payload_json = "{".into();
        assert_status(
            client.send_intent(keyed(bad_json, admin)).await,
            Code::InvalidArgument,
            "invalid_request",
        );
        let mut list_payload = request();
        list_payload.payload_json = "[1]".into();
        assert_status(
            client.send_intent(keyed(list_payload, admin)).await,
            Code::InvalidArgument,
            "schema_invalid",
        );
        assert_status(
            client
                .get_intent(keyed(
                    GetIntentRequest {
                        intent_id: "nope".into(),
                    },
                    admin,
                ))
                .await,
            Code::InvalidArgument,
            "schema_invalid",
        );
        assert_status(
            client
                .get_intent(keyed(
                    GetIntentRequest {
                        intent_id: uuid::Uuid::new_v4().to_string(),
                    },
                    admin,
                ))
                .await,
            Code::NotFound,
            "not_found",
        );

        let id = client
            .send_intent(keyed(request(), admin))
            .await
            .expect("send")
            .into_inner()
            .intent_id;
        // An agent key acts only on its own address.
        assert_status(
            client
                .resume_intent(keyed(
                    ResumeIntentRequest {
                        intent_id: id.clone(),
                        action: Some(Action::Progress(Progress::default())),
                        ..Default::default()
                    },
                    &other_agent,
                ))
                .await,
            Code::PermissionDenied,
            "forbidden",
        );
        assert_status(
            client
                .listen(keyed(
                    ListenRequest {
                        address: PAYMENTS.into(),
                        ..Default::default()
                    },
                    &other_agent,
                ))
                .await,
            Code::PermissionDenied,
            "forbidden",
        );
        // Resolve's if/then rules, then the terminal rule.
        assert_status(
            client
                .resolve_intent(keyed(
                    ResolveIntentRequest {
                        intent_id: id.clone(),
                        status: proto::Status::Completed.into(),
                        ..Default::default()
                    },
                    admin,
                ))
                .await,
            Code::InvalidArgument,
            "schema_invalid",
        );
        let resolved = client
            .resolve_intent(keyed(
                ResolveIntentRequest {
                    intent_id: id.clone(),
                    status: proto::Status::Canceled.into(),
                    reason: Some("duplicate order".into()),
                    ..Default::default()
                },
                admin,
            ))
            .await
            .expect("cancel")
            .into_inner();
        assert_eq!(
            resolved.event.expect("terminal event").event_type,
            "intent.canceled"
        );
        assert_eq!(
            resolved.completion_delivery.expect("completion").reason,
            Some("no_reply_to".into())
        );
        assert_status(
            client
                .resolve_intent(keyed(
                    ResolveIntentRequest {
                        intent_id: id.clone(),
                        status: proto::Status::Failed.into(),
                        error_json: Some(json!({"code": "late"}).to_string()),
                        ..Default::default()
                    },
                    admin,
                ))
                .await,
            Code::FailedPrecondition,
            "intent_terminal",
        );
        // The same refusal over HTTP.
        server
            .admin()
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "FAILED", "error": {"code": "late"}}),
            )
            .await
            .assert_error(409, "intent_terminal");
    })
    .await
}

#[tokio::test]
async fn one_idempotency_key_means_one_intent_on_both_edges() {
    within(LIMIT, async {
        let server = Server::start().await;
        let admin = &server.admin_key;
        let mut client = intents(&server).await;
        let body = json!({
            "intent_type": "payment.charge.v1",
            "correlation_id": uuid::Uuid::new_v4().to_string(),
            "to_agent": PAYMENTS,
            "payload": {"amount_cents": 1250, "currency": "EUR"},
            "max_delivery_attempts": 3,
        });
        let http = server.admin().create(&body, Some("order-7")).await;
        http.assert_ok(200);
        let http_id = http.body["intent_id"].as_str().unwrap().to_string();

        // The same request over gRPC, its payload written with other key order and spacing.
        let same = SendIntentRequest {
            intent_type: "payment.charge.v1".into(),
            correlation_id: body["correlation_id"].as_str().unwrap().into(),
            to_agent: PAYMENTS.into(),
            payload_json: r#"{ "currency": "EUR", "amount_cents": 1250 }"#.into(),
            max_delivery_attempts: Some(3),
            idempotency_key: Some("order-7".into()),
            ..Default::default()
        };
        let replay = client
            .send_intent(keyed(same.clone(), admin))
            .await
            .expect("replayed send")
            .into_inner();
        assert_eq!(replay.intent_id, http_id);
        assert!(replay.replayed);

        let mut changed = same;
        changed.payload_json = json!({"amount_cents": 9999, "currency": "EUR"}).to_string();
        assert_status(
            client.send_intent(keyed(changed, admin)).await,
            Code::AlreadyExists,
            "idempotency_conflict",
        );
    })
    .await
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    within(LIMIT, async {
        let server = Server::start().await;
        let channel = channel(&server).await;
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "intentd.v1.IntentService"] {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
        }

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let answer = next(&mut answers).await;
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for wanted in [
            "intentd.v1.IntentService",
            "intentd.v1.ClusterService",
            "grpc.health.v1.Health",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_ends_the_server_while_a_listen_stream_is_open() {
    within(LIMIT, async {
        let mut server = Server::start().await;
        let mut client = intents(&server).await;
        // No idle limit: only the server's shutdown can end this stream.
        let mut listen = client
            .listen(keyed(
                ListenRequest {
                    address: PAYMENTS.into(),
                    ..Default::default()
                },
                &server.admin_key,
            ))
            .await
            .expect("listen")
            .into_inner();
        let status = server.stop().await;
        assert!(status.success(), "intentd exited with {status}");
        let end = tokio::time::timeout(ITEM, listen.next())
            .await
            .expect("the stream ends with the server");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    })
    .await
}
