//! Wave assignment and the failure budget: pure functions of the eligible targets and the spec.

use serde::{Deserialize, Serialize};

use flotilla_proto as pb;

/// Size of one wave after the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    Count(u32),
    /// Percentage (1..=100) of the targets left after the canary.
    Percent(u32),
}

impl WaveSize {
    /// Parse `10` or `25%`.
    pub fn parse(s: &str) -> Result<WaveSize, String> {
        let s = s.trim();
        let w = if let Some(p) = s.strip_suffix('%') {
            WaveSize::Percent(
                p.trim()
                    .parse()
                    .map_err(|_| format!("bad wave size {s:?}"))?,
            )
        } else {
            WaveSize::Count(s.parse().map_err(|_| format!("bad wave size {s:?}"))?)
        };
        w.validate()?;
        Ok(w)
    }

    fn validate(self) -> Result<(), String> {
        match self {
            WaveSize::Count(0) => Err("a wave must hold at least one target".into()),
            WaveSize::Percent(p) if p == 0 || p > 100 => {
                Err(format!("wave percentage {p} is not within 1..=100"))
            }
            _ => Ok(()),
        }
    }

    pub fn to_proto(&self) -> pb::WaveSpec {
        pb::WaveSpec {
            size: Some(match *self {
                WaveSize::Count(n) => pb::wave_spec::Size::Count(n),
                WaveSize::Percent(p) => pb::wave_spec::Size::Percent(p),
            }),
        }
    }

    pub fn from_proto(p: &pb::WaveSpec) -> Result<WaveSize, String> {
        let w = match p.size {
            Some(pb::wave_spec::Size::Count(n)) => WaveSize::Count(n),
            Some(pb::wave_spec::Size::Percent(n)) => WaveSize::Percent(n),
            None => return Err("wave without a size".into()),
        };
        w.validate()?;
        Ok(w)
    }
}

/// How many targets may fail before the rollout halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Count(u32),
    /// Percentage (0..=100) of the rollout's eligible targets.
    Percent(u32),
}

impl Budget {
    /// Parse `3` or `10%`.
    pub fn parse(s: &str) -> Result<Budget, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad failure budget {s:?}"))?;
            if p > 100 {
                return Err(format!("failure budget {p}% is over 100%"));
            }
            Ok(Budget::Percent(p))
        } else {
            Ok(Budget::Count(
                s.parse().map_err(|_| format!("bad failure budget {s:?}"))?,
            ))
        }
    }

    /// Failures allowed among `total` targets; one more halts the rollout.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            Budget::Count(n) => n as usize,
            Budget::Percent(p) => total * p as usize / 100,
        }
    }

    pub fn to_proto(&self) -> pb::FailureBudget {
        pb::FailureBudget {
            limit: Some(match *self {
                Budget::Count(n) => pb::failure_budget::Limit::Count(n),
                Budget::Percent(p) => pb::failure_budget::Limit::Percent(p),
            }),
        }
    }

    pub fn from_proto(p: &pb::FailureBudget) -> Result<Budget, String> {
        match p.limit {
            Some(pb::failure_budget::Limit::Count(n)) => Ok(Budget::Count(n)),
            Some(pb::failure_budget::Limit::Percent(p)) if p <= 100 => Ok(Budget::Percent(p)),
            Some(pb::failure_budget::Limit::Percent(p)) => {
                Err(format!("failure budget {p}% is over 100%"))
            }
            None => Ok(Budget::Count(0)),
        }
    }
}

/// Split `targets` (already in rollout order) into waves: wave 0 holds the canaries (when
/// `canary > 0`), then one wave per `WaveSize` (percentages of what is left after the
/// canary, at least one target each), and a last wave with any remainder. Without wave
/// sizes everything after the canary is one wave. Empty waves are never returned.
pub fn assign_waves<T: Clone>(targets: &[T], canary: u32, sizes: &[WaveSize]) -> Vec<Vec<T>> {
    let mut waves = Vec::new();
    let canary = (canary as usize).min(targets.len());
    if canary > 0 {
        waves.push(targets[..canary].to_vec());
    }
    let rest = &targets[canary..];
    let mut i = 0;
    for size in sizes {
        if i >= rest.len() {
            break;
        }
        let n = match *size {
            WaveSize::Count(n) => n as usize,
            WaveSize::Percent(p) => (rest.len() * p as usize).div_ceil(100),
        }
        .max(1);
        let end = (i + n).min(rest.len());
        waves.push(rest[i..end].to_vec());
        i = end;
    }
    if i < rest.len() {
        waves.push(rest[i..].to_vec());
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(waves: &[Vec<u32>]) -> Vec<usize> {
        waves.iter().map(Vec::len).collect()
    }

    #[test]
    fn canary_then_waves_then_remainder() {
        let t: Vec<u32> = (0..20).collect();
        assert_eq!(sizes(&assign_waves(&t, 1, &[])), [1, 19]);
        assert_eq!(
            sizes(&assign_waves(&t, 2, &[WaveSize::Count(5)])),
            [2, 5, 13]
        );
        assert_eq!(
            sizes(&assign_waves(
                &t,
                1,
                &[WaveSize::Percent(10), WaveSize::Percent(50)]
            )),
            [1, 2, 10, 7]
        );
        assert_eq!(sizes(&assign_waves(&t, 0, &[WaveSize::Count(100)])), [20]);
        assert_eq!(sizes(&assign_waves(&t[..1], 3, &[WaveSize::Count(2)])), [1]);
        assert!(assign_waves::<u32>(&[], 1, &[]).is_empty());
        // order is preserved
        assert_eq!(
            assign_waves(&t[..4], 1, &[WaveSize::Count(2)]),
            vec![vec![0], vec![1, 2], vec![3]]
        );
    }

    #[test]
    fn budget_allows_count_or_percent() {
        assert_eq!(Budget::Count(3).allowed(20), 3);
        assert_eq!(Budget::Percent(10).allowed(20), 2);
        assert_eq!(Budget::Percent(10).allowed(9), 0);
        assert_eq!(Budget::parse("10%").unwrap(), Budget::Percent(10));
        assert!(Budget::parse("101%").is_err());
        assert_eq!(WaveSize::parse("25%").unwrap(), WaveSize::Percent(25));
        assert!(WaveSize::parse("0").is_err());
    }
}
