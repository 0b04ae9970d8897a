//! The durable store on sled: commands (which double as the idempotency index), their
//! journal of device steps, the result outbox, and a recency index for `list` and resume.
//!
//! Everything lives in one sled tree with key prefixes. A record ended with a result and
//! the outbox entry with that result are one change (one log frame), so no crash can
//! keep one without the other.
//!
//! Durability: every change is appended to a write-ahead log (`wal.rs`) and held in memory
//! over sled's state (readers see it at once). [`Store::commit`] writes the log and
//! `fdatasync`s it, once for all concurrent callers (group commit, `sync.rs`). A
//! checkpoint puts the changes into sled (the newest version of each key only) and makes
//! sled durable (flush + `fdatasync`: its `flush()` alone is only `sync_file_range`,
//! `CRATES.md`), after which the log is dropped. Open replays the log over sled.

mod inspect;
mod mark;
mod open;
mod packed;
mod record;
pub mod salvage;
mod sync;
mod wal;

pub use inspect::Inspection;
pub(crate) use mark::Mark;
pub use open::{refuse_root_on_foreign_store, MoneyHold, OpenReport};
pub use record::{CmdState, CommandRecord, JournalEntry, OutMsg, Step};

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

use sync::{lock_pending, Pending, Syncer};
use wal::LoggedBatch;

/// sled's default cache is 1 GiB; a Raspberry Pi wants a few MiB. 1 MiB rather than 4:
/// side by side in 30-minute soaks at 50/s the agent's RSS was 1 MiB lower and its heap
/// swung about half as much, with results as fast (`docs/performance.md`, sixteenth
/// measurement). What the cache does not hold, sled reads back from the page cache.
pub const CACHE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(sled::Error),
    #[error("the store at {path} is in use by another process (is another posbridge running, or the agent while using `posbridge secret`?)")]
    InUse { path: PathBuf },
    #[error("store I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store record {key} is corrupt: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    /// A command record sled holds deflated (`packed.rs`) does not inflate.
    #[error("store record {key} is damaged: {why}")]
    Packed { key: String, why: String },
    #[error("store sync failed: {0}")]
    Sync(String),
    /// sled panicked while opening (it does on some garbled files).
    #[error("store files are damaged: sled failed while reading them ({0})")]
    Panicked(String),
    /// The store opened but lacks records its watermark says were committed (a truncated
    /// or replaced data file: sled itself would silently start from what is left).
    #[error("store lost committed data: the watermark says record #{expected} was committed, but it is missing")]
    LostData { expected: u64 },
    /// The write-ahead log is damaged before its end (not a commit cut short by a crash).
    #[error("store log {path} is damaged at byte {offset}, before its end: committed changes after it cannot be trusted")]
    LogDamaged { path: String, offset: u64 },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    syncer: Syncer,
    path: PathBuf,
    /// Changes not yet in sled or not yet in the log. Its lock also orders writers: outbox
    /// sequence numbers must become visible in order (the pump reads forward from a
    /// cursor, so an entry with a lower seq landing after a higher one would be skipped
    /// until the next reconnect), and the log must hold changes in the order they were
    /// made.
    pending: Pending,
    /// The last sequence number handed out (records and outbox entries share it).
    seq: std::sync::Arc<AtomicU64>,
    /// Whether the money hold's key is in the store: read at open, cleared once a lift is
    /// durable. Only open writes the hold and only a lift removes it, both in this
    /// process (sled locks the store to one), so every money command's admission checks
    /// this flag instead of looking the key up (`docs/performance.md`, seventeenth
    /// measurement).
    hold_on: std::sync::Arc<AtomicBool>,
}

const CMD: &[u8] = b"c\0";
const RECENT: &[u8] = b"r\0";
const OUTBOX: &[u8] = b"o\0";
const SECRET: &[u8] = b"s\0";
/// The money hold after store damage (one key).
const HOLD: &[u8] = b"m\0money_hold";
/// The terminal ids this store's agent has published state for (one key, a JSON list).
const TERMINALS: &[u8] = b"m\0terminals";
/// At most this many ids are remembered (the oldest removed terminals are forgotten).
pub const MAX_KNOWN_TERMINALS: usize = 256;

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    key(prefix, &seq.to_be_bytes())
}

fn secret_key(terminal: &str, name: &str) -> Vec<u8> {
    key(SECRET, format!("{terminal}\0{name}").as_bytes())
}

fn seq_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(2..10)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl StoreError {
    /// `map_err` for sled's open of the store at `path`: the lock another process holds
    /// (sled reports the flock failure as a custom I/O error of kind Other) is `InUse`.
    pub(crate) fn open_at(path: &Path) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::InUse { path: path.to_path_buf() }
            }
            other => StoreError::Sled(other),
        }
    }

    /// `map_err` for an I/O error at `path`.
    pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_path_buf(), source }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl Store {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make every write issued before this call durable (log write + fdatasync).
    /// Concurrent callers share one sync.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.syncer.sync().await
    }

    /// The end of the changes applied so far, as a log position: once a commit covering
    /// it has completed ([`Store::durable_soon`]), every one of them is durable.
    pub fn log_position(&self) -> u64 {
        lock_pending(&self.pending).framed
    }

    /// Resolves once every change up to log position `at` is durable: by whichever commit
    /// covers it first (another task's, such as a worker's journal step), or, if none has
    /// within `within`, by a commit of its own. Lets intake share its sync with the first
    /// journal step of the command it has just queued (`engine::intake`).
    pub async fn durable_soon(
        &self, at: u64, within: std::time::Duration,
    ) -> Result<(), StoreError> {
        let mut durable = self.syncer.mark().log_durable();
        // (No wait on `failed()` here: the agent waits on it, and one failure wakes one
        // waiter. After a failure no commit covers `at`, and the own commit fails.)
        tokio::select! {
            biased;
            covered = async { durable.wait_for(|d| *d >= at).await.map(|_| ()) } => match covered {
                Ok(_) => self.refuse_after_failure(),
                Err(_) => self.commit().await,
            },
            _ = tokio::time::sleep(within) => self.commit().await,
        }
    }

    /// Resolves once the store has failed (a write or sync error that survived its one
    /// retry): from then on every commit fails. The agent stops on it.
    pub async fn failed(&self) -> String {
        self.syncer.failed().await
    }

    /// The store's failure, if it has failed.
    pub fn failure(&self) -> Option<String> {
        self.syncer.failure()
    }

    /// Commit, then make sled itself durable and drop the write-ahead log (bounds the
    /// replay at the next start). Nothing to do when nothing changed since the last one.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.syncer.checkpoint().await
    }

    /// After a store failure nothing more is even applied: sled could write its memory to
    /// disk on its own, and an outcome decided only because the store failed (a journal
    /// step that could not be made durable) must never surface after the restart.
    fn refuse_after_failure(&self) -> Result<(), StoreError> {
        match self.syncer.failure() {
            Some(why) => Err(StoreError::Sync(why)),
            None => Ok(()),
        }
    }

    /// Apply one logged batch (not yet durable).
    fn apply(&self, b: LoggedBatch) -> Result<(), StoreError> {
        self.refuse_after_failure()?;
        lock_pending(&self.pending).frame(&b);
        Ok(())
    }

    /// The value of `k`: the change not yet in sled, else sled's. Refused after a store
    /// failure: sled may have failed mid-write, and a read that finds a node to split
    /// then retries its failing write up to a million times (measured: the agent's stop
    /// hung for minutes in one read after an ENOSPC); the restart reads the store again.
    fn read(&self, k: &[u8]) -> Result<Option<Val>, StoreError> {
        self.refuse_after_failure()?;
        if let Some(v) = lock_pending(&self.pending).get(k) {
            return Ok(v.map(Val::Mem));
        }
        self.db.get(k)?.map(|v| from_sled(k, v)).transpose()
    }

    /// The entries from `from` to `to`, with the changes not yet in sled laid over sled's,
    /// in key order (`rev`: backwards). After a store failure (as [`Store::read`]) it
    /// yields the failure once, and nothing more.
    fn scan(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>, rev: bool) -> Scan {
        let sled = self.db.range::<Vec<u8>, _>((from.clone(), to.clone()));
        let sled: SledIter = if rev { Box::new(sled.rev()) } else { Box::new(sled) };
        Scan {
            sled: sled.peekable(),
            failure: Some(self.syncer.failure_flag()),
            pending: self.pending.clone(),
            rest: (from, to),
            over: Vec::new(),
            done: false,
            rev,
        }
    }

    /// [`Store::scan`] of every key under `prefix`.
    fn scan_prefix(&self, prefix: &[u8], rev: bool) -> Scan {
        let mut end = prefix.to_vec();
        // Every prefix here ends in 0x00: the next one up bounds it.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        self.scan(Bound::Included(prefix.to_vec()), Bound::Excluded(end), rev)
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn get(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        match self.read(&key(CMD, id.as_bytes()))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key: id.to_string(), source }),
        }
    }

    /// Write records and outbox messages as one change (one log record). Not yet durable:
    /// call [`Store::commit`] before acting on it.
    pub fn write(&self, records: &[&CommandRecord], outbox: &[OutMsg]) -> Result<(), StoreError> {
        self.refuse_after_failure()?;
        let corrupt = |key: &str, source| StoreError::Corrupt { key: key.to_string(), source };
        let mut batch = LoggedBatch::default();
        for r in records {
            let json = serde_json::to_vec(r).map_err(|e| corrupt(&r.cmd.id, e))?;
            batch.insert(&key(CMD, r.cmd.id.as_bytes()), &json);
            batch.insert(&seq_key(RECENT, r.seq), r.cmd.id.as_bytes());
        }
        let outbox: Vec<Vec<u8>> = outbox
            .iter()
            .map(|m| serde_json::to_vec(m).map_err(|e| corrupt("outbox", e)))
            .collect::<Result<_, _>>()?;
        let max_record = records.iter().map(|r| r.seq).max();
        let mut p = lock_pending(&self.pending);
        let mut max_outbox = 0;
        for v in &outbox {
            let seq = self.next_seq()?;
            max_outbox = seq;
            batch.insert(&seq_key(OUTBOX, seq), v);
        }
        p.frame(&batch);
        // Only after the batch is framed: a sync that reads these marks covers it.
        if let Some(max) = max_record {
            self.syncer.mark().note(max);
        }
        if max_outbox > 0 {
            self.syncer.mark().note_outbox(max_outbox);
        }
        Ok(())
    }

    /// Durable outbox entries with seq ≥ `from`, oldest first, at most `limit`. Entries
    /// written but not yet covered by a completed sync are not returned.
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, OutMsg)>, StoreError> {
        let mut out = Vec::new();
        let durable = self.syncer.mark().outbox_durable();
        if durable < from {
            return Ok(out);
        }
        let entries = self.scan(
            Bound::Included(seq_key(OUTBOX, from)),
            Bound::Included(seq_key(OUTBOX, durable)),
            false,
        );
        for item in entries.take(limit) {
            let (k, v) = item?;
            let Some(seq) = seq_of(&k) else { continue };
            match serde_json::from_slice::<OutMsg>(&v) {
                Ok(m) => out.push((seq, m)),
                Err(e) => {
                    // Never drop silently: log it and leave it for an operator.
                    tracing::error!(seq, error = %e, "undecodable outbox entry skipped");
                }
            }
        }
        Ok(out)
    }

    /// The broker acknowledged this outbox entry: delete it. Not synced: a lost delete
    /// only means the result is delivered again, which the contract allows (at least
    /// once). An entry acknowledged before the next checkpoint never reaches sled.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        let k = seq_key(OUTBOX, seq);
        if self.read(&k)?.is_some() {
            let mut b = LoggedBatch::default();
            b.remove(&k);
            self.apply(b)?;
        }
        Ok(())
    }

    /// Bytes of keys and values changed since the last checkpoint and not yet in sled
    /// (what a checkpoint would put there; `engine`'s checkpoint schedule reads it).
    pub fn held_bytes(&self) -> usize {
        lock_pending(&self.pending).held_bytes()
    }

    /// Outbox entries not yet acknowledged by the broker.
    pub fn outbox_len(&self) -> usize {
        self.scan_prefix(OUTBOX, false).filter(Result::is_ok).count()
    }

    /// Records newest first (by arrival order), for `list` and resume.
    pub fn recent(&self) -> impl Iterator<Item = Result<CommandRecord, StoreError>> + '_ {
        self.scan_prefix(RECENT, true).filter_map(move |item| {
            let (_, id) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            let id = String::from_utf8_lossy(&id).into_owned();
            match self.get(&id) {
                Ok(Some(r)) => Some(Ok(r)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Records that were not final when the process stopped, oldest first.
    pub fn unfinished(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan_prefix(CMD, false) {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<CommandRecord>(&v) {
                if !r.state.is_final() {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// The terminal ids the agent has published a retained `terminals/{id}` for, in any
    /// earlier run (unreadable: none).
    pub fn known_terminals(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read(TERMINALS)?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default())
    }

    /// Remember `configured` (first) and the earlier ids, at most [`MAX_KNOWN_TERMINALS`];
    /// returns the earlier ids no longer configured. Not synced: lost in a crash, it is
    /// written again at the next start.
    pub fn note_terminals(&self, configured: &[String]) -> Result<Vec<String>, StoreError> {
        let earlier = self.known_terminals()?;
        let removed: Vec<String> =
            earlier.iter().filter(|id| !configured.contains(id)).cloned().collect();
        let mut all: Vec<String> = configured.to_vec();
        all.extend(removed.iter().cloned());
        all.truncate(MAX_KNOWN_TERMINALS);
        let v = serde_json::to_vec(&all)
            .map_err(|source| StoreError::Corrupt { key: "terminals".into(), source })?;
        let mut b = LoggedBatch::default();
        b.insert(TERMINALS, &v);
        self.apply(b)?;
        Ok(removed)
    }

    /// Store an already-encrypted secret (see `crate::secrets`). Not yet durable.
    pub fn put_secret(&self, terminal: &str, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut b = LoggedBatch::default();
        b.insert(&secret_key(terminal, name), sealed);
        self.apply(b)
    }

    pub fn get_secret(&self, terminal: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(&secret_key(terminal, name))?.map(|v| v.to_vec()))
    }

    /// Delete finished records that finished before `before`, oldest first, at most
    /// `limit`. The newest record is always kept (the watermark points at it). Returns how
    /// many were deleted. Not synced: a prune lost in a crash simply happens again.
    ///
    /// A pass reads records in arrival order up to the first that arrived after `before`:
    /// none from there on can have finished before it, so a pass reads what expired since
    /// the last one instead of every record kept (a busy shop's 30 days: 20 000 records,
    /// each pulling sled's nodes into memory; the soak's RSS peaks). A clock stepped back
    /// only makes a pass keep more; a record stamped ahead of now (a clock that ran ahead,
    /// since corrected) does not stop the pass, so it cannot hold back pruning for long.
    pub fn prune(
        &self, before: chrono::DateTime<chrono::Utc>, limit: usize,
    ) -> Result<usize, StoreError> {
        let newest =
            self.scan_prefix(RECENT, true).next().transpose()?.and_then(|(k, _)| seq_of(&k));
        let mut deleted = 0;
        for item in self.scan_prefix(RECENT, false) {
            if deleted >= limit {
                break;
            }
            let (k, id) = item?;
            if seq_of(&k) == newest {
                break;
            }
            let id = String::from_utf8_lossy(&id).into_owned();
            let finished_before = match self.get(&id) {
                // An id is remembered at least until its command's deadline has passed,
                // whatever the retention: a signed envelope can never run twice.
                Ok(Some(r)) => {
                    let now = chrono::Utc::now();
                    if r.received_at >= before && r.received_at <= now {
                        break;
                    }
                    r.state.is_final()
                        && r.expires_at < now
                        && r.result
                            .as_ref()
                            .and_then(|res| res.finished_at.as_deref())
                            .and_then(|f| chrono::DateTime::parse_from_rfc3339(f).ok())
                            .is_some_and(|f| f < before)
                }
                Ok(None) => true,
                Err(_) => false,
            };
            if !finished_before {
                // Keep scanning: an old unfinished record must not block pruning after it.
                continue;
            }
            let mut batch = LoggedBatch::default();
            batch.remove(&k);
            batch.remove(&key(CMD, id.as_bytes()));
            self.apply(batch)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// A value read from the store: sled's, or a change not yet in sled.
pub(crate) enum Val {
    Sled(sled::IVec),
    Mem(Arc<[u8]>),
}

impl std::ops::Deref for Val {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Val::Sled(v) => v,
            Val::Mem(v) => v,
        }
    }
}

/// A value as sled holds it under `k`, command records unpacked (`packed.rs`).
fn from_sled(k: &[u8], v: sled::IVec) -> Result<Val, StoreError> {
    match packed::unpack(k, &v) {
        Ok(None) => Ok(Val::Sled(v)),
        Ok(Some(json)) => Ok(Val::Mem(json.into())),
        Err(why) => Err(StoreError::Packed { key: record_name(k), why }),
    }
}

/// [`from_sled`] for a scan: a record that does not inflate is logged and yielded as sled
/// holds it, which no reader decodes (each counts or skips it as undecodable, as it does
/// a damaged plain record), so one bad record does not end the scan.
fn scanned(k: &[u8], v: sled::IVec) -> Val {
    from_sled(k, v.clone()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "undecodable command record in store");
        Val::Sled(v)
    })
}

/// A key as error messages name it: without its prefix.
fn record_name(k: &[u8]) -> String {
    String::from_utf8_lossy(k.get(2..).unwrap_or(k)).into_owned()
}

/// A change not yet in sled: key, and value (`None`: removed).
type Change = (Vec<u8>, Option<Arc<[u8]>>);

/// sled's entries in a range, in either direction.
type SledIter = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>>;

/// [`Store::scan`]: sled's entries merged with the changes not yet in sled (which win, and
/// hide what they removed).
pub(crate) struct Scan {
    sled: std::iter::Peekable<SledIter>,
    /// The store's failure flag, looked at before each step (`None` once it was reported).
    failure: Option<sync::Failure>,
    pending: Pending,
    /// The part of the range whose changes are not yet in `over`.
    rest: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    /// The next changes in the range, the next one last: taken [`SCAN_CHUNK`] at a time, so
    /// that a reader wanting a few entries (the pump, after each acknowledgement) costs a
    /// few, however many changes are held.
    over: Vec<Change>,
    /// No changes left in `rest`.
    done: bool,
    rev: bool,
}

/// How many changes a [`Scan`] takes from memory at a time.
const SCAN_CHUNK: usize = 64;

impl Scan {
    fn refill(&mut self) {
        if self.done || !self.over.is_empty() {
            return;
        }
        let p = lock_pending(&self.pending);
        let range = p.dirty.range::<Vec<u8>, _>(self.rest.clone());
        let chunk: Vec<Change> = if self.rev {
            range.rev().take(SCAN_CHUNK).map(|(k, d)| (k.clone(), d.value.clone())).collect()
        } else {
            range.take(SCAN_CHUNK).map(|(k, d)| (k.clone(), d.value.clone())).collect()
        };
        drop(p);
        self.done = chunk.len() < SCAN_CHUNK;
        if let Some((last, _)) = chunk.last() {
            let after = Bound::Excluded(last.clone());
            if self.rev {
                self.rest.1 = after;
            } else {
                self.rest.0 = after;
            }
        }
        self.over = chunk;
        self.over.reverse();
    }
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Val), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(failure) = &self.failure else { return None };
            if let Some(why) = failure.get() {
                self.failure = None;
                return Some(Err(StoreError::Sync(why)));
            }
            self.refill();
            // Which comes next: sled's entry, the change, or both (the same key)?
            let order = match (self.sled.peek(), self.over.last()) {
                (None, None) => return None,
                (Some(Err(_)), _) => {
                    let e = self.sled.next()?.err()?;
                    return Some(Err(e.into()));
                }
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((sk, _))), Some((ok, _))) => {
                    let o = sk[..].cmp(&ok[..]);
                    if self.rev {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            if order == std::cmp::Ordering::Less {
                let (k, v) = self.sled.next()?.ok()?;
                return Some(Ok((k.to_vec(), scanned(&k, v))));
            }
            if order == std::cmp::Ordering::Equal {
                self.sled.next();
            }
            let (k, v) = self.over.pop()?;
            if let Some(v) = v {
                return Some(Ok((k, Val::Mem(v))));
            }
        }
    }
}

#[cfg(test)]
mod tests;
