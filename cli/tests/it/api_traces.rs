//! Issue 31, calls that are not rollouts: `flotilla status` and `flotilla validate` reach
//! every agent (Status, Validate), and each call is one trace rooted at the coordinator's
//! `CoordinatorService/<Method>` server span, with the agents' spans inside it, instead of
//! one agent-only root trace per agent per call. Real binaries, a real OTLP receiver.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, ensure};

use super::observability::{
    Received, cli, migrations_dir, s, sqlite_url, start_fleet, start_receiver,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_validate_are_one_trace_each_with_the_agents_inside() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = migrations_dir(dir.path())?;
    let (otlp, receiver) = start_receiver().await?;
    let otel = |service: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_TRACES_SAMPLER", s("parentbased_always_on")),
            ("OTEL_SERVICE_NAME", s(service)),
        ]
    };
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[
            (
                "api-a",
                vec![format!("a1={}", sqlite_url(dir.path(), "a1"))],
                vec![],
                otel("api-agent-a"),
            ),
            (
                "api-b",
                vec![format!("b1={}", sqlite_url(dir.path(), "b1"))],
                vec![],
                otel("api-agent-b"),
            ),
        ],
        &[],
        &otel("flotilla-coordinator"),
        false,
    )
    .await?;
    for command in ["status", "validate"] {
        cli(
            &[
                s("--migrations"),
                migrations.display().to_string(),
                s(command),
                s("--coordinator"),
                fleet.coordinator_url.clone(),
            ],
            &otel("flotilla"),
            None,
        )
        .await?;
    }
    // Stopping the processes flushes their spans.
    fleet.stop().await?;
    let spans = receiver.spans();
    let by_id: BTreeMap<&[u8], &Received> = spans
        .iter()
        .map(|r| (r.span.span_id.as_slice(), r))
        .collect();
    let root_of = |r: &'_ Received| root(&by_id, r).span.name.clone();
    let summary = || {
        spans
            .iter()
            .map(|r| format!("{} {} root={}", r.service, r.span.name, root_of(r)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // No agent span is the root of its trace, or a child of a span nobody exported.
    for r in spans.iter().filter(|r| r.service.starts_with("api-agent")) {
        let root = root(&by_id, r);
        ensure!(
            root.service == "flotilla-coordinator" && root.span.parent_span_id.is_empty(),
            "{} ({}) is in a trace rooted at {} ({}):\n{}",
            r.span.name,
            r.service,
            root.span.name,
            root.service,
            summary()
        );
    }
    // One server span per call, and every agent's call inside it.
    for (method, agent_method) in [
        ("CoordinatorService/FleetStatus", "AgentService/Status"),
        ("CoordinatorService/FleetValidate", "AgentService/Validate"),
    ] {
        let calls: Vec<&Received> = spans.iter().filter(|r| r.span.name == method).collect();
        ensure!(calls.len() == 1, "{method}: {}\n{}", calls.len(), summary());
        let call = calls[0];
        let agents: BTreeSet<&str> = spans
            .iter()
            .filter(|r| r.span.name == agent_method && r.trace_id() == call.trace_id())
            .map(|r| r.service.as_str())
            .collect();
        ensure!(
            agents == BTreeSet::from(["api-agent-a", "api-agent-b"]),
            "{agent_method} spans in the {method} trace: {agents:?}\n{}",
            summary()
        );
    }
    Ok(())
}

fn root<'a>(by_id: &BTreeMap<&[u8], &'a Received>, mut r: &'a Received) -> &'a Received {
    while let Some(p) = by_id.get(r.span.parent_span_id.as_slice()) {
        r = p;
    }
    r
}
