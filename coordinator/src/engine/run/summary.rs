//! How the rollout loop names what went wrong in its messages and span statuses: the failed
//! targets, and digests shortened.

use crate::rollout::{TargetRecord, TargetState};

/// The failed targets' messages (`target: message`), the first few, for a span's status.
pub(super) fn failed_of<'a>(targets: impl Iterator<Item = &'a TargetRecord>) -> String {
    const SHOWN: usize = 3;
    let failed: Vec<&TargetRecord> = targets.filter(|t| t.state == TargetState::Failed).collect();
    let mut out = failed
        .iter()
        .take(SHOWN)
        .map(|t| format!("{}: {}", t.target_id, t.message))
        .collect::<Vec<_>>()
        .join("; ");
    if failed.len() > SHOWN {
        out.push_str(&format!(" (and {} more)", failed.len() - SHOWN));
    }
    out
}

/// A digest as messages show it: its first 12 characters.
pub(in crate::engine) fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}
