//! Issue test 6: transient faults during a step (connections cut, the server restarted) are
//! retried with backoff, reported as events, and the step is applied once. Also: shutdown lets
//! the step in flight finish and starts nothing more. Issue 29: a server that closes the
//! connection while it is being set up (PostgreSQL's SSL request, MySQL's handshake) is
//! retried too.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use flotilla_agent::EventStream;
use flotilla_core::Dialect;
use flotilla_proto::step_event::Event;
use flotilla_proto::{FailureReason, StepEvent};
use flotilla_testkit::{FaultProxy, HangUp, MariaDb, Postgres};
use sqlx::Connection;
use tonic::Code;

use crate::support::{
    Outcome, Server, agent, collect, kind, migrate, next_event, reason, status, target, up,
};

const SLOW: &str = "SELECT pg_sleep(0.5); CREATE TABLE slow_one (id INT PRIMARY KEY);";

/// Events up to and including the first `Started`.
async fn until_started(stream: &mut EventStream) -> Result<Vec<StepEvent>> {
    let mut seen = Vec::new();
    loop {
        let ev = next_event(stream).await?;
        let started = matches!(ev.event, Some(Event::Started(_)));
        seen.push(ev);
        if started {
            return Ok(seen);
        }
    }
}

async fn count_rows(url: &str, table: &str) -> Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n)
}

/// The step was retried after a connection error and applied exactly once.
async fn check_retried_once(
    agent: &flotilla_agent::Agent,
    out: &Outcome,
    direct_url: &str,
) -> Result<()> {
    ensure!(
        out.error.is_none(),
        "migrate failed: {:?} {:?}",
        out.error,
        out.kinds()
    );
    let retries: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Retrying(r)) => Some(r),
            _ => None,
        })
        .collect();
    ensure!(
        !retries.is_empty(),
        "no StepRetrying event: {:?}",
        out.kinds()
    );
    let first = retries[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(first.error_class, "connection", "{first:?}");
    assert!(first.delay_ms > 0 && !first.error.is_empty(), "{first:?}");
    let succeeded = out
        .events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Succeeded(s)) => Some(s),
            _ => None,
        })
        .context("no StepSucceeded")?;
    assert!(succeeded.attempts >= 2, "{succeeded:?}");

    let ts = status(agent, "t1", true).await?;
    let rows: Vec<_> = ts
        .history
        .iter()
        .filter(|r| r.revision == "0001_slow")
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "the step was recorded {} times: {:?}",
        rows.len(),
        ts.history
    );
    assert_eq!(
        count_rows(direct_url, "slow_one").await?,
        0,
        "table missing"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_connection_cut_mid_step_is_retried() -> Result<()> {
    let pg = Postgres::start().await?;
    let direct = pg.create_database("fault_cut").await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await?;
    let via_proxy = format!("postgres://postgres@{}/fault_cut", proxy.addr());
    let agent = agent(vec![target("t1", Dialect::Postgres, &via_proxy)]).await?;

    let mut stream = agent
        .migrate(migrate("t1", "r1", 1, vec![up("0001_slow", SLOW)]))
        .await?;
    let mut events = until_started(&mut stream).await?;
    proxy.cut_all();
    let rest = collect(stream).await?;
    events.extend(rest.events);
    let out = Outcome {
        events,
        error: rest.error,
        finished: rest.finished,
    };
    check_retried_once(&agent, &out, &direct).await?;
    assert!(
        proxy.connections_accepted() >= 2,
        "the agent did not reconnect"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_restart_mid_step_is_retried() -> Result<()> {
    let pg = Postgres::start().await?;
    let direct = pg.create_database("fault_restart").await?;
    let agent = agent(vec![target("t1", Dialect::Postgres, &direct)]).await?;

    let mut stream = agent
        .migrate(migrate("t1", "r1", 1, vec![up("0001_slow", SLOW)]))
        .await?;
    let mut events = until_started(&mut stream).await?;
    let (restarted, rest) = tokio::join!(pg.restart(), collect(stream));
    restarted?;
    let rest = rest?;
    events.extend(rest.events);
    let out = Outcome {
        events,
        error: rest.error,
        finished: rest.finished,
    };
    check_retried_once(&agent, &out, &direct).await
}

/// The server closes the connection instead of answering the SSL request (sqlx reports
/// `unexpected response from SSLRequest: 0x00`), twice; then the real server answers. The
/// step is retried as a connection error and applied once.
#[tokio::test]
async fn postgres_closed_during_ssl_request_is_retried() -> Result<()> {
    let pg = Postgres::start().await?;
    let direct = pg.create_database("fault_ssl").await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await?;
    let via_proxy = format!("postgres://postgres@{}/fault_ssl", proxy.addr());
    let agent = agent(vec![target("t1", Dialect::Postgres, &via_proxy)]).await?;

    proxy.hang_up(2, HangUp::AfterFirstRead);
    let out =
        crate::support::run(&agent, migrate("t1", "r1", 1, vec![up("0001_slow", SLOW)])).await?;
    check_retried_once(&agent, &out, &direct).await?;
    let first = out
        .events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Retrying(r)) => Some(r),
            _ => None,
        })
        .context("no StepRetrying event")?;
    assert!(
        first.error.contains("during the ssl request"),
        "the retry was not for the closed ssl request: {first:?}"
    );
    assert!(
        proxy.connections_accepted() >= 3,
        "the agent did not reconnect after both hang-ups"
    );
    Ok(())
}

/// MariaDB closes the connection before its handshake, twice: the step is retried and
/// applied once.
#[tokio::test]
async fn mariadb_closed_during_handshake_is_retried() -> Result<()> {
    let my = MariaDb::start().await?;
    let direct = my.fresh_database().await?;
    let db = direct
        .rsplit('/')
        .next()
        .context("no database in the url")?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], my.port()))).await?;
    let via_proxy = format!("mysql://root@{}/{db}", proxy.addr());
    let agent = agent(vec![target("t1", Dialect::Mysql, &via_proxy)]).await?;

    proxy.hang_up(2, HangUp::AtAccept);
    let out = crate::support::run(
        &agent,
        migrate(
            "t1",
            "r1",
            1,
            vec![up(
                "0001_table",
                "CREATE TABLE handshake_one (id INT PRIMARY KEY);",
            )],
        ),
    )
    .await?;
    ensure!(
        out.error.is_none(),
        "migrate failed: {:?} {:?}",
        out.error,
        out.kinds()
    );
    assert!(
        out.kinds().contains(&"0001_table:retrying".to_owned()),
        "no retry: {:?}",
        out.kinds()
    );
    let ts = status(&agent, "t1", true).await?;
    assert_eq!(ts.heads, ["0001_table"]);
    assert_eq!(
        ts.history
            .iter()
            .filter(|r| r.revision == "0001_table")
            .count(),
        1,
        "{:?}",
        ts.history
    );
    Ok(())
}

/// Permanent errors are not retried.
#[tokio::test]
async fn postgres_permanent_error_fails_at_once() -> Result<()> {
    let pg = Postgres::start().await?;
    let agent = agent(vec![target(
        "t1",
        Dialect::Postgres,
        &pg.fresh_database().await?,
    )])
    .await?;
    let out = crate::support::run(
        &agent,
        migrate("t1", "r1", 1, vec![up("0001_bad", "CREATE TABLEX oops;")]),
    )
    .await?;
    assert_eq!(out.err()?.code(), Code::Aborted);
    assert!(
        !out.events.iter().any(|e| kind(e) == "retrying"),
        "{:?}",
        out.kinds()
    );
    Ok(())
}

/// Shutdown while a step runs: the step completes, the next one never starts, serve returns.
#[tokio::test]
async fn shutdown_finishes_the_step_in_flight() -> Result<()> {
    let pg = Postgres::start().await?;
    let url = pg.fresh_database().await?;
    let agent = agent(vec![target("t1", Dialect::Postgres, &url)]).await?;
    let mut server = Server::start(agent.clone()).await?;
    let mut client = server.client().await?;
    let steps = vec![
        up("0001_slow", SLOW),
        up("0002_next", "CREATE TABLE next_one (id INT);"),
    ];
    let mut stream = client
        .migrate(migrate("t1", "r1", 1, steps))
        .await?
        .into_inner();
    loop {
        let ev = stream
            .message()
            .await?
            .context("stream ended before Started")?;
        if kind(&ev) == "started" {
            break;
        }
    }
    server.signal();
    let out = collect(stream).await?;
    assert!(
        out.kinds().contains(&"0001_slow:succeeded".to_owned()),
        "{:?}",
        out.kinds()
    );
    assert!(
        !out.kinds().contains(&"0002_next:started".to_owned()),
        "{:?}",
        out.kinds()
    );
    let err = out.err()?;
    assert_eq!(reason(err), "CANCELLED", "{err:?}");
    assert_eq!(
        out.failed().map(|f| f.reason),
        Some(FailureReason::Cancelled as i32)
    );
    server.stop().await?;
    let ts = status(&agent, "t1", false).await?;
    assert_eq!(ts.heads, ["0001_slow"]);
    Ok(())
}
