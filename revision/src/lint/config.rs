//! `lint.toml` in the migrations directory: lint rules allowed for the whole set.
//!
//! ```toml
//! # every revision of this set may lock (a small fleet of small tenants)
//! allow = ["locking", "data_dependent"]
//! ```
//! Unknown keys and rule names are errors that name the file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::parse::{ParseError, ParseErrorKind};
use crate::rule::Rule;

/// The file name, at the root of the migrations directory.
pub const FILE: &str = "lint.toml";

/// The set-wide lint settings (empty when there is no `lint.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    /// Rules allowed in every revision.
    pub allow: BTreeSet<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    allow: Vec<toml::Spanned<String>>,
}

impl LintConfig {
    /// Reads `dir/lint.toml`; a missing file is the empty config.
    pub fn load(dir: &Path) -> Result<LintConfig, ParseError> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => LintConfig::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LintConfig::default()),
            Err(e) => Err(ParseError {
                path,
                line: None,
                kind: ParseErrorKind::Io {
                    message: e.to_string().to_lowercase(),
                },
            }),
        }
    }

    /// Parses the text of a `lint.toml` (`path` for errors).
    pub fn parse(path: &Path, text: &str) -> Result<LintConfig, ParseError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |line: Option<usize>, message: String| ParseError {
            path: PathBuf::from(path),
            line,
            kind: ParseErrorKind::LintConfig { message },
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start));
            err(line, e.message().trim().to_owned())
        })?;
        let mut allow = BTreeSet::new();
        for name in raw.allow {
            let rule = name.get_ref().parse::<Rule>().map_err(|()| {
                err(
                    Some(line_of(name.span().start)),
                    format!(
                        "unknown lint rule {:?}: expected one of {}",
                        name.get_ref(),
                        Rule::names()
                    ),
                )
            })?;
            allow.insert(rule);
        }
        Ok(LintConfig { allow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_lines() {
        let p = Path::new("m/lint.toml");
        let c = LintConfig::parse(
            p,
            "# set-wide\nallow = [\"locking\",\n  \"data_dependent\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.allow,
            BTreeSet::from([Rule::Locking, Rule::DataDependent])
        );
        let e = LintConfig::parse(p, "allow = [\n  \"lockin\"]\n").expect_err("unknown rule");
        assert_eq!(
            e.to_string(),
            format!(
                "m/lint.toml:2: unknown lint rule \"lockin\": expected one of {}",
                Rule::names()
            )
        );
        let e = LintConfig::parse(p, "\nallw = []\n").expect_err("unknown key");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("allw"), "{e}");
    }
}
