//! One target of a rollout: send the steps with the term's fencing token, follow the step
//! events, and stage each transition (written behind, see `batch.rs`).
//!
//! The first attempt sends the plan made when the rollout was planned, with the digest of the
//! state it was computed from as a precondition: the agent checks it under the migration lock
//! and refuses a stale plan (`PLAN_STALE`), so no extra `Status` round trip is needed to know
//! the plan still holds. Every later attempt — after a stale plan, an RPC failure (agent
//! unreachable, stream cut) or on a new leader — re-plans from the agent's own report first,
//! so a step that committed before the failure is never sent again.
//!
//! An agent that cannot be reached (a pod restart, a network blip, a registration that
//! lapsed) is waited for, not counted: the target retries with backoff for up to the
//! rollout's agent wait (`RolloutSpec::agent_wait`, default 2 minutes), its record says it is
//! waiting for the agent (`waiting_for_agent`), and it fails only when the wait runs out. A
//! wait that ends in progress (a step committed) starts afresh at the next outage; an abort
//! ends the wait at once and leaves the target as it was.
//!
//! A plan larger than one request (several multi-megabyte seeds, see `pack.rs`) is sent a
//! prefix at a time; after each prefix the target is re-planned from the agent's report like
//! any later attempt. Each request is its own transaction group on the agent.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::watch;

use flotilla_proto as pb;
use pb::step_event::Event;

use crate::fleet::is_retryable;
use crate::rollout::{RolloutRecord, StepRecord, TargetRecord, TargetState};
use flotilla_revision::PlannedStep;
use flotilla_revision::{Goal, Graph};

use super::batch::TargetWriter;
use super::snapshot::{FleetEntry, TargetPlanOutcome, plan_target, state_digest_of};
use super::{Control, Engine, EngineError, Term};
use flotilla_core::bounds::to_wire_ms;
use flotilla_rpc::convert::DirectionProto;

/// The agent's reason for a refused stale plan.
const PLAN_STALE: &str = "PLAN_STALE";
/// The agent's reason for refusing a target another tool manages (nothing ran).
const FOREIGN_HISTORY: &str = "FOREIGN_HISTORY";

/// How one attempt at a target ended.
enum Attempt {
    Done,
    /// The agent reported a step failure: final.
    StepFailed(String),
    /// The agent could not be reached or the stream broke: retry.
    Rpc(String),
    Blocked(String),
    /// The agent refused the plan as stale: re-plan from its report and go again.
    Stale,
    /// The request carried a prefix of the plan and it succeeded: re-plan and send the rest.
    More,
}

impl Engine {
    /// Run one target to a terminal state, in a `target` span under `wave`'s. Returns the
    /// final record; `Err` only when the term ended (the caller stops) or the store failed.
    #[tracing::instrument(name = "target", parent = wave, skip_all, fields(flotilla.target = %rec.target_id, flotilla.agent.id = %rec.agent_id, flotilla.wave = rec.wave, flotilla.rollout.id = %rollout.id, db.system = rec.dialect.db_system()))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_target(
        &self,
        wave: &tracing::Span,
        term: &Term,
        rollout: &RolloutRecord,
        graph: &Graph,
        goal: &Goal,
        mut rec: TargetRecord,
        writer: &std::sync::Arc<TargetWriter>,
        mut control: watch::Receiver<Control>,
    ) -> Result<TargetRecord, EngineError> {
        crate::metrics::target_transition(rec.state, TargetState::Running);
        // A record already running was started by an earlier term: its plan may be stale.
        let mut replan = rec.state == TargetState::Running || rec.planned_from.is_empty();
        rec.state = TargetState::Running;
        rec.message.clear();
        writer.stage(&rec)?;
        let wait = rollout.spec.agent_wait();
        let mut delays = self.agent_wait_backoff().build();
        // Since when the agent has been unreachable without progress (the current wait).
        let mut unreachable_since: Option<Instant> = None;
        let mut stale = 0u32;
        loop {
            let done_before = rec.steps_done;
            if term.cancel.is_cancelled() {
                return Err(EngineError::Fenced(term.token));
            }
            // No new step while the rollout's records cannot be written (`durable.rs`).
            self.store_writable(term).await?;
            let outcome = tokio::select! {
                _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                o = self.attempt(term, rollout, graph, goal, &mut rec, replan, writer) => o?,
            };
            replan = true;
            if rec.steps_done > done_before {
                // Progress: a later outage gets a wait of its own.
                unreachable_since = None;
                delays = self.agent_wait_backoff().build();
            }
            if !matches!(outcome, Attempt::Rpc(_)) {
                rec.waiting_for_agent = false;
            }
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
                // The target changed since it was planned: re-plan at once. Bounded, in case
                // something keeps changing it under us.
                Attempt::Stale if stale < self.config.agent_attempts => {
                    stale += 1;
                    // Refused before any step ran: the fresh plan replaces the recorded one
                    // (a target found at the goal ends skipped, not succeeded).
                    if rec.steps_done == 0 {
                        rec.steps.clear();
                    }
                    continue;
                }
                Attempt::More => continue,
                Attempt::Stale => {
                    rec.state = TargetState::Failed;
                    rec.message = format!(
                        "the target kept changing while it was planned ({stale} stale plans)"
                    );
                }
                Attempt::Rpc(msg) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    let waited = since.elapsed();
                    rec.retries += 1;
                    if waited < wait {
                        let delay = delays
                            .next()
                            .unwrap_or(self.config.agent_backoff_max)
                            .min(wait - waited);
                        tracing::warn!(target = %rec.target_id, agent = %rec.agent_id, waited_ms = waited.as_millis() as u64, "agent unreachable, retrying in {delay:?}: {msg}");
                        rec.waiting_for_agent = true;
                        rec.message = format!(
                            "waiting for agent {} (unreachable for {} of the rollout's {} agent wait): {msg}",
                            rec.agent_id,
                            seconds(waited),
                            seconds(wait)
                        );
                        writer.stage(&rec)?;
                        tokio::select! {
                            _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                            _ = tokio::time::sleep(delay) => continue,
                            _ = aborted(&mut control) => {
                                // Nothing runs for this target now: leave it as it was.
                                rec.waiting_for_agent = false;
                                rec.message = format!(
                                    "aborted while waiting for agent {}: {msg}",
                                    rec.agent_id
                                );
                                if rec.steps_done == 0 {
                                    rec.state = TargetState::Pending;
                                    crate::metrics::target_transition(TargetState::Running, rec.state);
                                }
                                writer.stage(&rec)?;
                                return Ok(rec);
                            }
                        }
                    }
                    rec.waiting_for_agent = false;
                    rec.state = TargetState::Failed;
                    rec.message = format!(
                        "agent {} unreachable for {} (the rollout's agent wait, --agent-wait): \
                         {msg}; bring the agent back and start a new rollout",
                        rec.agent_id,
                        seconds(waited)
                    );
                }
            }
            if rec.state == TargetState::Failed {
                crate::telemetry::record_failure(&tracing::Span::current(), &rec.message);
            }
            crate::metrics::targets_finished(rec.state, 1);
            crate::metrics::target_transition(TargetState::Running, rec.state);
            writer.stage(&rec)?;
            return Ok(rec);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        term: &Term,
        rollout: &RolloutRecord,
        graph: &Graph,
        goal: &Goal,
        rec: &mut TargetRecord,
        replan: bool,
        writer: &std::sync::Arc<TargetWriter>,
    ) -> Result<Attempt, EngineError> {
        let Some(agent) = self.agent(&rec.agent_id, replan).await? else {
            return Ok(Attempt::Rpc(format!(
                "agent {} is not registered",
                rec.agent_id
            )));
        };
        let recorded = (!replan).then(|| recorded_steps(graph, rec)).flatten();
        let (steps, expected_state) = match recorded {
            Some(steps) => (steps, rec.planned_from.clone()),
            None => match self.replan(term, rollout, graph, goal, rec, &agent).await? {
                Ok(planned) => planned,
                Err(attempt) => return Ok(attempt),
            },
        };
        // Keep the original step list for progress; count what is already done.
        if rec.steps.is_empty() && !steps.is_empty() {
            rec.steps = steps.iter().map(step_record).collect();
        }
        rec.steps_done = (rec.steps.len().saturating_sub(steps.len())) as u32;
        if steps.is_empty() {
            return Ok(Attempt::Done);
        }
        let mut steps: Vec<pb::Step> = steps
            .iter()
            .map(|s| pb::Step {
                revision: s.revision.clone(),
                direction: s.direction.to_proto() as i32,
                sql: s.sql.clone(),
                checksum: s.checksum.clone(),
                transactional: s.transactional,
                up_checksum: graph
                    .get(&s.revision)
                    .map(|r| r.up_checksum(rec.dialect))
                    .unwrap_or_default(),
                backup_tables: match s.direction {
                    flotilla_core::Direction::Up => {
                        graph.backup_tables(&s.revision, rec.dialect).to_vec()
                    }
                    flotilla_core::Direction::Down => vec![],
                },
                // The revision's own bounds (headers) win over the rollout's.
                lock_timeout_ms: to_wire_ms(graph.get(&s.revision).and_then(|r| r.lock_timeout)),
                statement_timeout_ms: to_wire_ms(
                    graph.get(&s.revision).and_then(|r| r.statement_timeout),
                ),
                // Covered by the step's checksum (the revision's up checksum).
                check_sql: guard_sql(graph, s, |r, d| r.check_sql(d), rec.dialect),
                verify_sql: guard_sql(graph, s, |r, d| r.verify_sql(d), rec.dialect),
            })
            .collect();
        let sent = super::pack::request_len(&steps, self.config.migrate_request_bytes);
        let more = sent < steps.len();
        steps.truncate(sent);
        // The request asks for quiet (no start event for the first step): the step being run
        // is the first one sent, then the one the next start names, or the one after each
        // that succeeded.
        let revisions: Vec<String> = steps.iter().map(|s| s.revision.clone()).collect();
        rec.current_revision = revisions.first().cloned().unwrap_or_default();
        writer.stage(rec)?;
        let req = pb::MigrateRequest {
            project: self.wire_project(),
            target_id: rec.target_id.clone(),
            rollout_id: rollout.id.clone(),
            fencing_token: term.agent_token(),
            expected_state,
            transaction_per_step: rollout.spec.transaction_per_step,
            // The gate compares fingerprints: read on the Migrate's own connection.
            report_fingerprint: rollout.spec.fingerprint_gate,
            step_lock_timeout_ms: rollout.spec.lock_timeout_ms,
            retry_max_attempts: rollout.spec.retry_max_attempts,
            retry_max_elapsed_ms: rollout.spec.retry_max_elapsed_ms,
            steps,
            lock_wait_ms: 0,
            allow_foreign: rollout.spec.allow_foreign,
            quiet: true,
        };
        let mut stream = match agent.migrate(req).await {
            Ok(s) => {
                if rec.waiting_for_agent {
                    rec.waiting_for_agent = false;
                    rec.message.clear();
                    writer.stage(rec)?;
                }
                s
            }
            Err(e) if is_stale(&e) => return Ok(Attempt::Stale),
            Err(e) if foreign_of(&e).is_some() => {
                return Ok(Attempt::Blocked(foreign_of(&e).unwrap_or_default()));
            }
            Err(e) if is_retryable(&e) => return Ok(Attempt::Rpc(e.message().to_owned())),
            Err(e) if is_too_large(&e) => {
                return Ok(Attempt::StepFailed(format!(
                    "{}: the agent refused the Migrate request as too large ({}): raise its \
                     `server.max_message_bytes` (the default takes the largest revision \
                     `flotilla check` accepts)",
                    rec.target_id,
                    e.message()
                )));
            }
            Err(e) => {
                return Ok(Attempt::StepFailed(format!(
                    "{}: {}",
                    rec.target_id,
                    e.message()
                )));
            }
        };
        let mut failed: Option<String> = None;
        let mut check_failed = false;
        let mut ran = 0usize;
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    let Some(event) = ev.event else { continue };
                    match event {
                        Event::Started(_) => {
                            rec.current_revision = ev.revision.clone();
                            writer.stage(rec)?;
                        }
                        Event::Retrying(r) => {
                            rec.retries += 1;
                            rec.message = format!(
                                "retrying {} ({}): {}",
                                ev.revision, r.error_class, r.error
                            );
                            writer.stage(rec)?;
                        }
                        Event::Succeeded(_) | Event::Skipped(_) => {
                            ran += 1;
                            rec.steps_done = (rec.steps_done + 1).min(rec.steps.len() as u32);
                            rec.current_revision = revisions.get(ran).cloned().unwrap_or_default();
                            rec.message.clear();
                            writer.stage(rec)?;
                        }
                        Event::Failed(f) => {
                            if f.reason == pb::FailureReason::CheckFailed as i32 {
                                // Nothing of the step ran: the target waits for its data
                                // to be fixed, like any other blocked target.
                                check_failed = true;
                            }
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
                        Event::Finished(f) => {
                            if rollout.spec.fingerprint_gate && !f.fingerprint.is_empty() {
                                rec.fingerprint = f.fingerprint;
                            }
                            if let Some(status) = f.status
                                && status.target_id == rec.target_id
                            {
                                self.view.record_target(&agent, &status);
                            }
                        }
                        Event::LockWaiting(_) | Event::LockAcquired(_) => {}
                    }
                }
                Err(status) => {
                    if let Some(msg) = failed {
                        if check_failed {
                            return Ok(Attempt::Blocked(msg));
                        }
                        return Ok(Attempt::StepFailed(msg));
                    }
                    if is_stale(&status) {
                        return Ok(Attempt::Stale);
                    }
                    if let Some(why) = foreign_of(&status) {
                        return Ok(Attempt::Blocked(why));
                    }
                    if is_retryable(&status) {
                        return Ok(Attempt::Rpc(status.message().to_owned()));
                    }
                    return Ok(Attempt::StepFailed(status.message().to_owned()));
                }
            }
        }
        if let Some(msg) = failed {
            if check_failed {
                return Ok(Attempt::Blocked(msg));
            }
            return Ok(Attempt::StepFailed(msg));
        }
        if more {
            // Each request must move the target on, or re-planning would send it again.
            if ran < sent {
                return Ok(Attempt::StepFailed(format!(
                    "{}: the agent ended the request after {ran} of its {sent} steps without an error",
                    rec.target_id
                )));
            }
            return Ok(Attempt::More);
        }
        rec.steps_done = rec.steps.len() as u32;
        Ok(Attempt::Done)
    }
}

impl Engine {
    /// Re-plan from the agent's own report: whatever committed before is not sent again.
    /// The inner `Err` is how the attempt ends without a Migrate.
    async fn replan(
        &self,
        term: &Term,
        rollout: &RolloutRecord,
        graph: &Graph,
        goal: &Goal,
        rec: &TargetRecord,
        agent: &std::sync::Arc<dyn crate::fleet::AgentClient>,
    ) -> Result<Result<(Vec<PlannedStep>, String), Attempt>, EngineError> {
        let status = match agent
            .status(pb::StatusRequest {
                target_ids: vec![rec.target_id.clone()],
                include_history: false,
                fencing_token: term.agent_token(),
                project: self.wire_project(),
                ..Default::default()
            })
            .await
        {
            Ok(resp) => match resp.targets.into_iter().next() {
                Some(s) => s,
                None => {
                    return Ok(Err(Attempt::Blocked(format!(
                        "agent {} no longer serves this target",
                        rec.agent_id
                    ))));
                }
            },
            Err(e) if is_retryable(&e) => return Ok(Err(Attempt::Rpc(e.message().to_owned()))),
            Err(e) => {
                return Ok(Err(Attempt::StepFailed(format!("status: {}", e.message()))));
            }
        };
        if !status.error.is_empty() {
            return Ok(Err(Attempt::Rpc(format!(
                "target unreachable: {}",
                status.error
            ))));
        }
        let digest = state_digest_of(&status);
        let entry = FleetEntry {
            agent: agent.clone(),
            status,
        };
        Ok(
            match plan_target(
                graph,
                &entry.status,
                entry.dialect(),
                goal,
                rollout.spec.allow_downgrade,
                rollout.spec.allow_foreign,
            ) {
                TargetPlanOutcome::Steps(s) => {
                    match self.destructive_in(rollout, graph, &entry, &s) {
                        Some(why) => Err(Attempt::Blocked(why)),
                        None => Ok((s, digest)),
                    }
                }
                TargetPlanOutcome::Blocked(why) => Err(Attempt::Blocked(why)),
            },
        )
    }

    /// StartRollout refused not-allowed destructive steps on the plan it saw; a re-plan (the
    /// target changed since) is held to the same rule, so a step nobody reviewed never runs.
    fn destructive_in(
        &self,
        rollout: &RolloutRecord,
        graph: &Graph,
        entry: &FleetEntry,
        steps: &[PlannedStep],
    ) -> Option<String> {
        if rollout.spec.allow_destructive {
            return None;
        }
        let dialect = entry.dialect()?;
        let mut refusal = super::destructive::Refusal::default();
        refusal.add(graph, dialect, steps);
        refusal.blocked_target(graph)
    }
}

/// An up step's check or verify queries for `dialect` ("" for none, and for down steps).
fn guard_sql(
    graph: &Graph,
    step: &PlannedStep,
    section: impl Fn(&flotilla_revision::Revision, flotilla_core::Dialect) -> Option<&str>,
    dialect: flotilla_core::Dialect,
) -> String {
    if step.direction != flotilla_core::Direction::Up {
        return String::new();
    }
    graph
        .get(&step.revision)
        .and_then(|r| section(r, dialect))
        .unwrap_or_default()
        .to_owned()
}

impl Engine {
    /// Backoff between attempts at an unreachable agent: unbounded in count, the rollout's
    /// agent wait bounds it in time.
    pub(super) fn agent_wait_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.agent_backoff_min)
            .with_max_delay(self.config.agent_backoff_max)
            .without_max_times()
            .with_jitter()
    }
}

/// Resolves when the rollout is aborted; never on pause (a paused rollout's waiting targets
/// keep waiting, like running ones keep running), nor when the control is gone (the term's
/// end cancels the wait instead).
async fn aborted(control: &mut watch::Receiver<Control>) {
    loop {
        if *control.borrow_and_update() == Control::Abort {
            return;
        }
        if control.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A duration as whole seconds for messages (`95s`).
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn step_record(s: &flotilla_revision::PlannedStep) -> StepRecord {
    StepRecord {
        revision: s.revision.clone(),
        direction: s.direction,
        checksum: s.checksum.clone(),
        transactional: s.transactional,
    }
}

/// The agent refused the target because another tool manages it (checked under the lock,
/// before any step): the reason, to block the target with.
fn foreign_of(status: &tonic::Status) -> Option<String> {
    (status.code() == tonic::Code::FailedPrecondition
        && flotilla_rpc::reason::Reason::of_status(status) == Some(FOREIGN_HISTORY))
    .then(|| {
        let msg = status.message();
        let msg = msg
            .strip_prefix(FOREIGN_HISTORY)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(msg);
        msg.to_owned()
    })
}

/// Whether the request was larger than the agent's gRPC message limit (tonic refuses it
/// before the agent sees it, with the sizes in the message).
fn is_too_large(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ) && status.message().contains("too large")
}

/// Whether the agent refused the request's plan as stale.
fn is_stale(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && flotilla_rpc::reason::Reason::of_status(status) == Some(PLAN_STALE)
}

/// The steps recorded when the rollout was planned, with their SQL from the graph (the
/// graph is the one they were planned from: the rollout refuses to run on another digest).
fn recorded_steps(
    graph: &flotilla_revision::Graph,
    rec: &TargetRecord,
) -> Option<Vec<PlannedStep>> {
    if rec.planned_from.is_empty() || rec.steps.is_empty() || rec.steps_done > 0 {
        return None;
    }
    rec.steps
        .iter()
        .map(|s| {
            let r = graph.get(&s.revision)?;
            let sql = match s.direction {
                flotilla_core::Direction::Up => r.up_sql(rec.dialect),
                flotilla_core::Direction::Down => r.down_sql(rec.dialect)?,
            };
            Some(PlannedStep {
                revision: s.revision.clone(),
                direction: s.direction,
                sql: sql.to_owned(),
                checksum: s.checksum.clone(),
                transactional: s.transactional,
            })
        })
        .collect()
}
