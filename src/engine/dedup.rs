//! A command id, once seen, is never executed again (`mqtt-api.md`: Durability promise 2).
//! A known id is answered from the store — the final result again, or its current state —
//! and a signed command reusing an id with another signature is refused as a replay.
//! Records leave the store only by pruning past `store.retention` (and never before a
//! signed command's `expires_at`, `store::prune`), and pruning pauses when the wall clock
//! jumps, so no id inside the idempotency window is forgotten.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{After, Inner};
use crate::api::{ErrorCode, Evt, Rejection};
use crate::store::{CmdState, CommandRecord, OutMsg, StoreError};

impl Inner {
    /// A command whose id the store already holds: `Err` with the refusal when a signed
    /// command reuses the id under another signature (replay or forgery), else `Ok`.
    pub(super) fn same_signature(
        &self, rec: &CommandRecord, sig: &Option<String>, payload: &[u8],
    ) -> Result<(), Rejection> {
        if sig.is_some() && rec.sig != *sig {
            let mut rej = Rejection::new(
                ErrorCode::Unauthorized,
                format!("id {:?} was already used by a different signed command (replay or forgery); not executed", rec.cmd.id),
            );
            rej.raw = Some(crate::api::command::raw_echo(payload));
            return Err(rej);
        }
        Ok(())
    }

    /// A command id seen before: republish the final result, or report the current state.
    pub(super) fn duplicate(&self, rec: &CommandRecord) -> Result<Vec<After>, StoreError> {
        match &rec.result {
            Some(res) if rec.state.is_final() => {
                self.store.write(&[], &[OutMsg::result(res)])?;
                Ok(vec![])
            }
            _ => {
                let state = if rec.state == CmdState::Running {
                    crate::api::Progress::InProgress
                } else {
                    crate::api::Progress::Queued
                };
                let mut e = Evt::new(&rec.cmd.id, state);
                e.detail = Some(serde_json::json!({ "duplicate": true }));
                Ok(vec![After::Evt(e)])
            }
        }
    }
}

/// Keep the store within `store.retention`: at start, then every [`prune_every`] — unless
/// the wall clock jumped (see [`ClockGuard`]).
pub(super) async fn prune_loop(inner: Arc<Inner>) {
    let mut guard =
        ClockGuard::new(inner.cfg.clock.now(), std::time::Instant::now(), inner.cfg.retention);
    loop {
        let keep =
            chrono::Duration::from_std(inner.cfg.retention).unwrap_or(chrono::Duration::days(30));
        let now = inner.cfg.clock.now();
        match guard.may_prune(now, std::time::Instant::now()) {
            Err(jump) => tracing::warn!(jump_s = jump.num_seconds(),
                "the wall clock jumped; pruning waits one store.retention of real time, so no command id within the idempotency window is forgotten"),
            // On a blocking thread: a pass reads every record (20 000 in a busy shop's
            // 30 days), which would hold one of the runtime's two workers, and the
            // payments waiting on it, for tens of milliseconds.
            Ok(()) => {
                let store = inner.store.clone();
                match tokio::task::spawn_blocking(move || store.prune(now - keep, 10_000)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(deleted = n, "pruned finished commands past store.retention"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "pruning the store failed"),
                    Err(e) => tracing::warn!(error = %e, "pruning the store failed"),
                }
            }
        }
        // The first pass runs right after the store's open, whose checks walked every
        // record: what they freed goes back to the kernel (after each prune too). (Code
        // pages are released only when the agent is idle: `telemetry::release_when_idle`;
        // a busy agent would only map its hot code again.)
        crate::telemetry::release_freed_memory();
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(prune_every(inner.cfg.retention)) => {}
        }
    }
}

/// How often pruning runs: a tenth of the retention, so the store holds at most 1.1
/// retentions of finished commands; hourly at most (the default 30 days), and not more
/// often than every 10 s (a short retention, as in a soak that keeps its store steady).
fn prune_every(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

/// Pruning by age trusts the wall clock; a clock that jumps forward (a wrong NTP answer, a
/// Raspberry Pi without RTC correcting itself) would make every id in the idempotency
/// window look old. The guard compares wall-clock progress with the monotonic clock:
/// after a jump of more than [`ClockGuard::TOLERANCE`] either way, pruning pauses for one
/// retention period of monotonic time, so every record that existed before the jump
/// lives its full retention in real time.
struct ClockGuard {
    wall: DateTime<Utc>,
    mono: std::time::Instant,
    retention: Duration,
    paused_until: Option<std::time::Instant>,
}

impl ClockGuard {
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn new(wall: DateTime<Utc>, mono: std::time::Instant, retention: Duration) -> Self {
        ClockGuard { wall, mono, retention, paused_until: None }
    }

    /// `Err(jump)` while pruning must wait.
    fn may_prune(
        &mut self, wall: DateTime<Utc>, mono: std::time::Instant,
    ) -> Result<(), chrono::Duration> {
        let real = chrono::Duration::from_std(mono.saturating_duration_since(self.mono))
            .unwrap_or(chrono::Duration::zero());
        let jump = (wall - self.wall) - real;
        let tolerance = chrono::Duration::from_std(Self::TOLERANCE).unwrap_or_default();
        // Re-anchor at every look: each jump is measured once.
        self.wall = wall;
        self.mono = mono;
        if jump.abs() > tolerance {
            self.paused_until = Some(mono + self.retention);
            return Err(jump);
        }
        match self.paused_until {
            Some(until) if mono < until => Err(jump),
            _ => {
                self.paused_until = None;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_runs_every_tenth_of_the_retention_within_bounds() {
        let day = Duration::from_secs(86_400);
        assert_eq!(prune_every(30 * day), Duration::from_secs(3600));
        assert_eq!(prune_every(Duration::from_secs(1800)), Duration::from_secs(180));
        assert_eq!(prune_every(Duration::from_secs(60)), Duration::from_secs(10));
    }

    #[test]
    fn a_jumped_clock_pauses_pruning_for_one_retention_of_real_time() {
        let t0 = Utc::now();
        let m0 = std::time::Instant::now();
        let hour = Duration::from_secs(3600);
        let day = Duration::from_secs(86_400);
        let mut g = ClockGuard::new(t0, m0, day);
        // Steady: wall and monotonic move together (small NTP slews pass).
        assert!(g
            .may_prune(t0 + chrono::Duration::hours(1) + chrono::Duration::seconds(2), m0 + hour)
            .is_ok());
        // A week forward in an hour: paused.
        let wall = t0 + chrono::Duration::hours(2) + chrono::Duration::days(7);
        assert!(g.may_prune(wall, m0 + 2 * hour).is_err());
        // Still paused an hour later (the clock now moves normally)…
        assert!(g.may_prune(wall + chrono::Duration::hours(1), m0 + 3 * hour).is_err());
        // …until a retention of real time has passed since the jump.
        let later = m0 + 2 * hour + day + hour;
        let wall_later = wall + chrono::Duration::days(1) + chrono::Duration::hours(1);
        assert!(g.may_prune(wall_later, later).is_ok());
        // Backwards counts too.
        assert!(g.may_prune(wall_later - chrono::Duration::days(3), later + hour).is_err());
    }
}
