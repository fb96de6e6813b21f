//! Issue 31, what traces say about a failed step: every span from the agent's `step` up to the
//! coordinator's `rollout` has status ERROR with the database's message (the step span also
//! an `exception` event), and the agent's `AgentService/Migrate` server span covers its
//! stream (still open when its `migrate` child records the failure); spans of both sides carry the
//! same namespaced keys (`flotilla.target`, `flotilla.rollout.id`, `db.system`) and no
//! per-span noise (`code.*`, `thread.*`, `busy_ns`, `idle_ns`). The real binaries export over
//! OTLP/gRPC to a receiver in the test.

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_testkit::eventually;

use super::observability::{
    DEADLINE, Received, attr, s, sqlite_url, start_fleet, start_receiver, start_rollout,
};

/// The database's own words for the failing step (SQLite).
const DB_MESSAGE: &str = "no such table: span_missing";

fn duration_ns(r: &Received) -> u64 {
    r.span
        .end_time_unix_nano
        .saturating_sub(r.span.start_time_unix_nano)
}

fn error_message(r: &Received) -> Option<String> {
    let status = r.span.status.as_ref()?;
    (status.code == StatusCode::Error as i32).then(|| status.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_an_error_on_every_span_up_to_the_rollout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = dir.path().join("migrations");
    std::fs::create_dir_all(&migrations)?;
    std::fs::write(
        migrations.join("0001_ok.sql"),
        "-- revision: 0001_ok\n-- migrate:up\nCREATE TABLE span_ok (id INTEGER PRIMARY KEY);\n\
         -- migrate:down\nDROP TABLE span_ok;\n",
    )?;
    std::fs::write(
        migrations.join("0002_fails.sql"),
        "-- revision: 0002_fails\n-- revises: 0001_ok\n-- migrate:up\n\
         INSERT INTO span_missing (id) VALUES (1);\n",
    )?;
    let (otlp, receiver) = start_receiver().await?;
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_TRACES_SAMPLER", s("parentbased_always_on")),
    ];
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[(
            "span-a",
            vec![format!("f1={}", sqlite_url(dir.path(), "f1"))],
            vec![],
            otel.clone(),
        )],
        &[],
        &otel,
        false,
    )
    .await?;
    let id = start_rollout(&migrations, &fleet.coordinator_url, &otel, None).await?;
    let mut c = CoordinatorServiceClient::connect(fleet.coordinator_url.clone()).await?;
    let r = eventually("the rollout to end", DEADLINE, || {
        let (mut c, id) = (c.clone(), id.clone());
        async move {
            let r = c
                .get_rollout(pb::GetRolloutRequest { id })
                .await?
                .into_inner();
            let running = matches!(
                pb::RolloutState::try_from(r.state),
                Ok(pb::RolloutState::Pending
                    | pb::RolloutState::Running
                    | pb::RolloutState::Paused)
            );
            Ok((!running).then_some(r))
        }
    })
    .await?;
    ensure!(
        r.state == pb::RolloutState::Halted as i32,
        "the canary's failure halts the rollout: {r:#?}"
    );
    let _ = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 1,
        })
        .await?;
    // Stopping the processes flushes their spans.
    fleet.stop().await?;
    let all = receiver.spans();
    let spans: Vec<&Received> = all.iter().filter(|x| x.trace_id() == r.trace_id).collect();
    let summary = || {
        spans
            .iter()
            .map(|r| {
                format!(
                    "{} {} status={:?} {}ns",
                    r.service,
                    r.span.name,
                    r.span.status,
                    duration_ns(r)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let named = |name: &str| -> Vec<&Received> {
        spans
            .iter()
            .copied()
            .filter(|r| r.span.name == name)
            .collect()
    };

    // The failed step: ERROR with the database's message, and an `exception` event.
    let failed_step = named("step")
        .into_iter()
        .find(|r| r.attr("flotilla.revision").as_deref() == Some("0002_fails"))
        .with_context(|| format!("no step span for 0002_fails:\n{}", summary()))?;
    let message = error_message(failed_step)
        .with_context(|| format!("the failed step's span is not ERROR:\n{}", summary()))?;
    ensure!(
        message.contains(DB_MESSAGE),
        "step status message: {message}"
    );
    let exception = failed_step
        .span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .with_context(|| format!("no exception event: {:?}", failed_step.span.events))?;
    ensure!(
        attr(&exception.attributes, "exception.message").is_some_and(|m| m.contains(DB_MESSAGE)),
        "{exception:?}"
    );
    // The step before it succeeded: not an error.
    let ok_step = named("step")
        .into_iter()
        .find(|r| r.attr("flotilla.revision").as_deref() == Some("0001_ok"))
        .with_context(|| format!("no step span for 0001_ok:\n{}", summary()))?;
    ensure!(
        error_message(ok_step).is_none(),
        "a succeeded step is not an error:\n{}",
        summary()
    );

    // Every span above it, on both sides, up to the rollout.
    for name in [
        "migrate",
        "AgentService/Migrate",
        "target",
        "wave",
        "rollout",
    ] {
        let found = named(name);
        ensure!(!found.is_empty(), "no {name} span:\n{}", summary());
        let with_error: Vec<String> = found.iter().filter_map(|r| error_message(r)).collect();
        ensure!(
            with_error.iter().any(|m| m.contains(DB_MESSAGE)),
            "no {name} span has status ERROR with {DB_MESSAGE:?}:\n{}",
            summary()
        );
    }

    // The Migrate server span covers its stream: it starts before its `migrate` child and is
    // still open when the child records the failure that ends the stream. (Not compared by
    // duration: sqlx's SQLite worker thread enters the caller's span for each command and
    // leaves it after it has replied, so under load the child's recorded end can trail the
    // server span's by a scheduling delay.)
    let migrates = named("AgentService/Migrate");
    for rpc in &migrates {
        let child = named("migrate")
            .into_iter()
            .find(|m| m.span.parent_span_id == rpc.span.span_id)
            .with_context(|| format!("AgentService/Migrate without migrate:\n{}", summary()))?;
        ensure!(
            rpc.span.start_time_unix_nano <= child.span.start_time_unix_nano,
            "AgentService/Migrate started after its migrate child:\n{}",
            summary()
        );
        let failed_at = child
            .span
            .events
            .iter()
            .find(|e| e.name == "exception")
            .map(|e| e.time_unix_nano)
            .with_context(|| format!("the migrate span has no exception: {:?}", child.span))?;
        ensure!(
            rpc.span.end_time_unix_nano >= failed_at,
            "AgentService/Migrate ended {} ns before its migrate child recorded the failure \
             (it lasted {} ns, the child {} ns)",
            failed_at - rpc.span.end_time_unix_nano,
            duration_ns(rpc),
            duration_ns(child)
        );
    }
    // The same namespaced keys on both sides, and no per-span noise.
    let target = named("target")[0];
    for (name, r) in [
        ("target", target),
        ("step", failed_step),
        ("migrate", named("migrate")[0]),
    ] {
        assert_eq!(r.attr("flotilla.target").as_deref(), Some("f1"), "{name}");
        assert_eq!(
            r.attr("flotilla.rollout.id").as_deref(),
            Some(id.as_str()),
            "{name}"
        );
        assert_eq!(r.attr("db.system").as_deref(), Some("sqlite"), "{name}");
    }
    assert_eq!(
        named("rollout")[0].attr("flotilla.rollout.id").as_deref(),
        Some(id.as_str())
    );
    for r in &spans {
        let noise: Vec<&str> = r
            .span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .filter(|k| {
                k.starts_with("code.")
                    || k.starts_with("thread.")
                    || [
                        "busy_ns",
                        "idle_ns",
                        "target",
                        "rollout",
                        "rollout_id",
                        "revision",
                    ]
                    .contains(k)
            })
            .collect();
        ensure!(
            noise.is_empty(),
            "{} ({}) carries {noise:?}",
            r.span.name,
            r.service
        );
    }

    // What was received, for `--nocapture` runs.
    eprintln!("{}", summary());
    Ok(())
}
