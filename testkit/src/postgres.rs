//! An ephemeral PostgreSQL server in a temp dir on a free loopback port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rustix::process::Signal;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tempfile::TempDir;

use crate::cache;
use crate::database;
use crate::process::{
    Spawn, SystemUser, binary_fingerprint, find_binary, not_installed, run_to_completion,
    running_as_root,
};
use crate::supervisor::Supervisor;
use crate::workdir;

const INSTALL: &str = "apt-get install postgresql";

/// Part of the cached template's name: bump it whenever `initdb` changes its arguments.
const TEMPLATE_VERSION: &str = "v1";

/// A PostgreSQL server for one test (or one test binary).
///
/// Trust authentication; connect as `postgres` without a password over TCP to 127.0.0.1
/// ([`Postgres::server_url`]). Durability is off (`fsync`, `full_page_writes`,
/// `synchronous_commit`) unless [`PostgresOptions::durable`] asks for it (benchmarks).
/// Dropping it shuts the server down (immediate shutdown, then SIGKILL) and removes its data
/// dir; the server also dies with the test binary.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    server: Supervisor,
    /// Identifies our server behind the port (`SHOW data_directory`).
    data: PathBuf,
    // Declared last: removed after the server is gone.
    _dir: TempDir,
}

/// How to run the server. `Default` is what tests use: durability off, 200 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `fsync`, `full_page_writes` and `synchronous_commit` on (PostgreSQL's defaults), for
    /// benchmarks that compare against a real server; tests keep them off.
    pub durable: bool,
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            durable: false,
            max_connections: 200,
        }
    }
}

/// Where initdb and postgres live.
#[derive(Debug, Clone)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl Binaries {
    /// Newest `/usr/lib/postgresql/<major>/bin`, else `initdb` on `PATH` (symlinks resolved, so
    /// that `postgres` is taken from the same directory).
    fn find() -> anyhow::Result<Binaries> {
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versioned.sort();
        let preferred: Vec<PathBuf> = versioned.into_iter().rev().map(|(_, dir)| dir).collect();
        let initdb = find_binary("initdb", &preferred)
            .ok_or_else(|| not_installed("postgresql (initdb)", INSTALL))?;
        let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        let postgres = initdb.with_file_name("postgres");
        if !postgres.is_file() {
            return Err(not_installed(
                &format!("postgres (next to {})", initdb.display()),
                INSTALL,
            ));
        }
        Ok(Binaries { initdb, postgres })
    }
}

impl Postgres {
    /// Starts a server and waits until it answers `SELECT 1`.
    ///
    /// The data dir is a copy of a template made once per machine with `initdb` (see the crate
    /// docs for the cache). When run as root, the server runs as the `postgres` user.
    pub async fn start() -> anyhow::Result<Postgres> {
        Self::start_with(PostgresOptions::default()).await
    }

    /// Like [`Postgres::start`], with the server settings of `options`.
    pub async fn start_with(options: PostgresOptions) -> anyhow::Result<Postgres> {
        let binaries = Binaries::find()?;
        let user = if running_as_root() {
            Some(SystemUser::lookup("postgres").ok_or_else(|| {
                anyhow!(
                    "user postgres not found (PostgreSQL refuses to run as root): \
                     install it with `{INSTALL}` or create it with `useradd --system postgres`"
                )
            })?)
        } else {
            None
        };
        let dir = workdir::server_dir("postgres")?;
        if let Some(user) = &user {
            user.chown(dir.path())?;
        }
        let data = dir.path().join("data");
        let owner = user.as_ref().map_or("self", |u| u.name.as_str());
        let key = format!(
            "{TEMPLATE_VERSION}-{owner}-{}",
            binary_fingerprint(&binaries.initdb)?
        );
        cache::materialize("postgres", &key, &data, |target| {
            initdb(&binaries, user.as_ref(), target)
        })
        .await?;

        let log = dir.path().join("postgres.log");
        let socket_dir = dir.path().to_path_buf();
        let make_spawn = |ports: &[u16]| Spawn {
            program: binaries.postgres.clone(),
            args: server_args(&data, ports[0], &socket_dir, options),
            user: user.clone(),
            log: log.clone(),
        };
        let (server, ports) = Supervisor::start(
            "postgres",
            Signal::QUIT,
            1,
            make_spawn,
            |ports: &[u16]| probe(admin_url(ports[0]), data.clone()),
        )
        .await?;
        Ok(Postgres {
            port: ports[0],
            server,
            data,
            _dir: dir,
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process id (of the last process, if a restart failed).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Server URL without a database: `postgres://postgres@127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Creates database `name` (`[A-Za-z0-9_-]`, at most 63 characters) and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        database::validate(name)?;
        let mut conn = PgConnection::connect(&admin_url(self.port))
            .await
            .with_context(|| format!("cannot connect to postgres on port {}", self.port))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create postgres database {name}"))?;
        conn.close().await.ok();
        Ok(format!("{}/{name}", self.server_url()))
    }

    /// Creates a database with a unique name and returns its URL.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        self.create_database(&database::unique_name()).await
    }

    /// Crashes the server: immediate shutdown (SIGQUIT: no checkpoint, connections cut; the
    /// next start runs crash recovery), SIGKILL if that hangs. [`Postgres::restart`] starts it
    /// again on the same port and data dir.
    pub fn stop(&self) {
        self.server.kill();
    }

    /// Fast shutdown (SIGINT: open connections are closed; a no-op after
    /// [`Postgres::stop`]), then starts again on the same port
    /// and data dir and waits until the server answers. Existing connections break.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let url = admin_url(self.port);
        self.server
            .restart(Signal::INT, Duration::from_secs(30), || {
                probe(url.clone(), self.data.clone())
            })
            .await
    }
}

impl Drop for Postgres {
    /// Immediate shutdown (SIGQUIT, which also releases shared memory), SIGKILL if that hangs.
    fn drop(&mut self) {
        self.server.kill();
    }
}

fn admin_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Succeeds once the server behind `url` answers and is the one running on `data`.
async fn probe(url: String, data: PathBuf) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&url).await?;
    let (found,): (String,) = sqlx::query_as("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await.ok();
    if Path::new(&found) != data {
        // Another server holds the port; ours fails to bind and exits.
        bail!("address already in use: the port is served by another postgres ({found})");
    }
    Ok(())
}

fn server_args(data: &Path, port: u16, socket_dir: &Path, options: PostgresOptions) -> Vec<String> {
    let mut args = vec![
        "-D".to_owned(),
        data.display().to_string(),
        "-p".to_owned(),
        port.to_string(),
        "-k".to_owned(),
        socket_dir.display().to_string(),
    ];
    let durability = if options.durable { "on" } else { "off" };
    for setting in [
        "listen_addresses=127.0.0.1".to_owned(),
        format!("fsync={durability}"),
        format!("full_page_writes={durability}"),
        format!("synchronous_commit={durability}"),
        format!("max_connections={}", options.max_connections),
        "shared_buffers=32MB".to_owned(),
    ] {
        args.push("-c".to_owned());
        args.push(setting);
    }
    args
}

/// Runs initdb into a temp dir owned by the server user, then moves the result to `target`.
///
/// The detour keeps initdb working when `target` (the cache dir) is not reachable by that user.
async fn initdb(
    binaries: &Binaries,
    user: Option<&SystemUser>,
    target: PathBuf,
) -> anyhow::Result<()> {
    let scratch = workdir::server_dir("initdb")?;
    if let Some(user) = user {
        user.chown(scratch.path())?;
    }
    let data = scratch.path().join("data");
    let spawn = Spawn {
        program: binaries.initdb.clone(),
        args: [
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([data.display().to_string()])
        .collect(),
        user: user.cloned(),
        log: scratch.path().join("initdb.log"),
    };
    run_to_completion("initdb", &spawn).await?;
    if std::fs::rename(&data, &target).is_err() {
        cache::copy_dir(&data, &target).await?;
    }
    Ok(())
}
