//! `Agent::validate`: each target's history against the expected revisions, and its schema
//! fingerprint. Targets are validated concurrently (`status.concurrency` at a time, each
//! within `status.validate_timeout`, 60 s by default). The schemas of one PostgreSQL
//! database are validated in chunks, as Status reads them (`status::units`): per chunk, the
//! history rows in one query (`read_schemas`) and the catalogs in one statement
//! (`read_schema_catalogs`), so a chunk of 50 schemas costs two round trips instead of 50
//! sessions of five queries. Each chunk has the timeout; a chunk that fails reports the error
//! on each of its schemas.

use std::collections::HashMap;

use flotilla_proto::{
    IssueKind, RevisionIssue, TargetValidation, ValidateRequest, ValidateResponse,
};
use futures::StreamExt;
use tonic::Status;

use super::status::{Unit, detached, for_each_schema, units};
use super::{Agent, open_session};
use crate::driver::DriverError;
use crate::driver::postgres::{CATALOGS_PER_QUERY, SchemaRead, read_schema_catalogs, read_schemas};
use crate::error::AgentError;
use crate::executor::driver_error;
use crate::service::validate as check;
use crate::target::Target;
use flotilla_core::catalog::Catalog;
use flotilla_core::history::TargetState;
use flotilla_core::project::Project;
use flotilla_rpc::convert::CatalogProto;

/// What one validation asks for.
struct Ask<'a> {
    project: &'a Project,
    expected: &'a HashMap<&'a str, &'a str>,
    skip_fingerprint: bool,
    include_catalog: bool,
}

impl Ask<'_> {
    /// A target's validation from its state and (unless skipped) its catalog.
    fn validation(
        &self,
        t: &Target,
        state: TargetState,
        catalog: Option<Catalog>,
    ) -> TargetValidation {
        TargetValidation {
            target_id: t.id.clone(),
            fingerprint: catalog
                .as_ref()
                .map(Catalog::fingerprint)
                .unwrap_or_default(),
            catalog: catalog
                .filter(|_| self.include_catalog)
                .map(|c| c.to_proto()),
            issues: issues(&state, self.expected),
            applied: state.applied().iter().map(|r| r.revision.clone()).collect(),
            ..Default::default()
        }
    }
}

fn failed(t: &Target, error: String) -> TargetValidation {
    TargetValidation {
        target_id: t.id.clone(),
        error,
        ..Default::default()
    }
}

/// The target's history and, unless skipped, its normalized catalog, on a session of its own.
async fn read_target_and_catalog(
    target: &Target,
    project: &Project,
    skip_fingerprint: bool,
) -> Result<(TargetState, Option<Catalog>), AgentError> {
    let mut session = open_session(target, project).await?;
    let res = async {
        let state = session.read_state().await?;
        if skip_fingerprint {
            return Ok((state, None));
        }
        Ok((state, Some(session.catalog().await?)))
    }
    .await;
    session.close().await;
    res.map_err(|e| driver_error(&target.id, e))
}

impl Agent {
    fn timed_out_validation(&self, t: &Target) -> TargetValidation {
        let ms = self.config.status.validate_timeout.as_millis();
        failed(t, format!("no answer within {ms}ms"))
    }

    async fn validate_unit(&self, unit: Unit, ask: &Ask<'_>) -> Vec<(usize, TargetValidation)> {
        let timeout = self.config.status.validate_timeout;
        match unit {
            Unit::One(i, t) => {
                let read = read_target_and_catalog(&t, ask.project, ask.skip_fingerprint);
                let tv = match tokio::time::timeout(timeout, read).await {
                    Ok(Ok((state, catalog))) => ask.validation(&t, state, catalog),
                    Ok(Err(e)) => failed(&t, e.to_string()),
                    Err(_) => self.timed_out_validation(&t),
                };
                vec![(i, tv)]
            }
            Unit::Schemas(members) => {
                let Some((_, _, first)) = members.first() else {
                    return Vec::new();
                };
                let schemas: Vec<String> =
                    members.iter().map(|(_, _, r)| r.schema.clone()).collect();
                let (pool, project, public) =
                    (first.pool.clone(), ask.project.clone(), first.public);
                let skip_fingerprint = ask.skip_fingerprint;
                let read = detached(async move {
                    // Validation compares history and catalogs: the fence is not read.
                    let states = read_schemas(
                        &pool,
                        &schemas,
                        &project,
                        public,
                        SchemaRead {
                            fence: false,
                            full_rows: true,
                        },
                    )
                    .await?;
                    let catalogs = if skip_fingerprint {
                        None
                    } else {
                        let read = read_schema_catalogs(&pool, &schemas, public);
                        Some(read.await?.catalogs)
                    };
                    Ok((states, catalogs))
                });
                match tokio::time::timeout(timeout, read).await {
                    Ok(Ok((states, catalogs))) => {
                        let mut catalogs = catalogs.map(Vec::into_iter);
                        members
                            .iter()
                            .zip(states)
                            .map(|((i, t, _), state)| {
                                let catalog = catalogs.as_mut().map(|c| {
                                    c.next().unwrap_or_else(|| {
                                        Err(DriverError::Permanent {
                                            message: "no catalog read".into(),
                                        })
                                    })
                                });
                                let tv = match (state, catalog.transpose()) {
                                    (Ok((state, _)), Ok(catalog)) => {
                                        ask.validation(t, state, catalog)
                                    }
                                    (Err(e), _) | (_, Err(e)) => {
                                        failed(t, driver_error(&t.id, e).to_string())
                                    }
                                };
                                (*i, tv)
                            })
                            .collect()
                    }
                    Ok(Err(e)) => members
                        .iter()
                        .map(|(i, t, _)| {
                            let e = driver_error(&t.id, for_each_schema(&e));
                            (*i, failed(t, e.to_string()))
                        })
                        .collect(),
                    Err(_) => members
                        .iter()
                        .map(|(i, t, _)| (*i, self.timed_out_validation(t)))
                        .collect(),
                }
            }
        }
    }

    /// Compare each target's history with the expected revisions and fingerprint its schema.
    pub async fn validate(&self, req: ValidateRequest) -> Result<ValidateResponse, Status> {
        check::validate_request(&req)?;
        let project = &check::project(&req.project)?;
        let targets = self.select(&req.target_ids).await?;
        let expected: HashMap<&str, &str> = req
            .expected
            .iter()
            .map(|e| (e.revision.as_str(), e.checksum.as_str()))
            .collect();
        let ask = &Ask {
            project,
            expected: &expected,
            skip_fingerprint: req.skip_fingerprint,
            include_catalog: req.include_catalog,
        };
        let mut read: Vec<(usize, TargetValidation)> =
            futures::stream::iter(units(targets, CATALOGS_PER_QUERY))
                .map(|u| self.validate_unit(u, ask))
                .buffer_unordered(self.config.status.concurrency)
                .flat_map(futures::stream::iter)
                .collect()
                .await;
        read.sort_by_key(|(i, _)| *i);
        Ok(ValidateResponse {
            agent_id: self.config.agent_id.clone(),
            targets: read.into_iter().map(|(_, tv)| tv).collect(),
        })
    }
}

/// History vs the expected revisions: unknown revisions, edited ones, a dirty step.
fn issues(
    state: &TargetState,
    expected: &std::collections::HashMap<&str, &str>,
) -> Vec<RevisionIssue> {
    let mut out = Vec::new();
    for row in state.applied() {
        match expected.get(row.revision.as_str()) {
            None => out.push(RevisionIssue {
                revision: row.revision.clone(),
                kind: IssueKind::UnknownRevision as i32,
                expected_checksum: String::new(),
                applied_checksum: row.checksum.clone(),
                message: format!(
                    "revision {} is applied but is not in the migration set",
                    row.revision
                ),
            }),
            Some(want) if *want != row.checksum => out.push(RevisionIssue {
                revision: row.revision.clone(),
                kind: IssueKind::ChecksumMismatch as i32,
                expected_checksum: (*want).to_owned(),
                applied_checksum: row.checksum.clone(),
                message: format!(
                    "revision {} was applied with checksum {} but the migration now hashes to {}: \
                     it was edited after it was applied",
                    row.revision, row.checksum, want
                ),
            }),
            Some(_) => {}
        }
    }
    if let Some(d) = state.dirty() {
        out.push(RevisionIssue {
            revision: d.revision.clone(),
            kind: IssueKind::Dirty as i32,
            expected_checksum: expected
                .get(d.revision.as_str())
                .map(|c| (*c).to_owned())
                .unwrap_or_default(),
            applied_checksum: d.checksum.clone(),
            message: format!("step {} did not finish cleanly; run repair", d.revision),
        });
    }
    out
}
