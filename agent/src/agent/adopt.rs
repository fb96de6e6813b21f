//! Adoption of another migration tool's history on [`Agent`]: `detect_foreign` reports the
//! version tables a target has (`crate::foreign`), `adopt` records the coordinator's
//! equivalent history as `adopted` rows, fenced like `stamp`, running no SQL of the
//! revisions. The coordinator decides which revisions those are (it has the graph).

use flotilla_proto::{
    AdoptTargetRequest, DetectForeignRequest, DetectForeignResponse, Direction as PbDirection,
    StampRequest, StampResponse, TargetForeign,
};
use futures::StreamExt;
use tonic::Status;

use super::{Agent, open_session};
use crate::driver::{DriverError, Session, StepMeta};
use crate::error::AgentError;
use crate::executor::driver_error;
use crate::service::validate as check;
use crate::status::target_status;
use crate::target::Target;
use flotilla_core::Direction;
use flotilla_core::foreign::{ForeignTable, retire_sql, table_of};
use flotilla_core::history::{RowStatus, TargetState};
use flotilla_core::project::Project;
use flotilla_rpc::convert::ForeignProto;

/// History and foreign tables of one target.
async fn read_foreign(
    target: &Target,
    project: &Project,
) -> Result<(TargetState, Vec<ForeignTable>), AgentError> {
    let mut session = open_session(target, project).await?;
    let res = async {
        let state = session.read_state().await?;
        let tables = session.foreign_tables().await?;
        Ok::<_, DriverError>((state, tables))
    }
    .await;
    session.close().await;
    res.map_err(|e| driver_error(&target.id, e))
}

/// Under the target's locks: refuse a target Flotilla already manages, or whose `tool`
/// table is gone or dirty; then record the rows.
async fn adopt_locked(
    s: &mut dyn Session,
    target: &str,
    tool: &str,
    pairs: &[(String, String)],
    meta: &StepMeta,
    retire: &[String],
) -> Result<TargetState, AgentError> {
    let refuse = |reason: String| AgentError::NotAdoptable {
        target: target.to_owned(),
        reason,
    };
    let state = s.read_state().await.map_err(|e| driver_error(target, e))?;
    // Retiring alone, after an earlier adoption: the target is Flotilla's already.
    let retire_only = pairs.is_empty() && !retire.is_empty();
    if retire_only && state.history.is_empty() {
        return Err(refuse(format!(
            "it has no flotilla_history rows: adopt it before retiring its {} table",
            table_of(tool).unwrap_or(tool)
        )));
    }
    if !retire_only && !state.history.is_empty() {
        return Err(refuse(format!(
            "it already has {} flotilla_history row(s): Flotilla manages it (use stamp to change its history)",
            state.history.len()
        )));
    }
    let tables = s
        .foreign_tables()
        .await
        .map_err(|e| driver_error(target, e))?;
    let Some(table) = tables.iter().find(|t| t.tool == tool) else {
        return Err(refuse(format!(
            "it has no {} table: nothing to adopt from {tool}",
            table_of(tool).unwrap_or(tool)
        )));
    };
    if table.dirty && !retire_only {
        return Err(refuse(format!(
            "{} records a failed or half-applied migration: fix it with {tool} first",
            table.table
        )));
    }
    s.stamp_as(pairs, Direction::Up, meta, RowStatus::Adopted, retire)
        .await
        .map_err(|e| driver_error(target, e))?;
    s.read_state().await.map_err(|e| driver_error(target, e))
}

impl Agent {
    /// Other tools' version tables on every target (or those asked for); a target that
    /// cannot be read gets `error` set instead of failing the call.
    pub async fn detect_foreign(
        &self,
        req: DetectForeignRequest,
    ) -> Result<DetectForeignResponse, Status> {
        check::target_ids("target_ids", &req.target_ids)?;
        let project = &check::project(&req.project)?;
        let targets = self.select(&req.target_ids).await?;
        let timeout = self.config.status.timeout;
        let targets = futures::stream::iter(targets)
            .map(|t| async move {
                let mut tf = TargetForeign {
                    target_id: t.id.clone(),
                    ..TargetForeign::default()
                };
                match tokio::time::timeout(timeout, read_foreign(&t, project)).await {
                    Ok(Ok((state, tables))) => {
                        tf.history_rows = u32::try_from(state.history.len()).unwrap_or(u32::MAX);
                        tf.tables = tables.iter().map(ForeignProto::to_proto).collect();
                    }
                    Ok(Err(e)) => tf.error = e.to_string(),
                    Err(_) => tf.error = format!("no answer within {}ms", timeout.as_millis()),
                }
                tf
            })
            .buffered(self.config.status.concurrency)
            .collect()
            .await;
        Ok(DetectForeignResponse {
            agent_id: self.config.agent_id.clone(),
            targets,
        })
    }

    /// Record `req.revisions` as adopted from `req.tool`, and with `retire_foreign` retire
    /// the tool's version table in the same transaction (`flotilla_core::foreign::
    /// retire_sql`); with no revisions and `retire_foreign`, only retire it on a target
    /// Flotilla already manages. Fenced.
    pub async fn adopt(&self, req: AdoptTargetRequest) -> Result<StampResponse, Status> {
        if req.revisions.is_empty() && req.retire_foreign {
            check::target_id("target_id", &req.target_id)?;
            check::fencing_token(req.fencing_token)?;
        } else {
            check::stamp_request(&StampRequest {
                target_id: req.target_id.clone(),
                fencing_token: req.fencing_token,
                revisions: req.revisions.clone(),
                direction: PbDirection::Up as i32,
                rollout_id: "adopt".into(),
                project: req.project.clone(),
            })?;
        }
        let project = check::project(&req.project)?;
        if table_of(&req.tool).is_none() {
            return Err(AgentError::InvalidRequest {
                field: "tool".into(),
                message: "must be alembic, flyway, sqlx or golang-migrate".into(),
            }
            .to_status());
        }
        let target = self.targets.lookup(&req.target_id).await?;
        self.check_fence(&target.id, req.fencing_token)?;
        let meta = self.meta(&format!("adopt-{}", req.tool), req.fencing_token);
        let pairs: Vec<(String, String)> = req
            .revisions
            .iter()
            .map(|r| (r.revision.clone(), r.checksum.clone()))
            .collect();
        let retire = if req.retire_foreign {
            retire_sql(target.dialect, &req.tool).unwrap_or_default()
        } else {
            vec![]
        };
        let (guard, mut session) = self.locked(&target, &project).await?;
        let res = adopt_locked(
            session.as_mut(),
            &target.id,
            &req.tool,
            &pairs,
            &meta,
            &retire,
        )
        .await;
        Self::release(session).await;
        drop(guard);
        let status = res?;
        tracing::info!(
            target = %target.id,
            tool = %req.tool,
            revisions = pairs.len(),
            retired = req.retire_foreign,
            "adopted"
        );
        Ok(StampResponse {
            target: Some(target_status(&target, &status, false)),
        })
    }
}
