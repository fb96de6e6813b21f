//! The state of many schemas of one database in a few round trips (Status of a
//! schema-per-tenant database): one query over the catalog says which schemas have Flotilla's
//! tables (and other tools' version tables), then one simple query per chunk of schemas reads
//! their history and fence rows (a generated `UNION ALL`), all on one pooled connection.
//! Callers pass a chunk of at most [`SCHEMAS_PER_QUERY`] schemas (Status runs several
//! chunks at once, on as many pooled connections).
//!
//! Chunks are bounded because every table a statement reads takes a lock until the end of
//! its (implicit) transaction, and the server's lock table is sized for
//! `max_locks_per_transaction` (64) per connection; and because planning a `UNION ALL` costs
//! more per branch the more branches it has (PostgreSQL 15, 10,000 tenant schemas: 16 µs a
//! branch at 50, 75 µs at 200). A chunk whose query fails (tables of
//! an unexpected shape) and a schema with another tool's version table and no Flotilla
//! history are read one by one, on a session of their own, the ordinary way.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use super::D;
use super::history::{applied_set_row_at, raw_row_at};
use super::pool::SchemaPool;
use super::schema::{PostgresSchemaDriver, quote_ident};
use super::simple::result_sets;
use crate::driver::classify::on;
use crate::driver::common::{APPLIED_SET_COLUMNS, HISTORY_COLUMNS, from_db, history_row};
use crate::driver::{Driver, DriverError};
use flotilla_core::foreign::{ForeignTable, TOOLS};
use flotilla_core::history::TargetState;
use flotilla_core::project::Project;

/// Schemas whose tables one query reads (two tables each).
pub const SCHEMAS_PER_QUERY: usize = 50;

/// What Status reports of one schema (as `Driver::read_status`), or why it could not be read.
pub type SchemaStatus = Result<(TargetState, Vec<ForeignTable>), DriverError>;

/// What a batched read takes from each schema's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaRead {
    /// The fence token too (a second table per schema); else it reads as 0.
    pub fence: bool,
    /// Every column of each history row; else the applied-set columns only
    /// ([`APPLIED_SET_COLUMNS`]: PostgreSQL 15, 10,000 schemas on one connection, 0.90 s of
    /// server time with all ten, 0.71 s with those five), the others read as empty.
    pub full_rows: bool,
}

impl SchemaRead {
    /// Everything: fence tokens and whole history rows.
    pub const ALL: SchemaRead = SchemaRead {
        fence: true,
        full_rows: true,
    };
}

/// Per schema found in the catalog: history table, fence table, another tool's table.
#[derive(Debug, Clone, Copy, Default)]
struct Found {
    history: bool,
    fence: bool,
    foreign: bool,
}

/// Which of `$1`'s schemas exist and have Flotilla's tables and other tools' version tables,
/// looked up per schema whatever the catalogs' statistics say: the schema by name through
/// the catalog cache (`to_regnamespace`, no scan of `pg_namespace`), each table test as a
/// scalar subquery probing `pg_class`'s unique (name, schema) index. An `EXISTS` there may be
/// planned as one hashed pass over every `pg_class` row of that name instead, and right after
/// a 10,000-schema rollout (the catalogs not yet vacuumed or analyzed) this query was most of
/// a 5 s no-op (sampled `pg_stat_activity`: its backends waiting on catalog page reads);
/// probed per schema, the no-op took 1.1-1.6 s.
fn catalog_sql(project: &Project) -> String {
    let foreign = TOOLS
        .iter()
        .map(|(_, t)| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let has = |names: &str| {
        format!(
            "(SELECT true FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname IN ({names}) \
             LIMIT 1) IS NOT NULL"
        )
    };
    format!(
        "SELECT s.name, {}, {}, {} FROM unnest($1::text[]) AS s(name) \
         CROSS JOIN LATERAL (SELECT to_regnamespace(quote_ident(s.name))::oid AS oid) n \
         WHERE n.oid IS NOT NULL",
        has(&format!("'{}'", project.history_table())),
        has(&format!("'{}'", project.fence_table())),
        has(&foreign),
    )
}

/// The history and fence reads of `chunk` (indexes into `schemas`) as one simple query: the
/// history rows of every schema that has the table, then the fence tokens.
fn chunk_sql(
    project: &Project,
    schemas: &[String],
    chunk: &[(usize, Found)],
    full_rows: bool,
) -> String {
    let columns = if full_rows {
        HISTORY_COLUMNS
    } else {
        APPLIED_SET_COLUMNS
    };
    let history = chunk
        .iter()
        .filter(|(_, f)| f.history)
        .map(|(i, _)| {
            format!(
                "SELECT {i}::int4, {columns} FROM {}.{}",
                quote_ident(&schemas[*i]),
                project.history_table()
            )
        })
        .collect::<Vec<_>>();
    let fence = chunk
        .iter()
        .filter(|(_, f)| f.fence)
        .map(|(i, _)| {
            format!(
                "SELECT {i}::int4, token FROM {}.{} WHERE id = 1",
                quote_ident(&schemas[*i]),
                project.fence_table()
            )
        })
        .collect::<Vec<_>>();
    let mut sql = String::new();
    if !history.is_empty() {
        sql.push_str(&history.join(" UNION ALL "));
        sql.push_str(" ORDER BY 1, 2;\n");
    }
    if !fence.is_empty() {
        sql.push_str(&fence.join(" UNION ALL "));
        sql.push(';');
    }
    sql
}

/// How a chunk's statement went (a broken connection is an error instead).
enum ChunkRead {
    Read,
    /// The statement failed (a table of an unexpected shape, or gone): read it otherwise.
    Failed(DriverError),
}

/// Read `chunk`'s tables in one simple query and put each schema's state into `out`.
async fn read_chunk(
    conn: &mut sqlx::postgres::PgConnection,
    project: &Project,
    schemas: &[String],
    chunk: &[(usize, Found)],
    full_rows: bool,
    out: &mut [Option<SchemaStatus>],
) -> Result<ChunkRead, DriverError> {
    let sql = chunk_sql(project, schemas, chunk, full_rows);
    let sets = match result_sets(conn, sql).await {
        Ok(sets) => sets,
        Err(e) => {
            let e = on(D, "read flotilla tables")(e);
            if e.class() == Some(crate::driver::ErrorClass::Connection) {
                return Err(e);
            }
            return Ok(ChunkRead::Failed(e));
        }
    };
    let mut states: HashMap<usize, TargetState> = chunk
        .iter()
        .map(|(i, _)| (*i, TargetState::default()))
        .collect();
    let mut sets = sets.into_iter();
    let mut decode_failed: HashMap<usize, DriverError> = HashMap::new();
    if chunk.iter().any(|(_, f)| f.history) {
        for r in sets.next().unwrap_or_default() {
            let i: i32 = r.try_get(0).map_err(on(D, "decode history"))?;
            let i = usize::try_from(i).unwrap_or(usize::MAX);
            let row = if full_rows {
                raw_row_at(&r, 1)
            } else {
                applied_set_row_at(&r, 1)
            };
            let row = row.map_err(on(D, "decode history")).and_then(history_row);
            match (row, states.get_mut(&i)) {
                (Ok(row), Some(state)) => state.history.push(row),
                (Err(e), Some(_)) => {
                    decode_failed.entry(i).or_insert(e);
                }
                _ => {}
            }
        }
    }
    if chunk.iter().any(|(_, f)| f.fence) {
        for r in sets.next().unwrap_or_default() {
            let i: i32 = r.try_get(0).map_err(on(D, "read fence"))?;
            let token: i64 = r.try_get(1).map_err(on(D, "read fence"))?;
            if let Some(state) = states.get_mut(&usize::try_from(i).unwrap_or(usize::MAX)) {
                state.fence_token = from_db(token);
            }
        }
    }
    for (i, state) in states {
        out[i] = Some(match decode_failed.remove(&i) {
            Some(e) => Err(e),
            None => Ok((state, Vec::new())),
        });
    }
    Ok(ChunkRead::Read)
}

/// Read the state of `schemas` (of the pool's database) for Status: one result per schema,
/// in order, with what `what` asks for (`SchemaRead`: without the fence, one table fewer per
/// schema). An error of the connection or of the catalog query fails the whole call.
///
/// When the pool last saw every one of `schemas` with Flotilla's tables (`seen.rs`: a fleet
/// migrated at least once), their tables are read straight away, without the catalog query
/// first (10,000 schemas: 0.15 s less of PostgreSQL's CPU and one round trip per chunk);
/// if that statement fails, the schemas are forgotten and read the ordinary way.
pub async fn read_schemas(
    pool: &Arc<SchemaPool>,
    schemas: &[String],
    project: &Project,
    search_path_public: bool,
    what: SchemaRead,
) -> Result<Vec<SchemaStatus>, DriverError> {
    let fence = what.fence;
    let mut out: Vec<Option<SchemaStatus>> = (0..schemas.len()).map(|_| None).collect();
    let mut one_by_one = Vec::new();
    // A chunk is many small index reads: parallel workers (which the planner may pick for
    // a long `UNION ALL`) cost more than they save. The pool resets the setting.
    let (mut conn, lease) = pool
        .checkout("SET max_parallel_workers_per_gather = 0")
        .await?;
    let read = async {
        if pool.seen.all(project, schemas) {
            let all: Vec<(usize, Found)> = (0..schemas.len())
                .map(|i| {
                    let found = Found {
                        history: true,
                        fence,
                        foreign: false,
                    };
                    (i, found)
                })
                .collect();
            match read_chunk(&mut conn, project, schemas, &all, what.full_rows, &mut out).await? {
                ChunkRead::Read => return Ok(()),
                ChunkRead::Failed(e) => {
                    tracing::debug!(error = %e, "schemas seen with flotilla tables could not be read at once; looking their tables up");
                    pool.seen.forget(project, schemas);
                }
            }
        }
        pool.seen.looked_up();
        tracing::debug!(
            schemas = schemas.len(),
            "looking up which schemas have flotilla tables"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(catalog_sql(project)))
            .bind(schemas)
            .fetch_all(&mut conn)
            .await
            .map_err(on(D, "look up flotilla tables"))?;
        let index: HashMap<&str, usize> = schemas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let mut found = vec![Found::default(); schemas.len()];
        for r in &rows {
            let name: String = r.try_get(0).map_err(on(D, "look up flotilla tables"))?;
            let Some(&i) = index.get(name.as_str()) else {
                continue;
            };
            let history: bool = r.try_get(1).map_err(on(D, "look up flotilla tables"))?;
            let has_fence: bool = r.try_get(2).map_err(on(D, "look up flotilla tables"))?;
            if history && has_fence {
                pool.seen.remember(project, &name);
            }
            found[i] = Found {
                history,
                fence: fence && has_fence,
                foreign: r.try_get(3).map_err(on(D, "look up flotilla tables"))?,
            };
        }
        let mut tables = Vec::new();
        for (i, f) in found.iter().enumerate() {
            if f.foreign && !f.history {
                // Another tool's table matters only without Flotilla history: read it alone.
                one_by_one.push(i);
            } else if f.history || f.fence {
                tables.push((i, *f));
            } else {
                // No Flotilla table: a schema nobody migrated reads as one at base.
                out[i] = Some(Ok((TargetState::default(), Vec::new())));
            }
        }
        for chunk in tables.chunks(SCHEMAS_PER_QUERY) {
            if let ChunkRead::Failed(e) =
                read_chunk(&mut conn, project, schemas, chunk, what.full_rows, &mut out).await?
            {
                tracing::debug!(error = %e, "batched status read failed; reading the schemas one by one");
                one_by_one.extend(chunk.iter().map(|(i, _)| *i));
            }
        }
        Ok::<(), DriverError>(())
    }
    .await;
    pool.give_back(conn, lease).await;
    read?;
    for i in one_by_one {
        let driver =
            PostgresSchemaDriver::new(pool.clone(), schemas[i].clone(), search_path_public);
        out[i] = Some(driver.read_status(project).await);
    }
    Ok(out
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Ok((TargetState::default(), Vec::new()))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_testkit::Postgres;
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    async fn run(conn: &mut PgConnection, sql: String) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .unwrap();
    }

    /// (applied revisions, fence token) of each read schema.
    fn summary(read: &[SchemaStatus]) -> Vec<(Vec<String>, u64)> {
        read.iter()
            .map(|r| {
                let (state, _) = r.as_ref().expect("read");
                let revs = state.history.iter().map(|h| h.revision.clone()).collect();
                (revs, state.fence_token)
            })
            .collect()
    }

    /// A read of the applied-set columns gives every schema the applied set, order, dirty
    /// revision and fence token of a whole-row read, with the columns it left unread empty;
    /// the whole-row read still has them. Both the lookup road (first read) and the seen one.
    #[tokio::test]
    async fn an_applied_set_read_plans_as_a_whole_row_read() {
        let pg = Postgres::start().await.unwrap();
        let url = pg.create_database("applied").await.unwrap();
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let (c1, c2) = ("1".repeat(64), "2".repeat(64));
        // t1: 001 and 002 applied, then 002 down; t2: 001 applied, 002 left dirty.
        let rows = [
            format!(
                "(1, '001', '{c1}', 'up', 'applied', 1000, 5, 'r1', 'a1', 3),
                 (2, '002', '{c2}', 'up', 'applied', 2000, 6, 'r2', 'a1', 4),
                 (3, '002', '{c2}', 'down', 'applied', 3000, 7, 'r3', 'a2', 5)"
            ),
            format!(
                "(1, '001', '{c1}', 'up', 'applied', 1000, 5, 'r1', 'a1', 3),
                 (2, '002', '{c2}', 'up', 'dirty', 2000, 6, 'r2', 'a1', 4)"
            ),
        ];
        let schemas: Vec<String> = ["t1", "t2"].map(String::from).to_vec();
        for (s, rows) in schemas.iter().zip(&rows) {
            run(
                &mut admin,
                format!(
                    "CREATE SCHEMA {s}; SET search_path = {s}; {};
                     INSERT INTO flotilla_fence VALUES (1, 9, 0);
                     INSERT INTO flotilla_history VALUES {rows};
                     RESET search_path;",
                    super::super::history::SCHEMA,
                ),
            )
            .await;
        }
        let options: PgConnectOptions = url.parse().unwrap();
        let pool = SchemaPool::new(&options, "applied", 2);
        let project = Project::default();
        let applied_set = SchemaRead {
            fence: true,
            full_rows: false,
        };
        // What a plan reads of a state: (revision, checksum, direction, status) in order,
        // the dirty revision, the fence token.
        let plan_view = |read: &[SchemaStatus]| -> Vec<_> {
            read.iter()
                .map(|r| {
                    let (state, _) = r.as_ref().expect("read");
                    let applied: Vec<_> = state
                        .applied()
                        .iter()
                        .map(|h| {
                            (
                                h.revision.clone(),
                                h.checksum.clone(),
                                h.direction,
                                h.status,
                            )
                        })
                        .collect();
                    let dirty = state.dirty().map(|d| d.revision.clone());
                    (applied, dirty, state.fence_token)
                })
                .collect()
        };
        let looked_up = read_schemas(&pool, &schemas, &project, false, applied_set)
            .await
            .unwrap();
        let whole = read_schemas(&pool, &schemas, &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        let seen = read_schemas(&pool, &schemas, &project, false, applied_set)
            .await
            .unwrap();
        assert_eq!(pool.seen.lookups(), 1, "the later reads took the seen road");
        assert_eq!(plan_view(&looked_up), plan_view(&whole));
        assert_eq!(plan_view(&seen), plan_view(&whole));
        let (t1, _) = whole[0].as_ref().unwrap();
        assert_eq!(t1.applied().len(), 1, "002 went down again");
        let (t2, _) = whole[1].as_ref().unwrap();
        assert_eq!(t2.dirty().map(|d| d.revision.as_str()), Some("002"));
        // The whole-row read has every column; the applied-set read leaves the others empty.
        let last = |read: &SchemaStatus| {
            let (state, _) = read.as_ref().unwrap();
            let h = state.history.last().unwrap().clone();
            (
                h.applied_at_ms,
                h.duration_ms,
                h.rollout_id,
                h.agent_id,
                h.fencing_token,
            )
        };
        assert_eq!(last(&whole[0]), (3000, 7, "r3".into(), "a2".into(), 5));
        for read in looked_up.iter().chain(&seen) {
            assert_eq!(last(read), (0, 0, String::new(), String::new(), 0));
        }
    }

    /// Schemas read once are read again without the catalog lookup; a table dropped by hand
    /// since is still reported as it is (the read falls back to the lookup), and the schema
    /// is looked up from then on.
    #[tokio::test]
    async fn seen_schemas_skip_the_lookup_and_a_table_dropped_since_is_still_seen() {
        let pg = Postgres::start().await.unwrap();
        let url = pg.create_database("seen").await.unwrap();
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let schemas: Vec<String> = ["t1", "t2", "t3"].map(String::from).to_vec();
        for (n, s) in schemas.iter().enumerate() {
            let checksum = "c".repeat(64);
            run(
                &mut admin,
                format!(
                    "CREATE SCHEMA {s}; SET search_path = {s}; {};
                     INSERT INTO flotilla_fence VALUES (1, {token}, 0);
                     INSERT INTO flotilla_history VALUES
                       (1, '001_init', '{checksum}', 'up', 'applied', 0, 1, 'r', 'a', {token});
                     RESET search_path;",
                    super::super::history::SCHEMA,
                    token = n + 5,
                ),
            )
            .await;
        }
        let options: PgConnectOptions = url.parse().unwrap();
        let pool = SchemaPool::new(&options, "seen", 2);
        let project = Project::default();
        let expected = vec![
            (vec!["001_init".to_owned()], 5),
            (vec!["001_init".to_owned()], 6),
            (vec!["001_init".to_owned()], 7),
        ];

        let first = read_schemas(&pool, &schemas, &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(summary(&first), expected);
        assert_eq!(pool.seen.lookups(), 1);
        let again = read_schemas(&pool, &schemas, &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(summary(&again), expected);
        assert_eq!(pool.seen.lookups(), 1, "all three were seen: no lookup");

        // Someone drops t2's history by hand: the read says so, and looks the tables up.
        run(&mut admin, "DROP TABLE t2.flotilla_history".to_owned()).await;
        let after = read_schemas(&pool, &schemas, &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(
            summary(&after),
            [expected[0].clone(), (vec![], 6), expected[2].clone()]
        );
        assert_eq!(pool.seen.lookups(), 2);
        // t2 is no longer seen with both tables: its chunk is looked up every time.
        read_schemas(&pool, &schemas, &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(pool.seen.lookups(), 3);
        // A schema dropped altogether reads as one at base, like any schema without tables.
        run(&mut admin, "DROP SCHEMA t3 CASCADE".to_owned()).await;
        let dropped = read_schemas(&pool, &schemas[..1], &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(summary(&dropped), [expected[0].clone()]);
        let gone = read_schemas(&pool, &schemas[2..], &project, false, SchemaRead::ALL)
            .await
            .unwrap();
        assert_eq!(summary(&gone), [(vec![], 0)]);
    }
}
