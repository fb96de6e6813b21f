//! Issue 31, what the scrape says must be true: counters exist at 0 for every label value they
//! can take, a retry moves exactly its own series, targets a rollout skips are counted as
//! finished, a revision no target is at any more has no `flotilla_fleet_targets` series, and
//! an agent whose registration its configuration refuses says it is not registered.
//! The real binaries as subprocesses, scraped over HTTP.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use sqlx::Connection;

use flotilla_testkit::{FaultProxy, Postgres, eventually, eventually_true, free_port};

use super::observability::{
    DEADLINE, Proc, agent_bin, migrations_dir, promtool_check, s, sample, scrape, sqlite_url,
    start_fleet, start_rollout, wait_succeeded,
};

/// Every (dialect, error class) the agent can retry for.
const RETRY_SERIES: &[(&str, &str)] = &[
    ("postgres", "connection"),
    ("postgres", "serialization"),
    ("postgres", "deadlock"),
    ("postgres", "lock_timeout"),
    ("mysql", "connection"),
    ("mysql", "deadlock"),
    ("mysql", "lock_timeout"),
    ("sqlite", "connection"),
    ("sqlite", "busy"),
];

fn retries(text: &str, dialect: &str, class: &str) -> Option<f64> {
    sample(
        text,
        "flotilla_agent_retries_total",
        &[("dialect", dialect), ("error_class", class)],
    )
}

/// The `revision` label of every `flotilla_fleet_targets` series of project `default`, with
/// its value.
fn fleet_targets(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("flotilla_fleet_targets{revision=\""))
        .filter_map(|rest| {
            let (rev, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix(",project=\"default\"} ")?;
            Some((rev.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The coordinator's scrape once the rollout number `n` has been counted as finished and the
/// fleet gauges, refreshed after it, show `fleet` (a `flotilla_fleet_targets` that stays
/// different is reported with the deadline).
async fn coordinator_after(port: u16, n: f64, fleet: &[(&str, f64)]) -> Result<String> {
    let want: Vec<(String, f64)> = fleet.iter().map(|(r, v)| (s(r), *v)).collect();
    eventually(
        "the coordinator's gauges after the rollout",
        DEADLINE,
        || {
            let want = want.clone();
            async move {
                let text = scrape(port).await?;
                let done = sample(
                    &text,
                    "flotilla_coordinator_rollouts_finished_total",
                    &[("state", "succeeded")],
                ) == Some(n);
                let got = fleet_targets(&text);
                if !done {
                    return Ok(None);
                }
                ensure!(
                    got == want,
                    "flotilla_fleet_targets is {got:?}, want {want:?}"
                );
                Ok(Some(text))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_fleet_gauges_stay_true_across_a_retry_a_move_and_a_no_op_rollout()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = migrations_dir(dir.path())?;
    let pg = Postgres::start().await?;
    let direct = pg.create_database("truth_retry").await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await?;
    let (mpg, msq, mc) = (free_port(), free_port(), free_port());
    let agent_args = |port: u16| {
        vec![
            s("--metrics-addr"),
            format!("127.0.0.1:{port}"),
            s("--retry-initial-delay-ms"),
            s("50"),
        ]
    };
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[
            (
                "truth-pg",
                vec![format!(
                    "pg1=postgres://postgres@{}/truth_retry",
                    proxy.addr()
                )],
                agent_args(mpg),
                vec![],
            ),
            (
                "truth-sq",
                vec![format!("sq1={}", sqlite_url(dir.path(), "sq1"))],
                agent_args(msq),
                vec![],
            ),
        ],
        &[s("--metrics-addr"), format!("127.0.0.1:{mc}")],
        &[],
        false,
    )
    .await?;

    // Before anything ran: every retry series exists, at 0, on both agents.
    for port in [mpg, msq] {
        let text = scrape(port).await?;
        for (dialect, class) in RETRY_SERIES {
            assert_eq!(
                retries(&text, dialect, class),
                Some(0.0),
                "{dialect}/{class} before any retry:\n{text}"
            );
        }
    }

    // Rollout 1, to 0001_slow only; cutting pg1's connection while the slow step runs forces
    // one connection retry on the PostgreSQL agent.
    let to_first = [("FLOTILLA_GOAL", s("0001_slow"))];
    let id = start_rollout(&migrations, &fleet.coordinator_url, &to_first, None).await?;
    eventually_true("the slow step to run on pg1", DEADLINE, || {
        let direct = direct.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&direct).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await?;
            conn.close().await?;
            Ok(n > 0)
        }
    })
    .await?;
    proxy.cut_all();
    wait_succeeded(&fleet.coordinator_url, &id).await?;

    let text = scrape(mpg).await?;
    ensure!(
        retries(&text, "postgres", "connection").is_some_and(|n| n >= 1.0),
        "the forced retry is not counted:\n{text}"
    );
    for (dialect, class) in RETRY_SERIES.iter().filter(|(_, c)| *c != "connection") {
        assert_eq!(
            retries(&text, dialect, class),
            Some(0.0),
            "{dialect}/{class}"
        );
    }
    let text = scrape(msq).await?;
    for (dialect, class) in RETRY_SERIES {
        assert_eq!(
            retries(&text, dialect, class),
            Some(0.0),
            "sqlite agent {dialect}/{class}"
        );
    }
    // Both targets at 0001_slow.
    coordinator_after(mc, 1.0, &[("0001_slow", 2.0)]).await?;

    // Rollout 2, to head: the fleet leaves 0001_slow, and its series goes with it.
    let id = start_rollout(&migrations, &fleet.coordinator_url, &[], None).await?;
    wait_succeeded(&fleet.coordinator_url, &id).await?;
    // A revision no target is at has no series (it used to stay, at 0).
    coordinator_after(mc, 2.0, &[("0002_two", 2.0)]).await?;

    // Rollout 3, a no-op: both targets end skipped, and are counted.
    let id = start_rollout(&migrations, &fleet.coordinator_url, &[], None).await?;
    let r = wait_succeeded(&fleet.coordinator_url, &id).await?;
    ensure!(
        r.targets
            .iter()
            .all(|t| t.state == flotilla_proto::TargetState::Skipped as i32),
        "every target of the no-op rollout is skipped: {r:#?}"
    );
    let text = coordinator_after(mc, 3.0, &[("0002_two", 2.0)]).await?;
    let finished = |state: &str| {
        sample(
            &text,
            "flotilla_coordinator_targets_finished_total",
            &[("state", state)],
        )
    };
    assert_eq!(finished("skipped"), Some(2.0), "{text}");
    assert_eq!(finished("succeeded"), Some(4.0), "{text}");
    assert_eq!(finished("failed"), Some(0.0), "{text}");
    assert_eq!(finished("blocked"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "flotilla_coordinator_rollout_targets",
            &[("state", "skipped")]
        ),
        Some(2.0),
        "{text}"
    );
    promtool_check("coordinator", &text)?;
    promtool_check("agent", &scrape(mpg).await?)?;
    fleet.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_registration_is_refused_by_its_configuration_reports_0() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics = free_port();
    // An advertised address without a scheme: registration is refused before any call.
    let agent = Proc::spawn(
        &agent_bin()?,
        &[
            s("--agent-id"),
            s("refused"),
            s("--listen"),
            format!("127.0.0.1:{}", free_port()),
            s("--target"),
            format!("r1={}", sqlite_url(dir.path(), "r1")),
            s("--coordinator"),
            format!("http://127.0.0.1:{}", free_port()),
            s("--advertise-address"),
            s("10.0.0.5:7400"),
            s("--metrics-addr"),
            format!("127.0.0.1:{metrics}"),
        ],
        &[],
        dir.path(),
        "refused",
        None,
    )?;
    eventually_true("the refusal in the log", DEADLINE, || {
        let log = agent.log_text();
        async move { Ok(log.contains("registration disabled")) }
    })
    .await
    .with_context(|| agent.log_text())?;
    let text = scrape(metrics).await?;
    assert_eq!(
        sample(&text, "flotilla_agent_registered", &[]),
        Some(0.0),
        "the FlotillaAgentNotRegistered alert reads this:\n{text}\n{}",
        agent.log_text()
    );
    ensure!(
        agent.log_text().contains("10.0.0.5:7400"),
        "the log names the refused address:\n{}",
        agent.log_text()
    );
    agent.stop().await?;
    Ok(())
}
