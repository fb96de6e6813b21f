//! A restartable server: its spawn recipe, the current process, stop/restart/freeze faults.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;

use crate::process::{PORT_ATTEMPTS, ServerProcess, Spawn, free_port, is_port_conflict};

/// A server process that can be restarted: the spawn recipe plus the current process, if any.
#[derive(Debug)]
pub(crate) struct Supervisor {
    what: &'static str,
    spawn: Spawn,
    drop_signal: Signal,
    process: Mutex<Option<ServerProcess>>,
    last_pid: AtomicU32,
}

impl Supervisor {
    /// Starts the server on `port_count` fresh ports and waits until `probe(ports)` succeeds.
    ///
    /// When the server loses one of its ports to another process, retries on new ports.
    pub(crate) async fn start<S, P, Fut>(
        what: &'static str,
        drop_signal: Signal,
        port_count: usize,
        make_spawn: S,
        mut probe: P,
    ) -> anyhow::Result<(Supervisor, Vec<u16>)>
    where
        S: Fn(&[u16]) -> Spawn,
        P: FnMut(&[u16]) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports: Vec<u16> = (0..port_count).map(|_| free_port()).collect();
            let spawn = make_spawn(&ports);
            let mut process = ServerProcess::start(what, &spawn, drop_signal).await?;
            match process.wait_ready(|| probe(&ports)).await {
                Ok(()) => {
                    let supervisor = Supervisor {
                        what,
                        spawn,
                        drop_signal,
                        last_pid: AtomicU32::new(process.pid()),
                        process: Mutex::new(Some(process)),
                    };
                    return Ok((supervisor, ports));
                }
                Err(e) if attempt < PORT_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::debug!("{what} lost its port, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The pid of the running process, or of the last one if it is stopped.
    pub(crate) fn pid(&self) -> u32 {
        self.last_pid.load(Ordering::Relaxed)
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) the process and waits until every
    /// thread of it is in that state, so that the fault is in place when this returns.
    pub(crate) fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let pid = {
            let process = self.lock();
            let Some(process) = &*process else {
                bail!("{} is not running", self.what);
            };
            process.signal(if frozen { Signal::STOP } else { Signal::CONT })?;
            process.pid()
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            match all_threads_stopped(pid) {
                Some(stopped) if stopped == frozen => return Ok(()),
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
                None => bail!("{} (pid {pid}) is gone", self.what),
            }
        }
        let state = if frozen { "stopped" } else { "running" };
        bail!("{} (pid {pid}) not {state} 5 s after the signal", self.what)
    }

    /// Kills the process (drop signal, then SIGKILL) and waits for it; a no-op when stopped.
    pub(crate) fn kill(&self) {
        let process = self.lock().take();
        drop(process);
    }

    /// Stops the process with `signal` (SIGKILL after `grace`), starts it again with the same
    /// command line (same ports, same data dir) and waits until `probe` succeeds.
    ///
    /// Also starts the server when it was stopped.
    pub(crate) async fn restart<P, Fut>(
        &self,
        signal: Signal,
        grace: Duration,
        probe: P,
    ) -> anyhow::Result<()>
    where
        P: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let old = self.lock().take();
        if let Some(mut old) = old {
            // A paused (SIGSTOPped) process would not act on the stop signal.
            let _ = old.signal(Signal::CONT);
            old.stop(signal, grace).await?;
        }
        let mut process = ServerProcess::start(self.what, &self.spawn, self.drop_signal).await?;
        self.last_pid.store(process.pid(), Ordering::Relaxed);
        process
            .wait_ready(probe)
            .await
            .with_context(|| format!("restarting {}", self.what))?;
        let replaced = self.lock().replace(process);
        drop(replaced); // only set if restart() ran concurrently; that process must not leak
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerProcess>> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether every thread of `pid` is stopped by a signal (`None` if the process is gone).
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // thread exited meanwhile
        };
        // The state follows the parenthesized command name.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        if state != "T" {
            return Some(false);
        }
        any = true;
    }
    Some(any)
}
