//! When the store is checkpointed: sled made durable and the write-ahead log dropped
//! (`store::sync`). Commits never wait for a checkpoint; it bounds the replay at the next
//! start and the memory the changes not yet in sled take, and it costs the SD card a fixed
//! price each time on top of what it carries (about 1.5 KB a payment, finished records
//! deflated, `store::packed`): the log's rotation
//! (two renames, one with its directory's `fsync`: ext4 journal commits) and sled's flush
//! and `fdatasync`, 75–90 KB at the device for a handful of payments
//! (`docs/performance.md`, eleventh measurement).
//! So a checkpoint waits until it carries enough to be worth that price: 256 KiB of
//! changes held (about 300 payments), which a busy shop holds within seconds (as much
//! memory held as before) and a quiet one within hours, or an hour after the last one,
//! so that a shop's slow day still shares one checkpoint among its payments.
//!
//! A checkpoint is not what makes anything durable (the log's commit is), so the bound
//! costs no promise: a crash or power cut replays at most 256 KiB of changes at the next
//! start, and a log found damaged is searched for command ids like sled's files are
//! (`store::salvage`).
//!
//! The store's own bounds still apply between looks: a log past 8 MiB or 2 MiB of changes
//! held asks the checkpoint thread at once (a flood). A test build can shorten the bound
//! (`POSBRIDGE_TEST_CHECKPOINT_EVERY`, `faults::checkpoint_every`), for tests and benches
//! that need a checkpoint within their run.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;

/// When a checkpoint is due.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointSchedule {
    /// How often the store is looked at.
    pub look_every: Duration,
    /// A checkpoint once this many bytes of changes are held for sled …
    pub held_bytes: usize,
    /// … or once the last checkpoint is this old and something changed since, whichever
    /// comes first.
    pub at_most_every: Duration,
}

impl Default for CheckpointSchedule {
    fn default() -> Self {
        CheckpointSchedule {
            look_every: Duration::from_secs(5),
            held_bytes: 256 * 1024,
            at_most_every: Duration::from_secs(3600),
        }
    }
}

impl CheckpointSchedule {
    /// The agent's schedule: the default, or in a test build the bound
    /// `POSBRIDGE_TEST_CHECKPOINT_EVERY` sets (and looks at least as often).
    pub fn for_agent() -> Self {
        let d = Self::default();
        match crate::faults::checkpoint_every() {
            Some(every) => CheckpointSchedule {
                look_every: d.look_every.min(every),
                at_most_every: every,
                ..d
            },
            None => d,
        }
    }

    /// Is a checkpoint due, with `held` bytes of changes held and the last checkpoint
    /// `since` ago? Nothing held: never (a checkpoint of nothing is skipped anyway).
    pub fn due(&self, held: usize, since: Duration) -> bool {
        held > 0 && (held >= self.held_bytes || since >= self.at_most_every)
    }
}

/// Checkpoint the store whenever [`CheckpointSchedule::due`] says, until shutdown.
pub(super) async fn run(inner: Arc<Inner>) {
    let schedule = inner.cfg.checkpoints;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(schedule.look_every) => {}
        }
        let (held, since) = (inner.store.held_bytes(), last.elapsed());
        if !schedule.due(held, since) {
            continue;
        }
        tracing::debug!(held_bytes = held, since_ms = since.as_millis() as u64, "store checkpoint");
        last = tokio::time::Instant::now();
        match inner.store.checkpoint().await {
            Ok(()) => tracing::debug!(
                took_ms = last.elapsed().as_millis() as u64,
                "store checkpoint done"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "store checkpoint failed; the write-ahead log is kept")
            }
        }
        crate::telemetry::release_after_checkpoint();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: CheckpointSchedule = CheckpointSchedule {
        look_every: Duration::from_secs(5),
        held_bytes: 1000,
        at_most_every: Duration::from_secs(60),
    };

    #[test]
    fn a_quiet_store_waits_for_the_minute() {
        assert!(!S.due(999, Duration::from_secs(5)));
        assert!(!S.due(999, Duration::from_secs(59)));
        assert!(S.due(1, Duration::from_secs(60)));
    }

    #[test]
    fn a_busy_store_does_not_wait() {
        assert!(S.due(1000, Duration::ZERO));
        assert!(S.due(5000, Duration::from_secs(5)));
    }

    #[test]
    fn nothing_held_is_never_due() {
        assert!(!S.due(0, Duration::from_secs(3600)));
    }
}
