//! The agent's Prometheus metrics: their names, HELP texts and units.

/// HELP texts and units of the agent's metrics.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "flotilla_agent_steps_total",
        Unit::Count,
        "Migration steps finished by the agent, by dialect, direction and outcome (succeeded, skipped, failed)"
    );
    describe_histogram!(
        "flotilla_agent_step_duration_seconds",
        Unit::Seconds,
        "Time to apply one migration step, by dialect and direction"
    );
    describe_counter!(
        "flotilla_agent_status_cache_hits_total",
        Unit::Count,
        "Status reads of SQLite targets answered from the cache (database files unchanged)"
    );
    describe_counter!(
        "flotilla_agent_retries_total",
        Unit::Count,
        "Step attempts retried after a transient database error, by dialect and error class"
    );
    describe_histogram!(
        "flotilla_agent_lock_wait_seconds",
        Unit::Seconds,
        "Time spent waiting for a target's migration lock, by dialect"
    );
    describe_histogram!(
        "flotilla_agent_lock_held_seconds",
        Unit::Seconds,
        "Time a target's migration lock was held by one Migrate request, by dialect"
    );
    // Counters exist from the start at 0 for every label value they can take, so panels show
    // 0 rather than "No data" and `increase()` sees the first retry.
    for dialect in flotilla_core::Dialect::ALL {
        for class in crate::driver::transient_classes(dialect) {
            metrics::counter!("flotilla_agent_retries_total", "dialect" => dialect.as_str(), "error_class" => class.as_str())
                .increment(0);
        }
    }
    metrics::describe_gauge!(
        "flotilla_agent_registered",
        Unit::Count,
        "1 while the coordinator knows this agent (registered, heartbeats answered), 0 while registering fails; absent without --coordinator"
    );
}
