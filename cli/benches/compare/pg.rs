//! PostgreSQL, N tenant databases on one local server (fsync on), the 5-revision set:
//! the raw lower bound (psql, one transaction per database, a few sessions), a sqlx-cli loop
//! (`sqlx migrate run` per database, a few at a time), and flotilla (one agent discovering
//! the databases, one coordinator) at each `--max-parallel`; then the no-op reruns.
//! Every method gets its own fresh set of N databases.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_testkit::Postgres;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::fixture::Fixture;
use crate::fleet::{Fleet, RolloutRun};
use crate::procs::{Bins, args, run_all, run_ok};

/// Settings of the PostgreSQL comparison.
#[derive(Debug, Clone)]
pub(crate) struct PgSettings {
    /// psql sessions of the raw lower bound, and sqlx-cli processes at once.
    pub(crate) baseline_parallel: usize,
    /// flotilla `--max-parallel` values, each on fresh databases.
    pub(crate) max_parallel: Vec<u32>,
    /// Times every method runs (figures are medians).
    pub(crate) rounds: usize,
}

/// The figures for one N.
#[derive(Debug, Clone)]
pub(crate) struct PgResult {
    pub(crate) tenants: usize,
    pub(crate) revisions: usize,
    /// Rounds run; the durations below are each method's median over them.
    pub(crate) rounds: usize,
    pub(crate) raw: Duration,
    pub(crate) sqlx: Duration,
    /// One run per `--max-parallel`, in the order asked.
    pub(crate) flotilla: Vec<RolloutRun>,
    pub(crate) sqlx_noop: Duration,
    pub(crate) flotilla_noop: RolloutRun,
    pub(crate) flotilla_validate: Duration,
    /// Every round's values.
    pub(crate) every: Value,
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

impl PgResult {
    pub(crate) fn best_flotilla(&self) -> &RolloutRun {
        self.flotilla
            .iter()
            .min_by(|a, b| a.wall.cmp(&b.wall))
            .unwrap_or(&self.flotilla_noop)
    }

    pub(crate) fn run_at(&self, max_parallel: u32) -> Option<&RolloutRun> {
        self.flotilla
            .iter()
            .find(|r| r.max_parallel == max_parallel)
    }

    pub(crate) fn json(&self) -> Value {
        let per_mp: Vec<Value> = self
            .flotilla
            .iter()
            .map(|r| {
                let mut v = r.json();
                v["ratio_to_raw"] = json!(ratio(r.wall, self.raw));
                v["ratio_to_sqlx"] = json!(ratio(r.wall, self.sqlx));
                v
            })
            .collect();
        let mp16_over_mp4 = match (self.run_at(16), self.run_at(4)) {
            (Some(a), Some(b)) => json!(ratio(a.wall, b.wall)),
            _ => Value::Null,
        };
        json!({
            "tenants": self.tenants,
            "revisions": self.revisions,
            "rounds": self.rounds,
            "figures": "median over the rounds",
            "every_round": self.every,
            "raw_psql_s": self.raw.as_secs_f64(),
            "sqlx_cli_s": self.sqlx.as_secs_f64(),
            "flotilla": per_mp,
            "best_flotilla_ratio_to_raw": ratio(self.best_flotilla().wall, self.raw),
            "best_flotilla_ratio_to_sqlx": ratio(self.best_flotilla().wall, self.sqlx),
            "mp16_over_mp4": mp16_over_mp4,
            "noop": {
                "sqlx_cli_s": self.sqlx_noop.as_secs_f64(),
                "flotilla_rollout": self.flotilla_noop.json(),
                "flotilla_validate_s": self.flotilla_validate.as_secs_f64(),
                "flotilla_ratio_to_sqlx": ratio(self.flotilla_noop.wall, self.sqlx_noop),
            },
        })
    }
}

/// Database names of one method's set: `b<N>_<set>_tenant_0000`...
pub(crate) fn names(n: usize, set: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("b{n}_{set}_tenant_{i:04}"))
        .collect()
}

async fn create_all(pg: &Postgres, names: &[String]) -> Result<()> {
    futures::stream::iter(names)
        .map(|name| pg.create_database(name))
        .buffer_unordered(4)
        .try_collect::<Vec<String>>()
        .await?;
    Ok(())
}

/// Creates a method's databases, then `CHECKPOINT`, so that no method pays for flushing
/// what creating the databases wrote. Untimed; returns how long it took.
pub(crate) async fn prepare(bins: &Bins, pg: &Postgres, dbs: &[String]) -> Result<Duration> {
    let t0 = Instant::now();
    create_all(pg, dbs).await.context("create databases")?;
    psql(bins, pg, "postgres", "CHECKPOINT").await?;
    Ok(t0.elapsed())
}

/// Drops a method's databases (one psql session, one statement at a time: `DROP DATABASE`
/// cannot run in a transaction block). Untimed; returns how long it took.
pub(crate) async fn drop_all(
    bins: &Bins,
    pg: &Postgres,
    dbs: &[String],
    dir: &Path,
) -> Result<Duration> {
    let t0 = Instant::now();
    let file = dir.join("drop.sql");
    let script: String = dbs
        .iter()
        .map(|db| format!("DROP DATABASE {db};\n"))
        .collect();
    std::fs::write(&file, script)?;
    let a = psql_file_args(pg.port(), "postgres", &file);
    run_ok(&bins.psql, &a).await.context("drop databases")?;
    Ok(t0.elapsed())
}

/// psql's arguments to run `file` on database `db` of the server on `port`, stopping at the
/// first error.
pub(crate) fn psql_file_args(port: u16, db: &str, file: &Path) -> Vec<String> {
    args(&[
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        db,
        "-f",
        &file.display().to_string(),
    ])
}

/// One statement through psql; its unaligned output.
pub(crate) async fn psql(bins: &Bins, pg: &Postgres, db: &str, sql: &str) -> Result<String> {
    let port = pg.port().to_string();
    let a = args(&[
        "-X",
        "-qtA",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        db,
        "-c",
        sql,
    ]);
    Ok(run_ok(&bins.psql, &a).await?.stdout.trim().to_owned())
}

/// The set really was applied: the first and the last database have the sample rows and
/// the last revision's column.
pub(crate) async fn check_applied(bins: &Bins, pg: &Postgres, dbs: &[String]) -> Result<()> {
    for db in [dbs.first(), dbs.last()].into_iter().flatten() {
        let found = psql(
            bins,
            pg,
            db,
            "SELECT count(last_seen_at IS NULL) FROM users",
        )
        .await?;
        ensure!(
            found == "3",
            "{db}: expected the 3 sample users, found {found:?}"
        );
    }
    Ok(())
}

/// The raw lower bound: `sessions` psql processes, each connecting to its share of the
/// databases in turn and running the whole set in one transaction per database.
async fn raw(
    bins: &Bins,
    pg: &Postgres,
    fx: &Fixture,
    dbs: &[String],
    sessions: usize,
    dir: &Path,
) -> Result<Duration> {
    let up = dir.join("pg5-one-transaction.sql");
    std::fs::write(&up, fx.one_transaction()?)?;
    let mut argv = Vec::new();
    for s in 0..sessions.max(1) {
        let mut script = String::from("\\set ON_ERROR_STOP on\n");
        for db in dbs.iter().skip(s).step_by(sessions.max(1)) {
            script.push_str(&format!("\\connect {db}\n\\i {}\n", up.display()));
        }
        let file = dir.join(format!("psql-session-{s}.sql"));
        std::fs::write(&file, script)?;
        argv.push(psql_file_args(pg.port(), "postgres", &file));
    }
    run_all(&bins.psql, argv, sessions).await
}

/// `sqlx migrate run` once per database of the server at `server` (a URL without a
/// database), `parallel` at a time.
pub(crate) async fn sqlx_loop(
    bins: &Bins,
    server: &str,
    source: &Path,
    dbs: &[String],
    parallel: usize,
) -> Result<Duration> {
    let argv = dbs
        .iter()
        .map(|db| {
            args(&[
                "migrate",
                "run",
                "--no-dotenv",
                "--source",
                &source.display().to_string(),
                "--database-url",
                &format!("{server}/{db}"),
            ])
        })
        .collect();
    run_all(&bins.sqlx, argv, parallel).await
}

pub(crate) fn agent_toml(pg: &Postgres, pattern: &str) -> String {
    format!(
        "[[discover]]\ndialect = \"postgres\"\nurl = \"{}/postgres\"\npattern = \"{pattern}\"\n",
        pg.server_url()
    )
}

/// One method of the comparison.
#[derive(Debug, Clone, Copy)]
enum Method {
    Raw,
    Sqlx,
    Flotilla(u32),
}

/// The middle value (the lower middle of an even count).
fn median<T: Clone>(mut v: Vec<T>, key: impl Fn(&T) -> Duration) -> Option<T> {
    v.sort_by_key(|x| key(x));
    let mid = v.len().checked_sub(1)? / 2;
    v.into_iter().nth(mid)
}

fn secs_list(v: &[Duration]) -> Value {
    json!(v.iter().map(Duration::as_secs_f64).collect::<Vec<f64>>())
}

/// Every method at N tenants, `settings.rounds` times. Each round runs every method on its
/// own fresh N databases, which are dropped when it is done, so that every method finds the
/// server with the same databases (autovacuum visits each one); the order of the methods
/// rotates from round to round, so that none always runs first. The figures are each
/// method's median over the rounds; `rounds` keeps every value.
pub(crate) async fn bench(
    bins: &Bins,
    pg: &Postgres,
    fx: &Fixture,
    n: usize,
    settings: &PgSettings,
    work: &Path,
) -> Result<PgResult> {
    let dir = work.join(format!("pg-{n}"));
    std::fs::create_dir_all(&dir)?;
    let steps = fx.steps.len();
    let p = settings.baseline_parallel;
    let source = dir.join("sqlx-migrations");
    fx.write_sqlx_dir(&source)?;
    let mut methods = vec![Method::Raw, Method::Sqlx];
    methods.extend(settings.max_parallel.iter().map(|&mp| Method::Flotilla(mp)));
    let rounds = settings.rounds.max(1);
    let mut setup = Duration::ZERO;
    let (mut raws, mut sqlxs, mut sqlx_noops) = (Vec::new(), Vec::new(), Vec::new());
    let mut flotillas: Vec<Vec<RolloutRun>> = vec![Vec::new(); settings.max_parallel.len()];
    let (mut noops, mut validates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if rounds > 1 {
            println!("  round {} of {rounds}:", round + 1);
        }
        let mut order = methods.clone();
        order.rotate_left(round % methods.len());
        for method in order {
            match method {
                Method::Raw => {
                    let dbs = names(n, &format!("raw{round}"));
                    setup += prepare(bins, pg, &dbs).await?;
                    let t = raw(bins, pg, fx, &dbs, p, &dir).await.context("raw psql")?;
                    check_applied(bins, pg, &dbs).await?;
                    println!(
                        "  raw psql, 1 txn per db, {p} sessions: {:.2} s",
                        t.as_secs_f64()
                    );
                    raws.push(t);
                    setup += drop_all(bins, pg, &dbs, &dir).await?;
                }
                Method::Sqlx => {
                    let dbs = names(n, &format!("sqlx{round}"));
                    setup += prepare(bins, pg, &dbs).await?;
                    let t = sqlx_loop(bins, &pg.server_url(), &source, &dbs, p)
                        .await
                        .context("sqlx-cli loop")?;
                    check_applied(bins, pg, &dbs).await?;
                    let again = sqlx_loop(bins, &pg.server_url(), &source, &dbs, p)
                        .await
                        .context("sqlx-cli no-op")?;
                    println!(
                        "  sqlx-cli loop, {p} parallel: {:.2} s; no-op sqlx-cli loop: {:.2} s",
                        t.as_secs_f64(),
                        again.as_secs_f64()
                    );
                    sqlxs.push(t);
                    sqlx_noops.push(again);
                    setup += drop_all(bins, pg, &dbs, &dir).await?;
                }
                Method::Flotilla(mp) => {
                    let set = format!("fl{mp}r{round}");
                    let dbs = names(n, &set);
                    let fleet_dir = dir.join(&set);
                    setup += prepare(bins, pg, &dbs).await?;
                    let fleet = Fleet::start(
                        bins,
                        &format!("bench-pg-{set}"),
                        &agent_toml(pg, &format!("b{n}_{set}_tenant_%")),
                        n,
                        &fx.dir,
                        &fleet_dir.join("state"),
                        &fleet_dir,
                    )
                    .await?;
                    let r = fleet
                        .rollout(&format!("pg{n}-mp{mp}-r{round}"), mp, n * steps)
                        .await?;
                    println!(
                        "  flotilla rollout --canary 0 --max-parallel {mp}: {:.2} s (coordinator {:.0} µs/step, agent {:.0} µs/step)",
                        r.wall.as_secs_f64(),
                        r.coordinator_us_per_step(),
                        r.agent_us_per_step()
                    );
                    check_applied(bins, pg, &dbs).await?;
                    // The no-op reruns on the first --max-parallel's fleet.
                    if settings.max_parallel.first() == Some(&mp) {
                        let again = fleet
                            .rollout(&format!("pg{n}-noop-r{round}"), mp, 0)
                            .await
                            .context("no-op rollout")?;
                        let validate = fleet.validate().await?;
                        println!(
                            "  no-op flotilla rollout: {:.2} s; flotilla validate: {:.2} s",
                            again.wall.as_secs_f64(),
                            validate.as_secs_f64()
                        );
                        noops.push(again);
                        validates.push(validate);
                    }
                    fleet.stop().await?;
                    if let Some(i) = settings.max_parallel.iter().position(|&m| m == mp) {
                        flotillas[i].push(r);
                    }
                    setup += drop_all(bins, pg, &dbs, &dir).await?;
                }
            }
        }
    }
    println!(
        "  (untimed: creating and dropping the databases, and checkpoints, took {:.1} s)",
        setup.as_secs_f64()
    );
    let every = json!({
        "raw_psql_s": secs_list(&raws),
        "sqlx_cli_s": secs_list(&sqlxs),
        "sqlx_cli_noop_s": secs_list(&sqlx_noops),
        "flotilla_s": settings.max_parallel.iter().zip(&flotillas).map(|(mp, runs)| {
            json!({"max_parallel": mp, "wall_s": runs.iter().map(|r| r.wall.as_secs_f64()).collect::<Vec<f64>>()})
        }).collect::<Vec<Value>>(),
        "flotilla_noop_s": noops.iter().map(|r| r.wall.as_secs_f64()).collect::<Vec<f64>>(),
        "flotilla_validate_s": secs_list(&validates),
    });
    let id = |d: &Duration| *d;
    let wall = |r: &RolloutRun| r.wall;
    Ok(PgResult {
        tenants: n,
        revisions: steps,
        rounds,
        raw: median(raws, id).context("no round ran")?,
        sqlx: median(sqlxs, id).context("no round ran")?,
        flotilla: flotillas
            .into_iter()
            .map(|runs| median(runs, wall).context("no round ran"))
            .collect::<Result<Vec<_>>>()?,
        sqlx_noop: median(sqlx_noops, id).context("no round ran")?,
        flotilla_noop: median(noops, wall).context("no --max-parallel given")?,
        flotilla_validate: median(validates, id).context("no --max-parallel given")?,
        every,
    })
}
