//! How single values print: times as RFC 3339, hashes shortened, long id lists abbreviated,
//! a target's revision.

use std::time::Duration;

use flotilla_proto as pb;

/// A target's heads, comma-separated; `base` when it has none.
pub(crate) fn revision_of(s: &pb::TargetStatus) -> String {
    if s.heads.is_empty() {
        "base".into()
    } else {
        s.heads.join(",")
    }
}

/// The first 12 characters of a checksum or fingerprint.
pub(crate) fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-03T07:34:00.230Z`); `-` for 0 (never set).
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    /// 10000-01-01T00:00:00Z: humantime formats years up to 9999 (and none before 1970).
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    match unix_ms {
        0 => "-".into(),
        1..YEAR_10000_MS => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.unsigned_abs()),
        )
        .to_string(),
        _ => format!("{unix_ms}ms since the epoch"),
    }
}

/// The first `n` ids, comma-separated, and how many more there are.
pub(crate) fn abbreviate(ids: &[String], n: usize) -> String {
    if ids.len() <= n {
        ids.join(", ")
    } else {
        format!("{}, … ({} more)", ids[..n].join(", "), ids.len() - n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(1_796_283_240_230), "2026-12-03T07:34:00.230Z");
        assert_eq!(rfc3339(0), "-");
        assert_eq!(rfc3339(-5), "-5ms since the epoch");
    }
}
