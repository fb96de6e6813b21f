//! One target of a rollout: re-plan from the agent's own report, send the steps with the
//! term's fencing token, follow the step events, and persist each transition. RPC failures
//! (agent unreachable, stream cut) are retried with backoff, re-planning each time, so a
//! step that committed before the failure is never sent again.

use backon::BackoffBuilder;
use futures::StreamExt;

use flotilla_proto as pb;
use pb::step_event::Event;

use crate::fleet::is_retryable;
use crate::revision::Goal;
use crate::rollout::{RolloutRecord, StepRecord, TargetRecord, TargetState};

use super::snapshot::{FleetEntry, TargetPlanOutcome, plan_target};
use super::{Engine, EngineError, Term};

/// How one attempt at a target ended.
enum Attempt {
    Done,
    /// The agent reported a step failure: final.
    StepFailed(String),
    /// The agent could not be reached or the stream broke: retry.
    Rpc(String),
    Blocked(String),
}

impl Engine {
    /// Run one target to a terminal state. Returns the final record; `Err` only when the
    /// term ended (the caller stops) or the store failed.
    #[tracing::instrument(name = "target", skip_all, fields(target = %rec.target_id, agent = %rec.agent_id, wave = rec.wave, rollout = %rollout.id))]
    pub(crate) async fn run_target(
        &self,
        term: &Term,
        rollout: &RolloutRecord,
        goal: &Goal,
        mut rec: TargetRecord,
    ) -> Result<TargetRecord, EngineError> {
        crate::metrics::target_transition(rec.state, TargetState::Running);
        rec.state = TargetState::Running;
        rec.message.clear();
        self.put_target(term, &rollout.id, &rec).await?;
        let mut delays = self.agent_backoff().build();
        loop {
            if term.cancel.is_cancelled() {
                return Err(EngineError::Fenced(term.token));
            }
            let outcome = tokio::select! {
                _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                o = self.attempt(term, rollout, goal, &mut rec) => o?,
            };
            match outcome {
                Attempt::Done => {
                    rec.state = if rec.steps.is_empty() {
                        TargetState::Skipped
                    } else {
                        TargetState::Succeeded
                    };
                    if rec.steps.is_empty() {
                        rec.message = "already at the goal".into();
                    }
                    rec.current_revision.clear();
                }
                Attempt::StepFailed(msg) => {
                    rec.state = TargetState::Failed;
                    rec.message = msg;
                }
                Attempt::Blocked(msg) => {
                    rec.state = TargetState::Blocked;
                    rec.message = msg;
                }
                Attempt::Rpc(msg) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(target = %rec.target_id, "agent rpc failed, retrying in {delay:?}: {msg}");
                        rec.retries += 1;
                        rec.message = format!("agent unreachable, retrying: {msg}");
                        self.put_target(term, &rollout.id, &rec).await?;
                        tokio::select! {
                            _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                    None => {
                        rec.state = TargetState::Failed;
                        rec.message = format!(
                            "agent {} unreachable after {} attempts: {msg}",
                            rec.agent_id, self.config.agent_attempts
                        );
                    }
                },
            }
            metrics::counter!("flotilla_coordinator_targets_finished_total", "state" => rec.state.as_str()).increment(1);
            crate::metrics::target_transition(TargetState::Running, rec.state);
            self.put_target(term, &rollout.id, &rec).await?;
            return Ok(rec);
        }
    }

    async fn attempt(
        &self,
        term: &Term,
        rollout: &RolloutRecord,
        goal: &Goal,
        rec: &mut TargetRecord,
    ) -> Result<Attempt, EngineError> {
        let agent = match self
            .agents()
            .await?
            .into_iter()
            .find(|a| a.id() == rec.agent_id)
        {
            Some(a) => a,
            None => {
                return Ok(Attempt::Rpc(format!(
                    "agent {} is not registered",
                    rec.agent_id
                )));
            }
        };
        // Re-plan from the agent's own report: whatever committed before is not sent again.
        let status = match agent
            .status(pb::StatusRequest {
                target_ids: vec![rec.target_id.clone()],
                include_history: false,
                fencing_token: term.token,
            })
            .await
        {
            Ok(resp) => match resp.targets.into_iter().next() {
                Some(s) => s,
                None => {
                    return Ok(Attempt::Blocked(format!(
                        "agent {} no longer serves this target",
                        rec.agent_id
                    )));
                }
            },
            Err(e) if is_retryable(&e) => return Ok(Attempt::Rpc(e.message().to_owned())),
            Err(e) => return Ok(Attempt::StepFailed(format!("status: {}", e.message()))),
        };
        if !status.error.is_empty() {
            return Ok(Attempt::Rpc(format!(
                "target unreachable: {}",
                status.error
            )));
        }
        let entry = FleetEntry {
            agent: agent.clone(),
            status,
        };
        let steps = match plan_target(
            &self.graph,
            &entry.status,
            entry.dialect(),
            goal,
            rollout.spec.allow_downgrade,
        ) {
            TargetPlanOutcome::Steps(s) => s,
            TargetPlanOutcome::Blocked(why) => return Ok(Attempt::Blocked(why)),
        };
        // Keep the original step list for progress; count what is already done.
        if rec.steps.is_empty() && !steps.is_empty() {
            rec.steps = steps.iter().map(step_record).collect();
        }
        rec.steps_done = (rec.steps.len().saturating_sub(steps.len())) as u32;
        if steps.is_empty() {
            return Ok(Attempt::Done);
        }
        let req = pb::MigrateRequest {
            target_id: rec.target_id.clone(),
            rollout_id: rollout.id.clone(),
            fencing_token: term.token,
            steps: steps
                .iter()
                .map(|s| pb::Step {
                    revision: s.revision.clone(),
                    direction: s.direction.to_proto() as i32,
                    sql: s.sql.clone(),
                    checksum: s.checksum.clone(),
                    transactional: s.transactional,
                    up_checksum: self
                        .graph
                        .get(&s.revision)
                        .map(|r| r.up_checksum(rec.dialect))
                        .unwrap_or_default(),
                })
                .collect(),
            lock_wait_ms: 0,
        };
        let mut stream = match agent.migrate(req).await {
            Ok(s) => s,
            Err(e) if is_retryable(&e) => return Ok(Attempt::Rpc(e.message().to_owned())),
            Err(e) => {
                return Ok(Attempt::StepFailed(format!(
                    "{}: {}",
                    rec.target_id,
                    e.message()
                )));
            }
        };
        let mut failed: Option<String> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    let Some(event) = ev.event else { continue };
                    match event {
                        Event::Started(_) => {
                            rec.current_revision = ev.revision.clone();
                            self.notify(&rollout.id);
                        }
                        Event::Retrying(r) => {
                            rec.retries += 1;
                            rec.message = format!(
                                "retrying {} ({}): {}",
                                ev.revision, r.error_class, r.error
                            );
                            self.put_target(term, &rollout.id, rec).await?;
                        }
                        Event::Succeeded(_) | Event::Skipped(_) => {
                            rec.steps_done = (rec.steps_done + 1).min(rec.steps.len() as u32);
                            rec.message.clear();
                            self.put_target(term, &rollout.id, rec).await?;
                        }
                        Event::Failed(f) => {
                            let mut msg = f.message.clone();
                            if f.dirty {
                                msg.push_str(
                                    " (target left dirty: inspect it, then run `flotilla repair`)",
                                );
                            } else if f.rolled_back {
                                msg.push_str(" (rolled back: the target is as before the step)");
                            }
                            failed = Some(msg);
                        }
                        Event::LockWaiting(_) | Event::LockAcquired(_) => {}
                    }
                }
                Err(status) => {
                    if let Some(msg) = failed {
                        return Ok(Attempt::StepFailed(msg));
                    }
                    if is_retryable(&status) {
                        return Ok(Attempt::Rpc(status.message().to_owned()));
                    }
                    return Ok(Attempt::StepFailed(status.message().to_owned()));
                }
            }
        }
        if let Some(msg) = failed {
            return Ok(Attempt::StepFailed(msg));
        }
        rec.steps_done = rec.steps.len() as u32;
        Ok(Attempt::Done)
    }
}

fn step_record(s: &crate::revision::PlannedStep) -> StepRecord {
    StepRecord {
        revision: s.revision.clone(),
        direction: s.direction,
        checksum: s.checksum.clone(),
        transactional: s.transactional,
    }
}
