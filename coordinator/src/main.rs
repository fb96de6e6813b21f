//! `flotilla`: the coordinator server and CLI. Parses flags and dispatches; the work is in the
//! library (`flotilla_coordinator::cli`). Exit codes: 0 ok, 1 error, 2 usage, 3 check problems.

use std::process::ExitCode;

use clap::Parser;
use flotilla_coordinator::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Offline(cmd) => cli::offline::run(cmd, &cli.global, &mut stdout),
    };
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
