//! Commands about one target: `history` (its migration history; without `--target` the
//! offline revision graph), `stamp` (record a revision without running SQL) and `repair`
//! (resolve a dirty step).

use std::io::Write;

use flotilla_proto as pb;

use super::client::{ClientArgs, rpc};
use crate::args::GlobalArgs;
use crate::error::CliError;
use crate::offline;
use crate::render;

/// `history`: one target's applied steps from the coordinator, or, without a target, the
/// local revision graph newest first (`--verbose`: every revision's details).
pub(super) async fn history(
    client: &ClientArgs,
    target: Option<String>,
    verbose: bool,
    global: &GlobalArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let Some(target) = target else {
        let g = flotilla_revision::Graph::load_dir(&global.migrations)?;
        let text = offline::history(&g, verbose, json)?;
        out.write_all(text.as_bytes()).map_err(CliError::Output)?;
        return Ok(0);
    };
    let mut c = client.connect().await?;
    let t = c
        .history(pb::HistoryRequest {
            target_id: target,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .target
        .unwrap_or_default();
    render::history(out, json, &t)?;
    Ok(0)
}

/// `stamp`: record `target` as being at `revision` without running SQL.
pub(super) async fn stamp(
    client: &ClientArgs,
    target: String,
    revision: String,
    migrations: &std::path::Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = client.connect().await?;
    let set_digest = super::sets::ensure_set(&mut c, migrations).await?;
    let t = c
        .stamp(pb::FleetStampRequest {
            set_digest,
            target_id: target,
            revision,
            direction: 0,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    render::target(out, json, &t)?;
    Ok(0)
}

/// `repair`: say whether `target`'s dirty step (`revision`, default the one it reports)
/// applied or not.
pub(super) async fn repair(
    client: &ClientArgs,
    target: String,
    revision: Option<String>,
    applied: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = client.connect().await?;
    let t = c
        .repair(pb::FleetRepairRequest {
            target_id: target,
            revision: revision.unwrap_or_default(),
            applied,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    render::target(out, json, &t)?;
    Ok(0)
}
