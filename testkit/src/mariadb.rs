//! An ephemeral MariaDB server in a temp dir on a free loopback port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::Signal;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};
use tempfile::TempDir;

use crate::cache;
use crate::database;
use crate::process::{
    Spawn, binary_fingerprint, find_binary, not_installed, run_to_completion, running_as_root,
};
use crate::supervisor::Supervisor;
use crate::workdir;

const INSTALL: &str = "apt-get install mariadb-server";

/// Part of the cached template's name: bump it whenever `install_db` changes its arguments.
const TEMPLATE_VERSION: &str = "v1";

/// Redo log size, used both when creating the data dir and when running the server.
const REDO_LOG_SIZE: &str = "--innodb-log-file-size=8M";

/// A MariaDB server for one test (or one test binary).
///
/// Connect as `root` without a password over TCP to 127.0.0.1: [`MariaDb::server_url`] is
/// `mysql://root@127.0.0.1:PORT` (`mariadb-install-db` creates `root@127.0.0.1` with normal
/// authentication; grant tables are on, so `CREATE USER`/`GRANT` work). The server uses
/// utf8mb4, no binary log, a 32 MB buffer pool and lazy redo flushing. Dropping it kills the
/// server and removes its data dir; the server also dies with the test binary.
#[derive(Debug)]
pub struct MariaDb {
    port: u16,
    server: Supervisor,
    /// Identifies our server behind the port (`@@datadir`).
    data: PathBuf,
    // Declared last: removed after the server is gone.
    _dir: TempDir,
}

#[derive(Debug, Clone)]
struct Binaries {
    mariadbd: PathBuf,
    install_db: PathBuf,
}

impl Binaries {
    fn find() -> anyhow::Result<Binaries> {
        let sbin = [
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/local/sbin"),
            PathBuf::from("/usr/local/mysql/bin"),
        ];
        let mariadbd = find_binary("mariadbd", &sbin)
            .ok_or_else(|| not_installed("mariadb (mariadbd)", INSTALL))?;
        let install_db = find_binary("mariadb-install-db", &sbin)
            .or_else(|| find_binary("mysql_install_db", &sbin))
            .ok_or_else(|| not_installed("mariadb-install-db", INSTALL))?;
        Ok(Binaries {
            mariadbd,
            install_db,
        })
    }
}

impl MariaDb {
    /// Starts a server and waits until it answers `SELECT 1`.
    ///
    /// The data dir is a copy of a template made once per machine with `mariadb-install-db`.
    pub async fn start() -> anyhow::Result<MariaDb> {
        let binaries = Binaries::find()?;
        let dir = workdir::server_dir("mariadb")?;
        let data = dir.path().join("data");
        let owner = if running_as_root() { "root" } else { "self" };
        let key = format!(
            "{TEMPLATE_VERSION}-{owner}-{}",
            binary_fingerprint(&binaries.mariadbd)?
        );
        cache::materialize("mariadb", &key, &data, |target| {
            install_db(&binaries, target)
        })
        .await?;

        let log = dir.path().join("mariadb.log");
        let run_dir = dir.path().to_path_buf();
        let make_spawn = |ports: &[u16]| Spawn {
            program: binaries.mariadbd.clone(),
            args: server_args(&data, &run_dir, ports[0]),
            user: None,
            log: log.clone(),
        };
        let (server, ports) =
            Supervisor::start("mariadb", Signal::KILL, 1, make_spawn, |ports: &[u16]| {
                probe(server_url(ports[0]), data.clone())
            })
            .await?;
        Ok(MariaDb {
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

    /// Server URL without a database: `mysql://root@127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        server_url(self.port)
    }

    /// Creates database `name` (`[A-Za-z0-9_-]`, at most 63 characters) and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        database::validate(name)?;
        let mut conn = MySqlConnection::connect(&self.server_url())
            .await
            .with_context(|| format!("cannot connect to mariadb on port {}", self.port))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create mariadb database {name}"))?;
        conn.close().await.ok();
        Ok(format!("{}/{name}", self.server_url()))
    }

    /// Creates a database with a unique name and returns its URL.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        self.create_database(&database::unique_name()).await
    }

    /// Crashes the server (SIGKILL: InnoDB recovers on the next start); [`MariaDb::restart`]
    /// starts it again on the same port and data dir.
    pub fn stop(&self) {
        self.server.kill();
    }

    /// Clean shutdown (SIGTERM; a no-op after [`MariaDb::stop`]), then starts again on the same port and data dir and waits
    /// until the server answers. Existing connections break.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let url = self.server_url();
        self.server
            .restart(Signal::TERM, Duration::from_secs(30), || {
                probe(url.clone(), self.data.clone())
            })
            .await
    }
}

impl Drop for MariaDb {
    /// SIGKILL: the data dir is thrown away, so there is nothing to shut down cleanly.
    fn drop(&mut self) {
        self.server.kill();
    }
}

fn server_url(port: u16) -> String {
    format!("mysql://root@127.0.0.1:{port}")
}

/// Succeeds once the server behind `url` answers and is the one running on `data`.
async fn probe(url: String, data: PathBuf) -> anyhow::Result<()> {
    let mut conn = MySqlConnection::connect(&url).await?;
    let (found,): (String,) = sqlx::query_as("SELECT CAST(@@datadir AS CHAR)")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await.ok();
    let ours = std::fs::canonicalize(&data).unwrap_or(data);
    if Path::new(found.trim_end_matches('/')) != ours {
        // Another server holds the port; ours fails to bind and exits.
        bail!("address already in use: the port is served by another mariadb ({found})");
    }
    Ok(())
}

fn root_user_args() -> Vec<String> {
    // mariadbd refuses to run as root unless told to.
    if running_as_root() {
        vec!["--user=root".to_owned()]
    } else {
        Vec::new()
    }
}

fn server_args(data: &Path, run_dir: &Path, port: u16) -> Vec<String> {
    let run = |file: &str| run_dir.join(file).display().to_string();
    let mut args = vec!["--no-defaults".to_owned()];
    args.extend(root_user_args());
    args.extend([
        format!("--datadir={}", data.display()),
        format!("--port={port}"),
        format!("--socket={}", run("mysqld.sock")),
        format!("--pid-file={}", run("mysqld.pid")),
        format!("--tmpdir={}", run_dir.display()),
        "--bind-address=127.0.0.1".to_owned(),
        "--skip-name-resolve".to_owned(),
        "--skip-log-bin".to_owned(),
        "--performance-schema=OFF".to_owned(),
        "--innodb-buffer-pool-size=32M".to_owned(),
        REDO_LOG_SIZE.to_owned(),
        "--innodb-flush-log-at-trx-commit=0".to_owned(),
        "--innodb-doublewrite=0".to_owned(),
        "--character-set-server=utf8mb4".to_owned(),
        "--collation-server=utf8mb4_unicode_ci".to_owned(),
        "--max-connections=500".to_owned(),
    ]);
    args
}

async fn install_db(binaries: &Binaries, target: PathBuf) -> anyhow::Result<()> {
    let mut args = vec!["--no-defaults".to_owned()];
    args.extend(root_user_args());
    args.extend([
        format!("--datadir={}", target.display()),
        "--auth-root-authentication-method=normal".to_owned(),
        "--skip-test-db".to_owned(),
        REDO_LOG_SIZE.to_owned(),
    ]);
    let log = target.with_extension("install-db.log");
    let spawn = Spawn {
        program: binaries.install_db.clone(),
        args,
        user: None,
        log: log.clone(),
    };
    let result = run_to_completion("mariadb-install-db", &spawn).await;
    if result.is_ok() {
        let _ = std::fs::remove_file(&log);
    }
    result
}
