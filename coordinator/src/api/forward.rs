//! A standby forwards write calls to the leader it finds in the store (the address the
//! leader recorded, fenced, when it took the lock), with the caller's trace context.
//!
//! Forwarding is one hop only: a forwarded call carries [`FORWARDED`], and a coordinator that
//! receives one without leading answers `NOT_LEADER` instead of forwarding again.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};

use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;

use super::{Api, status_of};
use crate::engine::EngineError;

/// Metadata key marking a call a standby forwarded: the receiver never forwards it again.
const FORWARDED: &str = "x-flotilla-forwarded";

/// A write call for the leader, as a standby re-sends it: the message, the caller's trace
/// context, and the forwarded mark.
pub(super) fn forwarded<T>(req: Request<T>) -> Request<T> {
    let md = req.metadata().clone();
    let mut out = Request::new(req.into_inner());
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = md.get(key) {
            out.metadata_mut().insert(key, v.clone());
        }
    }
    out.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    out
}

/// On a standby, a client for the leader (write calls are forwarded there, one hop
/// only); `None` when this coordinator leads and handles the call itself.
pub(super) async fn leader(
    api: &Api,
    md: &tonic::metadata::MetadataMap,
) -> Result<Option<CoordinatorServiceClient<Channel>>, Status> {
    if api.engine.term().is_some() {
        return Ok(None);
    }
    let not_leader = || status_of(EngineError::NotLeader);
    if md.contains_key(FORWARDED) {
        return Err(not_leader());
    }
    let Some(address) = api.engine.leader_address().await else {
        return Err(not_leader());
    };
    let endpoint = api
        .leader_tls
        .endpoint(&address)
        .map_err(|e| Status::unavailable(format!("NOT_LEADER: leader address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "NOT_LEADER: this coordinator is a standby and the leader at {address} is unreachable ({e}); retry"
        ))
    })?;
    Ok(Some(CoordinatorServiceClient::new(channel)))
}
