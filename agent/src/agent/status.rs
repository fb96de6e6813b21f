//! `Agent::status`: every target's state (or those asked for). Targets are read concurrently
//! (`status.concurrency` at a time, each within `status.timeout`); the schemas of one
//! PostgreSQL database (schema discovery) are read in chunks of [`SCHEMAS_PER_QUERY`], a few
//! round trips on one pooled connection each (`driver::postgres::read_schemas`), not one
//! session per schema. Each chunk is a unit of its own: its own timeout, and as many chunks
//! run at once as the database's pool lends connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_proto::{StatusRequest, StatusResponse, TargetStatus};
use futures::StreamExt;
use tonic::Status;

use super::{Agent, STATUS_TIMEOUT_CLASS};
use crate::driver::DriverError;
use crate::driver::postgres::{SCHEMAS_PER_QUERY, SchemaRead, SchemaRef, read_schemas};
use crate::executor::driver_error;
use crate::service::validate as check;
use crate::status::{empty_status, target_status};
use crate::target::Target;
use flotilla_core::foreign::ForeignTable;
use flotilla_core::history::TargetState;
use flotilla_core::project::Project;
use flotilla_rpc::convert::ForeignProto;

/// What is read in one go: one target, or a chunk of the schemas of one database.
pub(super) enum Unit {
    One(usize, Arc<Target>),
    Schemas(Vec<(usize, Arc<Target>, SchemaRef)>),
}

/// `targets` as units: each target alone, except the schemas of one database (one pool),
/// taken `chunk` at a time. The `usize` is the target's index in `targets`.
pub(super) fn units(targets: Vec<Arc<Target>>, chunk: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut by_pool: BTreeMap<usize, Vec<(usize, Arc<Target>, SchemaRef)>> = BTreeMap::new();
    for (i, t) in targets.into_iter().enumerate() {
        match t.driver.schema_ref() {
            Some(r) => by_pool
                .entry(Arc::as_ptr(&r.pool) as usize)
                .or_default()
                .push((i, t, r)),
            None => units.push(Unit::One(i, t)),
        }
    }
    for members in by_pool.into_values() {
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            units.push(Unit::Schemas(members.by_ref().take(chunk.max(1)).collect()));
        }
    }
    units
}

/// Runs a chunk's read as a task of its own. Its polls then do not enter the request's
/// tracing span (a chunk's rows arrive over many polls, and entering and leaving the span on
/// each cost a fifth of the agent's CPU in a 10,000-schema `validate`), and the chunks'
/// decoding spreads over the runtime's threads instead of the request's one. Dropping the
/// returned future aborts the task, as dropping the read itself would.
pub(super) async fn detached<T>(
    read: impl Future<Output = Result<T, DriverError>> + Send + 'static,
) -> Result<T, DriverError>
where
    T: Send + 'static,
{
    match tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read)).await {
        Ok(read) => read,
        Err(e) => Err(DriverError::Permanent {
            message: format!("the read task ended abnormally: {e}"),
        }),
    }
}

/// A copy of an error that failed a whole chunk, for each of its schemas.
pub(super) fn for_each_schema(e: &DriverError) -> DriverError {
    match e {
        DriverError::Transient { class, message } => DriverError::Transient {
            class: *class,
            message: message.clone(),
        },
        other => DriverError::Permanent {
            message: other.to_string(),
        },
    }
}

type Read = Result<(TargetState, Vec<ForeignTable>), DriverError>;

impl Agent {
    /// A target's status from what was read (the fence memory learns its token).
    fn status_of(&self, t: &Target, read: Read, include_history: bool) -> TargetStatus {
        match read {
            Ok((state, foreign)) => {
                // What a fence row holds was committed: it binds for every target.
                self.fence.accepted(state.fence_token);
                TargetStatus {
                    foreign: foreign.iter().map(ForeignProto::to_proto).collect(),
                    ..target_status(t, &state, include_history)
                }
            }
            Err(e) => {
                let class = e.class();
                TargetStatus {
                    error: driver_error(&t.id, e).to_string(),
                    error_class: class.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                    ..empty_status(t)
                }
            }
        }
    }

    fn timed_out(&self, t: &Target) -> TargetStatus {
        TargetStatus {
            error: format!(
                "target {}: no answer within {}ms",
                t.id,
                self.config.status.timeout.as_millis()
            ),
            error_class: STATUS_TIMEOUT_CLASS.to_owned(),
            ..empty_status(t)
        }
    }

    async fn read_unit(
        &self,
        unit: Unit,
        project: &Project,
        include_history: bool,
        what: SchemaRead,
    ) -> Vec<(usize, TargetStatus)> {
        let timeout = self.config.status.timeout;
        match unit {
            Unit::One(i, t) => {
                let ts = match tokio::time::timeout(timeout, t.driver.read_status(project)).await {
                    Ok(read) => self.status_of(&t, read, include_history),
                    Err(_) => self.timed_out(&t),
                };
                vec![(i, ts)]
            }
            Unit::Schemas(members) => {
                let Some((_, _, first)) = members.first() else {
                    return Vec::new();
                };
                let schemas: Vec<String> =
                    members.iter().map(|(_, _, r)| r.schema.clone()).collect();
                let (pool, project, public) = (first.pool.clone(), project.clone(), first.public);
                let read =
                    detached(
                        async move { read_schemas(&pool, &schemas, &project, public, what).await },
                    );
                match tokio::time::timeout(timeout, read).await {
                    Ok(Ok(reads)) => members
                        .iter()
                        .zip(reads)
                        .map(|((i, t, _), read)| (*i, self.status_of(t, read, include_history)))
                        .collect(),
                    Ok(Err(e)) => members
                        .iter()
                        .map(|(i, t, _)| {
                            (
                                *i,
                                self.status_of(t, Err(for_each_schema(&e)), include_history),
                            )
                        })
                        .collect(),
                    Err(_) => members
                        .iter()
                        .map(|(i, t, _)| (*i, self.timed_out(t)))
                        .collect(),
                }
            }
        }
    }

    /// The state of every target (or those asked for), queried concurrently; a target that
    /// cannot be read gets `error` set instead of failing the call.
    pub async fn status(&self, req: StatusRequest) -> Result<StatusResponse, Status> {
        check::status_request(&req)?;
        let project = &check::project(&req.project)?;
        // A leader announces its token: lower tokens are refused while it is fresh.
        self.fence.announce(req.fencing_token);
        let targets = self.select(&req.target_ids).await?;
        if req.identities_only {
            return Ok(StatusResponse {
                agent_id: self.config.agent_id.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                targets: targets.iter().map(|t| empty_status(t)).collect(),
                fence_floor: self.fence.floor(),
            });
        }
        let include_history = req.include_history;
        let count = targets.len();
        let units = units(targets, SCHEMAS_PER_QUERY);
        let what = SchemaRead {
            fence: !req.without_fence,
            // The history log is made of whole rows.
            full_rows: !req.applied_set_only || include_history,
        };
        let mut read: Vec<(usize, TargetStatus)> = futures::stream::iter(units)
            .map(|u| self.read_unit(u, project, include_history, what))
            .buffer_unordered(self.config.status.concurrency)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        read.sort_by_key(|(i, _)| *i);
        debug_assert_eq!(read.len(), count);
        Ok(StatusResponse {
            agent_id: self.config.agent_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            targets: read.into_iter().map(|(_, ts)| ts).collect(),
            fence_floor: self.fence.floor(),
        })
    }
}
