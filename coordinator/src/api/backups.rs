//! Backup calls, passed on to the agents: list (any coordinator; all agents or one target's),
//! restore and prune (write calls: a standby forwards them to the leader, which sends its
//! fencing token).

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, check_id, status_of};

pub(super) async fn list(
    api: &Api,
    req: Request<pb::FleetBackupsRequest>,
) -> Result<Response<pb::ListBackupsResponse>, Status> {
    let req = req.into_inner();
    let mut out = pb::ListBackupsResponse::default();
    if req.target_id.is_empty() {
        for agent in api.engine.agents().await.map_err(status_of)? {
            match agent
                .list_backups(pb::ListBackupsRequest {
                    project: api.project(&req.project)?.wire_project(),
                    target_ids: vec![],
                })
                .await
            {
                Ok(r) => {
                    out.backups.extend(r.backups);
                    out.errors.extend(r.errors);
                }
                Err(e) => out
                    .errors
                    .push(format!("agent {}: {}", agent.id(), e.message())),
            }
        }
    } else {
        check_id("target id", &req.target_id)?;
        let e = api
            .engine
            .target_status(&req.target_id, false)
            .await
            .map_err(status_of)?;
        out = e
            .agent
            .list_backups(pb::ListBackupsRequest {
                project: api.project(&req.project)?.wire_project(),
                target_ids: vec![req.target_id],
            })
            .await?;
    }
    out.backups.sort_by(|a, b| {
        (a.created_at_unix_ms, &a.target_id).cmp(&(b.created_at_unix_ms, &b.target_id))
    });
    Ok(Response::new(out))
}

pub(super) async fn restore(
    api: &Api,
    req: Request<pb::FleetRestoreBackupRequest>,
) -> Result<Response<pb::RestoreBackupResponse>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.restore_backup(forwarded(req)).await;
    }
    let req = req.into_inner();
    check_id("rollout id", &req.rollout_id)?;
    let (term, e) = api
        .leader_target(&*api.project(&req.project)?, &req.target_id)
        .await?;
    let resp = e
        .agent
        .restore_backup(pb::RestoreBackupRequest {
            project: api.project(&req.project)?.wire_project(),
            target_id: req.target_id,
            rollout_id: req.rollout_id,
            fencing_token: term.agent_token(),
        })
        .await?;
    Ok(Response::new(resp))
}

pub(super) async fn prune(
    api: &Api,
    req: Request<pb::FleetPruneBackupsRequest>,
) -> Result<Response<pb::PruneBackupsResponse>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.prune_backups(forwarded(req)).await;
    }
    let req = req.into_inner();
    let mut out = pb::PruneBackupsResponse::default();
    if req.target_id.is_empty() {
        for agent in api.engine.agents().await.map_err(status_of)? {
            match agent
                .prune_backups(pb::PruneBackupsRequest {
                    project: api.project(&req.project)?.wire_project(),
                    target_ids: vec![],
                    keep: req.keep,
                })
                .await
            {
                Ok(r) => {
                    out.removed.extend(r.removed);
                    out.errors.extend(r.errors);
                }
                Err(e) => out
                    .errors
                    .push(format!("agent {}: {}", agent.id(), e.message())),
            }
        }
    } else {
        let (_, e) = api
            .leader_target(&*api.project(&req.project)?, &req.target_id)
            .await?;
        out = e
            .agent
            .prune_backups(pb::PruneBackupsRequest {
                project: api.project(&req.project)?.wire_project(),
                target_ids: vec![req.target_id],
                keep: req.keep,
            })
            .await?;
    }
    Ok(Response::new(out))
}
