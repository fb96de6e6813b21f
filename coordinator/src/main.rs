//! `flotilla`: the coordinator server and CLI. Parses flags, sets up logging and dispatches;
//! the work is in the library (`flotilla_coordinator::cli`, `server`, `demo`).
//! Exit codes: 0 ok, 1 error, 2 usage, 3 problems found, 4 rollout failed, 5 wait timed out.

use std::process::ExitCode;

use clap::Parser;
use flotilla_coordinator::cli::{self, Cli, Command};
use flotilla_coordinator::server::Hooks;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Coordinator(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let result = match cli.command {
        Command::Offline(cmd) => {
            let mut stdout = std::io::stdout().lock();
            cli::offline::run(cmd, &cli.global, &mut stdout).map(|o| o.exit_code())
        }
        command => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(async {
                let mut stdout = std::io::stdout();
                match command {
                    Command::Online(cmd) => cli::online::run(cmd, &cli.global, &mut stdout).await,
                    Command::Coordinator(args) => cli::serve::run(args, &cli.global, Hooks::default()).await,
                    Command::Demo(args) => flotilla_coordinator::demo::run(args, &cli.global, &mut stdout).await,
                    Command::Offline(_) => unreachable!("handled above"),
                }
            }),
            Err(e) => Err(cli::CliError::Refused(format!("cannot start the async runtime: {e}"))),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
