//! `FenceTakeover`: the deliberate operator step that moves a fleet to this coordinator's
//! lock backend (`Engine::fence_takeover`). A write call: a standby forwards it to the
//! leader.

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, status_of};

pub(super) async fn takeover(
    api: &Api,
    req: Request<pb::FenceTakeoverRequest>,
) -> Result<Response<pb::FenceTakeoverResponse>, Status> {
    if !req.get_ref().confirm {
        return Err(Status::invalid_argument(
            "fence takeover makes the coordinators of every other lock backend powerless over \
             this fleet: stop them first, then confirm (flotilla fence takeover --yes)",
        ));
    }
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.fence_takeover(forwarded(req)).await;
    }
    let done = api.engine.fence_takeover().await.map_err(status_of)?;
    Ok(Response::new(done.to_proto()))
}
