//! Server processes: spawning (never outliving the test binary), free ports, readiness, install hints.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process};

/// How long a server gets to accept its first real connection.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(30);

/// How many times a server start is retried when its port was taken meanwhile.
pub(crate) const PORT_ATTEMPTS: usize = 3;

/// Returns a free TCP port on 127.0.0.1.
///
/// Binds `127.0.0.1:0`, reads the port and drops the listener. Ports handed out earlier by this
/// process are never returned again, so parallel tests in one binary do not collide; a server
/// that still loses its port to another process is restarted on a new one by its `start()`.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        // Binding an ephemeral port on loopback only fails when the machine is out of ports.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the address of a bound listener: {e}"))
            .port();
        let mut set = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
}

/// Finds an executable by name: first in `preferred` directories, then on `PATH`.
pub(crate) fn find_binary(name: &str, preferred: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    preferred
        .iter()
        .chain(path_dirs.iter())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The error returned when a server binary is missing: says exactly how to install it.
pub(crate) fn not_installed(what: &str, install: &str) -> anyhow::Error {
    anyhow!("{what} not found: install it with `{install}`")
}

/// A stable key for a binary's build, used to name cached template data dirs.
pub(crate) fn binary_fingerprint(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(format!("{}-{mtime}", meta.len()))
}

/// Whether this process runs as root (then servers that refuse root run as another user).
pub(crate) fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A system user a server is run as, looked up in `/etc/passwd`.
#[derive(Debug, Clone)]
pub(crate) struct SystemUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl SystemUser {
    /// Looks `name` up in `/etc/passwd`.
    pub(crate) fn lookup(name: &str) -> Option<SystemUser> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            Some(SystemUser {
                name: name.to_owned(),
                uid: fields.next()?.parse().ok()?,
                gid: fields.next()?.parse().ok()?,
            })
        })
    }

    /// Gives `path` (not recursively) to this user.
    pub(crate) fn chown(&self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("cannot chown {} to {}", path.display(), self.name))
    }
}

/// What to run, as whom, and where its output goes.
#[derive(Debug, Clone)]
pub(crate) struct Spawn {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// Run as this user (through `setpriv`); `None` keeps the current user.
    pub(crate) user: Option<SystemUser>,
    /// stdout and stderr are appended here.
    pub(crate) log: PathBuf,
}

impl Spawn {
    /// Builds the command: `setpriv [--reuid ...] --pdeathsig KILL -- program args`.
    ///
    /// The parent-death signal kills the server when the test binary dies for any reason
    /// (panic with `panic = "abort"`, SIGKILL, ...), when no destructor gets to run.
    fn command(&self) -> anyhow::Result<Command> {
        let setpriv = find_binary("setpriv", &[])
            .ok_or_else(|| not_installed("setpriv", "apt-get install util-linux"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open log file {}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .context("cannot duplicate log file handle")?;
        let mut cmd = Command::new(setpriv);
        if let Some(user) = &self.user {
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups");
        }
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a Ctrl-C in the terminal reaches the test binary, not the servers.
            .process_group(0);
        Ok(cmd)
    }
}

type SpawnJob = (
    Command,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// Spawns on one long-lived thread: the parent-death signal fires when the *thread* that forked
/// the child exits, and test threads (or runtime worker threads) may exit long before a server
/// shared between tests is done.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the testkit spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// A running server process. Dropping it stops the process (see [`ServerProcess::drop`]).
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    what: &'static str,
    log: PathBuf,
    /// Sent first on drop; SIGKILL follows if the process is still alive after a moment.
    drop_signal: Signal,
}

impl ServerProcess {
    /// Starts `spawn`; `what` names the server in errors.
    pub(crate) async fn start(
        what: &'static str,
        spawn: &Spawn,
        drop_signal: Signal,
    ) -> anyhow::Result<ServerProcess> {
        let cmd = spawn.command()?;
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, reply_tx))
            .map_err(|_| anyhow!("the testkit spawner thread is gone"))?;
        let child = reply_rx
            .await
            .map_err(|_| anyhow!("the testkit spawner thread is gone"))?
            .with_context(|| format!("cannot spawn {what} ({})", spawn.program.display()))?;
        Ok(ServerProcess {
            child,
            what,
            log: spawn.log.clone(),
            drop_signal,
        })
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the server.
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| anyhow!("{} has an invalid pid {}", self.what, self.child.id()))?;
        kill_process(pid, signal)
            .with_context(|| format!("cannot send {signal:?} to {} (pid {pid})", self.what))
    }

    /// The exit status if the process has exited (and reaps it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal`, waits up to `grace` for the exit, then SIGKILLs and waits.
    pub(crate) async fn stop(&mut self, signal: Signal, grace: Duration) -> anyhow::Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        self.signal(signal)?;
        if signal != Signal::KILL && self.await_exit(grace).await {
            return Ok(());
        }
        self.signal(Signal::KILL)?;
        if self.await_exit(Duration::from_secs(10)).await {
            Ok(())
        } else {
            bail!(
                "{} (pid {}) survived SIGKILL for 10 s",
                self.what,
                self.pid()
            )
        }
    }

    async fn await_exit(&mut self, deadline: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if self.exited().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.exited().is_some()
    }

    /// The last lines of the server's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log, 30)
    }

    /// Polls `probe` until it succeeds, the process exits, or [`READY_DEADLINE`] passes.
    ///
    /// Errors carry the last probe error and the tail of the server log. An error for which
    /// [`is_port_conflict`] holds means the port was taken by someone else: retry on a new one.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, mut probe: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let start = Instant::now();
        let mut last = String::from("no attempt yet");
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited during startup ({status}); last probe: {last}\n--- log {} ---\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail()
                );
            }
            let remaining = READY_DEADLINE.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                bail!(
                    "{} not ready after {READY_DEADLINE:?}; last probe: {last}\n--- log {} ---\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail()
                );
            }
            let attempt = remaining.min(Duration::from_secs(5));
            match tokio::time::timeout(attempt, probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = format!("probe timed out after {attempt:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    /// Sends the drop signal, gives the process 5 s, then SIGKILLs it and reaps it.
    ///
    /// Blocks the calling thread for as long as the process takes to die (milliseconds).
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if self.drop_signal != Signal::KILL && self.signal(self.drop_signal).is_ok() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if self.exited().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a startup error means the server's port was already taken.
pub(crate) fn is_port_conflict(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}").to_lowercase();
    text.contains("address already in use") || text.contains("bind on tcp/ip port")
}

/// The last `lines` lines of a log file (empty if unreadable).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    const MAX: u64 = 16 * 1024;
    let len = file.metadata().map_or(0, |m| m.len());
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::from("(unreadable log)");
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::from("(unreadable log)");
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a short-lived setup command (initdb, install-db, cp) to completion, logging to `log`.
pub(crate) async fn run_to_completion(what: &str, spawn: &Spawn) -> anyhow::Result<()> {
    let mut process = ServerProcess::start("setup command", spawn, Signal::KILL).await?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = process.exited() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{what} did not finish within 120 s\n{}", process.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if !status.success() {
        bail!(
            "{what} failed ({status})\n--- log {} ---\n{}",
            spawn.log.display(),
            process.log_tail()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_says_how_to_install() {
        assert_eq!(find_binary("flotilla-no-such-server", &[]), None);
        let error = not_installed("etcd", "apt-get install etcd-server");
        assert_eq!(
            error.to_string(),
            "etcd not found: install it with `apt-get install etcd-server`"
        );
    }

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: HashSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn port_conflicts_are_recognized() {
        for log in [
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
            "[ERROR] Can't start server: Bind on TCP/IP port. Got error: 98",
            "listen tcp 127.0.0.1:2379: bind: address already in use",
        ] {
            assert!(is_port_conflict(&anyhow!("exited\n{log}")), "{log}");
        }
        assert!(!is_port_conflict(&anyhow!("permission denied")));
    }
}
