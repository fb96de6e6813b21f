//! `flotilla import TOOL SOURCE [--into DIR]`: convert another tool's migrations into
//! Flotilla revision files (see `crate::import`). Exit 3 when some revisions were not imported.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use flotilla_core::Dialect;
use serde_json::json;

use crate::args::{GlobalArgs, OutputFormat};
use crate::error::CliError;
use crate::exit::Outcome;
use crate::import::{self, ImportError, ReadOptions, Tool};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tool whose migrations to convert
    #[arg(value_enum)]
    pub tool: Tool,
    /// Its migrations directory (Alembic: the project directory or its alembic.ini)
    pub source: PathBuf,
    /// Directory to write the revision files into (default: --migrations)
    #[arg(long, env = "FLOTILLA_IMPORT_INTO", value_name = "DIR")]
    pub into: Option<PathBuf>,
    /// Alembic: dialects to render, comma separated; the first is the plain section, the
    /// others become dialect sections where their SQL differs
    #[arg(
        long = "dialect",
        env = "FLOTILLA_IMPORT_DIALECTS",
        value_delimiter = ',',
        default_value = "postgres,mysql"
    )]
    pub dialects: Vec<Dialect>,
    /// Alembic: the SQLAlchemy URL to render a dialect with, DIALECT=URL (repeatable; only
    /// the dialect part matters, no database is contacted), e.g. mysql=mariadb:// for
    /// MariaDB servers (native UUID)
    #[arg(
        long = "alembic-url",
        env = "FLOTILLA_IMPORT_ALEMBIC_URLS",
        value_delimiter = ',',
        value_name = "DIALECT=URL",
        value_parser = parse_url
    )]
    pub urls: Vec<(Dialect, String)>,
    /// Alembic: the Python interpreter that has alembic installed
    #[arg(long, env = "FLOTILLA_PYTHON", default_value = "python3")]
    pub python: String,
}

fn parse_url(s: &str) -> Result<(Dialect, String), String> {
    let (d, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not DIALECT=URL"))?;
    if url.contains('@') {
        return Err(
            "give only the dialect part of the URL (e.g. mariadb://), no credentials".into(),
        );
    }
    let d = d.parse::<Dialect>().map_err(|e| e.to_string())?;
    Ok((d, url.to_owned()))
}

impl From<ImportError> for CliError {
    fn from(e: ImportError) -> Self {
        CliError::Refused(e.to_string())
    }
}

pub(super) fn run(
    args: ImportArgs,
    global: &GlobalArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let into = args.into.unwrap_or_else(|| global.migrations.clone());
    let opts = ReadOptions {
        dialects: args.dialects,
        python: args.python,
        urls: args.urls,
    };
    let mut set = import::read(args.tool, &args.source, &opts)?;
    let written = import::write(&mut set, &into)?;
    let text = if global.output == OutputFormat::Json {
        serde_json::to_string_pretty(&json!({
            "tool": args.tool.as_str(),
            "into": into,
            "revisions": written,
            "problems": set.problems,
            "warnings": set.warnings,
        }))? + "\n"
    } else {
        human(args.tool, &into, &written, &set)
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)?;
    Ok(if set.problems.is_empty() {
        Outcome::Success
    } else {
        Outcome::Problems
    })
}

fn human(tool: Tool, into: &Path, written: &[import::Written], set: &import::ImportSet) -> String {
    let mut s = format!(
        "imported {} {tool} revision(s) into {}\n",
        written.len(),
        into.display()
    );
    for w in written {
        s.push_str(&format!("  {}  {}\n", w.revision, w.path.display()));
    }
    for (what, list) in [("not imported", &set.problems), ("warning", &set.warnings)] {
        for p in list {
            let rev = if p.revision.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.revision)
            };
            s.push_str(&format!("{what}: {}{rev}: {}\n", p.source, p.reason));
        }
    }
    s
}
