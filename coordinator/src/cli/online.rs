//! Online commands: they talk to a coordinator over gRPC (`--coordinator`, env
//! `FLOTILLA_COORDINATOR`). `plan`, `rollout ...`, `status`, `validate`, `history`, `stamp`,
//! `repair`, `adopt` and `wait` (the Kubernetes init-container gate).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tonic::transport::Channel;

use flotilla_agent::tls::ClientTls;
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;

use flotilla_agent::tls::error_chain;

use super::{CliError, GlobalArgs, OutputFormat};

mod adopt;
mod backups;
mod habits;
use crate::rollout::{Budget, RolloutSpec, RolloutState, Selector, WaveSize};

/// Exit code: the rollout failed, halted or was aborted (`rollout start --wait`, `watch`).
pub const EXIT_ROLLOUT_FAILED: u8 = 4;
/// Exit code: `flotilla wait` timed out before the targets reached the revision.
pub const EXIT_TIMEOUT: u8 = 5;
/// Exit code: selected targets are blocked. `rollout start` refused a downgrade that would
/// block targets (nothing ran), or a rollout ended `blocked` (`--wait`, `watch`).
pub const EXIT_BLOCKED: u8 = 6;

/// How to reach the coordinator: `https://` URLs use TLS.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator gRPC address (https:// for TLS)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_COORDINATOR",
        default_value = "http://127.0.0.1:7600",
        value_name = "URL"
    )]
    pub coordinator: String,
    /// CA (PEM) the coordinator's certificate must chain to (default: the webpki roots)
    #[arg(long, global = true, env = "FLOTILLA_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires one (mTLS)
    #[arg(long, global = true, env = "FLOTILLA_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM)
    #[arg(long, global = true, env = "FLOTILLA_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host)
    #[arg(long, global = true, env = "FLOTILLA_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

impl ClientArgs {
    /// The TLS settings, files read and checked. TLS flags with an `http://` coordinator are
    /// refused rather than silently ignored.
    pub fn tls(&self) -> Result<ClientTls, CliError> {
        let any = self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_domain.is_some();
        if any && !self.coordinator.starts_with("https://") {
            return Err(CliError::Refused(format!(
                "--coordinator {} is not an https:// URL, but TLS flags are set (--tls-*): \
                 use https://, or drop the TLS flags",
                self.coordinator
            )));
        }
        ClientTls::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
        .map_err(|e| CliError::Refused(e.to_string()))
    }

    /// Connect to the coordinator these flags name.
    pub async fn connect(&self) -> Result<CoordinatorServiceClient<Channel>, CliError> {
        connect_with(&self.coordinator, &self.tls()?).await
    }
}

/// Which targets: `--selector tier=gold,region=eu` and/or `--target ID` (repeatable).
#[derive(Debug, Clone, Args, Default)]
pub struct SelectArgs {
    /// Label selector: key=value[,key=value]; `dialect` and `agent` match implicitly
    #[arg(long, short = 'l', env = "FLOTILLA_SELECTOR", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only these targets (repeatable)
    #[arg(long = "target", value_name = "ID")]
    pub targets: Vec<String>,
}

impl SelectArgs {
    pub fn selector(&self) -> Result<Selector, CliError> {
        let mut sel = match &self.selector {
            Some(s) => Selector::parse(s).map_err(CliError::Refused)?,
            None => Selector::default(),
        };
        sel.target_ids = self.targets.clone();
        Ok(sel)
    }
}

/// What a rollout should do.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Goal: head, base, a revision id, -N or +N
    #[arg(
        long = "to",
        default_value = "head",
        env = "FLOTILLA_GOAL",
        allow_hyphen_values = true
    )]
    pub goal: String,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Targets in the canary wave (0 = no canary)
    #[arg(long, default_value_t = 1, env = "FLOTILLA_CANARY")]
    pub canary: u32,
    /// Wave sizes after the canary, e.g. --wave 10% --wave 50% (the rest forms a last wave)
    #[arg(
        long = "wave",
        value_name = "N|P%",
        env = "FLOTILLA_WAVES",
        value_delimiter = ','
    )]
    pub waves: Vec<String>,
    /// Targets migrated at once
    #[arg(long, default_value_t = 8, env = "FLOTILLA_MAX_PARALLEL")]
    pub max_parallel: u32,
    /// Targets migrated at once on one database host (0 = no limit)
    #[arg(long, default_value_t = 0, env = "FLOTILLA_MAX_PARALLEL_PER_HOST")]
    pub max_parallel_per_host: u32,
    /// Failed targets tolerated before the rollout halts: N or P%
    #[arg(long, default_value = "0", env = "FLOTILLA_FAILURE_BUDGET")]
    pub failure_budget: String,
    /// Do not compare schema fingerprints with the canary's after each wave
    #[arg(long, env = "FLOTILLA_NO_FINGERPRINT_GATE")]
    pub no_fingerprint_gate: bool,
    /// Allow down steps (implied by --to base and --to -N)
    #[arg(long, env = "FLOTILLA_ALLOW_DOWNGRADE")]
    pub allow_downgrade: bool,
    /// Start even if the downgrade blocks some targets (irreversible revisions): migrate the
    /// rest, leave those untouched; the rollout then ends `blocked` (exit 6)
    #[arg(long, env = "FLOTILLA_ALLOW_BLOCKED")]
    pub allow_blocked: bool,
    /// One transaction per step, instead of one per target for consecutive transactional
    /// steps (where a failing step also rolls back the steps before it)
    #[arg(long, env = "FLOTILLA_TRANSACTION_PER_STEP")]
    pub transaction_per_step: bool,
    /// Run revisions with destructive lint findings (drop table/column/schema, truncate)
    /// that their file does not allow with `-- lint: allow destructive`
    #[arg(long, env = "FLOTILLA_ALLOW_DESTRUCTIVE")]
    pub allow_destructive: bool,
}

impl SpecArgs {
    pub fn spec(&self) -> Result<RolloutSpec, CliError> {
        let waves = self
            .waves
            .iter()
            .map(|w| WaveSize::parse(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Refused)?;
        let implied_down = self.goal == "base" || self.goal.starts_with('-');
        Ok(RolloutSpec {
            goal: self.goal.clone(),
            selector: self.select.selector()?,
            canary: self.canary,
            waves,
            max_parallel: self.max_parallel.max(1),
            max_parallel_per_host: self.max_parallel_per_host,
            failure_budget: Budget::parse(&self.failure_budget).map_err(CliError::Refused)?,
            fingerprint_gate: !self.no_fingerprint_gate,
            allow_downgrade: self.allow_downgrade || implied_down,
            allow_blocked: self.allow_blocked,
            transaction_per_step: self.transaction_per_step,
            allow_destructive: self.allow_destructive,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum OnlineCommand {
    /// Show what a rollout would do to every selected target, touching nothing
    Plan {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Start, follow and control rollouts
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Record the history another tool's version table shows (alembic_version,
    /// flyway_schema_history, _sqlx_migrations, schema_migrations) as adopted, running nothing
    Adopt(adopt::AdoptArgs),
    /// The backups agents take before destructive steps: list, restore, prune
    Backups(backups::BackupsArgs),
    /// The fleet table: target, agent, dialect, labels, revision, dirty, drift
    Status {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Fleet-wide drift report: history problems, and schema drift (a target whose schema
    /// differs from the canary's or the majority's at the same revisions) with its diff
    Validate {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// A target's full migration history; without --target, the revision graph newest first
    /// (offline, like `alembic history`; --verbose adds parents, paths and checksums)
    History {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, env = "FLOTILLA_HISTORY_TARGET")]
        target: Option<String>,
        /// Without --target: every revision's details
        #[arg(long, short = 'v', env = "FLOTILLA_HISTORY_VERBOSE")]
        verbose: bool,
    },
    /// Each target's current revision(s), or a fleet summary (like `alembic current`)
    Current(habits::CurrentArgs),
    /// Development reset of one target: downgrade it to base, after confirmation
    Reset(habits::ResetArgs),
    /// Record a target as being at a revision without running SQL
    Stamp {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        target: String,
        #[arg(long)]
        revision: String,
    },
    /// Resolve a dirty step: did it apply (--applied) or not (--not-applied)?
    Repair {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        target: String,
        /// The dirty revision (default: the one the target reports)
        #[arg(long)]
        revision: Option<String>,
        #[arg(
            long,
            conflicts_with = "not_applied",
            required_unless_present = "not_applied"
        )]
        applied: bool,
        #[arg(long)]
        not_applied: bool,
    },
    /// Wait until every selected target has a revision applied (Kubernetes init containers)
    Wait {
        #[command(flatten)]
        client: ClientArgs,
        /// The revision to wait for (`head` = every graph head)
        #[arg(long, env = "FLOTILLA_WAIT_REVISION")]
        revision: String,
        #[command(flatten)]
        select: SelectArgs,
        /// Give up after this long (e.g. 90s, 5m)
        #[arg(long, default_value = "5m", value_parser = parse_duration, env = "FLOTILLA_WAIT_TIMEOUT")]
        timeout: Duration,
        /// Pause between two checks
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout; with --wait follow it and exit non-zero if it fails or halts (4) or
    /// ends with blocked targets (6)
    Start {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        spec: SpecArgs,
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

/// Parse `500ms`, `90s`, `5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    })
}

/// Connect to the coordinator with default TLS settings (webpki roots for `https://`).
pub async fn connect(addr: &str) -> Result<CoordinatorServiceClient<Channel>, CliError> {
    connect_with(addr, &ClientTls::default()).await
}

/// Connect to the coordinator: TLS per `tls` for `https://`, plaintext for `http://`.
pub async fn connect_with(
    addr: &str,
    tls: &ClientTls,
) -> Result<CoordinatorServiceClient<Channel>, CliError> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| CliError::Refused(format!("coordinator: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Refused(format!("cannot reach the coordinator at {addr}: {}; is `flotilla coordinator` running? (set --coordinator or FLOTILLA_COORDINATOR; for TLS see --tls-ca, --tls-cert, --tls-key)", error_chain(&e)))
    })?;
    Ok(CoordinatorServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

fn rpc(e: tonic::Status) -> CliError {
    // A transport failure (e.g. the server refused our certificate after the handshake)
    // keeps its explanation in the status's source.
    let cause = std::error::Error::source(&e)
        .map(|c| format!(": {}", error_chain(c)))
        .unwrap_or_default();
    CliError::Refused(format!("{}{cause} ({:?})", e.message(), e.code()))
}

/// A refused StartRollout; a downgrade that would block targets is its own error (exit 6).
fn would_block(e: tonic::Status) -> CliError {
    match e.message().strip_prefix("WOULD_BLOCK: ") {
        Some(why) if e.code() == tonic::Code::FailedPrecondition => {
            CliError::WouldBlock(why.to_owned())
        }
        _ => rpc(e),
    }
}

/// Run an online command; returns the exit code.
pub async fn run(
    cmd: OnlineCommand,
    global: &GlobalArgs,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let json = global.output == OutputFormat::Json;
    match cmd {
        OnlineCommand::Adopt(args) => adopt::run(args, json, out).await,
        OnlineCommand::Backups(args) => backups::run(args, json, out).await,
        OnlineCommand::Plan { client, spec } => {
            let mut c = client.connect().await?;
            let resp = c
                .plan(pb::PlanRequest {
                    spec: Some(spec.spec()?.to_proto()),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(out, &plan_json(&resp))?;
            } else {
                let mut rows = vec![row(&["TARGET", "AGENT", "DIALECT", "STEPS", "NOTE"])];
                for t in &resp.targets {
                    let steps = t
                        .steps
                        .iter()
                        .map(|s| {
                            format!(
                                "{}{}",
                                if s.direction == pb::Direction::Down as i32 {
                                    "-"
                                } else {
                                    "+"
                                },
                                s.revision
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    rows.push(vec![
                        t.target_id.clone(),
                        t.agent_id.clone(),
                        dialect_name(t.dialect).into(),
                        if steps.is_empty() && t.blocked_reason.is_empty() {
                            "(at goal)".into()
                        } else {
                            steps
                        },
                        if t.blocked_reason.is_empty() {
                            String::new()
                        } else {
                            format!("BLOCKED: {}", t.blocked_reason)
                        },
                    ]);
                }
                write_table(out, &rows)?;
            }
            Ok(0)
        }
        OnlineCommand::Rollout(cmd) => rollout(cmd, json, out).await,
        OnlineCommand::Status { client, select } => {
            let mut c = client.connect().await?;
            let resp = c
                .fleet_status(pb::FleetStatusRequest {
                    selector: Some(select.selector()?.to_proto()),
                    include_schema: true,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(out, &fleet_json(&resp))?;
            } else {
                write_fleet_table(out, &resp)?;
            }
            Ok(0)
        }
        OnlineCommand::Validate { client, select } => {
            let mut c = client.connect().await?;
            let resp = c
                .fleet_validate(pb::FleetValidateRequest {
                    selector: Some(select.selector()?.to_proto()),
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
            if json {
                emit(out, &validate_json(&resp))?;
            } else {
                writeln!(
                    out,
                    "{} targets in {} groups (revision, fingerprint):",
                    resp.targets.len(),
                    resp.groups.len()
                )
                .map_err(CliError::Output)?;
                for g in &resp.groups {
                    writeln!(
                        out,
                        "  {:<40} {}  {} targets: {}",
                        g.heads,
                        short(&g.fingerprint),
                        g.target_ids.len(),
                        abbreviate(&g.target_ids, 6)
                    )
                    .map_err(CliError::Output)?;
                }
                if drifting > 0 {
                    writeln!(out, "drift:").map_err(CliError::Output)?;
                    for t in resp
                        .targets
                        .iter()
                        .filter(|t| !t.issues.is_empty() || !t.error.is_empty())
                    {
                        for i in &t.issues {
                            writeln!(out, "  {}: {} {}", t.target_id, i.revision, i.message)
                                .map_err(CliError::Output)?;
                        }
                        if !t.error.is_empty() {
                            writeln!(out, "  {}: {}", t.target_id, t.error)
                                .map_err(CliError::Output)?;
                        }
                    }
                    write_schema_drift(out, &resp.schema_drift)?;
                } else {
                    writeln!(out, "no drift").map_err(CliError::Output)?;
                }
            }
            Ok(if drifting > 0 {
                super::EXIT_PROBLEMS
            } else {
                0
            })
        }
        OnlineCommand::Current(args) => habits::current(args, global, out).await,
        OnlineCommand::Reset(args) => habits::reset(args, global, out).await,
        OnlineCommand::History {
            target: None,
            verbose,
            ..
        } => {
            let g = crate::revision::Graph::load_dir(&global.migrations)?;
            let text = super::offline::history(&g, verbose, json)?;
            out.write_all(text.as_bytes()).map_err(CliError::Output)?;
            Ok(0)
        }
        OnlineCommand::History {
            client,
            target: Some(target),
            verbose: _,
        } => {
            let mut c = client.connect().await?;
            let t = c
                .history(pb::HistoryRequest { target_id: target })
                .await
                .map_err(rpc)?
                .into_inner()
                .target
                .unwrap_or_default();
            if json {
                emit(
                    out,
                    &json!({ "target": t.target_id, "history": t.history.iter().map(applied_json).collect::<Vec<_>>() }),
                )?;
            } else {
                let mut rows = vec![row(&[
                    "ID",
                    "REVISION",
                    "DIR",
                    "STATUS",
                    "APPLIED AT",
                    "DURATION",
                    "ROLLOUT",
                    "AGENT",
                    "TOKEN",
                    "CHECKSUM",
                ])];
                for (i, h) in t.history.iter().enumerate() {
                    rows.push(vec![
                        (i + 1).to_string(),
                        h.revision.clone(),
                        direction_name(h.direction).into(),
                        h.status.clone(),
                        rfc3339(h.applied_at_unix_ms),
                        format!("{}ms", h.duration_ms),
                        h.rollout_id.clone(),
                        h.agent_id.clone(),
                        h.fencing_token.to_string(),
                        short(&h.checksum).into(),
                    ]);
                }
                write_table(out, &rows)?;
            }
            Ok(0)
        }
        OnlineCommand::Stamp {
            client,
            target,
            revision,
        } => {
            let mut c = client.connect().await?;
            let t = c
                .stamp(pb::FleetStampRequest {
                    target_id: target,
                    revision,
                    direction: 0,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            report_target(out, json, &t)?;
            Ok(0)
        }
        OnlineCommand::Repair {
            client,
            target,
            revision,
            applied,
            not_applied: _,
        } => {
            let mut c = client.connect().await?;
            let t = c
                .repair(pb::FleetRepairRequest {
                    target_id: target,
                    revision: revision.unwrap_or_default(),
                    applied,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            report_target(out, json, &t)?;
            Ok(0)
        }
        OnlineCommand::Wait {
            client,
            revision,
            select,
            timeout,
            interval,
        } => {
            wait(
                &client,
                &revision,
                select.selector()?,
                timeout,
                interval,
                json,
                out,
            )
            .await
        }
    }
}

async fn rollout(
    cmd: RolloutCommand,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    match cmd {
        RolloutCommand::Start { client, spec, wait } => {
            let mut c = client.connect().await?;
            let mut req = tonic::Request::new(pb::StartRolloutRequest {
                spec: Some(spec.spec()?.to_proto()),
            });
            // This call starts the rollout's trace: its span is the root, the coordinator's
            // rollout span its child.
            let span = tracing::info_span!(
                "rpc",
                otel.name = "flotilla rollout start",
                otel.kind = "client"
            );
            span.in_scope(|| crate::telemetry::inject_current(req.metadata_mut()));
            let r = tracing::Instrument::instrument(c.start_rollout(req), span)
                .await
                .map_err(would_block)?
                .into_inner();
            if !wait {
                report_rollout(out, json, &r)?;
                return Ok(0);
            }
            if !json {
                writeln!(out, "rollout {} started{}", r.id, trace_note(&r))
                    .map_err(CliError::Output)?;
            }
            follow(&mut c, &r.id, json, out).await
        }
        RolloutCommand::Watch { client, id } => {
            let mut c = client.connect().await?;
            follow(&mut c, &id, json, out).await
        }
        RolloutCommand::Get { client, id } => {
            let mut c = client.connect().await?;
            let r = c
                .get_rollout(pb::GetRolloutRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            report_rollout(out, json, &r)?;
            Ok(0)
        }
        RolloutCommand::List { client, limit } => {
            let mut c = client.connect().await?;
            let resp = c
                .list_rollouts(pb::ListRolloutsRequest { limit })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(
                    out,
                    &Value::Array(resp.rollouts.iter().map(rollout_json).collect()),
                )?;
            } else {
                let mut rows = vec![row(&["ID", "STATE", "GOAL", "WAVE", "CREATED", "MESSAGE"])];
                for r in &resp.rollouts {
                    rows.push(vec![
                        r.id.clone(),
                        state_name(r.state).into(),
                        r.spec.as_ref().map(|s| s.goal.clone()).unwrap_or_default(),
                        format!(
                            "{}/{}",
                            (r.current_wave + 1).min(r.wave_count),
                            r.wave_count
                        ),
                        rfc3339(r.created_at_unix_ms),
                        r.message.clone(),
                    ]);
                }
                write_table(out, &rows)?;
            }
            Ok(0)
        }
        RolloutCommand::Pause { client, id } => {
            let r = client
                .connect()
                .await?
                .pause_rollout(pb::RolloutControlRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            report_rollout(out, json, &r)?;
            Ok(0)
        }
        RolloutCommand::Resume { client, id } => {
            let r = client
                .connect()
                .await?
                .resume_rollout(pb::RolloutControlRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            report_rollout(out, json, &r)?;
            Ok(0)
        }
        RolloutCommand::Abort { client, id } => {
            let r = client
                .connect()
                .await?
                .abort_rollout(pb::RolloutControlRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            report_rollout(out, json, &r)?;
            Ok(0)
        }
    }
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
    let mut progress = super::progress::Progress::new(!json && std::io::stderr().is_terminal());
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
    report_rollout(out, json, &r)?;
    let state = RolloutState::from_proto(pb::RolloutState::try_from(r.state).unwrap_or_default());
    Ok(match state {
        RolloutState::Succeeded | RolloutState::CompletedWithFailures => 0,
        RolloutState::Blocked => EXIT_BLOCKED,
        _ => EXIT_ROLLOUT_FAILED,
    })
}

async fn wait(
    client: &ClientArgs,
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
            c.fleet_status(pb::FleetStatusRequest {
                selector: Some(selector.to_proto()),
                include_schema: false,
            })
            .await
            .map_err(rpc)
            .map(|r| r.into_inner())
        }
        .await;
        match attempt {
            Ok(resp) => {
                let wanted: Vec<String> = if revision == "head" {
                    resp.graph_heads.clone()
                } else {
                    vec![revision.to_owned()]
                };
                last_missing = resp
                    .targets
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
                    .collect();
                if resp.targets.is_empty() {
                    last_missing = vec!["(no target matches the selector)".into()];
                }
                if last_missing.is_empty() {
                    if json {
                        emit(
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
                emit(
                    out,
                    &json!({ "revision": revision, "ready": false, "waiting_for": last_missing }),
                )?;
            } else {
                writeln!(
                    out,
                    "timed out after {timeout:?} waiting for {revision} on: {}",
                    abbreviate(&last_missing, 10)
                )
                .map_err(CliError::Output)?;
            }
            return Ok(EXIT_TIMEOUT);
        }
        tokio::time::sleep(interval).await;
    }
}

fn trace_note(r: &pb::Rollout) -> String {
    if r.trace_id.is_empty() {
        String::new()
    } else {
        format!(" (trace {})", r.trace_id)
    }
}

fn report_rollout(
    out: &mut (dyn Write + Send),
    json: bool,
    r: &pb::Rollout,
) -> Result<(), CliError> {
    if json {
        return emit(out, &rollout_json(r));
    }
    let o = |e| CliError::Output(e);
    writeln!(out, "rollout {}: {}", r.id, state_name(r.state)).map_err(o)?;
    if let Some(s) = &r.spec {
        writeln!(out, "  goal: {} ({})", s.goal, r.goal_revision).map_err(o)?;
    }
    writeln!(
        out,
        "  wave: {}/{}",
        (r.current_wave + 1).min(r.wave_count),
        r.wave_count
    )
    .map_err(o)?;
    if !r.trace_id.is_empty() {
        writeln!(out, "  trace id: {}", r.trace_id).map_err(o)?;
    }
    writeln!(out, "  fencing token: {}", r.fencing_token).map_err(o)?;
    writeln!(
        out,
        "  created: {}, updated: {}",
        rfc3339(r.created_at_unix_ms),
        rfc3339(r.updated_at_unix_ms)
    )
    .map_err(o)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &r.targets {
        *counts.entry(target_state_name(t.state)).or_default() += 1;
    }
    if !counts.is_empty() {
        let c = counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(out, "  targets: {c}").map_err(o)?;
    }
    for t in r
        .targets
        .iter()
        .filter(|t| matches!(target_state_name(t.state), "failed" | "blocked"))
    {
        writeln!(
            out,
            "  {} {}: {}",
            target_state_name(t.state),
            t.target_id,
            t.message
        )
        .map_err(o)?;
    }
    if !r.message.is_empty() {
        writeln!(out, "  {}", r.message).map_err(o)?;
    }
    Ok(())
}

fn report_target(
    out: &mut (dyn Write + Send),
    json: bool,
    t: &pb::TargetStatus,
) -> Result<(), CliError> {
    if json {
        return emit(out, &target_status_json(t));
    }
    writeln!(
        out,
        "{}: heads {} dirty {}",
        t.target_id,
        revision_of(t),
        t.dirty
    )
    .map_err(CliError::Output)
}

/// Each schema-drifted target with its reference and the differences, one per line.
fn write_schema_drift(
    out: &mut (dyn Write + Send),
    drift: &[pb::SchemaDrift],
) -> Result<(), CliError> {
    let o = CliError::Output;
    for d in drift {
        writeln!(
            out,
            "  {}: schema differs from {} ({} at {}, fingerprint {} vs {}):",
            d.target_id,
            d.reference_target_id,
            d.dialect,
            d.heads,
            short(&d.fingerprint),
            short(&d.reference_fingerprint)
        )
        .map_err(o)?;
        if !d.error.is_empty() {
            writeln!(out, "    {}", d.error).map_err(o)?;
        }
        for c in &d.changes {
            writeln!(out, "    {}", c.description).map_err(o)?;
        }
    }
    Ok(())
}

pub(crate) fn emit(out: &mut (dyn Write + Send), v: &Value) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out).map_err(CliError::Output)
}

pub(crate) fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

/// Write rows as left-aligned columns.
pub(crate) fn write_table(
    out: &mut (dyn Write + Send),
    rows: &[Vec<String>],
) -> Result<(), CliError> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(CliError::Output)?;
    }
    Ok(())
}

pub(crate) fn write_fleet_table(
    out: &mut (dyn Write + Send),
    resp: &pb::FleetStatusResponse,
) -> Result<(), CliError> {
    let mut rows = vec![row(&[
        "TARGET", "AGENT", "DIALECT", "LABELS", "REVISION", "DIRTY", "DRIFT",
    ])];
    for t in &resp.targets {
        let Some(s) = &t.status else { continue };
        let labels = s
            .labels
            .iter()
            .collect::<BTreeMap<_, _>>()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        rows.push(vec![
            if s.target_id.is_empty() {
                "-".into()
            } else {
                s.target_id.clone()
            },
            t.agent_id.clone(),
            dialect_name(s.dialect).into(),
            labels,
            if s.error.is_empty() {
                revision_of(s)
            } else {
                format!("ERROR: {}", s.error)
            },
            if s.dirty {
                format!("yes ({})", s.dirty_revision)
            } else {
                "no".into()
            },
            if t.drift.is_empty() {
                "-".into()
            } else {
                t.drift.join("; ")
            },
        ]);
    }
    write_table(out, &rows)
}

fn revision_of(s: &pb::TargetStatus) -> String {
    if s.heads.is_empty() {
        "base".into()
    } else {
        s.heads.join(",")
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-03T07:34:00.230Z`); `-` for 0 (never set).
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    /// 10000-01-01T00:00:00Z: humantime formats years up to 9999 (and none before 1970).
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    match unix_ms {
        0 => "-".into(),
        1..YEAR_10000_MS => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.unsigned_abs()),
        )
        .to_string(),
        _ => format!("{unix_ms}ms since the epoch"),
    }
}

fn abbreviate(ids: &[String], n: usize) -> String {
    if ids.len() <= n {
        ids.join(", ")
    } else {
        format!("{}, … ({} more)", ids[..n].join(", "), ids.len() - n)
    }
}

pub(crate) fn dialect_name(d: i32) -> &'static str {
    match pb::Dialect::try_from(d).unwrap_or_default() {
        pb::Dialect::Postgres => "postgres",
        pb::Dialect::Mysql => "mysql",
        pb::Dialect::Sqlite => "sqlite",
        pb::Dialect::Unspecified => "-",
    }
}

fn direction_name(d: i32) -> &'static str {
    match pb::Direction::try_from(d).unwrap_or_default() {
        pb::Direction::Up => "up",
        pb::Direction::Down => "down",
        pb::Direction::Unspecified => "-",
    }
}

pub(crate) fn state_name(s: i32) -> &'static str {
    RolloutState::from_proto(pb::RolloutState::try_from(s).unwrap_or_default()).as_str()
}

pub(crate) fn target_state_name(s: i32) -> &'static str {
    match pb::TargetState::try_from(s).unwrap_or_default() {
        pb::TargetState::Unspecified | pb::TargetState::Pending => "pending",
        pb::TargetState::Running => "running",
        pb::TargetState::Succeeded => "succeeded",
        pb::TargetState::Failed => "failed",
        pb::TargetState::Skipped => "skipped",
        pb::TargetState::Blocked => "blocked",
    }
}

fn applied_json(a: &pb::AppliedRevision) -> Value {
    json!({
        "revision": a.revision, "checksum": a.checksum, "direction": direction_name(a.direction),
        "status": a.status, "applied_at": rfc3339(a.applied_at_unix_ms), "applied_at_unix_ms": a.applied_at_unix_ms, "duration_ms": a.duration_ms,
        "rollout_id": a.rollout_id, "agent_id": a.agent_id, "fencing_token": a.fencing_token,
    })
}

fn target_status_json(s: &pb::TargetStatus) -> Value {
    json!({
        "target": s.target_id, "dialect": dialect_name(s.dialect), "labels": s.labels, "host": s.host,
        "heads": s.heads, "applied": s.applied.iter().map(|a| &a.revision).collect::<Vec<_>>(),
        "dirty": s.dirty, "dirty_revision": s.dirty_revision, "fence_token": s.fence_token, "error": s.error,
    })
}

fn fleet_json(r: &pb::FleetStatusResponse) -> Value {
    json!({
        "graph_heads": r.graph_heads, "graph_digest": r.graph_digest,
        "targets": r.targets.iter().map(|t| {
            let mut v = t.status.as_ref().map(target_status_json).unwrap_or(json!({}));
            v["agent"] = json!(t.agent_id);
            v["drift"] = json!(t.drift);
            v
        }).collect::<Vec<_>>(),
    })
}

fn validate_json(r: &pb::FleetValidateResponse) -> Value {
    json!({
        "groups": r.groups.iter().map(|g| json!({ "heads": g.heads, "fingerprint": g.fingerprint, "targets": g.target_ids })).collect::<Vec<_>>(),
        "schema_drift": r.schema_drift.iter().map(|d| json!({
            "target": d.target_id, "dialect": d.dialect, "heads": d.heads, "fingerprint": d.fingerprint,
            "reference_target": d.reference_target_id, "reference_fingerprint": d.reference_fingerprint,
            "error": d.error,
            "changes": d.changes.iter().map(|c| json!({ "table": c.table, "object": c.object, "name": c.name, "change": c.change, "description": c.description })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "fingerprint": t.fingerprint, "applied": t.applied, "error": t.error,
            "issues": t.issues.iter().map(|i| json!({ "revision": i.revision, "kind": pb::IssueKind::try_from(i.kind).map(|k| k.as_str_name()).unwrap_or("?"), "message": i.message })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn plan_json(r: &pb::PlanResponse) -> Value {
    json!({
        "graph_digest": r.graph_digest,
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "agent": t.agent_id, "dialect": dialect_name(t.dialect), "blocked": t.blocked_reason,
            "steps": t.steps.iter().map(|s| json!({ "revision": s.revision, "direction": direction_name(s.direction), "checksum": s.checksum, "transactional": s.transactional })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn rollout_json(r: &pb::Rollout) -> Value {
    json!({
        "id": r.id, "state": state_name(r.state), "message": r.message,
        "goal": r.spec.as_ref().map(|s| s.goal.clone()), "goal_revision": r.goal_revision,
        "current_wave": r.current_wave, "wave_count": r.wave_count, "trace_id": r.trace_id,
        "fencing_token": r.fencing_token, "graph_digest": r.graph_digest,
        "created_at": rfc3339(r.created_at_unix_ms), "updated_at": rfc3339(r.updated_at_unix_ms),
        "created_at_unix_ms": r.created_at_unix_ms, "updated_at_unix_ms": r.updated_at_unix_ms,
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "agent": t.agent_id, "state": target_state_name(t.state), "wave": t.wave,
            "steps_done": t.steps_done, "steps_total": t.steps_total, "retries": t.retries,
            "message": t.message, "fingerprint": t.fingerprint,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(1_796_283_240_230), "2026-12-03T07:34:00.230Z");
        assert_eq!(rfc3339(0), "-");
        assert_eq!(rfc3339(-5), "-5ms since the epoch");
    }
}
