//! How many of a plan's steps go in one Migrate request: as many as fit the agent's message
//! limit (`EngineConfig::migrate_request_bytes` of encoded steps) and its step count
//! (`MAX_STEPS_PER_REQUEST`), and always at least one (the parser keeps every section under
//! `MAX_STEP_SQL_BYTES`, which the agent's default limit takes). A plan of several
//! multi-megabyte seeds is sent in several requests, each re-planned from the agent's report
//! (`target.rs`), instead of one request the agent would refuse.

use flotilla_core::limits::MAX_STEPS_PER_REQUEST;
use flotilla_proto as pb;
use prost::Message;

/// The length of the prefix of `steps` that one request carries.
pub(super) fn request_len(steps: &[pb::Step], budget: usize) -> usize {
    let mut used = 0usize;
    for (i, s) in steps.iter().enumerate().take(MAX_STEPS_PER_REQUEST) {
        // The field's tag and length prefix as well as the step itself.
        let len = s.encoded_len();
        let len = len + prost::length_delimiter_len(len) + 1;
        if i > 0 && used + len > budget {
            return i;
        }
        used += len;
    }
    steps.len().min(MAX_STEPS_PER_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(sql_bytes: usize) -> pb::Step {
        pb::Step {
            revision: "r".into(),
            sql: "x".repeat(sql_bytes),
            checksum: "0".repeat(64),
            ..Default::default()
        }
    }

    #[test]
    fn packs_what_fits_and_at_least_one_step() {
        let steps = vec![step(400), step(400), step(400)];
        assert_eq!(request_len(&steps, 10_000), 3);
        // Two steps of ~470 encoded bytes fit in 1,000, the third does not.
        assert_eq!(request_len(&steps, 1_000), 2);
        assert_eq!(request_len(&steps, 500), 1);
        // A step larger than the budget still goes, alone.
        assert_eq!(request_len(&steps, 10), 1);
        assert_eq!(request_len(&[], 10), 0);
    }

    #[test]
    fn packs_at_most_the_agents_step_count() {
        let steps = vec![step(1); MAX_STEPS_PER_REQUEST + 5];
        assert_eq!(request_len(&steps, usize::MAX), MAX_STEPS_PER_REQUEST);
        assert_eq!(request_len(&steps[..7], usize::MAX), 7);
    }

    #[test]
    fn the_encoded_size_of_a_packed_request_stays_in_the_budget() {
        let steps: Vec<pb::Step> = (0..50).map(|i| step(1000 + i * 37)).collect();
        let budget = 9_000;
        let mut rest = &steps[..];
        let mut requests = 0;
        while !rest.is_empty() {
            let n = request_len(rest, budget);
            assert!(n >= 1);
            let req = pb::MigrateRequest {
                steps: rest[..n].to_vec(),
                ..Default::default()
            };
            assert!(
                req.encoded_len() <= budget,
                "{} > {budget}",
                req.encoded_len()
            );
            // Nothing more would have fitted.
            if n < rest.len() {
                let more = pb::MigrateRequest {
                    steps: rest[..=n].to_vec(),
                    ..Default::default()
                };
                assert!(more.encoded_len() > budget);
            }
            rest = &rest[n..];
            requests += 1;
        }
        assert!(requests > 5, "{requests} requests");
    }
}
