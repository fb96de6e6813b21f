//! The async runtime each command runs on: the coordinator's has the worker threads it was
//! given (`--worker-threads`, default one: its work is waiting on agents and the store, and
//! a second thread cost a quarter more CPU per target-step in wake-ups between the two;
//! README, Performance: Scale), everything else one per CPU (`demo` runs its agents
//! in-process). Blocking work (a set's validation) has threads of its own either way.

use crate::Command;

/// The runtime `command` runs on.
pub fn for_command(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Coordinator(args) = command {
        builder.worker_threads(usize::from(args.worker_threads));
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::for_command;
    use crate::Cli;

    fn workers(argv: &[&str]) -> usize {
        let cli = Cli::try_parse_from(argv).expect("valid arguments");
        for_command(&cli.command)
            .expect("runtime")
            .metrics()
            .num_workers()
    }

    #[test]
    fn the_coordinator_runs_on_the_threads_it_is_given() {
        assert_eq!(workers(&["flotilla", "coordinator"]), 1);
        assert_eq!(
            workers(&["flotilla", "coordinator", "--worker-threads", "3"]),
            3
        );
        let zero = Cli::try_parse_from(["flotilla", "coordinator", "--worker-threads", "0"]);
        assert!(zero.is_err(), "0 worker threads must be refused");
        // Other commands: one per CPU, as tokio's default.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(workers(&["flotilla", "demo"]), cpus);
    }
}
