//! Any program (an agent, a coordinator) as a fault target: started on a port the caller
//! picked, killed, restarted on the same command line, frozen and thawed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rustix::process::Signal;
use tempfile::TempDir;

use crate::process::{Spawn, log_tail};
use crate::supervisor::Supervisor;
use crate::workdir;

/// A long-running program for fault tests, ready once it accepts TCP connections on `port`.
///
/// Faults: [`Program::kill`] (SIGKILL, as a pod or a machine going away),
/// [`Program::restart`] (the same command line again: same port, same files),
/// [`Program::freeze`] (SIGSTOP/SIGCONT: a process that stops answering without closing its
/// connections, as a leader stuck in a GC pause or on a frozen VM). Output goes to a log file
/// ([`Program::log`]). Dropping it kills the process; it also dies with the test binary.
#[derive(Debug)]
pub struct Program {
    port: u16,
    server: Supervisor,
    dir: TempDir,
}

impl Program {
    /// Runs `program args` and waits until something accepts connections on
    /// `127.0.0.1:port` (the caller passes the port in `args`, e.g. from
    /// [`crate::free_port`]). `what` names the program in errors.
    pub async fn start(
        what: &'static str,
        program: &Path,
        args: &[String],
        port: u16,
    ) -> anyhow::Result<Program> {
        anyhow::ensure!(
            program.is_file(),
            "{what}: {} not found: build it first",
            program.display()
        );
        let dir = workdir::server_dir("program")?;
        let log = dir.path().join("program.log");
        let spawn = Spawn {
            program: program.to_owned(),
            args: args.to_vec(),
            user: None,
            log,
        };
        let (server, _) = Supervisor::start(
            what,
            Signal::KILL,
            0,
            |_: &[u16]| spawn.clone(),
            |_: &[u16]| accepts(port),
        )
        .await?;
        Ok(Program { port, server, dir })
    }

    /// The port the program was started for.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (of the last process when killed).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Kills the program (SIGKILL, also when frozen) and waits until it is gone.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Kills the program unless it is already gone, starts it again with the same command
    /// line and waits until it accepts connections on its port.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let port = self.port;
        self.server
            .restart(Signal::KILL, Duration::ZERO, || accepts(port))
            .await
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) the program; returns once every
    /// thread of it is in that state.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        self.server.freeze(frozen)
    }

    /// The last 60 lines of the program's output (for failure messages).
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("program.log"), 60)
    }

    /// The program's whole output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("program.log")).unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.server.kill();
    }
}

/// Succeeds once something accepts a TCP connection on `127.0.0.1:port`.
async fn accepts(port: u16) -> anyhow::Result<()> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map(drop)
        .with_context(|| format!("nothing accepts connections on 127.0.0.1:{port} yet"))
}
