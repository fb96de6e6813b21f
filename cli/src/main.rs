//! `flotilla`: the coordinator server and CLI. Parses flags, sets up logging and tracing
//! (`flotilla_coordinator::telemetry`) and dispatches; the work is in the library
//! (`flotilla_cli`: offline and online commands, `serve`, `demo`).
//! Exit codes: 0 ok, 1 error, 2 usage, 3 problems found, 4 rollout failed, 5 wait timed out,
//! 6 targets blocked.

use std::process::ExitCode;

use clap::Parser;
use flotilla_cli::{self as cli, Cli, Command};
use flotilla_coordinator::telemetry::{self, TelemetryConfig};

/// jemalloc, configured at build time (.cargo/config.toml, shared with the agent): one arena,
/// and freed pages given back at once. glibc's per-thread arenas kept what a rollout freed
/// (the next rollout's peak started from the last one's), and malloc/free were a sixth of a
/// large rollout's CPU. README, Performance: Scale.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// This binary's jemalloc options, read by jemalloc by name before `main` and applied over the
/// build-time ones of `.cargo/config.toml` (so they hold however the binary was built: cargo
/// reads that file only when run from inside the workspace): the agent's, with per-thread
/// caches on. Small frees then stay with their thread instead of emptying the arena's slabs,
/// each of which was given back (pages are, at once) and faulted in again: the caches cost the
/// coordinator 2–4 MiB of peak at 10,000 targets and save it about a sixth of its CPU per
/// target-step and a quarter of it in a no-op; without them the threads that lint a big
/// revision queue on the one arena. The agent keeps them off: its idle RSS at 1,000 targets
/// grew by 4.3 MiB with them (README, Performance: "Thread caches for the coordinator").
#[allow(unsafe_code)] // an exported symbol
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"narenas:1,tcache:true,dirty_decay_ms:0,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (default_level, service_name) = match cli.command {
        Command::Coordinator(_) => ("info", "flotilla-coordinator"),
        Command::Demo(_) => ("warn", "flotilla-coordinator"),
        _ => ("warn", "flotilla"),
    };
    let rt = match cli::runtime::for_command(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    // The OTLP exporter's channel is created on this runtime.
    let guard = rt.enter();
    let filter = match flotilla_rpc::telemetry::log_filter(default_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    let telemetry = match telemetry::init(TelemetryConfig {
        service_name,
        log_format: cli.global.log_format,
        log_filter: filter,
        stderr: true,
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    tracing::info!(export = %telemetry.export(), "trace export");

    let result = match cli.command {
        Command::Offline(cmd) => {
            let mut stdout = std::io::stdout().lock();
            cli::offline::run(cmd, &cli.global, &mut stdout).map(|o| o.exit_code())
        }
        command => rt.block_on(async {
            let mut stdout = std::io::stdout();
            match command {
                Command::Online(cmd) => cli::online::run(cmd, &cli.global, &mut stdout).await,
                Command::Coordinator(args) => {
                    cli::serve::run(args, &cli.global, telemetry::hooks()).await
                }
                Command::Demo(args) => {
                    flotilla_cli::demo::run(args, &cli.global, &mut stdout).await
                }
                Command::Offline(_) => unreachable!("handled above"),
            }
        }),
    };
    rt.block_on(telemetry.shutdown());
    drop(guard);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
