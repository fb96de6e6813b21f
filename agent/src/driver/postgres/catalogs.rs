//! The catalogs of many schemas of one database in one round trip (Validate of a
//! schema-per-tenant database): the four catalog queries of `catalog.rs`, each run for every
//! schema of a chunk in one statement, instead of a session and four queries per schema.
//!
//! **Invariant:** a schema's catalog read here is the one a session of its own would read.
//! The row filters are the same queries with the schema's oid in place of
//! `current_schema()`. What the deparsing functions print (`format_type`, `pg_get_expr`,
//! `pg_get_indexdef`, `pg_get_constraintdef`) depends on `search_path`: a name is qualified
//! unless it is visible. So each schema's rows are computed in a lateral subquery that runs
//! after `set_config('search_path', <the schema's session path>, true)` for that schema, and
//! every row also carries `current_setting('search_path')` as its deparsing saw it; a schema
//! with any row computed under another path is not taken from the batch (the caller reads
//! it the ordinary way). The setting is local to the statement's transaction.
//!
//! The catalog tables are the only relations the statement reads (the deparsing functions
//! open a table and release its lock at once), so a chunk holds a fixed number of locks.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::D;
use super::catalog::{assemble, schema_queries};
use super::pool::SchemaPool;
use super::schema::{PostgresSchemaDriver, search_path_value};
use super::simple::result_sets;
use crate::driver::classify::on;
use crate::driver::{DriverError, ErrorClass, Session};
use flotilla_core::catalog::Catalog;
use flotilla_core::project::Project;

/// Schemas whose catalogs one statement reads.
pub const CATALOGS_PER_QUERY: usize = 50;

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One catalog query for every schema of `schemas`: the schema's index and the
/// `search_path` its rows were deparsed under, then the query's own columns.
fn batch_sql(query: &str, schemas: &[String], public: bool) -> String {
    let names: Vec<String> = schemas.iter().map(|s| literal(s)).collect();
    let paths: Vec<String> = schemas
        .iter()
        .map(|s| literal(&search_path_value(s, public)))
        .collect();
    let per_schema = query
        .replace("current_schema()::regnamespace::oid", "fs.nsp")
        .replace("current_schema()::regnamespace", "fs.nsp");
    format!(
        "SELECT fs.i, q.* FROM \
         (SELECT (t.i - 1)::int4 AS i, t.path, n.oid AS nsp \
          FROM unnest(ARRAY[{names}]::text[], ARRAY[{paths}]::text[]) WITH ORDINALITY AS t(name, path, i) \
          JOIN pg_namespace n ON n.nspname = t.name) fs \
         CROSS JOIN LATERAL (SELECT set_config('search_path', fs.path, true) AS path) sp \
         CROSS JOIN LATERAL (SELECT current_setting('search_path') AS deparsed_under, x.* \
          FROM ({per_schema}) x WHERE sp.path IS NOT NULL OFFSET 0) q",
        names = names.join(", "),
        paths = paths.join(", "),
    )
}

/// The catalogs of `schemas` (of the connection's database), in order: `Some` for a schema
/// read in the batch, `None` for one to read on a session of its own (its rows were not
/// deparsed under its own `search_path`). An error fails the whole chunk.
pub(super) async fn read_catalogs(
    conn: &mut PgConnection,
    schemas: &[String],
    public: bool,
) -> Result<Vec<Option<Result<Catalog, sqlx::Error>>>, sqlx::Error> {
    let sql = schema_queries()
        .map(|q| batch_sql(&q, schemas, public) + ";")
        .join("\n");
    let sets = result_sets(conn, sql).await?;
    let paths: Vec<String> = schemas
        .iter()
        .map(|s| search_path_value(s, public))
        .collect();
    // Per schema, the rows of each of the four queries; and whether any row was deparsed
    // under another path.
    let mut rows: BTreeMap<usize, [Vec<&PgRow>; 4]> = BTreeMap::new();
    let mut stray = vec![false; schemas.len()];
    for (q, set) in sets.iter().enumerate().take(4) {
        for r in set {
            let i: i32 = r.try_get(0)?;
            let Some(i) = usize::try_from(i).ok().filter(|i| *i < schemas.len()) else {
                continue;
            };
            let under: String = r.try_get(1)?;
            if under != paths[i] {
                stray[i] = true;
            }
            rows.entry(i).or_default()[q].push(r);
        }
    }
    Ok((0..schemas.len())
        .map(|i| {
            if stray[i] {
                return None;
            }
            // A schema without a row has no table (or no longer exists): empty, as a session
            // of its own would read it.
            let [t, c, x, k] = rows.remove(&i).unwrap_or_default();
            Some(assemble(
                [t.into_iter(), c.into_iter(), x.into_iter(), k.into_iter()],
                2,
            ))
        })
        .collect())
}

/// What [`read_schema_catalogs`] read.
#[derive(Debug)]
pub struct SchemaCatalogs {
    /// One per schema, in order.
    pub catalogs: Vec<Result<Catalog, DriverError>>,
    /// How many of them were read on a session of their own instead of in the batch.
    pub one_by_one: usize,
}

/// The catalogs of `schemas` (one statement for all: pass a chunk of at most
/// [`CATALOGS_PER_QUERY`]) on one pooled connection. A schema the batch could not read, or
/// every schema of a chunk whose statement failed for another reason than the connection,
/// is read on a session of its own, as a single target would be.
pub async fn read_schema_catalogs(
    pool: &Arc<SchemaPool>,
    schemas: &[String],
    search_path_public: bool,
) -> Result<SchemaCatalogs, DriverError> {
    // The planner's estimate for the pinned-schema branch (a scan of pg_class it never runs)
    // times the chunk's schemas crosses `jit_above_cost`: compiling would cost more (about
    // 13 ms a statement) than running it. The pool resets the setting.
    let (mut conn, lease) = pool.checkout("SET jit = off").await?;
    let read = read_catalogs(&mut conn, schemas, search_path_public).await;
    pool.give_back(conn, lease).await;
    let batched = match read {
        Ok(batched) => batched,
        Err(e) => {
            let e = on(D, "read catalogs")(e);
            if e.class() == Some(ErrorClass::Connection) {
                return Err(e);
            }
            tracing::debug!(error = %e, "batched catalog read failed; reading the schemas one by one");
            schemas.iter().map(|_| None).collect()
        }
    };
    let mut out = Vec::with_capacity(schemas.len());
    let mut one_by_one = 0;
    for (schema, read) in schemas.iter().zip(batched) {
        out.push(match read {
            Some(read) => read.map_err(on(D, "read catalog")),
            None => {
                one_by_one += 1;
                let driver =
                    PostgresSchemaDriver::new(pool.clone(), schema.clone(), search_path_public);
                let mut session = Box::new(driver.open_project(&Project::default()).await?);
                let read = session.catalog().await;
                session.close().await;
                read
            }
        });
    }
    if one_by_one > 0 {
        tracing::debug!(
            schemas = schemas.len(),
            one_by_one,
            "catalogs read one by one instead of in the batch"
        );
    }
    Ok(SchemaCatalogs {
        catalogs: out,
        one_by_one,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_testkit::Postgres;
    use sqlx::Connection;

    const CATALOGS: [&str; 5] = [
        "pg_class",
        "pg_attribute",
        "pg_index",
        "pg_constraint",
        "pg_depend",
    ];

    /// Rows the plan's nodes on the catalogs above produced or filtered out, over all loops.
    fn catalog_rows(plan: &serde_json::Value) -> f64 {
        let loops = plan["Actual Loops"].as_f64().unwrap_or(1.0);
        let own = match plan["Relation Name"].as_str() {
            Some(r) if CATALOGS.contains(&r) => {
                (plan["Actual Rows"].as_f64().unwrap_or(0.0)
                    + plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0))
                    * loops
            }
            _ => 0.0,
        };
        own + plan["Plans"]
            .as_array()
            .map(|ps| ps.iter().map(catalog_rows).sum())
            .unwrap_or(0.0)
    }

    /// The catalogs' statistics are taken while the database is small (as on a database whose
    /// catalogs grew since autovacuum last analyzed them, right after a big rollout), then
    /// 600 schemas get tables: each batched catalog query still reads the catalogs through
    /// the chunk's relations, never a whole catalog per schema.
    #[tokio::test]
    async fn batched_catalog_reads_stay_on_the_indexes_whatever_the_statistics() {
        let pg = Postgres::start().await.unwrap();
        let url = pg.create_database("stale").await.unwrap();
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("ANALYZE pg_class, pg_attribute, pg_index, pg_constraint, pg_depend")
            .execute(&mut conn)
            .await
            .unwrap();
        let schemas: Vec<String> = (0..600).map(|i| format!("tenant_{i:03}")).collect();
        let mut ddl = String::from("BEGIN;");
        for s in &schemas {
            ddl.push_str(&format!(
                "CREATE SCHEMA {s}; \
                 CREATE TABLE {s}.users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, \
                   age int CHECK (age > 0)); \
                 CREATE TABLE {s}.orders (id bigint PRIMARY KEY, user_id bigint REFERENCES \
                   {s}.users (id), total numeric DEFAULT 0); \
                 CREATE INDEX ON {s}.orders (user_id);"
            ));
        }
        ddl.push_str("COMMIT;");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut conn)
            .await
            .unwrap();
        let chunk = &schemas[300..300 + CATALOGS_PER_QUERY];
        for query in schema_queries() {
            let sql = format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {}",
                batch_sql(&query, chunk, false)
            );
            // Simple protocol: the plan comes back as JSON text.
            let sets = result_sets(&mut conn, sql).await.unwrap();
            let text: String = sets[0][0].try_get_unchecked(0).unwrap();
            let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
            let rows = catalog_rows(&plan[0]["Plan"]);
            // A chunk's own rows: a few dozen per schema (its relations, their columns,
            // indexes, constraints and dependencies); a scan of pg_class per schema alone
            // would be 50 x 3,000.
            assert!(
                rows < 100.0 * CATALOGS_PER_QUERY as f64,
                "{rows} catalog rows read for {} schemas by\n{query}\nplan: {plan:#}",
                chunk.len()
            );
        }
        // The batch reads what it should: each schema's two tables and their parts.
        let read = read_catalogs(&mut conn, chunk, false).await.unwrap();
        for c in read {
            let c = c.expect("read in the batch").unwrap();
            let names: Vec<&str> = c.tables.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["orders", "users"]);
            let users = &c.tables[1];
            assert_eq!(users.columns.len(), 3);
            assert_eq!(users.constraints.len(), 3, "{users:?}");
        }
    }
}
