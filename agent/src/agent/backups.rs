//! Backups on [`Agent`]: list them, restore one rollout's backups on a target (fenced, under
//! the target's locks, recorded as a `restored` history row), prune old ones. The backups
//! themselves are taken by the executor before a step that asks for them (`flotilla_core::backup`).

use flotilla_proto::{
    ListBackupsRequest, ListBackupsResponse, PruneBackupsRequest, PruneBackupsResponse,
    RestoreBackupRequest, RestoreBackupResponse,
};
use tonic::Status;

use super::{Agent, open_session};
use crate::error::AgentError;
use crate::executor::driver_error;
use crate::service::validate as check;
use crate::status::target_status;
use crate::target::Target;
use flotilla_core::backup::{BackupRecord, to_prune};
use flotilla_core::project::Project;
use flotilla_rpc::convert::BackupProto;

async fn read_backups(target: &Target) -> Result<Vec<BackupRecord>, AgentError> {
    // `flotilla_backups` is one table for every project (rollout ids are unique across them).
    let mut session = open_session(target, &Project::default()).await?;
    let res = session.list_backups().await;
    session.close().await;
    res.map_err(|e| driver_error(&target.id, e))
}

impl Agent {
    /// Every backup of the targets asked for (all when none); unreadable targets are listed
    /// in `errors`.
    pub async fn list_backups(
        &self,
        req: ListBackupsRequest,
    ) -> Result<ListBackupsResponse, Status> {
        check::target_ids("target_ids", &req.target_ids)?;
        check::project(&req.project)?;
        let mut out = ListBackupsResponse::default();
        for t in self.select(&req.target_ids).await? {
            match read_backups(&t).await {
                Ok(records) => out
                    .backups
                    .extend(records.iter().map(|r| r.to_proto(&t.id))),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        Ok(out)
    }

    /// Put back the data saved by `rollout_id`'s backups on one target. Fenced.
    pub async fn restore_backup(
        &self,
        req: RestoreBackupRequest,
    ) -> Result<RestoreBackupResponse, Status> {
        check::target_ids("target_id", std::slice::from_ref(&req.target_id))?;
        check::rollout_id(&req.rollout_id)?;
        check::fencing_token(req.fencing_token)?;
        let project = check::project(&req.project)?;
        let target = self.targets.lookup(&req.target_id).await?;
        self.check_fence(&target.id, req.fencing_token)?;
        let meta = self.meta(&req.rollout_id, req.fencing_token);
        let (guard, mut session) = self.locked(&target, &project).await?;
        let res = async {
            let all = session.list_backups().await?;
            let chosen: Vec<BackupRecord> = all
                .into_iter()
                .filter(|b| b.rollout_id == req.rollout_id)
                .collect();
            if chosen.is_empty() {
                return Ok(None);
            }
            let state = session.read_state().await?;
            // The restored row carries the checksum the revision was applied with.
            let checksum = state
                .history
                .iter()
                .rev()
                .find(|r| r.revision == chosen[0].revision && r.status.counts())
                .map_or_else(|| "0".repeat(64), |r| r.checksum.clone());
            let rows = session.restore_backups(&chosen, &checksum, &meta).await?;
            let state = session.read_state().await?;
            Ok(Some((chosen, rows, state)))
        }
        .await;
        Self::release(session).await;
        drop(guard);
        let Some((chosen, rows, state)) = res.map_err(|e| driver_error(&target.id, e))? else {
            return Err(AgentError::invalid(
                "rollout_id",
                format!(
                    "target {} has no backup of rollout {} (see `flotilla backups list`)",
                    target.id, req.rollout_id
                ),
            )
            .to_status());
        };
        self.fence.accepted(state.fence_token);
        tracing::info!(target = %target.id, rollout_id = %req.rollout_id, rows, "restored a backup");
        Ok(RestoreBackupResponse {
            restored: chosen.iter().map(|b| b.to_proto(&target.id)).collect(),
            rows,
            target: Some(target_status(&target, &state, true)),
        })
    }

    /// Remove all but the backups of the newest `keep` rollouts on each target asked for.
    pub async fn prune_backups(
        &self,
        req: PruneBackupsRequest,
    ) -> Result<PruneBackupsResponse, Status> {
        check::target_ids("target_ids", &req.target_ids)?;
        let project = check::project(&req.project)?;
        let mut out = PruneBackupsResponse::default();
        for t in self.select(&req.target_ids).await? {
            let res = async {
                let (guard, mut session) = self.locked(&t, &project).await?;
                let res = async {
                    let all = session.list_backups().await?;
                    let gone = to_prune(&all, req.keep as usize);
                    session.drop_backups(&gone).await?;
                    Ok(gone)
                }
                .await;
                Self::release(session).await;
                drop(guard);
                res.map_err(|e| driver_error(&t.id, e))
            }
            .await;
            match res {
                Ok(gone) => out.removed.extend(gone.iter().map(|r| r.to_proto(&t.id))),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        Ok(out)
    }
}
