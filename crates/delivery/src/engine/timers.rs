//! The due entries that need only a command, no push: lease expiries, releases, deadlines,
//! reminders, workflow ticks and purges, and the retention setting a new leader agrees on.

use chrono::Utc;
use uuid::Uuid;

use intentd_lifecycle::{Binding, Command, IntentCommand, Status};

use super::due_loop::Next;
use super::{Engine, Failure, TRANSIENT_RETRY};

impl Engine {
    /// Makes the state's retention this node's configured one, once per leadership: the
    /// purge times of intents are decided at apply from the replicated setting, so every
    /// replica writes the same ones. Nodes configured differently hand the setting back and
    /// forth as leadership moves; the README asks for one value on every node.
    pub(super) async fn agree_on_retention(&self) {
        let Some(wanted) = self.shared.config.retention else {
            return;
        };
        loop {
            match self.shared.cluster.reader().retention() {
                Ok(current) if current == wanted => return,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "engine: reading the retention"),
            }
            match self
                .write(Command::SetRetention { retention: wanted })
                .await
            {
                Ok(_) => {
                    tracing::info!(?wanted, "retention set");
                    return;
                }
                // Someone set it meanwhile (this node's earlier try that looked lost).
                Err(Failure::Rejected(why)) => {
                    tracing::debug!(%why, "engine: retention not set");
                    return;
                }
                Err(Failure::Transient(why)) => {
                    tracing::warn!(%why, "engine: setting the retention; trying again");
                    tokio::time::sleep(TRANSIENT_RETRY).await;
                }
            }
        }
    }

    /// Purges an ended intent whose retention ran out. Apply checks the purge time against
    /// this command's `at`, so a purge decided on a stale read is refused and changes nothing.
    pub(super) async fn purge(&self, id: Uuid) -> Result<Next, Failure> {
        self.write(Command::Purge {
            intent_id: id,
            at: Utc::now(),
        })
        .await?;
        self.shared.metrics.purged();
        tracing::debug!("purged");
        Ok(Next::Done)
    }

    /// Release, TimeOut, Remind: one command, no push.
    pub(super) async fn simple(&self, command: IntentCommand) -> Result<Next, Failure> {
        let intent = self.write_intent(command).await?;
        if intent.dead_lettered && intent.status == Status::Failed {
            self.shared.metrics.dead_lettered();
        }
        Ok(Next::Done)
    }

    pub(super) async fn expire_lease(&self, id: Uuid) -> Result<Next, Failure> {
        let Some(intent) = self.load(id)? else {
            return Ok(Next::Stale);
        };
        let Some(lease) = intent.lease.clone() else {
            return Ok(Next::Stale);
        };
        let (binding, _) = self.agent_binding(&intent)?;
        let now = Utc::now();
        let retry_at =
            self.shared
                .config
                .backoff
                .retry_at(now, lease.attempt, None, &mut rand::thread_rng());
        let after = self
            .write_intent(IntentCommand::ExpireLease {
                intent_id: id,
                attempt: lease.attempt,
                retry_at,
                at: now,
            })
            .await?;
        let mode = binding.as_ref().map_or("stream", Binding::mode);
        self.shared.metrics.lease_expired();
        self.shared.metrics.delivery(mode, "lease_expired");
        if after.dead_lettered && after.status == Status::Failed {
            self.shared.metrics.dead_lettered();
            self.shared.metrics.delivery(mode, "dead_lettered");
        }
        tracing::info!(attempt = lease.attempt, status = %after.status, "lease expired");
        Ok(Next::Done)
    }

    /// A workflow step's timer or deadline is due: propose the tick for the step and attempt
    /// that are active now. Apply decides what the time means for the step; the tick names
    /// both, so one proposed twice (here, or by the next leader) is refused the second time.
    pub(super) async fn advance_workflow(&self, id: Uuid) -> Result<Next, Failure> {
        let Some(intent) = self.load(id)? else {
            return Ok(Next::Stale);
        };
        let Some(step) = intent.workflow.as_ref().and_then(|w| w.active()) else {
            return Ok(Next::Stale);
        };
        let (step_id, attempt) = (step.step_id.clone(), step.attempt);
        let after = self
            .write_intent(IntentCommand::AdvanceWorkflow {
                intent_id: id,
                step_id: step_id.clone(),
                attempt,
                at: Utc::now(),
            })
            .await?;
        tracing::info!(step_id, attempt, status = %after.status, "workflow step ticked");
        Ok(Next::Done)
    }
}
