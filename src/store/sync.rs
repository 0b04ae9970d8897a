//! Group commit over the write-ahead log (`wal.rs`): one `write` + `fdatasync` of the log
//! covers every change applied before the commit started. A caller registers *after* its
//! write and is answered only by a commit that began after it registered, so no
//! acknowledgement can run ahead of the sync covering it. A commit runs on the caller's
//! own thread when no other is running, else on the sync thread (`Syncer::sync`); the
//! log's lock keeps them from interleaving. Checkpoints (sled made durable, then the log
//! dropped) run one at a time on a thread of their own: their first half (a commit, the
//! changes taken, a fresh log generation) under the same lock, the second (the changes
//! put into sled and flushed) without it, so commits never wait for sled.
//!
//! Fail-stop (`mqtt-api.md`: Durability promise 8): after a failed `fdatasync` the page
//! cache cannot be trusted (PostgreSQL's "fsyncgate"), so the first store I/O error that
//! survives one retry on a fresh log file poisons the syncer: that commit and every later
//! one fail, nothing more is acknowledged, no log generation is deleted any more, and the
//! agent, told through [`Syncer::failed`], stops and exits non-zero so that a restart
//! replays the log from disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::wal::LogFile;
use super::{Mark, StoreError};

type Waiter = oneshot::Sender<Result<(), String>>;

/// Past this many bytes of log, a commit is followed by a checkpoint (bounds replay time
/// at start and the disk the log takes).
const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// Changes not yet in sled, and the part of them not yet in the log. Writers frame their
/// batch under this lock, so the log's order is the order of the changes.
pub(crate) type Pending = Arc<Mutex<PendingLog>>;

#[derive(Default)]
pub(crate) struct PendingLog {
    /// Framed changes not yet taken by a commit.
    pub(crate) buf: Vec<u8>,
    /// Bytes ever framed: the log position a commit that takes `buf` now makes durable
    /// ([`super::Store::log_position`]).
    pub(crate) framed: u64,
    /// The newest version of every key changed since the last checkpoint put the changes
    /// into sled (`None`: removed). Readers look here first (`Store::read`); a checkpoint
    /// puts it into sled in one go, so sled writes each key once per checkpoint instead of
    /// every version of it (`docs/performance.md`, SD-card wear).
    pub(crate) dirty: BTreeMap<Vec<u8>, Dirty>,
    /// Bytes of keys and values in `dirty`: past [`DIRTY_CHECKPOINT_BYTES`] a checkpoint
    /// is due (bounds the memory it takes under a flood).
    dirty_bytes: usize,
    /// Versions handed out to changes, so a checkpoint knows which ones it put into sled.
    version: u64,
    /// The last frames in `buf`: where each starts and ends, and the keys it writes.
    frames: std::collections::VecDeque<(usize, usize, Vec<Vec<u8>>)>,
}

/// A change not yet in sled: its value (`None`: removed) and its version.
#[derive(Clone)]
pub(crate) struct Dirty {
    version: u64,
    pub(crate) value: Option<Arc<[u8]>>,
}

/// The changes a checkpoint puts into sled, as they were when it started.
pub(crate) type Snapshot = Vec<(Vec<u8>, Dirty)>;

/// How far back a new frame looks for frames it makes obsolete (a record's steps follow
/// each other closely; a flood of distinct commands must not make framing quadratic).
const SUPERSEDE_WINDOW: usize = 8;

/// Past this many bytes of changes held for sled, a checkpoint is due.
const DIRTY_CHECKPOINT_BYTES: usize = 2 * 1024 * 1024;

impl PendingLog {
    /// Append `b` as a frame and lay its changes over sled's. Earlier frames not yet
    /// taken by a commit that wrote only keys `b` writes again are dropped first: the same
    /// commit makes `b` durable, their values are never read back from the log, and a
    /// commit cut short acknowledges nothing. So a record written at intake, at `started`
    /// and at its sending step costs one frame in that commit, not three.
    pub(crate) fn frame(&mut self, b: &super::wal::LoggedBatch) {
        let keys: Vec<Vec<u8>> = b.keys().map(<[u8]>::to_vec).collect();
        self.drop_superseded(&keys);
        let before = self.buf.len();
        b.frame_into(&mut self.buf);
        self.framed += (self.buf.len() - before) as u64;
        for (k, v) in b.ops() {
            self.version += 1;
            let value: Option<Arc<[u8]>> = v.map(Arc::from);
            self.dirty_bytes += k.len() + value.as_ref().map_or(0, |v| v.len());
            let was = self.dirty.insert(k.to_vec(), Dirty { version: self.version, value });
            if let Some(was) = was {
                self.dirty_bytes -= k.len() + was.value.as_ref().map_or(0, |v| v.len());
            }
        }
        if self.buf.len() > before {
            self.frames.push_back((before, self.buf.len(), keys));
            if self.frames.len() > SUPERSEDE_WINDOW {
                self.frames.pop_front();
            }
        }
    }

    fn drop_superseded(&mut self, keys: &[Vec<u8>]) {
        let covered = |k: &Vec<u8>| keys.contains(k);
        if !self.frames.iter().any(|(_, _, k)| k.iter().all(covered)) {
            return;
        }
        // The window's frames are the end of `buf`, one after the other.
        let Some(&(from, _, _)) = self.frames.front() else { return };
        let tail = self.buf.split_off(from);
        for (start, end, k) in std::mem::take(&mut self.frames) {
            if k.iter().all(covered) {
                continue;
            }
            let at = self.buf.len();
            self.buf.extend_from_slice(&tail[start - from..end - from]);
            self.frames.push_back((at, self.buf.len(), k));
        }
    }

    /// What a commit or checkpoint takes to write.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.frames.clear();
        std::mem::take(&mut self.buf)
    }

    /// The change to `key` not yet in sled, if there is one (`Some(None)`: removed).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<Arc<[u8]>>> {
        self.dirty.get(key).map(|d| d.value.clone())
    }

    /// Bytes of keys and values in `dirty`.
    pub(crate) fn held_bytes(&self) -> usize {
        self.dirty_bytes
    }

    /// Past [`DIRTY_CHECKPOINT_BYTES`] of changes held for sled.
    fn wants_checkpoint(&self) -> bool {
        self.dirty_bytes > DIRTY_CHECKPOINT_BYTES
    }

    /// After a checkpoint put `snapshot` into sled durably: forget the changes it held
    /// that nothing has changed again since.
    fn forget(&mut self, snapshot: &Snapshot) {
        for (k, d) in snapshot {
            if self.dirty.get(k).is_some_and(|now| now.version == d.version) {
                self.dirty.remove(k);
                self.dirty_bytes -= k.len() + d.value.as_ref().map_or(0, |v| v.len());
            }
        }
    }
}

pub(crate) fn lock_pending(p: &Pending) -> std::sync::MutexGuard<'_, PendingLog> {
    // A poisoned lock only means a writer panicked between two plain appends.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sync thread holds no `Db` between requests (each request brings one), so dropping
/// the last `Store` closes the database at once and it can be reopened.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    /// Commits for the sync thread.
    tx: std::sync::mpsc::Sender<(sled::Db, Waiter)>,
    /// Checkpoints for the checkpoint thread (`None`: the log or the changes held for sled
    /// grew past their bound; nobody waits).
    ck_tx: std::sync::mpsc::Sender<(sled::Db, Option<Waiter>)>,
    shared: Arc<Shared>,
}

/// What the sync thread and an inline commit share. Whoever holds `wal` is the one
/// committing: commits never interleave, and the log holds changes in apply order.
struct Shared {
    mark: Arc<Mark>,
    failure: Failure,
    wal: Mutex<Wal>,
    /// sled's directory; the logs live in it too.
    dir: PathBuf,
    pending: Pending,
}

fn lock_wal(w: &Mutex<Wal>) -> std::sync::MutexGuard<'_, Wal> {
    // Poisoned only by a panic between two plain field updates.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// One commit. The first error poisons the store; once poisoned, no more I/O.
    fn commit(&self, wal: &mut Wal) -> Result<(), String> {
        self.poisoning(|| commit(wal, &self.dir, &self.mark, &self.pending, false).map(|_| ()))
    }

    /// A checkpoint's first half, under the log's lock (the sync thread's).
    fn begin_checkpoint(&self, wal: &mut Wal) -> Result<Option<Started>, String> {
        self.poisoning(|| begin_checkpoint(wal, &self.dir, &self.mark, &self.pending))
    }

    /// Its second half, without the log's lock.
    fn finish_checkpoint(&self, db: &sled::Db, started: Started) -> Result<(), String> {
        self.poisoning(|| finish_checkpoint(db, &self.dir, &self.mark, &self.pending, started))
    }

    /// A log past [`CHECKPOINT_BYTES`] (bounds the replay at the next start) or too many
    /// changes held for sled (bounds memory).
    fn wants_checkpoint(&self, wal: &Wal) -> bool {
        wal.wants_checkpoint() || lock_pending(&self.pending).wants_checkpoint()
    }

    fn poisoning<T>(&self, io: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        if let Some(why) = self.failure.get() {
            return Err(why);
        }
        let r = io();
        if let Err(e) = &r {
            self.failure.set(e);
        }
        r
    }
}

impl Wal {
    /// Past [`CHECKPOINT_BYTES`]: a checkpoint bounds the replay at the next start.
    fn wants_checkpoint(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.len > CHECKPOINT_BYTES)
    }
}

/// Set once, at the first store failure; waited on by the agent.
#[derive(Clone, Default)]
pub(crate) struct Failure {
    reason: Arc<std::sync::OnceLock<String>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Failure {
    fn set(&self, why: &str) {
        if self.reason.set(why.to_string()).is_ok() {
            tracing::error!(
                reason = why,
                "store failed: nothing more is acknowledged; the agent stops"
            );
            self.notify.notify_one();
        }
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.reason.get().cloned()
    }
}

impl Syncer {
    pub fn mark(&self) -> &Mark {
        &self.shared.mark
    }

    /// Resolves once the store has failed (with the reason); never before.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(r) = self.shared.failure.get() {
                return r;
            }
            self.shared.failure.notify.notified().await;
        }
    }

    /// The failure, if the store has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get()
    }

    /// The failure flag itself, for a reader that checks it as it goes ([`super::Scan`]).
    pub(crate) fn failure_flag(&self) -> Failure {
        self.shared.failure.clone()
    }

    pub(crate) fn start(
        db: sled::Db,
        // sled's directory; the logs live in it too.
        dir: PathBuf,
        mark: Mark,
        pending: Pending,
        log: LogFile,
    ) -> Syncer {
        let shared = Arc::new(Shared {
            mark: Arc::new(mark),
            failure: Failure::default(),
            wal: Mutex::new(Wal { generation: log.generation, log: Some(log) }),
            dir,
            pending,
        });
        let task = shared.clone();
        let (ck_tx, ck_rx) = std::sync::mpsc::channel::<(sled::Db, Option<Waiter>)>();
        let (tx, rx) = std::sync::mpsc::channel::<(sled::Db, Waiter)>();
        let wants = ck_tx.clone();
        // A thread of its own, not a task + spawn_blocking: a commit is then one hand-off
        // to this thread and one back, instead of four (measured: docs/performance.md).
        // It ends when the last `Store` is dropped (the channel closes).
        let spawned = std::thread::Builder::new().name("posbridge-sync".into()).spawn(move || {
            while let Ok((db, first)) = rx.recv() {
                let mut commits = vec![first];
                while let Ok((_, w)) = rx.try_recv() {
                    commits.push(w);
                }
                let (res, due) = {
                    let mut wal = lock_wal(&task.wal);
                    let res = task.commit(&mut wal);
                    let due = res.is_ok() && task.wants_checkpoint(&wal);
                    (res, due)
                };
                for w in commits {
                    let _ = w.send(res.clone());
                }
                if due {
                    let _ = wants.send((db, None));
                }
            }
        });
        if let Err(e) = spawned {
            // Every commit then fails with "syncer stopped": nothing is acknowledged.
            shared.failure.set(&format!("cannot start the store's sync thread: {e}"));
        }
        // Checkpoints on a thread of their own: putting a flood's changes into sled takes
        // a few hundred ms, and commits handed to the sync thread meanwhile would wait for
        // it (the intake stall of docs/performance.md, sixth measurement). One at a time,
        // in order; commits go on meanwhile, into the fresh log generation.
        let task = shared.clone();
        let spawned = std::thread::Builder::new().name("posbridge-ckpt".into()).spawn(move || {
            while let Ok((db, first)) = ck_rx.recv() {
                // Requests that came while the last one ran: one checkpoint covers them.
                let mut waiters: Vec<Waiter> = first.into_iter().collect();
                while let Ok((_, w)) = ck_rx.try_recv() {
                    waiters.extend(w);
                }
                let started = {
                    let mut wal = lock_wal(&task.wal);
                    // A size trigger that the last checkpoint has already taken care of.
                    if waiters.is_empty() && !task.wants_checkpoint(&wal) {
                        continue;
                    }
                    task.begin_checkpoint(&mut wal)
                };
                let res = match started {
                    Ok(Some(started)) => {
                        let done = task.finish_checkpoint(&db, started);
                        free_deferred();
                        done
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                drop(db);
                for w in waiters {
                    let _ = w.send(res.clone());
                }
            }
        });
        if let Err(e) = spawned {
            shared.failure.set(&format!("cannot start the store's checkpoint thread: {e}"));
        }
        Syncer { db, tx, ck_tx, shared }
    }

    async fn request(&self, send: impl FnOnce(Waiter) -> Result<(), ()>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        send(tx).map_err(|_| StoreError::Sync("syncer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Sync("syncer stopped".into()))?.map_err(StoreError::Sync)
    }

    /// Make every change applied before this call durable.
    ///
    /// When no commit is running, the caller's own thread writes and syncs the log. That
    /// saves the hand-off to the sync thread and back, ~55 µs a commit, a third of the
    /// commit's time (`docs/performance.md`), at the price of blocking one of the
    /// runtime's threads for one `fdatasync`; the caller would have waited for it anyway,
    /// and the runtime's other thread keeps the bus and the other terminals running. At
    /// most one runtime thread is ever blocked so: a caller that finds a commit running
    /// hands its request to the sync thread, whose next commit starts after the call and
    /// so covers the caller's changes (group commit). Checkpoints always run on the sync
    /// thread.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let inline = match self.shared.wal.try_lock() {
            Ok(mut wal) => {
                let res = self.shared.commit(&mut wal);
                Some((res, self.shared.wants_checkpoint(&wal)))
            }
            Err(_) => None,
        };
        match inline {
            Some((res, big)) => {
                if big && res.is_ok() {
                    // Bound the log without making this caller wait for a sled flush.
                    let _ = self.ck_tx.send((self.db.clone(), None));
                }
                res.map_err(StoreError::Sync)
            }
            None => self.commit_on_sync_thread().await,
        }
    }

    /// A commit made by the sync thread (when another commit is running; the store's
    /// tests call it directly).
    pub(super) async fn commit_on_sync_thread(&self) -> Result<(), StoreError> {
        self.request(|w| self.tx.send((self.db.clone(), w)).map_err(|_| ())).await
    }

    /// Make sled durable as of every change applied before this call, and drop the logs
    /// it makes unneeded.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.request(|w| self.ck_tx.send((self.db.clone(), Some(w))).map_err(|_| ())).await
    }
}

/// The sync thread's log: the file being appended to (`None` after a failed append: the
/// next commit starts a new generation, so a partly written record is only ever a file's
/// last bytes) and its generation.
struct Wal {
    log: Option<LogFile>,
    generation: u64,
}

/// Changes taken from `pending` that did not become durable: back in front of the ones
/// applied since, in order.
fn put_back(pending: &Pending, taken: Vec<u8>) {
    let mut p = lock_pending(pending);
    let later = p.take();
    p.buf = taken;
    p.buf.extend_from_slice(&later);
}

/// Append what is pending to the log and `fdatasync` it. With `snapshot`, also returns
/// the changes not yet in sled as of exactly what this commit covers, and the record
/// watermark it made durable (for a checkpoint).
fn commit(
    wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending, snapshot: bool,
) -> Result<Option<(Snapshot, u64)>, String> {
    let Wal { log, generation } = wal;
    // Read the marks under the same lock as the bytes: exactly these changes are covered.
    let (buf, at, upto, outbox_upto, snap) = {
        let mut p = lock_pending(pending);
        let snap = snapshot.then(|| p.dirty.iter().map(|(k, d)| (k.clone(), d.clone())).collect());
        (p.take(), p.framed, mark.noted(), mark.outbox_noted(), snap)
    };
    if !buf.is_empty() {
        let mut write = |log: &mut Option<LogFile>| -> std::io::Result<()> {
            if log.is_none() {
                *generation += 1;
                *log = Some(LogFile::create(dir, *generation)?);
            }
            match log.as_mut() {
                Some(l) => l.append_durably(&buf),
                None => Ok(()),
            }
        };
        let first = write(log);
        let written = match first {
            Ok(()) => Ok(()),
            Err(e) => {
                // The file may now end in a partial record: one retry, into a fresh
                // generation (a bad sector or a file the disk refuses to grow).
                tracing::warn!(error = %e, "store log append failed; retrying once in a fresh log file");
                *log = None;
                write(log)
            }
        };
        if let Err(e) = written {
            // Kept, in order, in front of later changes: never dropped before durable.
            *log = None;
            put_back(pending, buf);
            return Err(format!("store log append: {e}"));
        }
    }
    mark.persist_commit(upto).map_err(|e| format!("store watermark: {e}"))?;
    mark.outbox_synced(outbox_upto);
    mark.log_synced(at);
    Ok(snap.map(|s| (s, upto)))
}

/// A checkpoint between its two halves: the changes it puts into sled, the first log
/// generation written after them, and the record watermark they cover.
pub(crate) struct Started {
    snapshot: Snapshot,
    generation: u64,
    upto: u64,
}

/// A checkpoint's first half, under the log's lock: commit what is pending, take the
/// changes not yet in sled as of that commit, and start a fresh log generation for the
/// changes after them. `None` when nothing changed since the last checkpoint.
fn begin_checkpoint(
    wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending,
) -> Result<Option<Started>, String> {
    let nothing_logged = wal.log.as_ref().is_some_and(|l| l.len == 0);
    {
        let p = lock_pending(pending);
        if nothing_logged && p.buf.is_empty() && p.dirty.is_empty() {
            return Ok(None);
        }
    }
    let (snapshot, upto) = commit(wal, dir, mark, pending, true)?.unwrap_or_default();
    wal.generation += 1;
    let fresh =
        LogFile::create(dir, wal.generation).map_err(|e| format!("store log create: {e}"))?;
    wal.log = Some(fresh);
    Ok(Some(Started { snapshot, generation: wal.generation, upto }))
}

/// A checkpoint's second half, without the log's lock (commits go on meanwhile, into the
/// fresh generation): put the changes into sled, make sled durable (flush + `fdatasync`),
/// then drop the logs before the fresh one and the changes from memory. A crash anywhere
/// in between leaves the older logs, which the next open replays over sled in order.
fn finish_checkpoint(
    db: &sled::Db, dir: &Path, mark: &Mark, pending: &Pending, started: Started,
) -> Result<(), String> {
    let Started { mut snapshot, generation, upto } = started;
    let write = |e: sled::Error| format!("store write: {e}");
    // In the order the changes were made, not in key order: sled's log then holds them in
    // that order too, and a data file cut short by damage loses the newest record first,
    // which the watermark check at open catches (in key order a record's recency entry,
    // under a later prefix, could survive the loss of records written before it).
    snapshot.sort_unstable_by_key(|(_, d)| d.version);
    for (k, d) in &snapshot {
        match &d.value {
            Some(v) => {
                db.insert(&k[..], &*super::packed::pack(k, v)).map_err(write)?;
            }
            // A key sled never had (an outbox entry acknowledged within one checkpoint)
            // costs sled nothing.
            None => {
                if db.contains_key(k).map_err(write)? {
                    db.remove(&k[..]).map_err(write)?;
                }
            }
        }
    }
    crate::faults::hit("store:checkpoint:applied");
    durable_flush(db, dir)?;
    mark.persist_checkpoint(upto).map_err(|e| format!("store watermark: {e}"))?;
    super::wal::retire_before(dir, generation).map_err(|e| format!("store log list: {e}"))?;
    lock_pending(pending).forget(&snapshot);
    Ok(())
}

/// Hand on and collect the frees sled deferred while a checkpoint put its changes in (a
/// copy of a node for each change, through crossbeam-epoch), so they are freed before the
/// trim that follows the checkpoint (`telemetry::release_after_checkpoint`) instead of at
/// some later pin of whichever thread. Each round moves this thread's bag to the global
/// queue, tries to advance the epoch and frees what two epochs have passed; sixteen
/// rounds cost microseconds. With it the 30-minute soak's heap swung 1.20 MiB instead of
/// 2.05 (`docs/performance.md`, sixteenth measurement).
fn free_deferred() {
    for _ in 0..16 {
        crossbeam_epoch::pin().flush();
    }
}

/// sled `flush` (write + `sync_file_range`), then `fdatasync` of the data file (`db` in
/// sled's directory `dir`) so the bytes and the metadata needed to read them survive a
/// power cut. Values too large for a segment live in `blobs/` files, which sled writes
/// without syncing: sync those too.
pub(crate) fn durable_flush(db: &sled::Db, dir: &Path) -> Result<(), String> {
    let data_file = &dir.join("db");
    let blobs_dir = &dir.join("blobs");
    crate::faults::io("sled:flush").map_err(|e| format!("flush: {e}"))?;
    db.flush().map_err(|e| format!("flush: {e}"))?;
    // The flush sealed sled's current log buffer, and sled defers dropping the old one
    // (with the 512 KiB segment buffer it shares) into this thread's crossbeam-epoch bag,
    // which is handed to the global collector only once it holds 64 deferrals. Here that
    // is one checkpoint in 5 s: each bag kept up to 64 segment buffers (32 MiB) alive for
    // five minutes, the RSS sawtooth of the 30-min soak (docs/performance.md). Hand it on
    // now; the buffers are freed once no thread can still read them.
    crossbeam_epoch::pin().flush();
    File::open(data_file)
        .and_then(|f| f.sync_data())
        .map_err(|e| format!("fdatasync {}: {e}", data_file.display()))?;
    if let Ok(entries) = std::fs::read_dir(blobs_dir) {
        for entry in entries.flatten() {
            if let Ok(f) = File::open(entry.path()) {
                f.sync_data().map_err(|e| format!("fdatasync {}: {e}", entry.path().display()))?;
            }
        }
        if let Ok(d) = File::open(blobs_dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
