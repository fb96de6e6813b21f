//! Commands about the selected fleet as a whole: `plan` (what a rollout would do), `status`
//! (the fleet table), `validate` (drift report, exit 3 on drift) and `wait` (the Kubernetes
//! init-container gate, exit 5 on timeout). `current` is in `habits`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use flotilla_coordinator::rollout::Selector;
use flotilla_proto as pb;

use super::client::{ClientArgs, connect_with, refused_spec, rpc};
use super::sets::ensure_set;
use super::spec::{SelectArgs, SpecArgs};
use crate::error::CliError;
use crate::exit::{EXIT_PROBLEMS, EXIT_TIMEOUT};
use crate::render;

/// `plan`: what a rollout with these flags would do to every selected target.
pub(super) async fn plan(
    client: &ClientArgs,
    spec: &SpecArgs,
    migrations: &Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut spec = spec.spec(&client.project)?;
    let mut c = client.connect().await?;
    spec.set_digest = ensure_set(&mut c, migrations).await?;
    let resp = c
        .plan(pb::PlanRequest {
            spec: Some(spec.to_proto()),
        })
        .await
        .map_err(refused_spec)?
        .into_inner();
    render::plan(out, json, &resp)?;
    Ok(0)
}

/// `status`: the fleet table, schema drift included.
pub(super) async fn status(
    client: &ClientArgs,
    select: &SelectArgs,
    migrations: &Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let selector = select.selector()?;
    let mut c = client.connect().await?;
    let set_digest = ensure_set(&mut c, migrations).await?;
    let resp = c
        .fleet_status(pb::FleetStatusRequest {
            selector: Some(selector.to_proto()),
            include_schema: true,
            set_digest,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    render::fleet_status(out, json, &resp)?;
    Ok(0)
}

/// `validate`: exit 3 when a target has history problems or an error, or schema drift.
pub(super) async fn validate(
    client: &ClientArgs,
    select: &SelectArgs,
    migrations: &Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let selector = select.selector()?;
    let mut c = client.connect().await?;
    let set_digest = ensure_set(&mut c, migrations).await?;
    let resp = c
        .fleet_validate(pb::FleetValidateRequest {
            selector: Some(selector.to_proto()),
            set_digest,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let drifting = resp
        .targets
        .iter()
        .filter(|t| !t.issues.is_empty() || !t.error.is_empty())
        .count()
        + resp.schema_drift.len();
    render::validate(out, json, &resp, drifting > 0)?;
    Ok(if drifting > 0 { EXIT_PROBLEMS } else { 0 })
}

/// `wait`: poll until every selected target has `revision` applied (0), or time out (5).
/// The coordinator may not be up yet: connection failures are retried like missing targets.
#[allow(clippy::too_many_arguments)]
pub(super) async fn wait(
    client: &ClientArgs,
    migrations: &Path,
    revision: &str,
    selector: Selector,
    timeout: Duration,
    interval: Duration,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    // Bad TLS settings are not worth retrying: fail before the loop.
    let tls = client.tls()?;
    let deadline = Instant::now() + timeout;
    let mut last_missing: Vec<String>;
    loop {
        // The coordinator may not be up yet (init containers start with the app): retry.
        let attempt = async {
            let mut c = connect_with(&client.coordinator, &tls).await?;
            let set_digest = ensure_set(&mut c, migrations).await?;
            c.fleet_status(pb::FleetStatusRequest {
                selector: Some(selector.to_proto()),
                include_schema: false,
                set_digest,
                project: client.project.clone(),
            })
            .await
            .map_err(rpc)
            .map(|r| r.into_inner())
        }
        .await;
        match attempt {
            Ok(resp) => {
                last_missing = missing(&resp, revision);
                if last_missing.is_empty() {
                    if json {
                        render::emit(
                            out,
                            &json!({ "revision": revision, "ready": true, "targets": resp.targets.len() }),
                        )?;
                    } else {
                        writeln!(out, "all {} targets have {revision}", resp.targets.len())
                            .map_err(CliError::Output)?;
                    }
                    return Ok(0);
                }
            }
            Err(e) => last_missing = vec![format!("coordinator: {e}")],
        }
        if Instant::now() + interval > deadline {
            if json {
                render::emit(
                    out,
                    &json!({ "revision": revision, "ready": false, "waiting_for": last_missing }),
                )?;
            } else {
                writeln!(
                    out,
                    "timed out after {timeout:?} waiting for {revision} on: {}",
                    render::abbreviate(&last_missing, 10)
                )
                .map_err(CliError::Output)?;
            }
            return Ok(EXIT_TIMEOUT);
        }
        tokio::time::sleep(interval).await;
    }
}

/// The selected targets that do not have `revision` (`head`: every graph head) applied, or
/// are dirty or unreachable, by target id (the agent id when a target has none).
fn missing(resp: &pb::FleetStatusResponse, revision: &str) -> Vec<String> {
    if resp.targets.is_empty() {
        return vec!["(no target matches the selector)".into()];
    }
    let wanted: Vec<String> = if revision == "head" {
        if resp.graph_heads.is_empty() {
            return vec![
                "(no migration set to tell the head: pass --migrations DIR or pin --revision)"
                    .into(),
            ];
        }
        resp.graph_heads.clone()
    } else {
        vec![revision.to_owned()]
    };
    resp.targets
        .iter()
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            let ok = s.error.is_empty()
                && !s.dirty
                && wanted
                    .iter()
                    .all(|w| s.applied.iter().any(|a| &a.revision == w));
            (!ok).then(|| {
                if s.target_id.is_empty() {
                    t.agent_id.clone()
                } else {
                    s.target_id.clone()
                }
            })
        })
        .collect()
}
