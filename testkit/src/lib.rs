//! Test kit: real etcd, PostgreSQL, MariaDB and Prometheus servers in temp dirs on free loopback
//! ports.
//!
//! Every integration test of Flotilla runs against real servers started from here:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let pg = flotilla_testkit::Postgres::start().await?;
//! let url = pg.fresh_database().await?; // postgres://postgres@127.0.0.1:PORT/flotilla_test_N
//! let my = flotilla_testkit::MariaDb::start().await?;
//! let url = my.fresh_database().await?; // mysql://root@127.0.0.1:PORT/flotilla_test_N
//! let etcd = flotilla_testkit::Etcd::start().await?;
//! let endpoint = etcd.endpoint(); // http://127.0.0.1:PORT
//! # Ok(()) }
//! ```
//!
//! - Servers never outlive their handle: `Drop` kills the process and removes its temp dir, and
//!   every server is spawned with a parent-death signal (`setpriv --pdeathsig KILL`), so it also
//!   dies when the test binary panics, aborts or is killed.
//! - A missing server binary is an error that says how to install it; nothing is skipped.
//! - Data dirs come from a template made once per machine (`initdb`, `mariadb-install-db`)
//!   under `<target>/testkit-cache/` and copied per server; see `FLOTILLA_TESTKIT_CACHE` and
//!   `FLOTILLA_TESTKIT_NO_CACHE`.
//! - Stdout and stderr of each server go to a log file in its temp dir; startup errors include
//!   its tail.
//! - Faults: servers stop (a crash) and restart on their data; [`Program`] runs any other
//!   process (an agent, a coordinator) so that it can be killed, restarted and frozen.
//! - Wait for events with [`eventually`], not sleeps.

mod cache;
mod database;
mod etcd;
mod eventually;
mod exporter;
mod mariadb;
mod pki;
mod postgres;
mod process;
mod program;
mod prometheus;
mod proxy;
mod sqlite;
mod supervisor;
mod workdir;

pub use etcd::Etcd;
pub use eventually::{eventually, eventually_true};
pub use exporter::Exporter;
pub use mariadb::MariaDb;
pub use pki::{CertFiles, Pki};
pub use postgres::{Postgres, PostgresOptions};
pub use process::free_port;
pub use program::Program;
pub use prometheus::Prometheus;
pub use proxy::{FaultProxy, HangUp};
pub use sqlite::sqlite_database;
