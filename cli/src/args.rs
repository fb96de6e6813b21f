//! Flags every command shares: [`GlobalArgs`] (migrations directory, output and log format),
//! [`OutputFormat`], and [`parse_duration`], the value parser of duration flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use flotilla_coordinator::telemetry::LogFormat;

/// The migrations directory when `--migrations` is not given.
pub const DEFAULT_MIGRATIONS: &str = "migrations";

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory holding the migration files (searched recursively for *.sql); online
    /// commands send its set to the coordinator (empty: none, the coordinator's own)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_MIGRATIONS",
        default_value = DEFAULT_MIGRATIONS,
        value_name = "DIR",
        // Empty is allowed: online commands then name no set (the coordinator's own).
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::OsStringValueParser::new(),
            PathBuf::from
        )
    )]
    pub migrations: PathBuf,
    /// Output format
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Human
    )]
    pub output: OutputFormat,
    /// Log format (logs go to stderr; both carry trace ids inside a span)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Human
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text
    Human,
    /// One JSON document on stdout
    Json,
}

/// Parse `500ms`, `90s`, `5m`, `1h` or plain seconds (the syntax revision headers use too).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    flotilla_core::bounds::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 days").is_err());
    }
}
