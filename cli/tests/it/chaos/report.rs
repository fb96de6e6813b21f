//! A fault's rounds summed up: the row `scripts/chaos.sh` prints (rounds, completed, manual
//! actions, double applications, lost rows, dirty, time to recover), written to stderr and,
//! with `FLOTILLA_CHAOS_REPORT=<file>`, appended to that file as one tab-separated line.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::invariants::Findings;

/// Rounds per fault: `FLOTILLA_CHAOS_ROUNDS`, default 2.
pub(super) fn rounds() -> u32 {
    std::env::var("FLOTILLA_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// What one round showed.
#[derive(Debug)]
pub(super) struct RoundOutcome {
    /// The rollout ended `succeeded` with no action from anyone.
    pub(super) completed: bool,
    /// From the injection to the heal (the server or process back).
    pub(super) down: Duration,
    /// From the heal to the next step recorded (`None`: none was).
    pub(super) recover: Option<Duration>,
    pub(super) findings: Findings,
}

/// The rounds of one fault.
pub(super) struct Tally {
    fault: &'static str,
    rounds: u32,
    completed: u32,
    findings: Findings,
    down: Vec<Duration>,
    recover: Vec<Duration>,
}

impl Tally {
    pub(super) fn new(fault: &'static str) -> Tally {
        Tally {
            fault,
            rounds: 0,
            completed: 0,
            findings: Findings::default(),
            down: Vec::new(),
            recover: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, round: &RoundOutcome) {
        self.rounds += 1;
        self.completed += u32::from(round.completed);
        let f = &round.findings;
        self.findings.double += f.double;
        self.findings.lost += f.lost;
        self.findings.dirty += f.dirty;
        self.findings.notes.extend(f.notes.iter().cloned());
        self.down.push(round.down);
        self.recover.extend(round.recover);
    }

    /// Rounds that did not end `succeeded` by themselves: each would need an operator.
    fn manual(&self) -> u32 {
        self.rounds - self.completed
    }

    /// The tab-separated row: fault, rounds, completed, manual actions, double applications,
    /// lost rows, dirty, median down (ms), median and max time to recover (ms).
    fn row(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.fault,
            self.rounds,
            self.completed,
            self.manual(),
            self.findings.double,
            self.findings.lost,
            self.findings.dirty,
            ms(median(&self.down)),
            ms(median(&self.recover)),
            ms(self.recover.iter().max().copied()),
        )
    }

    /// Print the row and append it to `FLOTILLA_CHAOS_REPORT` when set.
    pub(super) fn publish(&self) -> Result<()> {
        let row = self.row();
        eprintln!("chaos\t{row}");
        if let Some(path) = std::env::var_os("FLOTILLA_CHAOS_REPORT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.to_string_lossy()))?;
            writeln!(file, "{row}")?;
        }
        Ok(())
    }

    /// Every round completed by itself, nothing applied twice, lost or left dirty.
    pub(super) fn check(&self) -> Result<()> {
        let f = &self.findings;
        ensure!(
            self.manual() == 0 && f.double == 0 && f.lost == 0 && f.dirty == 0,
            "{}: {} of {} rounds completed by themselves, {} double applications, {} lost \
             rows, {} dirty: {:#?}",
            self.fault,
            self.completed,
            self.rounds,
            f.double,
            f.lost,
            f.dirty,
            f.notes
        );
        Ok(())
    }
}

pub(super) fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}
