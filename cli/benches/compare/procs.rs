//! The processes the comparison runs: where the binaries are, `flotilla-agent` and
//! `flotilla coordinator` as long-lived services, timed one-shot commands, parallel command
//! loops, and what `/proc` says about a process (CPU time, resident memory).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_proto as pb;
use flotilla_proto::agent_service_client::AgentServiceClient;
use futures::{StreamExt, TryStreamExt};
use tokio::process::{Child, Command};

/// The programs under test and the baselines.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) flotilla: PathBuf,
    pub(crate) agent: PathBuf,
    pub(crate) sqlx: PathBuf,
    pub(crate) psql: PathBuf,
    pub(crate) sqlite3: PathBuf,
    /// `--perf DIR`: profile the agent and coordinator during every rollout.
    pub(crate) profile_dir: Option<PathBuf>,
}

impl Bins {
    /// `flotilla` and `flotilla-agent` from `bin_dir`; psql and sqlite3 from `PATH`.
    /// `need_pg`: sqlx-cli and psql are needed; `need_psql`: psql is.
    pub(crate) fn find(
        bin_dir: &Path,
        sqlx: &Path,
        need_pg: bool,
        need_psql: bool,
    ) -> Result<Bins> {
        let flotilla = bin_dir.join("flotilla");
        let agent = bin_dir.join("flotilla-agent");
        for b in [&flotilla, &agent] {
            if !b.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release --locked -p flotilla-coordinator -p flotilla-agent` \
                     (or run scripts/bench.sh), or point --bin-dir / FLOTILLA_BENCH_BIN_DIR at the binaries",
                    b.display()
                );
            }
        }
        if need_pg && !sqlx.is_file() {
            bail!(
                "{} not found: install sqlx-cli with `cargo install --locked --root target/tools sqlx-cli \
                 --no-default-features --features postgres,rustls` (scripts/bench.sh does), or set FLOTILLA_BENCH_SQLX",
                sqlx.display()
            );
        }
        let on_path = |name: &str, install: &str| -> Result<PathBuf> {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .with_context(|| format!("{name} not found on PATH: install it with `{install}`"))
        };
        Ok(Bins {
            flotilla,
            agent,
            sqlx: sqlx.to_owned(),
            psql: if need_pg || need_psql {
                on_path("psql", "apt-get install postgresql-client")?
            } else {
                PathBuf::from("psql")
            },
            sqlite3: on_path("sqlite3", "apt-get install sqlite3")?,
            profile_dir: None,
        })
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, usually 100).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces) in
/// parentheses, parsed as numbers (the state letter is NaN): index 1 is the parent pid, 11 and
/// 12 user and system time, 13 and 14 those of reaped children, in clock ticks.
fn stat_fields(pid: &str) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(f64::NAN))
            .collect(),
    )
}

/// User + system CPU time of a whole process (every thread), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let f = stat_fields(&pid.to_string()).with_context(|| format!("process {pid} is gone"))?;
    ensure!(f.len() > 14, "unexpected /proc/{pid}/stat");
    Ok((f[11] + f[12]) / clock_ticks())
}

/// User + system CPU time of a server and its child processes (live or already reaped by
/// it), in seconds: PostgreSQL's postmaster and its backends.
pub(crate) fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let me = stat_fields(&pid.to_string()).with_context(|| format!("process {pid} is gone"))?;
    ensure!(me.len() > 14, "unexpected /proc/{pid}/stat");
    let mut ticks = me[11] + me[12] + me[13] + me[14];
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(name) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat_fields(name).filter(|f| f.len() > 12 && f[1] == f64::from(pid)) {
            ticks += f[11] + f[12];
        }
    }
    Ok(ticks / clock_ticks())
}

/// A `/proc/<pid>/status` size line (`VmRSS`, `VmHWM`) in KiB.
pub(crate) fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// A free loopback address for a service to listen on.
pub(crate) fn free_addr() -> String {
    format!("127.0.0.1:{}", flotilla_testkit::free_port())
}

/// A long-lived process (agent or coordinator), output in a log file; killed on drop.
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) address: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(
        program: &Path,
        args: &[String],
        name: &str,
        address: &str,
        dir: &Path,
    ) -> Result<Service> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Service {
            name: name.to_owned(),
            address: format!("http://{address}"),
            child,
            log,
        })
    }

    /// `flotilla-agent --config <config>` on a free loopback port; returns once it answers
    /// `Status` with `expect_targets` targets, none in error.
    pub(crate) async fn agent(
        bins: &Bins,
        config: &Path,
        name: &str,
        dir: &Path,
        expect_targets: usize,
    ) -> Result<Service> {
        let addr = free_addr();
        let args = [
            "--config".to_owned(),
            config.display().to_string(),
            "--listen".to_owned(),
            addr.clone(),
            "--agent-id".to_owned(),
            name.to_owned(),
        ];
        let mut svc = Service::spawn(&bins.agent, &args, name, &addr, dir)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = svc.child.try_wait()? {
                bail!("{name} exited ({status}): {}", svc.log_tail());
            }
            if let Ok(resp) = svc.status().await {
                let errors: Vec<&str> = resp
                    .targets
                    .iter()
                    .filter(|t| !t.error.is_empty())
                    .map(|t| t.error.as_str())
                    .collect();
                if let Some(e) = errors.first() {
                    bail!("{name}: {} targets report an error, e.g. {e}", errors.len());
                }
                if resp.targets.len() == expect_targets {
                    return Ok(svc);
                }
                bail!(
                    "{name} serves {} targets, expected {expect_targets}",
                    resp.targets.len()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer within 120s: {}", svc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One `Status` call for every target, with history (what a coordinator asks).
    pub(crate) async fn status(&self) -> Result<pb::StatusResponse> {
        let mut c = AgentServiceClient::connect(self.address.clone())
            .await?
            .max_decoding_message_size(256 * 1024 * 1024);
        Ok(c.status(pb::StatusRequest {
            target_ids: vec![],
            include_history: true,
            fencing_token: 0,
            ..Default::default()
        })
        .await?
        .into_inner())
    }

    /// `flotilla coordinator` (embedded backend in `state_dir`, agents from `fleet`) on a
    /// free loopback port; returns once it holds the fleet lock.
    pub(crate) async fn coordinator(
        bins: &Bins,
        migrations: &Path,
        fleet: &Path,
        state_dir: &Path,
        dir: &Path,
    ) -> Result<Service> {
        let backend = args(&["--state-dir", &state_dir.display().to_string()]);
        Service::coordinator_with(bins, migrations, fleet, &backend, dir).await
    }

    /// Like [`Service::coordinator`], with the backend's flags given (`--state-dir DIR`, or
    /// `--etcd URL --etcd-prefix P`).
    pub(crate) async fn coordinator_with(
        bins: &Bins,
        migrations: &Path,
        fleet: &Path,
        backend: &[String],
        dir: &Path,
    ) -> Result<Service> {
        let addr = free_addr();
        let mut args: Vec<String> = [
            "--migrations",
            &migrations.display().to_string(),
            "coordinator",
            "--listen",
            &addr,
            "--fleet",
            &fleet.display().to_string(),
            "--id",
            "bench-coordinator",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(backend.iter().cloned());
        let mut svc = Service::spawn(&bins.flotilla, &args, "coordinator", &addr, dir)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = svc.child.try_wait()? {
                bail!("coordinator exited ({status}): {}", svc.log_tail());
            }
            // Waiting for an event: the lock is taken once, then this line is in the log.
            if svc.log_text().contains("took the fleet lock") {
                return Ok(svc);
            }
            if Instant::now() > deadline {
                bail!(
                    "coordinator did not take the lock within 60s: {}",
                    svc.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} already exited", self.name))
    }

    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid()?)
    }

    pub(crate) fn rss_kib(&self) -> Result<u64> {
        status_kib(self.pid()?, "VmRSS")
    }

    pub(crate) fn peak_rss_kib(&self) -> Result<u64> {
        status_kib(self.pid()?, "VmHWM")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("log {}:\n{tail}", self.log.display())
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after 30 s).
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_err()
            {
                self.child.kill().await?;
                bail!("{} ignored SIGTERM for 30s: {}", self.name, self.log_tail());
            }
        }
        Ok(())
    }
}

/// `perf record` of some processes (sampling, call graphs by frame pointer) while a phase
/// runs; `finish` stops it and writes `perf report` as text next to the data.
pub(crate) struct Profile {
    child: Child,
    data: PathBuf,
}

impl Profile {
    pub(crate) async fn start(dir: &Path, label: &str, pids: &[u32]) -> Result<Profile> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join(format!("{label}.perf.data"));
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let log = std::fs::File::create(dir.join(format!("{label}.perf.log")))?;
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pids.join(",")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf (apt-get install linux-perf)")?;
        // perf attaches within a few ms; a phase shorter than that is not worth profiling.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Profile { child, data })
    }

    pub(crate) async fn finish(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()?;
        }
        self.child.wait().await?;
        let report = run(
            Path::new("perf"),
            &args(&[
                "report",
                "-i",
                &self.data.display().to_string(),
                "--stdio",
                "--no-children",
                "--sort",
                "pid,dso,sym",
                "--percent-limit",
                "0.5",
                "-g",
                "none",
            ]),
        )
        .await?;
        let text = PathBuf::from(format!("{}.txt", self.data.display()));
        std::fs::write(&text, report.stdout)?;
        println!("    profile: {}", text.display());
        Ok(())
    }
}

/// A finished command: wall time, exit code and its output.
pub(crate) struct Ran {
    pub(crate) wall: Duration,
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Run a command to completion and time it.
pub(crate) async fn run(program: &Path, args: &[String]) -> Result<Ran> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let t0 = Instant::now();
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    Ok(Ran {
        wall: t0.elapsed(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Like [`run`], failing unless the command exits 0.
pub(crate) async fn run_ok(program: &Path, args: &[String]) -> Result<Ran> {
    let ran = run(program, args).await?;
    if ran.code != 0 {
        bail!(
            "{} {} exited {}: {}{}",
            program.display(),
            args.join(" "),
            ran.code,
            ran.stdout.trim(),
            ran.stderr.trim()
        );
    }
    Ok(ran)
}

/// Run one command per item, `parallel` at a time, each to success; the total wall time.
pub(crate) async fn run_all(
    program: &Path,
    argv: Vec<Vec<String>>,
    parallel: usize,
) -> Result<Duration> {
    let t0 = Instant::now();
    futures::stream::iter(argv)
        .map(|args| async move { run_ok(program, &args).await.map(|_| ()) })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(t0.elapsed())
}

/// `sync`: write dirty pages out before a timed phase, so it does not pay for the last one.
pub(crate) async fn sync() -> Result<()> {
    run_ok(Path::new("sync"), &[]).await.map(|_| ())
}

/// Arguments from string slices.
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}
