//! Metric-gated waves against a real Prometheus (testkit) scraping an exporter the test
//! controls: `rollout start --gate-query 'app_errors > 0' --gate-window 5s` halts after the
//! canary (exit 4, the message names the query, the value and the wave) while the exporter
//! reports errors, and completes when it does not; a Prometheus that goes down halts the
//! rollout and refuses the next start; a bad query is refused before anything runs; pause and
//! abort work while the gate waits; errors that appear during a window halt it; the
//! coordinator's `--gate-prometheus` is the default, and without any the start is refused.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use flotilla_coordinator::prometheus::PrometheusClient;
use flotilla_coordinator::rollout::{MetricGate, RolloutSpec};
use flotilla_proto as pb;
use flotilla_testkit::{Exporter, Prometheus, eventually};

use crate::harness::*;

/// Two SQLite targets (canary t01, then one wave t02), an agent, an embedded coordinator
/// (with Prometheus as its `--gate-prometheus` when `default_url`), and Prometheus scraping
/// the exporter every 200 ms.
struct GatedFleet {
    exporter: Exporter,
    prometheus: Prometheus,
    agent: TestAgent,
    coord: TestCoordinator,
    _targets: tempfile::TempDir,
    _migrations: tempfile::TempDir,
}

impl GatedFleet {
    async fn start(default_url: bool) -> Result<GatedFleet> {
        let exporter = Exporter::start().await?;
        let prometheus =
            Prometheus::start(&[exporter.address().to_owned()], Duration::from_millis(200)).await?;
        let migrations = migrations(&[(
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INTEGER);",
                "DROP TABLE a;",
            ),
        )])?;
        let (targets_dir, targets) = sqlite_targets("t", 2)?;
        let agent = TestAgent::start("agent", targets).await?;
        let url = prometheus.url();
        let coord = TestCoordinator::start_tweaked(migrations.path(), &[&agent], |e| {
            e.gate_prometheus = default_url.then_some(url);
        })
        .await?;
        Ok(GatedFleet {
            exporter,
            prometheus,
            agent,
            coord,
            _targets: targets_dir,
            _migrations: migrations,
        })
    }

    /// Sets the exporter's `app_errors` and waits until Prometheus has scraped that value.
    async fn errors(&self, value: f64) -> Result<()> {
        self.exporter.set_errors(value);
        let client = PrometheusClient::new(&self.prometheus.url())?;
        eventually(
            &format!("prometheus to scrape app_errors = {value}"),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let samples = client.query("app_errors").await?;
                    Ok(samples.iter().any(|s| s.value == value).then_some(()))
                }
            },
        )
        .await
    }

    /// `flotilla rollout start --wait` with the gate flags (`--gate-prometheus` when
    /// `with_url`): (exit, stdout, stderr).
    async fn start_cli(
        &self,
        query: &str,
        window: &str,
        with_url: bool,
    ) -> Result<(i32, String, String)> {
        let url = self.prometheus.url();
        let mut args = vec![
            "rollout",
            "start",
            "--coordinator",
            &self.coord.address,
            "--wait",
            "--gate-query",
            query,
            "--gate-window",
            window,
        ];
        if with_url {
            args.extend(["--gate-prometheus", &url]);
        }
        run_cli(&args, None).await
    }

    /// Starts a rollout with a gate (window `window`; the URL in the spec when `with_url`,
    /// else the coordinator's) over gRPC.
    async fn start_rpc(&self, window: Duration, with_url: bool) -> Result<pb::Rollout> {
        let spec = RolloutSpec {
            metric_gate: Some(MetricGate {
                query: "app_errors > 0".into(),
                window_ms: window.as_millis() as u64,
                prometheus_url: if with_url {
                    self.prometheus.url()
                } else {
                    String::new()
                },
            }),
            ..spec("head")
        };
        let r = self
            .coord
            .client()
            .await?
            .start_rollout(pb::StartRolloutRequest {
                spec: Some(spec.to_proto()),
            })
            .await?
            .into_inner();
        Ok(r)
    }

    /// Whether target `id` has anything applied.
    async fn touched(&self, id: &str) -> Result<bool> {
        let statuses = self.agent.statuses(true).await?;
        let Some(s) = statuses.get(id) else {
            bail!("no target {id}: {statuses:?}")
        };
        Ok(!applied(s).is_empty())
    }
}

fn last_rollout_message(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_after_the_canary_halt_the_rollout_before_the_next_wave() -> Result<()> {
    let fleet = GatedFleet::start(false).await?;
    fleet.errors(3.0).await?;
    let (code, out, err) = fleet.start_cli("app_errors > 0", "5s", true).await?;
    assert_eq!(code, 4, "halted like any other halt: {out}{err}");
    assert!(out.contains(": halted"), "{out}");
    let why = last_rollout_message(&out);
    eprintln!("halted: {why}");
    for want in [
        "metric gate after the canary (wave 0)",
        "`app_errors > 0` returned 3",
        "app_errors{instance=",
        "the next wave did not start",
    ] {
        assert!(why.contains(want), "{want:?} missing from: {why}");
    }
    // The time the value was seen, as RFC 3339.
    let at = why
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next());
    assert!(
        at.is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
        "no time in: {why}"
    );
    assert!(fleet.touched("t01").await?, "the canary ran");
    assert!(
        !fleet.touched("t02").await?,
        "the wave after the gate must not run"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_window_lets_the_next_wave_run_and_a_bad_query_is_refused() -> Result<()> {
    let fleet = GatedFleet::start(false).await?;
    fleet.errors(0.0).await?;
    // A query Prometheus cannot parse is refused before anything runs (exit 2).
    let (code, out, err) = fleet.start_cli("app_errors >", "5s", true).await?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("bad_data") && err.contains("fix --gate-query"),
        "{err}"
    );
    assert!(!fleet.touched("t01").await?, "nothing may run");
    eprintln!("refused: {err}");
    // No Prometheus in the rollout nor in the coordinator's configuration: refused (exit 2).
    let (code, out, err) = fleet.start_cli("app_errors > 0", "5s", false).await?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no Prometheus to ask"), "{err}");
    assert!(!fleet.touched("t01").await?, "nothing may run");

    let started = Instant::now();
    let (code, out, err) = fleet.start_cli("app_errors > 0", "5s", true).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": succeeded"), "{out}");
    // The watch showed the gate holding the wave back, with its window.
    assert!(
        err.contains(
            "metric gate after wave 0: waiting for `app_errors > 0` to stay empty or 0, window 5s"
        ),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the wave started before the window passed"
    );
    eprintln!(
        "watch: {err}\nrollout with a 5s gate took {:?}",
        started.elapsed()
    );
    assert!(fleet.touched("t02").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_restarts_the_window_and_a_prometheus_that_goes_down_halts() -> Result<()> {
    let fleet = GatedFleet::start(false).await?;
    fleet.errors(0.0).await?;
    let id = fleet.start_rpc(Duration::from_secs(60), true).await?.id;
    let mut c = fleet.coord.client().await?;
    let waiting = rollout_when(&c, &id, "the gate to wait", Duration::from_secs(60), |r| {
        r.metric_gate.is_some()
    })
    .await?;
    let first = waiting.metric_gate.clone().unwrap_or_default();
    assert_eq!((first.wave, first.window_ms), (0, 60_000), "{first:?}");
    assert_eq!(first.query, "app_errors > 0");

    // Paused: the gate stops; resumed: a new window starts.
    c.pause_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await?;
    let paused = rollout_when(&c, &id, "the pause", Duration::from_secs(30), |r| {
        state(r) == pb::RolloutState::Paused && r.metric_gate.is_none()
    })
    .await?;
    assert!(
        paused.message.contains("starts again on resume"),
        "{}",
        paused.message
    );
    c.resume_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await?;
    rollout_when(&c, &id, "a new window", Duration::from_secs(30), |r| {
        r.metric_gate
            .as_ref()
            .is_some_and(|g| g.started_at_unix_ms > first.started_at_unix_ms && g.evaluations >= 1)
    })
    .await?;

    // Prometheus goes away in the window: the rollout halts, never passes.
    fleet.prometheus.stop();
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Halted, "{end:#?}");
    for want in [
        "could not be evaluated",
        "cannot be reached",
        "never passes",
    ] {
        assert!(
            end.message.contains(want),
            "{want:?} missing from: {}",
            end.message
        );
    }
    assert!(!fleet.touched("t02").await?);

    // Nor does a new rollout start while Prometheus is away.
    let (code, out, err) = fleet.start_cli("app_errors > 0", "5s", true).await?;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("nothing was started"), "{err}");
    eprintln!("refused: {err}");
    assert!(!fleet.touched("t02").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_appear_during_the_window_halt_it() -> Result<()> {
    let fleet = GatedFleet::start(false).await?;
    fleet.errors(0.0).await?;
    let id = fleet.start_rpc(Duration::from_secs(60), true).await?.id;
    let mut c = fleet.coord.client().await?;
    rollout_when(
        &c,
        &id,
        "a passing evaluation",
        Duration::from_secs(60),
        |r| r.metric_gate.as_ref().is_some_and(|g| g.evaluations >= 1),
    )
    .await?;
    fleet.exporter.set_errors(2.0);
    let errors_at = Instant::now();
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Halted, "{end:#?}");
    eprintln!(
        "halted {:?} after the exporter reported errors (window 60s, evaluated every 6s): {}",
        errors_at.elapsed(),
        end.message
    );
    assert!(
        end.message
            .contains("metric gate after the canary (wave 0): `app_errors > 0` returned 2"),
        "{}",
        end.message
    );
    assert!(
        end.metric_gate.is_none(),
        "the gate no longer waits: {end:#?}"
    );
    assert!(!fleet.touched("t02").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_while_the_gate_waits_skips_the_rest() -> Result<()> {
    let fleet = GatedFleet::start(true).await?;
    fleet.errors(0.0).await?;
    // The rollout names no Prometheus: the coordinator's is recorded in its spec.
    let started = fleet.start_rpc(Duration::from_secs(60), false).await?;
    let recorded = started.spec.and_then(|s| s.metric_gate).unwrap_or_default();
    assert_eq!(recorded.prometheus_url, fleet.prometheus.url());
    let id = started.id;
    let mut c = fleet.coord.client().await?;
    rollout_when(&c, &id, "the gate to wait", Duration::from_secs(60), |r| {
        r.metric_gate.is_some()
    })
    .await?;
    c.abort_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await?;
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Aborted, "{end:#?}");
    assert_eq!(targets_in(&end, pb::TargetState::Skipped), vec!["t02"]);
    assert!(!fleet.touched("t02").await?);
    Ok(())
}
