//! Database names for the SQL servers: unique fresh names and validation of given ones.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::bail;

/// A database name no other call in this process returns: `flotilla_test_<n>`.
pub(crate) fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("flotilla_test_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Accepts names that need no escaping in a URL: `[A-Za-z0-9_-]`, 1 to 63 characters.
pub(crate) fn validate(name: &str) -> anyhow::Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > 63 || !ok_chars {
        bail!("invalid database name {name:?}: use 1 to 63 characters from [A-Za-z0-9_-]");
    }
    Ok(())
}
