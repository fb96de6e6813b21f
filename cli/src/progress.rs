//! Live rollout progress: indicatif bars on a terminal (overall targets, current wave),
//! plain lines otherwise (one per wave, state change, finished target and target that starts
//! waiting for its unreachable agent, and metric gate that starts its window).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use flotilla_proto as pb;

use crate::render::{gate_line, state_name, target_state_name};

pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
}

fn done(t: &pb::TargetProgress) -> bool {
    !matches!(target_state_name(t.state), "pending" | "running")
}

/// How the ended targets ended: a failed target has ended, it is not "done".
fn outcomes(r: &pb::Rollout) -> String {
    let count = |state: &str| {
        r.targets
            .iter()
            .filter(|t| target_state_name(t.state) == state)
            .count()
    };
    format!(
        "{} migrated, {} at the goal, {} failed, {} blocked",
        count("succeeded"),
        count("skipped"),
        count("failed"),
        count("blocked")
    )
}

/// The plain progress line of a rollout's state or wave change.
fn summary_line(r: &pb::Rollout) -> String {
    let ended = r.targets.iter().filter(|t| done(t)).count();
    let mut line = format!(
        "[{}] wave {}/{}: {ended}/{} targets ended ({})",
        state_name(r.state),
        (r.current_wave + 1).min(r.wave_count),
        r.wave_count,
        r.targets.len(),
        outcomes(r)
    );
    if !r.message.is_empty() {
        line.push_str(&format!(" — {}", r.message));
    }
    line
}

impl Progress {
    pub fn new(tty: bool) -> Progress {
        let bars = tty.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix:>8} [{bar:40.cyan/blue}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let all = multi.add(
                ProgressBar::new(0)
                    .with_style(style.clone())
                    .with_prefix("targets"),
            );
            let wave = multi.add(ProgressBar::new(0).with_style(style).with_prefix("wave"));
            (multi, all, wave)
        });
        Progress { bars }
    }

    pub fn update(&mut self, r: &pb::Rollout, last: Option<&pb::Rollout>) {
        let total = r.targets.len() as u64;
        let ended = r.targets.iter().filter(|t| done(t)).count() as u64;
        let in_wave: Vec<&pb::TargetProgress> = r
            .targets
            .iter()
            .filter(|t| t.wave == r.current_wave)
            .collect();
        let wave_done = in_wave.iter().filter(|t| done(t)).count() as u64;
        let retries: u32 = r.targets.iter().map(|t| t.retries).sum();
        let waiting = r.targets.iter().filter(|t| t.waiting_for_agent).count();
        let waiting_note = if waiting > 0 {
            format!(" · {waiting} waiting for their agent")
        } else {
            String::new()
        };
        match &self.bars {
            Some((_, all, wave)) => {
                all.set_length(total);
                all.set_position(ended);
                all.set_message(format!(
                    "{} · {} · {retries} retries{waiting_note}",
                    state_name(r.state),
                    outcomes(r)
                ));
                wave.set_length(in_wave.len() as u64);
                wave.set_position(wave_done);
                let gate = r
                    .metric_gate
                    .as_ref()
                    .map(|g| format!(" · {}", gate_line(g)))
                    .unwrap_or_default();
                wave.set_message(format!(
                    "wave {}/{}{gate}",
                    (r.current_wave + 1).min(r.wave_count),
                    r.wave_count
                ));
            }
            None => {
                let prev_state = last.map(|l| l.state);
                let prev_wave = last.map(|l| l.current_wave);
                if prev_state != Some(r.state) || prev_wave != Some(r.current_wave) {
                    eprintln!("{}", summary_line(r));
                }
                if let Some(g) = &r.metric_gate {
                    let before = last.and_then(|l| l.metric_gate.as_ref());
                    if before.is_none_or(|b| b.started_at_unix_ms != g.started_at_unix_ms) {
                        eprintln!("  {}", gate_line(g));
                    }
                }
                for t in r.targets.iter().filter(|t| t.waiting_for_agent) {
                    let before =
                        last.and_then(|l| l.targets.iter().find(|o| o.target_id == t.target_id));
                    if before.is_none_or(|b| !b.waiting_for_agent) {
                        eprintln!("  waiting {}: {}", t.target_id, t.message);
                    }
                }
                for t in r.targets.iter().filter(|t| {
                    done(t) && matches!(target_state_name(t.state), "failed" | "blocked")
                }) {
                    let before =
                        last.and_then(|l| l.targets.iter().find(|o| o.target_id == t.target_id));
                    if before.is_none_or(|b| b.state != t.state) {
                        eprintln!(
                            "  {} {}: {}",
                            target_state_name(t.state),
                            t.target_id,
                            t.message
                        );
                    }
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, all, wave)) = self.bars.take() {
            // The report that follows repeats the final counts: leave a clean line for it.
            wave.finish_and_clear();
            all.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, state: pb::TargetState) -> pb::TargetProgress {
        pb::TargetProgress {
            target_id: id.to_owned(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_target_has_ended_but_is_not_done() {
        let r = pb::Rollout {
            state: pb::RolloutState::Halted as i32,
            wave_count: 2,
            current_wave: 0,
            message: "canary failed".into(),
            targets: vec![
                target("t1", pb::TargetState::Failed),
                target("t2", pb::TargetState::Pending),
                target("t3", pb::TargetState::Skipped),
            ],
            ..Default::default()
        };
        expect_test::expect![[r#"[halted] wave 1/2: 2/3 targets ended (0 migrated, 1 at the goal, 1 failed, 0 blocked) — canary failed"#]]
            .assert_eq(&summary_line(&r));
    }
}
