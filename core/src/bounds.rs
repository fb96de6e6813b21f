//! A step's bounds: how long its statements may wait for a lock (and, when set, run), the
//! one default lock timeout, the duration syntax that revision headers and flags share, and
//! the precedence of the places that set them (revision header > rollout > agent default).

use std::time::Duration;

/// How long a step's statements wait for a lock before the step is rolled back and retried
/// (PostgreSQL `lock_timeout`, MySQL `lock_wait_timeout`, SQLite `busy_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The bounds one step runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBounds {
    /// Longest wait for one lock.
    pub lock_timeout: Duration,
    /// Longest run of one statement (PostgreSQL `statement_timeout`); `None` = the server's.
    pub statement_timeout: Option<Duration>,
}

impl Default for StepBounds {
    fn default() -> Self {
        StepBounds {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: None,
        }
    }
}

impl StepBounds {
    /// The first value that is set, in precedence order (revision header, rollout, agent).
    pub fn resolve(
        revision: Option<Duration>,
        rollout: Option<Duration>,
        agent: Duration,
    ) -> Duration {
        revision.or(rollout).unwrap_or(agent)
    }
}

/// Milliseconds on the wire: 0 means "not set here".
pub fn from_wire_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The wire form of an optional duration (0 = not set), saturating.
pub fn to_wire_ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// Parse `500ms`, `90s`, `5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: write a number and a unit, like 500ms or 2s"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    };
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    })
}

/// A duration as the parser reads it back: `2s`, `500ms`, `10m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, d) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
        ] {
            assert_eq!(parse_duration(text), Ok(d));
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn the_revision_header_wins_then_the_rollout_then_the_agent() {
        let (a, b, c) = (
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(300),
        );
        assert_eq!(StepBounds::resolve(Some(a), Some(b), c), a);
        assert_eq!(StepBounds::resolve(None, Some(b), c), b);
        assert_eq!(StepBounds::resolve(None, None, c), c);
        assert_eq!(from_wire_ms(0), None);
        assert_eq!(to_wire_ms(Some(a)), 100);
        assert_eq!(to_wire_ms(None), 0);
    }
}
