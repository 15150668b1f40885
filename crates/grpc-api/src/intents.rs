//! `intentd.v1.IntentService`: each call authenticates, converts, checks the shared rules and
//! runs the shared operation, in the same order as its HTTP route, so both edges refuse the
//! same requests for the same reasons.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use intentd_consensus::Cluster;
use intentd_lifecycle::validate::{self, ValidationError};
use intentd_lifecycle::{ApiKey, IdempotencyClaim, Intent, IntentCommand, ResumeAction, Timestamp};
use intentd_operations::intents::{
    decide_new, load_intent, now, terminal_event, write_intent, Written,
};
use intentd_operations::Change;
use intentd_operations::{
    agent_deliveries, intent_events, Delivery, StatusFilter, StreamOptions, Watch,
};
use prost::Message as _;
use serde_json::{json, Map, Value};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::proto::intent_service_server::IntentService;
use crate::proto::resume_intent_request::Action;
use crate::{auth, convert, proto, GrpcConfig, GrpcError};

/// The name health checks use for this service.
pub(crate) const SERVICE_NAME: &str = "intentd.v1.IntentService";

pub(crate) struct IntentApi {
    /// Writes go through Raft; reads come from the local replica of the state machine.
    cluster: Cluster,
    config: Arc<GrpcConfig>,
}

type Reply<T> = Result<Response<T>, Status>;
type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Every call ends here: the one conversion of its error into a `Status`.
fn reply<T>(result: Result<T, GrpcError>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

fn idle(seconds: Option<u32>) -> Option<Duration> {
    seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(u64::from(s)))
}

fn intent_id(raw: &str) -> Result<Uuid, ValidationError> {
    validate::uuid_field("intent_id", raw)
}

impl IntentApi {
    pub(crate) fn new(cluster: Cluster, config: Arc<GrpcConfig>) -> Self {
        IntentApi { cluster, config }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<ApiKey, GrpcError> {
        auth::caller(&self.cluster, request.metadata()).await
    }

    /// The claim of a create's idempotency key (`intentd_operations::claim`), the key checked
    /// by the rule HTTP's header follows.
    fn claim(
        &self,
        scope: String,
        key: Option<&str>,
        request: &Value,
        at: Timestamp,
    ) -> Result<Option<IdempotencyClaim>, GrpcError> {
        let key = idempotency_key(key)?;
        Ok(intentd_operations::claim(
            scope,
            key,
            request,
            at,
            self.config.idempotency_ttl,
        ))
    }

    /// The claim of a change's idempotency key, in the change's scope.
    fn change_claim(
        &self,
        change: &Change<'_>,
        key: Option<&str>,
        request: &Value,
    ) -> Result<Option<IdempotencyClaim>, GrpcError> {
        let key = idempotency_key(key)?;
        Ok(change.claim(key, request, self.config.idempotency_ttl))
    }

    async fn send(
        &self,
        request: Request<proto::SendIntentRequest>,
    ) -> Result<proto::SendIntentResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        if req.encoded_len() > self.config.max_intent_bytes {
            return Err(GrpcError::TooLarge(format!(
                "the request is larger than the {} bytes SendIntent accepts",
                self.config.max_intent_bytes
            )));
        }
        let key = req.idempotency_key.clone();
        let intent_request = convert::intent_request(req)?;
        // The same JSON an HTTP client would send for this request: one idempotency key
        // means one request on both edges.
        let body = intent_request.to_json();
        let at = now();
        let decided = decide_new(
            &self.cluster,
            &caller,
            &intent_request,
            self.config.default_max_delivery_attempts,
        )?;
        let intent = validate::new_intent(intent_request, decided)?;
        let claim = self.claim(caller.principal(), key.as_deref(), &body, at)?;
        let written =
            write_intent(&self.cluster, IntentCommand::Create { intent, at }, claim).await?;
        let intent = &written.intent;
        tracing::info!(intent_id = %intent.id, replayed = written.replayed, "intent created over grpc");
        Ok(proto::SendIntentResponse {
            intent_id: intent.id.to_string(),
            status: convert::status(intent.status).into(),
            created_at: Some(convert::timestamp(&intent.created_at)),
            replayed: written.replayed,
        })
    }

    async fn get(
        &self,
        request: Request<proto::GetIntentRequest>,
    ) -> Result<proto::GetIntentResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let id = intent_id(&request.get_ref().intent_id)?;
        let intent = load_intent(&self.cluster, id, true).await?;
        caller.require_observer_of(&intent)?;
        Ok(proto::GetIntentResponse {
            intent: Some(convert::intent(&intent)),
        })
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<proto::ListEventsResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let id = intent_id(&req.intent_id)?;
        // Linearizable like GetIntent, so the log is never behind a status already seen.
        let intent = load_intent(&self.cluster, id, true).await?;
        caller.require_observer_of(&intent)?;
        let max = self.config.max_events_per_page;
        let limit = req.limit.map_or(max, |l| l as usize).clamp(1, max);
        let events = self.cluster.reader().events(&id, req.since, limit)?;
        Ok(proto::ListEventsResponse {
            events: events.iter().map(convert::event).collect(),
        })
    }

    async fn watch(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Streamed<proto::Event>, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let id = intent_id(&req.intent_id)?;
        let intent = load_intent(&self.cluster, id, false).await?;
        caller.require_observer_of(&intent)?;
        let options = StreamOptions {
            idle: idle(req.idle_timeout_seconds),
            batch: self.config.stream_batch,
            default_ack_timeout_secs: self.config.default_ack_timeout_secs,
        };
        let events = intent_events(self.cluster.clone(), id, req.since, options);
        // Quiet is the stream's last item: ending the call with OK says the same thing.
        Ok(Box::pin(events.filter_map(|item| async move {
            match item {
                Ok(Watch::Next(event)) => Some(Ok(convert::event(&event))),
                Ok(Watch::Quiet { .. }) => None,
                Err(e) => Some(Err(Status::from(GrpcError::from(e)))),
            }
        })))
    }

    async fn resolve(
        &self,
        request: Request<proto::ResolveIntentRequest>,
    ) -> Result<proto::ResolveIntentResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let id = intent_id(&req.intent_id)?;
        let status = match convert::lifecycle_status(req.status) {
            Some(s) => s.as_str().to_string(),
            None => return Err(ValidationError::Rule("status is required".into()).into()),
        };
        let object = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| convert::json_object(name, t))
                .transpose()
        };
        let result = object("result_json", &req.result_json)?;
        let error = object("error_json", &req.error_json)?;
        if let Some(a) = &req.actor {
            validate::actor(a)?;
        }
        // The JSON body HTTP would get for this request, for the idempotency hash.
        let mut body = Map::new();
        body.insert("status".into(), json!(status));
        for (k, v) in [
            ("result", result.clone().map(Value::Object)),
            ("error", error.clone().map(Value::Object)),
            ("reason", req.reason.clone().map(Value::from)),
            ("actor", req.actor.clone().map(Value::from)),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), v);
            }
        }
        let resolution = validate::resolution(&status, result, error, req.reason)?;
        let change = Change::begin(&self.cluster, &caller, "resolve", id, |intent| {
            caller.require_resolver_of(intent)
        })
        .await?;
        let claim = self.change_claim(
            &change,
            req.idempotency_key.as_deref(),
            &Value::Object(body),
        )?;
        let command = IntentCommand::Resolve {
            intent_id: id,
            resolution,
            actor: caller.acting_as(req.actor.as_deref()),
            at: change.at,
        };
        let written = change.propose(command, claim).await?;
        let event = terminal_event(&self.cluster, &written).await?;
        let intent = &written.intent;
        tracing::info!(intent_id = %id, status = %intent.status, replayed = written.replayed, "intent resolved over grpc");
        Ok(proto::ResolveIntentResponse {
            intent: Some(convert::intent(intent)),
            event: Some(convert::event(&event)),
            completion_delivery: Some(completion_delivery(intent)),
        })
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeIntentRequest>,
    ) -> Result<proto::ResumeIntentResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let id = intent_id(&req.intent_id)?;
        let action = resume_action(req.action)?;
        if let Some(a) = &req.actor {
            validate::actor(a)?;
        }
        let change = Change::begin(&self.cluster, &caller, "resume", id, |intent| {
            caller.require_resumer_of(intent, &action)
        })
        .await?;
        let body = json!({ "action": action_json(&action)?, "actor": req.actor });
        let claim = self.change_claim(&change, req.idempotency_key.as_deref(), &body)?;
        let command = IntentCommand::Resume {
            intent_id: id,
            action,
            actor: caller.acting_as(req.actor.as_deref()),
            at: change.at,
        };
        let written = change.propose(command, claim).await?;
        tracing::info!(intent_id = %id, status = %written.intent.status, replayed = written.replayed, "intent resumed over grpc");
        Ok(applied(&written))
    }

    async fn listen(
        &self,
        request: Request<proto::ListenRequest>,
    ) -> Result<Streamed<proto::Delivery>, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let address = validate::listen_address(&req.address)?.path().to_string();
        caller.require_listener_on(&address)?;
        let statuses = req
            .statuses
            .iter()
            .map(|raw| {
                convert::lifecycle_status(*raw).ok_or_else(|| {
                    ValidationError::Malformed(format!("unknown status {raw} in statuses"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = StreamOptions {
            idle: idle(req.idle_timeout_seconds),
            batch: self.config.stream_batch,
            default_ack_timeout_secs: self.config.default_ack_timeout_secs,
        };
        let consumer = format!("grpc:{}", Uuid::new_v4());
        tracing::info!(agent = %address, since = req.since, %consumer, "agent stream opened over grpc");
        let deliveries = agent_deliveries(
            self.cluster.clone(),
            self.config.stream_consumers.clone(),
            address,
            req.since,
            StatusFilter::of(statuses),
            consumer,
            options,
        );
        Ok(Box::pin(deliveries.filter_map(|item| async move {
            match item {
                Ok(Watch::Next(Delivery { cursor, intent })) => Some(Ok(proto::Delivery {
                    cursor,
                    intent: Some(convert::intent(&intent)),
                })),
                Ok(Watch::Quiet { .. }) => None,
                Err(e) => Some(Err(Status::from(GrpcError::from(e)))),
            }
        })))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<proto::AckResponse, GrpcError> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let id = intent_id(&req.intent_id)?;
        let change = Change::begin(&self.cluster, &caller, "ack", id, |intent| {
            caller.require_receiver_of(intent)
        })
        .await?;
        let command = IntentCommand::Acknowledge {
            intent_id: id,
            attempt: req.delivery_attempt,
            actor: caller.principal(),
            at: change.at,
        };
        let written = change.propose(command, None).await?;
        tracing::info!(intent_id = %id, attempt = req.delivery_attempt, "delivery acknowledged over grpc");
        Ok(proto::AckResponse {
            intent: Some(convert::intent(&written.intent)),
        })
    }
}

/// An idempotency key as sent, checked by the rule HTTP's header follows.
fn idempotency_key(raw: Option<&str>) -> Result<Option<String>, ValidationError> {
    raw.map(validate::idempotency_key).transpose()
}

/// The typed resume forms, checked by the same rules as HTTP's JSON forms.
fn resume_action(action: Option<Action>) -> Result<ResumeAction, ValidationError> {
    let action = action.ok_or_else(|| {
        ValidationError::Rule(
            "one of complete, fail, progress, wait or approve_current_step is required".into(),
        )
    })?;
    Ok(match action {
        Action::Complete(c) => ResumeAction::Complete {
            result: Value::Object(convert::json_object("result_json", &c.result_json)?),
        },
        Action::Fail(f) => ResumeAction::Fail {
            error: Value::Object(convert::json_object("error_json", &f.error_json)?),
        },
        Action::Progress(p) => ResumeAction::Progress {
            details: convert::json_object("details_json", &p.details_json)?,
        },
        Action::Wait(w) => ResumeAction::Wait {
            reason: validate::waiting_reason(convert::waiting_reason_name(w.reason).as_deref())?,
            details: convert::json_object("details_json", &w.details_json)?,
        },
        Action::ApproveCurrentStep(a) => {
            if let Some(r) = &a.reason {
                validate::reason(r)?;
            }
            ResumeAction::ApproveCurrentStep {
                expected_policy_generation: a.expected_policy_generation,
                reason: a.reason,
            }
        }
    })
}

/// The action as JSON, for the idempotency hash of a resume.
fn action_json(action: &ResumeAction) -> Result<Value, GrpcError> {
    serde_json::to_value(action).map_err(|e| {
        GrpcError::Operation(intentd_operations::OperationsError::Internal(e.to_string()))
    })
}

fn applied(written: &Written) -> proto::ResumeIntentResponse {
    proto::ResumeIntentResponse {
        applied: !written.replayed,
        policy_generation: written.intent.policy_generation,
        intent: Some(convert::intent(&written.intent)),
    }
}

/// Whether the outcome is routed back to a `reply_to` agent, whose inbox thread is the intent.
fn completion_delivery(intent: &Intent) -> proto::CompletionDelivery {
    match &intent.reply_to {
        Some(reply_to) => proto::CompletionDelivery {
            delivered: true,
            reply_to: Some(reply_to.clone()),
            thread_id: Some(intent.id.to_string()),
            reason: None,
        },
        None => proto::CompletionDelivery {
            delivered: false,
            reply_to: None,
            thread_id: None,
            reason: Some("no_reply_to".into()),
        },
    }
}

#[tonic::async_trait]
impl IntentService for IntentApi {
    async fn send_intent(
        &self,
        request: Request<proto::SendIntentRequest>,
    ) -> Reply<proto::SendIntentResponse> {
        reply(self.send(request).await)
    }

    async fn get_intent(
        &self,
        request: Request<proto::GetIntentRequest>,
    ) -> Reply<proto::GetIntentResponse> {
        reply(self.get(request).await)
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Reply<proto::ListEventsResponse> {
        reply(IntentApi::list_events(self, request).await)
    }

    type WatchEventsStream = Streamed<proto::Event>;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        reply(self.watch(request).await)
    }

    async fn resolve_intent(
        &self,
        request: Request<proto::ResolveIntentRequest>,
    ) -> Reply<proto::ResolveIntentResponse> {
        reply(self.resolve(request).await)
    }

    async fn resume_intent(
        &self,
        request: Request<proto::ResumeIntentRequest>,
    ) -> Reply<proto::ResumeIntentResponse> {
        reply(self.resume(request).await)
    }

    type ListenStream = Streamed<proto::Delivery>;

    async fn listen(&self, request: Request<proto::ListenRequest>) -> Reply<Self::ListenStream> {
        reply(IntentApi::listen(self, request).await)
    }

    async fn ack(&self, request: Request<proto::AckRequest>) -> Reply<proto::AckResponse> {
        reply(IntentApi::ack(self, request).await)
    }
}
