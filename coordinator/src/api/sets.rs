//! Migration set calls: `HasSet` (read-only, any coordinator answers from the store) and
//! `UploadSet` (a write: a standby receives the chunks and forwards them to the leader).

use tonic::{Request, Response, Status, Streaming};

use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, status_of};
use crate::sets::{MAX_SET_BYTES, is_digest};

pub(super) async fn has(
    api: &Api,
    req: Request<pb::HasSetRequest>,
) -> Result<Response<pb::HasSetResponse>, Status> {
    let digest = req.into_inner().digest;
    check_digest(&digest)?;
    let present = api.engine.has_set(&digest).await.map_err(status_of)?;
    Ok(Response::new(pb::HasSetResponse { present }))
}

pub(super) async fn upload(
    api: &Api,
    req: Request<Streaming<pb::SetChunk>>,
) -> Result<Response<pb::UploadSetResponse>, Status> {
    let md = req.metadata().clone();
    let forward_to = leader(api, &md).await?;
    let mut stream = req.into_inner();
    let mut digest = String::new();
    let mut encoded: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if digest.is_empty() && !chunk.digest.is_empty() {
            check_digest(&chunk.digest)?;
            digest = chunk.digest;
        }
        if encoded.len() + chunk.data.len() > MAX_SET_BYTES {
            return Err(Status::invalid_argument(format!(
                "SET_TOO_LARGE: the migration set is larger than {} MiB; split it into projects or remove old revisions",
                MAX_SET_BYTES >> 20
            )));
        }
        encoded.extend_from_slice(&chunk.data);
    }
    if let Some(mut leader) = forward_to {
        let chunks: Vec<pb::SetChunk> = encoded
            .chunks(crate::sets::CHUNK_BYTES)
            .enumerate()
            .map(|(i, data)| pb::SetChunk {
                digest: if i == 0 {
                    digest.clone()
                } else {
                    String::new()
                },
                data: data.to_vec(),
            })
            .collect();
        let mut head = Request::new(());
        *head.metadata_mut() = md;
        let (meta, ext, ()) = forwarded(head).into_parts();
        let req = Request::from_parts(meta, ext, futures::stream::iter(chunks));
        return leader.upload_set(req).await;
    }
    let (digest, revisions, stored) = api
        .engine
        .upload_set(&digest, encoded)
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::UploadSetResponse {
        digest,
        revisions,
        stored,
    }))
}

fn check_digest(digest: &str) -> Result<(), Status> {
    if is_digest(digest) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "set digest {digest:?} is not 64 lowercase hex characters"
        )))
    }
}
