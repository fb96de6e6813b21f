//! `flotilla rollout start|watch|get|list|pause|resume|abort`, and [`follow`]: watching a
//! rollout to its end with live progress, then its report and exit code (`start --wait`,
//! `watch`, `reset`, the demo).

use std::io::{IsTerminal, Write};
use std::path::Path;

use clap::Subcommand;
use tonic::transport::Channel;

use flotilla_coordinator::rollout::RolloutState;
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;

use super::client::{ClientArgs, refused_spec, rpc};
use super::sets::ensure_set;
use super::spec::SpecArgs;
use crate::error::CliError;
use crate::exit::{EXIT_BLOCKED, EXIT_ROLLOUT_FAILED};
use crate::progress::Progress;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout; with --wait follow it and exit non-zero if it fails or halts (4) or
    /// ends with blocked targets (6)
    Start {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        spec: Box<SpecArgs>,
        #[arg(long)]
        wait: bool,
    },
    /// Follow a rollout until it ends (exit 4 if it fails, halts or is aborted, 6 if blocked)
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    Abort {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

/// The three ways to steer a running rollout.
#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Abort,
}

/// Run a `rollout` subcommand; returns the exit code.
pub(super) async fn run(
    cmd: RolloutCommand,
    migrations: &Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    match cmd {
        RolloutCommand::Start { client, spec, wait } => {
            start(&client, &spec, migrations, wait, json, out).await
        }
        RolloutCommand::Watch { client, id } => {
            let mut c = client.connect().await?;
            follow(&mut c, &id, json, out).await
        }
        RolloutCommand::Get { client, id } => get(&client, id, json, out).await,
        RolloutCommand::List { client, limit } => list(&client, limit, json, out).await,
        RolloutCommand::Pause { client, id } => {
            control(&client, Control::Pause, id, json, out).await
        }
        RolloutCommand::Resume { client, id } => {
            control(&client, Control::Resume, id, json, out).await
        }
        RolloutCommand::Abort { client, id } => {
            control(&client, Control::Abort, id, json, out).await
        }
    }
}

/// `rollout start [--wait]`: the call is the root span of the rollout's trace.
async fn start(
    client: &ClientArgs,
    spec: &SpecArgs,
    migrations: &Path,
    wait: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    // Bad flags (a selector outside its bounds) fail before any call.
    let mut spec = spec.spec(&client.project)?;
    let mut c = client.connect().await?;
    spec.set_digest = ensure_set(&mut c, migrations).await?;
    let mut req = tonic::Request::new(pb::StartRolloutRequest {
        spec: Some(spec.to_proto()),
    });
    // This call starts the rollout's trace: its span is the root, the coordinator's
    // rollout span its child.
    let span = tracing::info_span!(
        "rpc",
        otel.name = "flotilla rollout start",
        otel.kind = "client"
    );
    span.in_scope(|| flotilla_coordinator::telemetry::inject_current(req.metadata_mut()));
    let r = tracing::Instrument::instrument(c.start_rollout(req), span)
        .await
        .map_err(refused_spec)?
        .into_inner();
    if !wait {
        render::rollout(out, json, &r)?;
        return Ok(0);
    }
    if !json {
        writeln!(out, "rollout {} started{}", r.id, render::trace_note(&r))
            .map_err(CliError::Output)?;
    }
    follow(&mut c, &r.id, json, out).await
}

async fn get(
    client: &ClientArgs,
    id: String,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = client.connect().await?;
    let r = c
        .get_rollout(pb::GetRolloutRequest { id })
        .await
        .map_err(rpc)?
        .into_inner();
    render::rollout(out, json, &r)?;
    Ok(0)
}

async fn list(
    client: &ClientArgs,
    limit: u32,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = client.connect().await?;
    let resp = c
        .list_rollouts(pb::ListRolloutsRequest {
            limit,
            project: client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    render::rollouts(out, json, &resp.rollouts)?;
    Ok(0)
}

/// `rollout pause|resume|abort ID`: the rollout after the change.
async fn control(
    client: &ClientArgs,
    action: Control,
    id: String,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = client.connect().await?;
    let req = pb::RolloutControlRequest { id };
    let r = match action {
        Control::Pause => c.pause_rollout(req).await,
        Control::Resume => c.resume_rollout(req).await,
        Control::Abort => c.abort_rollout(req).await,
    }
    .map_err(rpc)?
    .into_inner();
    render::rollout(out, json, &r)?;
    Ok(0)
}

/// Follow a rollout to its end with live progress (bars on a terminal, lines otherwise);
/// exit 0 when it succeeded (or completed within its failure budget), 6 when it ended
/// `blocked`, 4 otherwise.
pub async fn follow(
    c: &mut CoordinatorServiceClient<Channel>,
    id: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut stream = c
        .watch_rollout(pb::WatchRolloutRequest { id: id.to_owned() })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut progress = Progress::new(!json && std::io::stderr().is_terminal());
    let mut last: Option<pb::Rollout> = None;
    while let Some(ev) = stream.message().await.map_err(rpc)? {
        let Some(r) = ev.rollout else { continue };
        if !json {
            progress.update(&r, last.as_ref());
        }
        last = Some(r);
    }
    progress.finish();
    let r = last.ok_or_else(|| {
        CliError::Refused(format!("rollout {id}: the watch ended without a state"))
    })?;
    render::rollout(out, json, &r)?;
    let state = RolloutState::from_proto(pb::RolloutState::try_from(r.state).unwrap_or_default());
    Ok(match state {
        RolloutState::Succeeded | RolloutState::CompletedWithFailures => 0,
        RolloutState::Blocked => EXIT_BLOCKED,
        _ => EXIT_ROLLOUT_FAILED,
    })
}
