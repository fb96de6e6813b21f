//! Request validation: every request is checked here before anything touches a database.
//! Failures are `AgentError::InvalidRequest` (INVALID_ARGUMENT) naming the field, or
//! `ChecksumMismatch` when a step's SQL does not hash to its declared checksum.

use flotilla_proto::{MigrateRequest, RepairRequest, StampRequest, StatusRequest, ValidateRequest};

use crate::config::{MAX_TARGET_ID_LEN, is_valid_target_id};
use crate::driver::StepSpec;
use crate::error::AgentError;
use std::time::Duration;

use flotilla_core::bounds::{StepBounds, from_wire_ms};
#[cfg(test)]
use flotilla_core::checksum;
use flotilla_core::limits::show_bytes;
use flotilla_core::project::Project;
use flotilla_core::{Direction, is_valid_revision_id, step_checksum};
use flotilla_rpc::convert::DirectionProto;

/// Most steps in one Migrate request.
pub const MAX_STEPS: usize = flotilla_core::limits::MAX_STEPS_PER_REQUEST;
/// Largest SQL text of one step (the parser refuses a larger section, see `limits`).
pub const MAX_SQL_BYTES: usize = flotilla_core::limits::MAX_STEP_SQL_BYTES;
/// Most target ids or expected revisions in one request.
pub const MAX_LIST: usize = 100_000;
/// Longest rollout id: `flotilla_history.rollout_id` is VARCHAR(128) on every dialect.
pub const MAX_ROLLOUT_ID_LEN: usize = 128;
/// Longest bound on a lock wait or a statement: PostgreSQL's `lock_timeout` and
/// `statement_timeout` are 32-bit milliseconds (about 24 days).
pub const MAX_BOUND_MS: u64 = i32::MAX as u64;

fn bound_ms(field: &str, ms: u64) -> Result<(), AgentError> {
    if ms > MAX_BOUND_MS {
        return Err(invalid(
            field,
            format!("{ms} ms; at most {MAX_BOUND_MS} (PostgreSQL's limit)"),
        ));
    }
    Ok(())
}

/// Highest fencing token: tokens are stored in signed BIGINT columns (`flotilla_fence.token`,
/// `flotilla_history.fencing_token`) on every dialect, and etcd revisions are int64 too.
pub const MAX_FENCING_TOKEN: u64 = i64::MAX as u64;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AgentError {
    AgentError::invalid(field, message)
}

/// The request's project (empty: `default`).
pub(crate) fn project(name: &str) -> Result<Project, AgentError> {
    Project::parse(name).map_err(|e| invalid("project", e.to_string()))
}

pub(crate) fn target_id(field: &str, id: &str) -> Result<(), AgentError> {
    if !is_valid_target_id(id) {
        let shown: String = id.chars().take(64).collect();
        return Err(invalid(
            field,
            format!(
                "{shown:?} is not a target id (1 to {MAX_TARGET_ID_LEN} characters of [A-Za-z0-9_.:-])"
            ),
        ));
    }
    Ok(())
}

fn revision(field: &str, rev: &str) -> Result<(), AgentError> {
    if !is_valid_revision_id(rev) {
        let shown: String = rev.chars().take(64).collect();
        return Err(invalid(
            field,
            format!("{shown:?} is not a revision id ([A-Za-z0-9_.-]{{1,128}})"),
        ));
    }
    Ok(())
}

fn is_checksum(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn checksum_field(field: &str, s: &str) -> Result<(), AgentError> {
    if !is_checksum(s) {
        return Err(invalid(field, "must be a hex SHA-256 (64 hex digits)"));
    }
    Ok(())
}

pub(crate) fn fencing_token(token: u64) -> Result<(), AgentError> {
    if token == 0 {
        return Err(invalid(
            "fencing_token",
            "must be > 0 (the coordinator's lock token)",
        ));
    }
    announced_token(token)
}

/// A token that may be 0 (Status: "not a leader"), else a storable one.
fn announced_token(token: u64) -> Result<(), AgentError> {
    if token > MAX_FENCING_TOKEN {
        return Err(invalid(
            "fencing_token",
            format!(
                "{token} is above {MAX_FENCING_TOKEN} (2^63-1), the largest token a database \
                 fence column holds; send the coordinator's lock token"
            ),
        ));
    }
    Ok(())
}

/// True for a storable rollout id: empty, or up to 128 of `[A-Za-z0-9_.:-]` (ASCII, so the
/// length is the same in bytes and characters, whatever the column's character set).
pub fn is_valid_rollout_id(id: &str) -> bool {
    id.len() <= MAX_ROLLOUT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

pub(crate) fn rollout_id(id: &str) -> Result<(), AgentError> {
    if !is_valid_rollout_id(id) {
        let shown: String = id.chars().take(64).collect();
        return Err(invalid(
            "rollout_id",
            format!(
                "{shown:?} ({} bytes) is not a rollout id (at most {MAX_ROLLOUT_ID_LEN} \
                 characters of [A-Za-z0-9_.:-])",
                id.len()
            ),
        ));
    }
    Ok(())
}

fn direction(field: &str, raw: i32) -> Result<Direction, AgentError> {
    flotilla_proto::Direction::try_from(raw)
        .ok()
        .and_then(Direction::from_proto)
        .ok_or_else(|| invalid(field, "must be DIRECTION_UP or DIRECTION_DOWN"))
}

/// A Status request: its target ids and the announced token (0 or a storable token).
pub(crate) fn status_request(req: &StatusRequest) -> Result<(), AgentError> {
    target_ids("target_ids", &req.target_ids)?;
    announced_token(req.fencing_token)
}

pub(crate) fn target_ids(field: &str, ids: &[String]) -> Result<(), AgentError> {
    if ids.len() > MAX_LIST {
        return Err(invalid(field, format!("more than {MAX_LIST} entries")));
    }
    for (i, id) in ids.iter().enumerate() {
        target_id(&format!("{field}[{i}]"), id)?;
    }
    Ok(())
}

/// A Migrate request's steps, as the executor runs them, with each down step's expected
/// up checksum. Checksums are verified here, before anything runs.
pub(crate) fn migrate_request(req: &MigrateRequest) -> Result<Vec<(StepSpec, String)>, AgentError> {
    target_id("target_id", &req.target_id)?;
    rollout_id(&req.rollout_id)?;
    fencing_token(req.fencing_token)?;
    if !req.expected_state.is_empty() {
        checksum_field("expected_state", &req.expected_state)?;
    }
    bound_ms("step_lock_timeout_ms", req.step_lock_timeout_ms)?;
    if req.steps.is_empty() {
        return Err(invalid("steps", "is empty: send at least one step"));
    }
    if req.steps.len() > MAX_STEPS {
        return Err(invalid(
            "steps",
            format!("{} steps; at most {MAX_STEPS} per request", req.steps.len()),
        ));
    }
    let mut out = Vec::with_capacity(req.steps.len());
    for (i, s) in req.steps.iter().enumerate() {
        let f = |k: &str| format!("steps[{i}].{k}");
        revision(&f("revision"), &s.revision)?;
        let dir = direction(&f("direction"), s.direction)?;
        if s.sql.len() > MAX_SQL_BYTES {
            return Err(invalid(
                f("sql"),
                format!(
                    "{} of SQL; a step carries at most {}: split the revision into several",
                    show_bytes(s.sql.len()),
                    show_bytes(MAX_SQL_BYTES)
                ),
            ));
        }
        for (k, guard) in [("check_sql", &s.check_sql), ("verify_sql", &s.verify_sql)] {
            if guard.len() > MAX_SQL_BYTES {
                return Err(invalid(
                    f(k),
                    format!(
                        "{} of SQL; a step carries at most {}",
                        show_bytes(guard.len()),
                        show_bytes(MAX_SQL_BYTES)
                    ),
                ));
            }
            if !guard.is_empty() && dir != Direction::Up {
                return Err(invalid(
                    f(k),
                    "only up steps have check and verify queries: send it empty",
                ));
            }
        }
        checksum_field(&f("checksum"), &s.checksum)?;
        bound_ms(&f("lock_timeout_ms"), s.lock_timeout_ms)?;
        bound_ms(&f("statement_timeout_ms"), s.statement_timeout_ms)?;
        if !s.up_checksum.is_empty() {
            checksum_field(&f("up_checksum"), &s.up_checksum)?;
        }
        if s.backup_tables.len() > 64 {
            return Err(invalid(f("backup_tables"), "more than 64 tables"));
        }
        for t in &s.backup_tables {
            if !flotilla_core::backup::is_valid_table(t) {
                return Err(invalid(
                    f("backup_tables"),
                    format!(
                        "{t:?}: expected 1 to {} characters of A-Z a-z 0-9 _ . $ \" `",
                        flotilla_core::backup::MAX_TABLE_LEN
                    ),
                ));
            }
        }
        let computed = step_checksum(&s.sql, &s.check_sql, &s.verify_sql);
        if !computed.eq_ignore_ascii_case(&s.checksum) {
            return Err(AgentError::ChecksumMismatch {
                target: req.target_id.clone(),
                revision: s.revision.clone(),
                declared: s.checksum.clone(),
                computed,
            });
        }
        out.push((
            StepSpec {
                revision: s.revision.clone(),
                direction: dir,
                sql: s.sql.clone(),
                checksum: computed,
                transactional: s.transactional,
                // The agent's default applies where neither the step nor the request sets
                // one (`Agent::migrate`).
                bounds: StepBounds {
                    lock_timeout: StepBounds::resolve(
                        from_wire_ms(s.lock_timeout_ms),
                        from_wire_ms(req.step_lock_timeout_ms),
                        Duration::ZERO,
                    ),
                    statement_timeout: from_wire_ms(s.statement_timeout_ms),
                },
                check: s.check_sql.clone(),
                verify: s.verify_sql.clone(),
            },
            s.up_checksum.to_ascii_lowercase(),
        ));
    }
    Ok(out)
}

pub(crate) fn validate_request(req: &ValidateRequest) -> Result<(), AgentError> {
    target_ids("target_ids", &req.target_ids)?;
    if req.expected.len() > MAX_LIST {
        return Err(invalid("expected", format!("more than {MAX_LIST} entries")));
    }
    for (i, e) in req.expected.iter().enumerate() {
        revision(&format!("expected[{i}].revision"), &e.revision)?;
        checksum_field(&format!("expected[{i}].checksum"), &e.checksum)?;
    }
    Ok(())
}

pub(crate) fn stamp_request(req: &StampRequest) -> Result<Direction, AgentError> {
    target_id("target_id", &req.target_id)?;
    rollout_id(&req.rollout_id)?;
    fencing_token(req.fencing_token)?;
    let dir = direction("direction", req.direction)?;
    if req.revisions.is_empty() {
        return Err(invalid("revisions", "is empty"));
    }
    if req.revisions.len() > MAX_STEPS {
        return Err(invalid(
            "revisions",
            format!("more than {MAX_STEPS} entries"),
        ));
    }
    for (i, r) in req.revisions.iter().enumerate() {
        revision(&format!("revisions[{i}].revision"), &r.revision)?;
        checksum_field(&format!("revisions[{i}].checksum"), &r.checksum)?;
    }
    Ok(dir)
}

pub(crate) fn repair_request(req: &RepairRequest) -> Result<(), AgentError> {
    target_id("target_id", &req.target_id)?;
    fencing_token(req.fencing_token)?;
    revision("revision", &req.revision)
}

#[cfg(test)]
mod tests {
    use flotilla_proto::Step;

    use super::*;

    fn step(rev: &str, sql: &str) -> Step {
        Step {
            revision: rev.into(),
            direction: flotilla_proto::Direction::Up as i32,
            sql: sql.into(),
            checksum: checksum(sql),
            transactional: true,
            up_checksum: String::new(),
            backup_tables: vec![],
            ..Default::default()
        }
    }

    fn req(steps: Vec<Step>) -> MigrateRequest {
        MigrateRequest {
            target_id: "t1".into(),
            rollout_id: "r1".into(),
            fencing_token: 1,
            steps,
            lock_wait_ms: 0,
            ..Default::default()
        }
    }

    fn field_of(r: Result<Vec<(StepSpec, String)>, AgentError>) -> String {
        match r {
            Err(AgentError::InvalidRequest { field, .. }) => field,
            Err(e) => format!("other: {e}"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn bounds_come_from_the_step_then_the_request_and_are_checked() {
        let mut r = req(vec![step("a", "select 1"), step("b", "select 2")]);
        r.step_lock_timeout_ms = 300;
        r.steps[0].lock_timeout_ms = 100;
        r.steps[0].statement_timeout_ms = 60_000;
        let Ok(steps) = migrate_request(&r) else {
            panic!("refused")
        };
        assert_eq!(steps[0].0.bounds.lock_timeout, Duration::from_millis(100));
        assert_eq!(
            steps[0].0.bounds.statement_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(steps[1].0.bounds.lock_timeout, Duration::from_millis(300));
        assert_eq!(steps[1].0.bounds.statement_timeout, None);
        r.steps[1].lock_timeout_ms = MAX_BOUND_MS + 1;
        assert_eq!(field_of(migrate_request(&r)), "steps[1].lock_timeout_ms");
    }

    #[test]
    fn rejects_malformed_migrate_requests() {
        assert_eq!(
            field_of(migrate_request(&req(vec![step("a", "select 1")]))),
            "ok"
        );
        assert_eq!(field_of(migrate_request(&req(vec![]))), "steps");
        assert_eq!(
            field_of(migrate_request(&req(vec![step("", "x")]))),
            "steps[0].revision"
        );
        let mut s = step("a", "x");
        s.direction = 0;
        assert_eq!(
            field_of(migrate_request(&req(vec![s]))),
            "steps[0].direction"
        );
        let mut s = step("a", "x");
        s.backup_tables = vec!["\"public\".users".into()];
        assert_eq!(field_of(migrate_request(&req(vec![s]))), "ok");
        let mut s = step("a", "x");
        s.backup_tables = vec!["users; DROP TABLE x".into()];
        assert_eq!(
            field_of(migrate_request(&req(vec![s]))),
            "steps[0].backup_tables"
        );
        let big = "x".repeat(MAX_SQL_BYTES + 1);
        assert_eq!(
            field_of(migrate_request(&req(vec![step("a", &big)]))),
            "steps[0].sql"
        );
        let many = vec![step("a", "x"); MAX_STEPS + 1];
        assert_eq!(field_of(migrate_request(&req(many))), "steps");
        let mut r = req(vec![step("a", "x")]);
        r.fencing_token = 0;
        assert_eq!(field_of(migrate_request(&r)), "fencing_token");
        r.fencing_token = MAX_FENCING_TOKEN + 1;
        assert_eq!(field_of(migrate_request(&r)), "fencing_token");
        r.fencing_token = u64::MAX;
        assert_eq!(field_of(migrate_request(&r)), "fencing_token");
        r.fencing_token = MAX_FENCING_TOKEN;
        assert_eq!(field_of(migrate_request(&r)), "ok");
        r.rollout_id = "r".repeat(MAX_ROLLOUT_ID_LEN);
        assert_eq!(field_of(migrate_request(&r)), "ok");
        r.rollout_id = "r".repeat(MAX_ROLLOUT_ID_LEN + 1);
        assert_eq!(field_of(migrate_request(&r)), "rollout_id");
        r.rollout_id = "é".into();
        assert_eq!(field_of(migrate_request(&r)), "rollout_id");
        r.rollout_id = String::new();
        assert_eq!(field_of(migrate_request(&r)), "ok");
        r.fencing_token = 1;
        r.target_id = "t".repeat(MAX_TARGET_ID_LEN + 1);
        assert_eq!(field_of(migrate_request(&r)), "target_id");
        let mut s = step("a", "x");
        s.checksum = checksum("y");
        assert!(matches!(
            migrate_request(&req(vec![s])),
            Err(AgentError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn big_steps_pass_whole_and_oversized_ones_name_the_limit() {
        // A 20 MB data seed is one step: accepted, its SQL kept byte for byte.
        let row = "INSERT INTO seed (id, name) VALUES (1, 'a;b');\n";
        let seed = row.repeat(20_000_000 / row.len());
        let steps = migrate_request(&req(vec![step("seed", &seed)])).expect("20 MB step");
        assert_eq!(steps[0].0.sql.len(), seed.len());
        assert_eq!(steps[0].0.checksum, checksum(&seed));

        let big = "x".repeat(MAX_SQL_BYTES + 1);
        match migrate_request(&req(vec![step("a", &big)])) {
            Err(e @ AgentError::InvalidRequest { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("64.0 MiB (67108865 bytes) of SQL")
                        && msg.contains("at most 64.0 MiB (67108864 bytes)")
                        && msg.contains("split the revision"),
                    "{msg}"
                );
            }
            Err(e) => panic!("expected an invalid request, got {e}"),
            Ok(_) => panic!("a step over the limit was accepted"),
        }
    }
}
