//! Reading a migration set from disk: every `*.sql` file under a directory, in path order.
//! The only I/O of the revision crate.

use std::path::{Path, PathBuf};

use super::{ParseError, ParseErrorKind, ParseErrors};

/// Reads every `*.sql` file under `dir` (recursively, skipping hidden entries, in path order)
/// and returns `(path, bytes)` pairs for [`parse_file`]. The only I/O of the revision module.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, ParseErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                errors.push(io_error(&d, &e, dir));
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    errors.push(io_error(&d, &e, dir));
                    continue;
                }
            };
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                match std::fs::read(&path) {
                    Ok(bytes) => files.push((path, bytes)),
                    Err(e) => errors.push(io_error(&path, &e, dir)),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ParseErrors(errors));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn io_error(path: &Path, e: &std::io::Error, root: &Path) -> ParseError {
    let message = if e.kind() == std::io::ErrorKind::NotFound && path == root {
        "no such directory: create it or pass --migrations DIR (env FLOTILLA_MIGRATIONS)".to_owned()
    } else {
        e.to_string().to_lowercase()
    };
    ParseError {
        path: path.to_owned(),
        line: None,
        kind: ParseErrorKind::Io { message },
    }
}
