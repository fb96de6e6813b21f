//! A target as configured: its id (and what ids are valid), dialect, URL and labels.

use std::collections::BTreeMap;

use flotilla_core::{Dialect, Secret};

/// Longest accepted target id.
pub const MAX_TARGET_ID_LEN: usize = 256;

/// One target database (or SQLite file).
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub id: String,
    pub dialect: Dialect,
    pub url: Secret,
    pub labels: BTreeMap<String, String>,
}

/// True for a usable target id: 1..=256 of `[A-Za-z0-9_.:-]`.
pub fn is_valid_target_id(id: &str) -> bool {
    (1..=MAX_TARGET_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// The dialect a database URL's scheme names.
pub fn dialect_of_url(url: &str) -> Option<Dialect> {
    let scheme = url.split_once(':')?.0;
    scheme.parse().ok()
}
