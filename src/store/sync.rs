//! Group commit over the write-ahead log (`wal.rs`): one `write` + `fdatasync` of the log
//! covers every change applied before the commit started. A caller registers *after* its
//! write and is answered only by a commit that began after it registered, so no
//! acknowledgement can run ahead of the sync covering it. A commit runs on the caller's
//! own thread when no other is running, else on the sync thread (`Syncer::sync`); the
//! log's lock keeps them from interleaving. Checkpoints (sled made durable, then the log
//! dropped) run on the sync thread under the same lock.
//!
//! Fail-stop (`mqtt-api.md`: Durability promise 8): after a failed `fdatasync` the page
//! cache cannot be trusted (PostgreSQL's "fsyncgate"), so the first store I/O error that
//! survives one retry on a fresh log file poisons the syncer: that commit and every later
//! one fail, nothing more is acknowledged, no log generation is deleted any more, and the
//! agent, told through [`Syncer::failed`], stops and exits non-zero so that a restart
//! replays the log from disk.

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

enum Req {
    Commit(Waiter),
    /// Make sled durable and drop the log, if there is anything to drop.
    Checkpoint(Waiter),
}

/// Changes applied to sled but not yet in the log, in apply order. Writers append under
/// this lock while they apply their batch, so the log's order is sled's order.
pub(crate) type Pending = Arc<Mutex<PendingLog>>;

#[derive(Default)]
pub(crate) struct PendingLog {
    /// Framed changes not yet taken by a commit.
    pub(crate) buf: Vec<u8>,
    /// Bytes ever framed: the log position a commit that takes `buf` now makes durable
    /// ([`super::Store::log_position`]).
    pub(crate) framed: u64,
    /// Ended records waiting for the outbox entry that carries them to be durable
    /// (`Store::write`), oldest first.
    pub(crate) finals: Vec<Finals>,
    /// Outbox entries the broker has acknowledged, deleted at the next checkpoint
    /// (`Store::outbox_remove`).
    pub(crate) acked: std::collections::BTreeSet<u64>,
    /// The last frames in `buf`: where each starts and ends, and the keys it writes.
    frames: std::collections::VecDeque<(usize, usize, Vec<Vec<u8>>)>,
}

/// How far back a new frame looks for frames it makes obsolete (a record's steps follow
/// each other closely; a flood of distinct commands must not make framing quadratic).
const SUPERSEDE_WINDOW: usize = 8;

/// Ended records to put into sled once the log is durable up to `after`.
pub(crate) struct Finals {
    pub(crate) after: u64,
    /// (key, value) pairs: each record and its recency entry.
    pub(crate) writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// The highest record seq among them (for the watermark, once they are in).
    pub(crate) seq: u64,
}

impl PendingLog {
    /// Append `b` as a frame. What it makes obsolete goes first: the keys `b` writes, and
    /// `also`, keys whose newer version `b` carries inside a value (an outbox entry with
    /// the records it ends).
    /// - Earlier frames not yet taken by a commit that wrote only such keys: the same
    ///   commit makes `b` durable, their values are never read back from the log, and a
    ///   commit cut short acknowledges nothing. So a record written at intake, at
    ///   `started` and at its sending step costs one frame in that commit, not three.
    /// - Versions of those keys among the ended records still waiting to go in: older,
    ///   they must not land on top of `b`'s (nor be read instead of it).
    pub(crate) fn frame(&mut self, b: &super::wal::LoggedBatch, also: &[&[u8]]) {
        let keys: Vec<Vec<u8>> = b.keys().map(<[u8]>::to_vec).collect();
        self.drop_superseded(&keys, also);
        for f in &mut self.finals {
            f.writes.retain(|(k, _)| !keys.contains(k) && !also.contains(&&k[..]));
        }
        let before = self.buf.len();
        b.frame_into(&mut self.buf);
        self.framed += (self.buf.len() - before) as u64;
        if self.buf.len() > before {
            self.frames.push_back((before, self.buf.len(), keys));
            if self.frames.len() > SUPERSEDE_WINDOW {
                self.frames.pop_front();
            }
        }
    }

    fn drop_superseded(&mut self, keys: &[Vec<u8>], also: &[&[u8]]) {
        let covered = |k: &Vec<u8>| keys.contains(k) || also.contains(&&k[..]);
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

    /// The value `key` has among the ended records waiting to go in, if it has one.
    pub(crate) fn final_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.finals
            .iter()
            .rev()
            .flat_map(|f| f.writes.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| &v[..])
    }
}

/// Put into sled the ended records whose outbox entry is now durable (the log holds it up
/// to `durable`). Called right after a commit or checkpoint, before its callers are
/// answered and before the pump may read the entry: whoever learns of a result also
/// finds its record ended. Not logged again: the entry in the log carries them, and a
/// store opened after a crash puts them in from it (`open.rs`); the entry is deleted only
/// after a checkpoint's flush has made them durable in sled.
fn put_finals(db: &sled::Db, mark: &Mark, pending: &Pending, durable: u64) -> Result<(), String> {
    let mut p = lock_pending(pending);
    let due = p.finals.iter().take_while(|f| f.after <= durable).count();
    if due == 0 {
        return Ok(());
    }
    crate::faults::hit("store:finals:before");
    for f in p.finals.drain(..due) {
        for (k, v) in f.writes {
            db.insert(k, v).map_err(|e| format!("store write: {e}"))?;
        }
        mark.note(f.seq);
    }
    Ok(())
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
    tx: std::sync::mpsc::Sender<(sled::Db, Req)>,
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
    fn commit(&self, db: &sled::Db, wal: &mut Wal) -> Result<(), String> {
        self.poisoning(|| commit(db, wal, &self.dir, &self.mark, &self.pending))
    }

    /// A checkpoint (the sync thread's). The first error poisons the store.
    fn checkpoint(&self, db: &sled::Db, wal: &mut Wal) -> Result<(), String> {
        self.poisoning(|| checkpoint(db, wal, &self.dir, &self.mark, &self.pending))
    }

    fn poisoning(&self, io: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
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

    fn get(&self) -> Option<String> {
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

    /// Fail the store from outside the sync thread: sled itself could not write (it
    /// writes its buffers on its own, and after such an error its state is unknown).
    pub(crate) fn fail(&self, why: &str) {
        self.shared.failure.set(why);
    }

    /// The failure, if the store has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get()
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
        let (tx, rx) = std::sync::mpsc::channel::<(sled::Db, Req)>();
        // A thread of its own, not a task + spawn_blocking: a commit is then one hand-off
        // to this thread and one back, instead of four (measured: docs/performance.md).
        // It ends when the last `Store` is dropped (the channel closes).
        let spawned = std::thread::Builder::new().name("posbridge-sync".into()).spawn(move || {
            while let Ok((db, first)) = rx.recv() {
                let mut commits = Vec::new();
                let mut checkpoints = Vec::new();
                let mut route = |r: Req| match r {
                    Req::Commit(w) => commits.push(w),
                    Req::Checkpoint(w) => checkpoints.push(w),
                };
                route(first);
                while let Ok((_, r)) = rx.try_recv() {
                    route(r);
                }
                let (res, cp) = {
                    let mut wal = lock_wal(&task.wal);
                    let res = task.commit(&db, &mut wal);
                    let due = !checkpoints.is_empty() || wal.wants_checkpoint();
                    let cp = match &res {
                        Ok(()) if due => task.checkpoint(&db, &mut wal),
                        _ => Ok(()),
                    };
                    (res, cp)
                };
                drop(db);
                for w in commits {
                    let _ = w.send(res.clone());
                }
                for w in checkpoints {
                    let _ = w.send(res.clone().and(cp.clone()));
                }
            }
        });
        if let Err(e) = spawned {
            // Every commit then fails with "syncer stopped": nothing is acknowledged.
            shared.failure.set(&format!("cannot start the store's sync thread: {e}"));
        }
        Syncer { db, tx, shared }
    }

    async fn request(&self, make: impl FnOnce(Waiter) -> Req) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.db.clone(), make(tx)))
            .map_err(|_| StoreError::Sync("syncer stopped".into()))?;
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
                let res = self.shared.commit(&self.db, &mut wal);
                Some((res, wal.wants_checkpoint()))
            }
            Err(_) => None,
        };
        match inline {
            Some((res, big)) => {
                if big && res.is_ok() {
                    // Bound the log without making this caller wait for a sled flush.
                    let (tx, _) = oneshot::channel();
                    let _ = self.tx.send((self.db.clone(), Req::Checkpoint(tx)));
                }
                res.map_err(StoreError::Sync)
            }
            None => self.request(Req::Commit).await,
        }
    }

    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.request(Req::Checkpoint).await
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

/// Append what is pending to the log and `fdatasync` it; then put in the ended records
/// whose outbox entries it made durable.
fn commit(
    db: &sled::Db, wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending,
) -> Result<(), String> {
    let Wal { log, generation } = wal;
    // Read the marks under the same lock as the bytes: exactly these changes are covered.
    let (buf, at, upto, outbox_upto) = {
        let mut p = lock_pending(pending);
        (p.take(), p.framed, mark.noted(), mark.outbox_noted())
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
    put_finals(db, mark, pending, at)?;
    mark.outbox_synced(outbox_upto);
    mark.log_synced(at);
    Ok(())
}

/// Make sled durable (flush + `fdatasync`), then drop every log older than a fresh one.
/// Then delete the outbox entries the broker had acknowledged before the flush (their
/// ended records are now durable in sled), and commit that.
fn checkpoint(
    db: &sled::Db, wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending,
) -> Result<(), String> {
    let nothing_logged = wal.log.as_ref().is_some_and(|l| l.len == 0);
    let (taken, at, upto, outbox_upto, acked) = {
        let mut p = lock_pending(pending);
        if nothing_logged && p.buf.is_empty() && p.acked.is_empty() {
            return Ok(());
        }
        // Everything applied so far is in sled's memory and covered by the flush below;
        // kept until that flush is durable.
        let acked: Vec<u64> = p.acked.iter().copied().collect();
        (p.take(), p.framed, mark.noted(), mark.outbox_noted(), acked)
    };
    if let Err(e) = durable_flush(db, dir) {
        // Not durable anywhere yet: back in front of later changes, for the log.
        put_back(pending, taken);
        return Err(e);
    }
    mark.persist_checkpoint(upto).map_err(|e| format!("store watermark: {e}"))?;
    wal.generation += 1;
    let fresh =
        LogFile::create(dir, wal.generation).map_err(|e| format!("store log create: {e}"))?;
    wal.log = Some(fresh);
    super::wal::remove_before(dir, wal.generation).map_err(|e| format!("store log list: {e}"))?;
    put_finals(db, mark, pending, at)?;
    mark.outbox_synced(outbox_upto);
    mark.log_synced(at);
    if acked.is_empty() {
        return Ok(());
    }
    {
        let mut p = lock_pending(pending);
        let mut b = super::wal::LoggedBatch::default();
        for seq in &acked {
            p.acked.remove(seq);
            b.remove(&super::seq_key(super::OUTBOX, *seq));
        }
        p.frame(&b, &[]);
        b.apply_to(db).map_err(|e| format!("store write: {e}"))?;
    }
    commit(db, wal, dir, mark, pending)
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
