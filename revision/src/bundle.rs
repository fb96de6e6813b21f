//! A migration set as a content-addressed bundle: its files (paths relative to the set's
//! directory, `/`-separated, and their bytes: every `*.sql` file and `lint.toml`), one
//! canonical byte encoding of them, and the set's digest over that encoding. The CLI uploads
//! the encoding, the coordinator stores it keyed by the digest.
//!
//! Encoding: the files sorted by path, each as `path length (u64 BE)`, `path`,
//! `content length (u64 BE)`, `content`. Digest: lowercase hex SHA-256 of the encoding. Unlike
//! [`Graph::digest`] (over the parsed revisions, without `lint.toml`), it covers every byte
//! the coordinator needs, so equal digests mean equal files.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::graph::Graph;
use crate::lint::{Diagnostic, LintConfig, Severity};
use crate::parse::{ParseErrors, load_dir};

/// A set's files, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    files: Vec<(String, Vec<u8>)>,
}

/// Why bytes are not a bundle's encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the set's encoding is truncated at byte {at}: upload the whole set again")]
    Truncated { at: usize },
    #[error("the set's encoding has a file path that is not UTF-8 at byte {at}")]
    BadPath { at: usize },
    #[error("the set's encoding lists {path:?} twice or out of order")]
    Unsorted { path: String },
    #[error("the set's file path {path:?} is not relative: paths must stay inside the set")]
    Escapes { path: String },
}

impl Bundle {
    /// Reads a set from `dir`: every `*.sql` file under it ([`load_dir`]) and its `lint.toml`.
    pub fn load_dir(dir: &Path) -> Result<Bundle, ParseErrors> {
        let mut files = Vec::new();
        for (path, bytes) in load_dir(dir)? {
            files.push((relative(dir, &path), bytes));
        }
        let lint = dir.join(crate::lint::CONFIG_FILE);
        match std::fs::read(&lint) {
            Ok(bytes) => files.push((crate::lint::CONFIG_FILE.to_owned(), bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                // Reported with the file's path, like every other command does.
                LintConfig::load(dir).map_err(|e| ParseErrors(vec![e]))?;
            }
        }
        Ok(Bundle::from_files(files))
    }

    /// A bundle of these files (sorted here; a later duplicate path wins).
    pub fn from_files(mut files: Vec<(String, Vec<u8>)>) -> Bundle {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Bundle { files }
    }

    /// The files, sorted by path.
    pub fn files(&self) -> &[(String, Vec<u8>)] {
        &self.files
    }

    /// Total bytes of the files' contents.
    pub fn content_len(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }

    /// The canonical encoding (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let len = self.files.iter().map(|(p, b)| 16 + p.len() + b.len()).sum();
        let mut out = Vec::with_capacity(len);
        for (path, bytes) in &self.files {
            out.extend_from_slice(&(path.len() as u64).to_be_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// The digest of an encoding: what [`Bundle::digest`] returns for the bundle it decodes to.
    pub fn digest_of(encoded: &[u8]) -> String {
        hex::encode(Sha256::digest(encoded))
    }

    /// The set's digest: lowercase hex SHA-256 of [`Bundle::encode`].
    pub fn digest(&self) -> String {
        Bundle::digest_of(&self.encode())
    }

    /// Decodes a canonical encoding; anything else (truncated, unsorted, a path leaving the
    /// set) is refused, so a decoded bundle re-encodes to the same bytes.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let mut at = 0usize;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let take = |at: &mut usize, n: usize| -> Result<&[u8], BundleError> {
            let end = at
                .checked_add(n)
                .filter(|e| *e <= bytes.len())
                .ok_or(BundleError::Truncated { at: *at })?;
            let s = &bytes[*at..end];
            *at = end;
            Ok(s)
        };
        let len = |at: &mut usize| -> Result<usize, BundleError> {
            let start = *at;
            let raw = take(at, 8)?;
            let n = u64::from_be_bytes(
                raw.try_into()
                    .map_err(|_| BundleError::Truncated { at: start })?,
            );
            usize::try_from(n).map_err(|_| BundleError::Truncated { at: start })
        };
        while at < bytes.len() {
            let n = len(&mut at)?;
            let start = at;
            let path = std::str::from_utf8(take(&mut at, n)?)
                .map_err(|_| BundleError::BadPath { at: start })?
                .to_owned();
            if path.is_empty()
                || path.starts_with('/')
                || path.split('/').any(|c| c == ".." || c.is_empty())
            {
                return Err(BundleError::Escapes { path });
            }
            if files.last().is_some_and(|(last, _)| *last >= path) {
                return Err(BundleError::Unsorted { path });
            }
            let n = len(&mut at)?;
            let content = take(&mut at, n)?.to_vec();
            files.push((path, content));
        }
        Ok(Bundle { files })
    }

    /// Validates the set as `flotilla check` does (parse, graph, `lint.toml`): the graph, or
    /// every error (file:line), sorted. Lint warnings do not refuse a set.
    pub fn check(&self) -> Result<Graph, Vec<Diagnostic>> {
        let lint_path = Path::new(crate::lint::CONFIG_FILE);
        let mut sql = Vec::new();
        let mut config = Ok(LintConfig::default());
        for (path, bytes) in &self.files {
            if path == crate::lint::CONFIG_FILE {
                config = match std::str::from_utf8(bytes) {
                    Ok(text) => LintConfig::parse(lint_path, text),
                    Err(e) => Err(crate::parse::ParseError {
                        path: lint_path.to_owned(),
                        line: None,
                        kind: crate::parse::ParseErrorKind::LintConfig {
                            message: format!("not UTF-8 text ({e})"),
                        },
                    }),
                };
            } else if path.ends_with(".sql") {
                sql.push((PathBuf::from(path), bytes.clone()));
            }
        }
        let (config, config_error) = match config {
            Ok(c) => (c, None),
            Err(e) => (LintConfig::default(), Some(Diagnostic::from(e))),
        };
        let (graph, diags) = crate::check::lint_set(sql, &config);
        let mut errors: Vec<Diagnostic> = diags
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        if let Some(e) = config_error {
            errors.insert(0, e);
        }
        match graph {
            Some(g) if errors.is_empty() => Ok(g),
            _ => Err(errors),
        }
    }
}

/// `path` relative to `dir`, `/`-separated.
fn relative(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: &str, parent: &str) -> Vec<u8> {
        format!("-- revision: {id}\n-- revises: {parent}\n-- migrate:up\nCREATE TABLE t_{id} (id int);\n-- migrate:down\nDROP TABLE t_{id};\n").into_bytes()
    }

    #[test]
    fn encoding_round_trips_and_the_digest_ignores_input_order() {
        let a = Bundle::from_files(vec![
            ("b/0002.sql".into(), rev("r2", "r1")),
            ("0001.sql".into(), rev("r1", "")),
        ]);
        let b = Bundle::from_files(vec![
            ("0001.sql".into(), rev("r1", "")),
            ("b/0002.sql".into(), rev("r2", "r1")),
        ]);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(Bundle::decode(&a.encode()), Ok(a.clone()));
        let changed = Bundle::from_files(vec![
            ("0001.sql".into(), rev("r1", "")),
            ("b/0002.sql".into(), rev("r3", "r1")),
        ]);
        assert_ne!(a.digest(), changed.digest());
        // The file's name is part of the set.
        let renamed = Bundle::from_files(vec![
            ("0001.sql".into(), rev("r1", "")),
            ("c/0002.sql".into(), rev("r2", "r1")),
        ]);
        assert_ne!(a.digest(), renamed.digest());
    }

    #[test]
    fn decode_refuses_what_is_not_canonical() {
        let a = Bundle::from_files(vec![("0001.sql".into(), rev("r1", ""))]);
        let bytes = a.encode();
        assert!(matches!(
            Bundle::decode(&bytes[..bytes.len() - 1]),
            Err(BundleError::Truncated { .. })
        ));
        let escaping = Bundle {
            files: vec![("../x.sql".into(), vec![])],
        };
        assert!(matches!(
            Bundle::decode(&escaping.encode()),
            Err(BundleError::Escapes { .. })
        ));
        let unsorted = Bundle {
            files: vec![("b.sql".into(), vec![]), ("a.sql".into(), vec![])],
        };
        assert!(matches!(
            Bundle::decode(&unsorted.encode()),
            Err(BundleError::Unsorted { .. })
        ));
    }

    #[test]
    fn check_names_the_file_and_line_of_each_error() {
        let bad = Bundle::from_files(vec![
            ("0001.sql".into(), rev("r1", "")),
            (
                "0002.sql".into(),
                b"-- revision: r2\n-- revises: r1\n-- colour: blue\n-- migrate:up\nSELECT 1;\n"
                    .to_vec(),
            ),
            ("lint.toml".into(), b"allow = [\"nope\"]\n".to_vec()),
        ]);
        let errors: Vec<String> = bad
            .check()
            .unwrap_err()
            .iter()
            .map(|d| format!("{}:{}", d.path.display(), d.line.unwrap_or(0)))
            .collect();
        assert_eq!(errors, vec!["lint.toml:1", "0002.sql:3"]);
        let good = Bundle::from_files(vec![("0001.sql".into(), rev("r1", ""))]);
        assert_eq!(good.check().map(|g| g.len()).ok(), Some(1));
    }
}
