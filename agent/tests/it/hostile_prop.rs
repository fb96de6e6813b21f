//! Property test of the agent's request validation (issue 13): random sequences of Migrate,
//! Stamp, Repair, Status and Validate requests with hostile fields (tokens across the whole
//! u64 range, ids too long or with foreign characters, wrong checksums, unknown directions)
//! are sent over gRPC to a fresh agent on SQLite targets. After each request:
//! - an invalid request (by an oracle written here, independent of `validate.rs`) is refused
//!   with INVALID_ARGUMENT and changes nothing, not even the agent's fence;
//! - a target's history or fence changes only when the request was valid and accepted (a
//!   step started, or Stamp/Repair answered OK);
//! - the fence floor rises only to the token of a request some target accepted, or to a
//!   valid Status announcement;
//! - Status still answers, for every target.
//!
//! Cases: `PROPTEST_CASES` (default 64, so CI stays fast).

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use flotilla_agent::Agent;
use flotilla_agent::service::validate::MAX_FENCING_TOKEN;
use flotilla_core::{Dialect, checksum};
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::step_event::Event;
use flotilla_proto::{
    ExpectedRevision, MigrateRequest, RepairRequest, StampRequest, StatusRequest, Step,
    TargetStatus, ValidateRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Backend, Server, config, run_grpc};

#[derive(Debug, Clone)]
enum Req {
    Migrate(MigrateRequest),
    Stamp(StampRequest),
    Repair(RepairRequest),
    Status(StatusRequest),
    Validate(ValidateRequest),
}

fn token() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1u64..50,
        1 => Just(0u64),
        1 => Just(MAX_FENCING_TOKEN),
        1 => Just(MAX_FENCING_TOKEN + 1),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn target_id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![Just("t1".to_owned()), Just("t2".to_owned())],
        1 => Just("nope".to_owned()),
        1 => "[a-z0-9:._-]{0,3}",
        1 => "\\PC{0,5}",
        1 => Just("t".repeat(257)),
    ]
}

fn rollout_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9-]{0,12}",
        1 => Just("r".repeat(128)),
        1 => (129usize..=300).prop_map(|n| "r".repeat(n)),
        1 => "\\PC{0,8}",
    ]
}

fn revision() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![Just("0001_a".to_owned()), Just("0002_b".to_owned())],
        1 => Just(String::new()),
        1 => (127usize..=130).prop_map(|n| "r".repeat(n)),
        1 => "\\PC{1,6}",
    ]
}

fn direction() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 1..=2i32, 1 => Just(0i32), 1 => any::<i32>()]
}

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn step() -> impl Strategy<Value = Step> {
    let sql = prop_oneof![
        Just("CREATE TABLE IF NOT EXISTS a (id INT);"),
        Just("SELECT 1;"),
        Just("DROP TABLE IF EXISTS a;"),
        Just("NOT SQL;"),
    ];
    // 0: the right checksum, 1: its upper case, 2: another hash, 3: not a hash.
    let checksum_kind = prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)];
    let up_checksum = prop_oneof![4 => Just(String::new()), 1 => hex64(), 1 => "[a-z]{0,5}"];
    (
        revision(),
        direction(),
        sql,
        checksum_kind,
        any::<bool>(),
        up_checksum,
    )
        .prop_map(
            |(revision, direction, sql, kind, transactional, up_checksum)| Step {
                checksum: match kind {
                    0 => checksum(sql),
                    1 => checksum(sql).to_ascii_uppercase(),
                    2 => checksum("something else"),
                    _ => "xyz".into(),
                },
                revision,
                direction,
                sql: sql.into(),
                transactional,
                up_checksum,
                backup_tables: vec![],
                ..Default::default()
            },
        )
}

fn expected() -> impl Strategy<Value = ExpectedRevision> {
    (revision(), prop_oneof![4 => hex64(), 1 => "[a-z]{0,5}"])
        .prop_map(|(revision, checksum)| ExpectedRevision { revision, checksum })
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        5 => (
            target_id(),
            rollout_id(),
            token(),
            proptest::collection::vec(step(), 0..3),
            prop_oneof![2 => Just(String::new()), 1 => hex64(), 1 => "[a-z]{0,5}"],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(target_id, rollout_id, fencing_token, steps, expected_state, transaction_per_step, report_fingerprint, allow_foreign, quiet)| {
                Req::Migrate(MigrateRequest {
                    target_id,
                    rollout_id,
                    fencing_token,
                    steps,
                    lock_wait_ms: 0,
                    expected_state,
                    transaction_per_step,
                    report_fingerprint,
                    allow_foreign,
                    quiet,
                    ..Default::default()
                })
            }),
        2 => (target_id(), token(), proptest::collection::vec(expected(), 0..3), direction(), rollout_id())
            .prop_map(|(target_id, fencing_token, revisions, direction, rollout_id)| Req::Stamp(StampRequest { project: Default::default(),
                target_id,
                fencing_token,
                revisions,
                direction,
                rollout_id,
            })),
        1 => (target_id(), token(), revision(), any::<bool>())
            .prop_map(|(target_id, fencing_token, revision, applied)| Req::Repair(RepairRequest { project: Default::default(),
                target_id,
                fencing_token,
                revision,
                applied,
            })),
        2 => (proptest::collection::vec(target_id(), 0..2), any::<bool>(), token(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(target_ids, include_history, fencing_token, identities_only, without_fence, applied_set_only)| Req::Status(StatusRequest { project: Default::default(),
                target_ids,
                include_history,
                fencing_token,
                identities_only,
                without_fence,
                applied_set_only,
            })),
        1 => (proptest::collection::vec(target_id(), 0..2), proptest::collection::vec(expected(), 0..3))
            .prop_map(|(target_ids, expected)| Req::Validate(ValidateRequest { project: Default::default(),
                target_ids,
                expected,
                skip_fingerprint: true,
                include_catalog: false,
            })),
    ]
}

// The oracle: the documented limits (proto field docs), restated independently.

fn id_chars(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b) || extra.contains(&b))
}

fn ok_target(s: &str) -> bool {
    (1..=256).contains(&s.len()) && id_chars(s, b":")
}

fn ok_rollout(s: &str) -> bool {
    s.len() <= 128 && id_chars(s, b":")
}

fn ok_revision(s: &str) -> bool {
    (1..=128).contains(&s.len()) && id_chars(s, b"")
}

fn ok_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn ok_token(t: u64) -> bool {
    (1..=i64::MAX as u64).contains(&t)
}

fn ok_direction(d: i32) -> bool {
    d == 1 || d == 2
}

fn valid(req: &Req) -> bool {
    match req {
        Req::Migrate(r) => {
            ok_target(&r.target_id)
                && ok_rollout(&r.rollout_id)
                && ok_token(r.fencing_token)
                && !r.steps.is_empty()
                && r.steps.iter().all(|s| {
                    ok_revision(&s.revision)
                        && ok_direction(s.direction)
                        && ok_hex64(&s.checksum)
                        && s.checksum.eq_ignore_ascii_case(&checksum(&s.sql))
                        && (s.up_checksum.is_empty() || ok_hex64(&s.up_checksum))
                })
        }
        Req::Stamp(r) => {
            ok_target(&r.target_id)
                && ok_rollout(&r.rollout_id)
                && ok_token(r.fencing_token)
                && ok_direction(r.direction)
                && !r.revisions.is_empty()
                && r.revisions
                    .iter()
                    .all(|e| ok_revision(&e.revision) && ok_hex64(&e.checksum))
        }
        Req::Repair(r) => {
            ok_target(&r.target_id) && ok_token(r.fencing_token) && ok_revision(&r.revision)
        }
        Req::Status(r) => {
            r.target_ids.iter().all(|t| ok_target(t)) && r.fencing_token <= i64::MAX as u64
        }
        Req::Validate(r) => {
            r.target_ids.iter().all(|t| ok_target(t))
                && r.expected
                    .iter()
                    .all(|e| ok_revision(&e.revision) && ok_hex64(&e.checksum))
        }
    }
}

/// What one request did: its error code and whether it was accepted (a step started, which
/// commits the token with the step or its dirty mark; or Stamp/Repair answered OK).
struct Answer {
    code: Code,
    accepted: bool,
}

async fn send(c: &mut AgentServiceClient<Channel>, req: Req) -> Result<Answer> {
    let code_of = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    Ok(match req {
        Req::Migrate(r) => {
            let out = run_grpc(c, r).await?;
            Answer {
                code: out.error.as_ref().map_or(Code::Ok, |s| s.code()),
                // A step started: its start event, or (a quiet request leaves the first
                // step's out) an outcome only a started step has.
                accepted: out.events.iter().any(|e| match &e.event {
                    Some(Event::Started(_) | Event::Succeeded(_) | Event::Retrying(_)) => true,
                    Some(Event::Failed(f)) => f.rolled_back || f.dirty,
                    _ => false,
                }),
            }
        }
        Req::Stamp(r) => {
            let code = code_of(c.stamp(r).await.map(drop));
            Answer {
                code,
                accepted: code == Code::Ok,
            }
        }
        Req::Repair(r) => {
            let code = code_of(c.repair(r).await.map(drop));
            Answer {
                code,
                accepted: code == Code::Ok,
            }
        }
        Req::Status(r) => Answer {
            code: code_of(c.status(r).await.map(drop)),
            accepted: false,
        },
        Req::Validate(r) => Answer {
            code: code_of(c.validate(r).await.map(drop)),
            accepted: false,
        },
    })
}

fn token_of(req: &Req) -> u64 {
    match req {
        Req::Migrate(r) => r.fencing_token,
        Req::Stamp(r) => r.fencing_token,
        Req::Repair(r) => r.fencing_token,
        Req::Status(r) => r.fencing_token,
        Req::Validate(_) => 0,
    }
}

/// Every target's full state (history and fence), asked without announcing anything.
async fn state(agent: &Agent) -> Result<Vec<TargetStatus>> {
    let resp = agent
        .status(StatusRequest {
            target_ids: vec![],
            include_history: true,
            fencing_token: 0,
            ..Default::default()
        })
        .await?;
    for t in &resp.targets {
        ensure!(t.error.is_empty(), "status of {}: {}", t.target_id, t.error);
    }
    ensure!(resp.targets.len() == 2, "{:?}", resp.targets);
    Ok(resp.targets)
}

async fn check(requests: Vec<Req>) -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = Arc::new(
        Agent::new(config(vec![
            backend.fresh_target("t1").await?,
            backend.fresh_target("t2").await?,
        ]))
        .await?,
    );
    let server = Server::start(agent.clone()).await?;
    let mut c = server.client().await?;
    for req in requests {
        let before = state(&agent).await?;
        let floor = agent.fence_floor();
        let is_valid = valid(&req);
        let is_status = matches!(req, Req::Status(_));
        let token = token_of(&req);
        let answer = send(&mut c, req.clone()).await?;
        let after = state(&agent).await.context("Status after the request")?;
        let new_floor = agent.fence_floor();
        if !is_valid {
            ensure!(
                answer.code == Code::InvalidArgument,
                "invalid request answered {:?}: {req:?}",
                answer.code
            );
        }
        if after != before {
            ensure!(
                is_valid && answer.accepted,
                "state changed by a request that was not valid and accepted: {req:?}\n\
                 before {before:?}\nafter {after:?}"
            );
        }
        let allowed = if is_valid && (answer.accepted || is_status) {
            floor.max(token)
        } else {
            floor
        };
        ensure!(
            new_floor <= allowed,
            "fence floor {floor} -> {new_floor} (allowed {allowed}) by {req:?}"
        );
    }
    server.stop().await
}

#[test]
fn hostile_requests_change_nothing_unless_valid_and_accepted() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(request(), 1..6), |requests| {
        rt.block_on(check(requests))
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
