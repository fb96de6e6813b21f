//! Size limits both sides of the wire keep: the largest SQL text of one migration step.
//!
//! The parser refuses a revision whose section is larger (file and line, nothing applied),
//! the agent refuses a Migrate step that carries more, and the coordinator packs a plan's
//! steps into Migrate requests that fit the agent's message limit (its default is this limit
//! plus room for the request's other fields), so a revision that `flotilla check` accepts
//! always reaches the agent whole.

/// Largest SQL text of one step (one section of one revision), in bytes: 64 MiB. A data
/// seed larger than this is split into several revisions.
pub const MAX_STEP_SQL_BYTES: usize = 64 << 20;

/// Most steps in one Migrate request; the coordinator sends a longer plan in several.
pub const MAX_STEPS_PER_REQUEST: usize = 10_000;

/// Room a Migrate request needs beyond its steps' SQL (ids, checksums, backup tables of up to
/// `MAX_STEPS` steps): what the agent's default message limit adds to `MAX_STEP_SQL_BYTES`.
pub const MIGRATE_REQUEST_OVERHEAD_BYTES: usize = 4 << 20;

/// A size in bytes for messages: `5.0 MiB (5242880 bytes)`.
pub fn show_bytes(n: usize) -> String {
    format!("{:.1} MiB ({n} bytes)", n as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_mebibytes_and_bytes() {
        assert_eq!(show_bytes(MAX_STEP_SQL_BYTES), "64.0 MiB (67108864 bytes)");
        assert_eq!(show_bytes(1536 << 10), "1.5 MiB (1572864 bytes)");
    }
}
