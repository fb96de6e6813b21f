//! Issue 31, `flotilla import alembic` tried as users run it, with real Alembic: an exported
//! `DATABASE_URL` that the usual `env.py` prefers is refused (the dialect Alembic rendered is
//! checked against the one asked for), JSON values in `op.bulk_insert` rows are rendered (and
//! apply on a real PostgreSQL), SQLite batch mode fails naming its real cause, and a set whose
//! revisions revise one that was not imported is not written.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use flotilla_testkit::Postgres;
use sqlx::Connection;

fn require_alembic() -> Result<()> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import alembic, sqlalchemy"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "alembic is not installed: run `scripts/install-deps.sh --test` or \
             `python3 -m pip install alembic sqlalchemy`"
        );
    }
    Ok(())
}

const INI: &str =
    "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql://\n";

/// The `env.py` most projects have: the URL from `DATABASE_URL` when set, in both modes.
const ENV_PY: &str = r#"import os
from alembic import context

config = context.config


def url():
    return os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")


if context.is_offline_mode():
    context.configure(url=url(), target_metadata=None, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    raise SystemExit("online mode is not used by this test")
"#;

fn revision(id: &str, parent: Option<&str>, upgrade: &str, downgrade: &str) -> String {
    let parent = parent.map_or("None".to_owned(), |p| format!("{p:?}"));
    format!(
        "\"\"\"{id} revision\"\"\"\nimport sqlalchemy as sa\nfrom alembic import op\n\nrevision = {id:?}\n\
         down_revision = {parent}\nbranch_labels = None\ndepends_on = None\n\n\n\
         def upgrade():\n{upgrade}\n\n\ndef downgrade():\n{downgrade}\n"
    )
}

/// A project: settings table, JSON seed rows, a batch-mode change, and (with `child`) a
/// revision after the batch one.
fn project(dir: &Path, child: bool) -> Result<()> {
    let versions = dir.join("migrations/versions");
    std::fs::create_dir_all(&versions)?;
    std::fs::write(dir.join("alembic.ini"), INI)?;
    std::fs::write(dir.join("migrations/env.py"), ENV_PY)?;
    std::fs::write(
        dir.join("migrations/script.py.mako"),
        "# unused by offline rendering\n",
    )?;
    std::fs::write(
        versions.join("a1_settings.py"),
        revision(
            "a1",
            None,
            "    op.create_table(\"settings\", sa.Column(\"id\", sa.Integer(), primary_key=True), \
             sa.Column(\"data\", sa.JSON()))",
            "    op.drop_table(\"settings\")",
        ),
    )?;
    std::fs::write(
        versions.join("b2_seed.py"),
        revision(
            "b2",
            Some("a1"),
            "    t = sa.table(\"settings\", sa.column(\"id\", sa.Integer()), sa.column(\"data\", sa.JSON()))\n    \
             op.bulk_insert(t, [{\"id\": 1, \"data\": {\"theme\": \"dark\", \"quote\": \"it's \\\"x\\\"\"}}])",
            "    op.execute(\"DELETE FROM settings\")",
        ),
    )?;
    std::fs::write(
        versions.join("c3_batch.py"),
        revision(
            "c3",
            Some("b2"),
            "    with op.batch_alter_table(\"settings\") as batch:\n        \
             batch.alter_column(\"data\", type_=sa.Text())",
            "    pass",
        ),
    )?;
    if child {
        std::fs::write(
            versions.join("d4_after.py"),
            revision(
                "d4",
                Some("c3"),
                "    op.create_table(\"after\", sa.Column(\"id\", sa.Integer(), primary_key=True))",
                "    op.drop_table(\"after\")",
            ),
        )?;
    }
    Ok(())
}

/// `flotilla import alembic` with `DATABASE_URL` set or removed: (exit code, stdout, stderr).
async fn import(
    source: &Path,
    into: &Path,
    dialects: &str,
    database_url: Option<&str>,
) -> Result<(i32, String, String)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(["import", "alembic"])
        .arg(source)
        .arg("--into")
        .arg(into)
        .args(["--dialect", dialects])
        .env_remove("DATABASE_URL")
        .env_remove("FLOTILLA_IMPORT_DIALECTS")
        .stdin(Stdio::null());
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = cmd.output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn written(into: &Path) -> Result<Vec<String>> {
    if !into.exists() {
        return Ok(vec![]);
    }
    let mut names: Vec<String> = std::fs::read_dir(into)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_database_url_is_refused_not_rendered_as_postgres() -> Result<()> {
    require_alembic()?;
    let dir = tempfile::tempdir()?;
    project(dir.path(), false)?;
    let into = dir.path().join("out");
    let (code, out, err) = import(
        dir.path(),
        &into,
        "postgres,mysql",
        Some("postgresql://app@db.internal/app"),
    )
    .await?;
    ensure!(code == 1, "exit {code}: {out}{err}");
    ensure!(
        err.contains("as postgresql when asked for mysql") && err.contains("DATABASE_URL"),
        "{err}"
    );
    ensure!(err.contains("nothing was written"), "{err}");
    ensure!(written(&into)?.is_empty(), "{:?}", written(&into)?);

    // Without it the same project renders each dialect as asked: MySQL gets its own SQL.
    let (code, out, err) = import(dir.path(), &into, "postgres,mysql", None).await?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    let a1 = std::fs::read_to_string(into.join("a1_a1_revision.sql"))?;
    ensure!(a1.contains("-- migrate:up mysql"), "{a1}");
    ensure!(
        a1.contains("SERIAL") && a1.contains("AUTO_INCREMENT"),
        "{a1}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bulk_insert_rows_are_rendered_and_apply() -> Result<()> {
    require_alembic()?;
    let dir = tempfile::tempdir()?;
    project(dir.path(), false)?;
    let into = dir.path().join("out");
    let (code, out, err) = import(dir.path(), &into, "postgres,mysql", None).await?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    let b2 = std::fs::read_to_string(into.join("b2_b2_revision.sql"))?;
    ensure!(
        b2.contains(r#"INSERT INTO settings (id, data) VALUES (1, '{"theme": "dark", "quote": "it''s \"x\""}');"#),
        "{b2}"
    );
    // MySQL strings take backslashes as escapes: its section doubles them.
    ensure!(
        b2.contains(r#"-- migrate:up mysql"#) && b2.contains(r#"\\"x\\""#),
        "{b2}"
    );

    // The PostgreSQL SQL applies and stores the JSON as written.
    let set = flotilla_revision::Graph::load_dir(&into).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pg = Postgres::start().await?;
    let url = pg.fresh_database().await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    for id in ["a1", "b2"] {
        let sql = set
            .get(id)
            .context(id.to_owned())?
            .up_sql(flotilla_core::Dialect::Postgres)
            .to_owned();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    let (theme, quote): (String, String) =
        sqlx::query_as("SELECT data::json->>'theme', data::json->>'quote' FROM settings")
            .fetch_one(&mut conn)
            .await?;
    assert_eq!((theme.as_str(), quote.as_str()), ("dark", "it's \"x\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batch_mode_names_its_cause_and_a_broken_chain_is_not_written() -> Result<()> {
    require_alembic()?;
    let dir = tempfile::tempdir()?;
    project(dir.path(), false)?;
    let into = dir.path().join("out");
    // c3 is the head: it is reported with its real cause, the rest is written (exit 3).
    let (code, out, err) = import(dir.path(), &into, "postgres,sqlite", None).await?;
    ensure!(code == 3, "exit {code}: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("not imported:") && l.contains("(c3)"))
        .with_context(|| format!("c3 not reported: {out}"))?;
    ensure!(
        line.contains("batch mode on sqlite")
            && line.contains("live database")
            && line.contains("copy_from"),
        "{line}"
    );
    ensure!(!line.contains("it may read live data"), "{line}");
    assert_eq!(
        written(&into)?,
        ["a1_a1_revision.sql", "b2_b2_revision.sql"]
    );

    // With a revision after c3, the set would not load: nothing is written.
    let dir = tempfile::tempdir()?;
    project(dir.path(), true)?;
    let into = dir.path().join("out");
    let (code, out, err) = import(dir.path(), &into, "postgres,sqlite", None).await?;
    ensure!(code == 1, "exit {code}: {out}{err}");
    ensure!(
        err.contains("would revise one that was not imported")
            && err.contains("is revised by d4")
            && err.contains("batch mode on sqlite")
            && err.contains("nothing was written"),
        "{err}"
    );
    ensure!(written(&into)?.is_empty(), "{:?}", written(&into)?);
    Ok(())
}
