//! Fleet-level Prometheus gauges derived from a fleet status: targets by revision, version
//! skew (distinct revision sets across the fleet) and drift.

use std::collections::BTreeMap;

use flotilla_proto as pb;

/// Record the fleet gauges from one fleet status.
pub fn record_fleet(targets: &[pb::FleetTarget]) {
    let mut by_revision: BTreeMap<String, u64> = BTreeMap::new();
    let mut drift = 0u64;
    for t in targets {
        let Some(s) = &t.status else { continue };
        if !s.error.is_empty() {
            continue;
        }
        let rev = if s.heads.is_empty() { "base".to_owned() } else { s.heads.join(",") };
        *by_revision.entry(rev).or_default() += 1;
        if !t.drift.is_empty() {
            drift += 1;
        }
    }
    for (rev, n) in &by_revision {
        metrics::gauge!("flotilla_fleet_targets", "revision" => rev.clone()).set(*n as f64);
    }
    metrics::gauge!("flotilla_fleet_version_skew").set(by_revision.len() as f64);
    metrics::gauge!("flotilla_fleet_drift_targets").set(drift as f64);
}
