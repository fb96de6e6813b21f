//! `Adopt`: record another tool's version table (alembic, flyway, sqlx, golang-migrate) as
//! the targets' history (see `crate::adopt`). A write call: a standby forwards it to the
//! leader, which records it with its fencing token.

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, status_of};
use crate::engine::EngineError;
use crate::rollout::Selector;

pub(super) async fn adopt(
    api: &Api,
    req: Request<pb::AdoptRequest>,
) -> Result<Response<pb::AdoptResponse>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.adopt(forwarded(req)).await;
    }
    let req = req.into_inner();
    let from = match req.from.as_str() {
        "" => None,
        f if flotilla_core::foreign::table_of(f).is_some() => Some(f),
        f => {
            return Err(Status::invalid_argument(format!(
                "unknown tool {f:?}: use alembic, flyway, sqlx or golang-migrate"
            )));
        }
    };
    let term = api
        .engine
        .term()
        .ok_or_else(|| status_of(EngineError::NotLeader))?;
    let selector = Selector::from_proto(req.selector.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let engine = api.project(&req.project)?;
    let (_, graph) = engine.graph_of(&req.set_digest).await.map_err(status_of)?;
    let targets = crate::adopt::adopt(
        &engine,
        &graph,
        term.agent_token(),
        &selector,
        from,
        req.dry_run,
        req.retire_foreign,
    )
    .await
    .map_err(status_of)?;
    Ok(Response::new(pb::AdoptResponse { targets }))
}
