//! The watermark file (`sled.mark`) that lets open detect a store that silently lost
//! data, and the outbox's durability line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{seq_key, StoreError, RECENT};

/// The watermark file beside sled's directory: two sequence numbers, written (not synced:
/// see `persist`) only after what they name is durable.
///
/// - *commit*: the newest command record covered by a completed commit (in the log or in
///   sled). After the log is replayed at open, that record must be there.
/// - *checkpoint*: the newest command record in sled when it was last made durable.
///   Before the log is replayed, sled alone must have it: if it does not, sled has
///   silently lost data (a truncated or missing data file; sled itself would quietly
///   start from what is left) and the store is treated as damaged.
///
/// It also keeps the outbox's durability line: the highest outbox seq covered by a
/// completed sync. The pump publishes only up to that line, so no result can reach the
/// cloud before it is on disk (a result published and then lost in a crash could be
/// followed by a different outcome for the same id).
pub(crate) struct Mark {
    path: PathBuf,
    noted: AtomicU64,
    written: AtomicU64,
    checkpointed: AtomicU64,
    outbox_noted: AtomicU64,
    outbox_durable: AtomicU64,
    /// The log position (`sync::PendingLog::framed`) the last completed commit or
    /// checkpoint covered: every change framed before it is durable.
    log_durable: tokio::sync::watch::Sender<u64>,
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl Mark {
    pub(super) fn new(path: PathBuf) -> Mark {
        Mark {
            path,
            noted: Default::default(),
            written: Default::default(),
            checkpointed: Default::default(),
            outbox_noted: Default::default(),
            outbox_durable: Default::default(),
            log_durable: tokio::sync::watch::Sender::new(0),
            file: Default::default(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// (commit, checkpoint). A mark of 8 bytes is from before the log existed, when
    /// every commit was a sled checkpoint: both values are that one.
    pub(super) fn read(&self) -> (u64, u64) {
        let b = std::fs::read(&self.path).unwrap_or_default();
        let at = |i: usize| {
            b.get(i..i + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes)
        };
        match (at(0), at(8)) {
            (Some(c), Some(k)) => (c, k),
            (Some(c), None) => (c, c),
            _ => (0, 0),
        }
    }

    /// Before the log is replayed: sled alone must hold the checkpointed record.
    pub(super) fn check_checkpoint(&self, db: &sled::Db) -> Result<(), StoreError> {
        let (commit, checkpoint) = self.read();
        self.written.store(commit, Ordering::Relaxed);
        self.checkpointed.store(checkpoint, Ordering::Relaxed);
        if checkpoint > 0 && !db.contains_key(seq_key(RECENT, checkpoint))? {
            return Err(StoreError::LostData { expected: checkpoint });
        }
        Ok(())
    }

    /// After the log is replayed: the newest committed record must be there.
    pub(super) fn check_commit(&self, db: &sled::Db) -> Result<(), StoreError> {
        let (commit, _) = self.read();
        if commit > 0 && !db.contains_key(seq_key(RECENT, commit))? {
            return Err(StoreError::LostData { expected: commit });
        }
        Ok(())
    }

    /// A record with this seq was written (not yet durable).
    pub(super) fn note(&self, seq: u64) {
        self.noted.fetch_max(seq, Ordering::Relaxed);
    }

    pub(super) fn write_file(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.written.load(Ordering::Relaxed).to_be_bytes());
        bytes[8..].copy_from_slice(&self.checkpointed.load(Ordering::Relaxed).to_be_bytes());
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&self.path)?,
            );
        }
        match f.as_ref() {
            // No fdatasync of its own: it is only written after what it names is durable,
            // so whichever value a power cut leaves on disk (this one or an older one)
            // names a durable record. A stale mark only narrows the lost-data check; it
            // can never make a good store look damaged.
            Some(f) => f.write_all_at(&bytes, 0),
            None => Ok(()),
        }
    }

    /// Called after a commit: every record up to `upto` is durable (in the log).
    pub(crate) fn persist_commit(&self, upto: u64) -> std::io::Result<()> {
        if upto <= self.written.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.written.fetch_max(upto, Ordering::Relaxed);
        self.write_file()
    }

    /// Called after a checkpoint: every record up to `upto` is durable in sled itself.
    pub(crate) fn persist_checkpoint(&self, upto: u64) -> std::io::Result<()> {
        if upto <= self.checkpointed.load(Ordering::Relaxed)
            && upto <= self.written.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        self.written.fetch_max(upto, Ordering::Relaxed);
        self.checkpointed.fetch_max(upto, Ordering::Relaxed);
        self.write_file()
    }

    pub(crate) fn noted(&self) -> u64 {
        self.noted.load(Ordering::Relaxed)
    }

    pub(super) fn note_outbox(&self, seq: u64) {
        self.outbox_noted.fetch_max(seq, Ordering::AcqRel);
    }

    /// Read before a sync starts: every outbox entry up to here is covered by it.
    pub(crate) fn outbox_noted(&self) -> u64 {
        self.outbox_noted.load(Ordering::Acquire)
    }

    /// After the sync that started at `upto` completed.
    pub(crate) fn outbox_synced(&self, upto: u64) {
        self.outbox_durable.fetch_max(upto, Ordering::AcqRel);
    }

    /// After the commit or checkpoint that took the pending changes up to `at` completed.
    pub(crate) fn log_synced(&self, at: u64) {
        self.log_durable.send_if_modified(|v| {
            let newer = at > *v;
            *v = (*v).max(at);
            newer
        });
    }

    pub(super) fn log_durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.log_durable.subscribe()
    }

    pub(super) fn outbox_durable(&self) -> u64 {
        self.outbox_durable.load(Ordering::Acquire)
    }
}
