//! The migration set a planning command sends: the digest of `--migrations` (a
//! content-addressed bundle, `flotilla_revision::Bundle`), uploaded first when the
//! coordinator's state store lacks it. Without the directory (the flag's default, absent) the
//! command names no set and the coordinator plans with its own default set (so does an
//! empty `--migrations=`).

use std::path::Path;

use tonic::transport::Channel;

use flotilla_coordinator::sets::CHUNK_BYTES;
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_revision::Bundle;

use super::client::rpc;
use crate::args::DEFAULT_MIGRATIONS;
use crate::error::CliError;

/// The digest to send for `dir` ("" = the coordinator's default set), uploading the set
/// when the coordinator does not have it. The coordinator validates an upload like
/// `flotilla check` and refuses a bad set naming each file:line.
pub(crate) async fn ensure_set(
    c: &mut CoordinatorServiceClient<Channel>,
    dir: &Path,
) -> Result<String, CliError> {
    // `--migrations=` (empty) names no set explicitly, e.g. in the image, whose
    // FLOTILLA_MIGRATIONS points at the examples.
    if dir.as_os_str().is_empty() || (dir == Path::new(DEFAULT_MIGRATIONS) && !dir.is_dir()) {
        return Ok(String::new());
    }
    let bundle = Bundle::load_dir(dir)?;
    let encoded = bundle.encode();
    let digest = Bundle::digest_of(&encoded);
    let has = c
        .has_set(pb::HasSetRequest {
            digest: digest.clone(),
        })
        .await;
    match has {
        Ok(r) if r.get_ref().present => return Ok(digest),
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            tracing::warn!(
                "the coordinator does not take migration sets (an older version): it plans with its own --migrations"
            );
            return Ok(String::new());
        }
        Err(e) => return Err(rpc(e)),
    }
    let chunks: Vec<pb::SetChunk> = encoded
        .chunks(CHUNK_BYTES)
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
    let resp = c
        .upload_set(futures::stream::iter(chunks))
        .await
        .map_err(rpc)?
        .into_inner();
    tracing::info!(
        set = %resp.digest,
        revisions = resp.revisions,
        bytes = encoded.len(),
        "uploaded the migration set of {}",
        dir.display()
    );
    Ok(resp.digest)
}
