//! Group commit over the write-ahead log (`wal.rs`): one `write` + `fdatasync` of the log
//! covers every change applied before the commit started. A caller registers *after* its
//! write and is answered only by a commit that began after it registered, so no
//! acknowledgement can run ahead of the sync covering it. Checkpoints (sled made durable,
//! then the log dropped) run in the same task, so they never interleave with a commit.
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
pub(crate) type Pending = Arc<Mutex<Vec<u8>>>;

pub(crate) fn lock_pending(p: &Pending) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A poisoned lock only means a writer panicked between two plain appends.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sync thread holds no `Db` between requests (each request brings one), so dropping
/// the last `Store` closes the database at once and it can be reopened.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    mark: Arc<Mark>,
    tx: std::sync::mpsc::Sender<(sled::Db, Req)>,
    failure: Failure,
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
        &self.mark
    }

    /// Resolves once the store has failed (with the reason); never before.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(r) = self.failure.get() {
                return r;
            }
            self.failure.notify.notified().await;
        }
    }

    /// Fail the store from outside the sync thread: sled itself could not write (it
    /// writes its buffers on its own, and after such an error its state is unknown).
    pub(crate) fn fail(&self, why: &str) {
        self.failure.set(why);
    }

    /// The failure, if the store has failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.get()
    }

    pub(crate) fn start(
        db: sled::Db,
        // sled's directory; the logs live in it too.
        dir: PathBuf,
        mark: Mark,
        pending: Pending,
        log: LogFile,
    ) -> Syncer {
        let mark = Arc::new(mark);
        let task_mark = mark.clone();
        let failure = Failure::default();
        let task_failure = failure.clone();
        let (tx, rx) = std::sync::mpsc::channel::<(sled::Db, Req)>();
        // A thread of its own, not a task + spawn_blocking: a commit is then one hand-off
        // to this thread and one back, instead of four (measured: docs/performance.md).
        // It ends when the last `Store` is dropped (the channel closes).
        let spawned = std::thread::Builder::new().name("posbridge-sync".into()).spawn(move || {
            let mark = task_mark;
            let failure = task_failure;
            let mut wal = Wal { generation: log.generation, log: Some(log) };
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
                let (res, cp) = match failure.get() {
                    // Poisoned: no more I/O, every request fails.
                    Some(why) => (Err(why.clone()), Err(why)),
                    None => {
                        let res = commit(&mut wal, &dir, &mark, &pending);
                        let big = wal.log.as_ref().is_some_and(|l| l.len > CHECKPOINT_BYTES);
                        let cp = if res.is_ok() && (!checkpoints.is_empty() || big) {
                            checkpoint(&db, &mut wal, &dir, &mark, &pending)
                        } else {
                            Ok(())
                        };
                        if let Err(e) = res.as_ref().and(cp.as_ref()) {
                            failure.set(e);
                        }
                        (res, cp)
                    }
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
            failure.set(&format!("cannot start the store's sync thread: {e}"));
        }
        Syncer { db, mark, tx, failure }
    }

    async fn request(&self, make: impl FnOnce(Waiter) -> Req) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.db.clone(), make(tx)))
            .map_err(|_| StoreError::Sync("syncer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Sync("syncer stopped".into()))?.map_err(StoreError::Sync)
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        self.request(Req::Commit).await
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
    let later = std::mem::replace(&mut *p, taken);
    p.extend_from_slice(&later);
}

/// Append what is pending to the log and `fdatasync` it.
fn commit(wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending) -> Result<(), String> {
    let Wal { log, generation } = wal;
    // Read the marks under the same lock as the bytes: exactly these changes are covered.
    let (buf, upto, outbox_upto) = {
        let mut p = lock_pending(pending);
        (std::mem::take(&mut *p), mark.noted(), mark.outbox_noted())
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
    mark.outbox_synced(outbox_upto);
    mark.persist_commit(upto).map_err(|e| format!("store watermark: {e}"))
}

/// Make sled durable (flush + `fdatasync`), then drop every log older than a fresh one.
fn checkpoint(
    db: &sled::Db, wal: &mut Wal, dir: &Path, mark: &Mark, pending: &Pending,
) -> Result<(), String> {
    let Wal { log, generation } = wal;
    let nothing_logged = log.as_ref().is_some_and(|l| l.len == 0);
    let (taken, upto, outbox_upto) = {
        let mut p = lock_pending(pending);
        if nothing_logged && p.is_empty() {
            return Ok(());
        }
        // Everything applied so far is in sled's memory and covered by the flush below;
        // kept until that flush is durable.
        (std::mem::take(&mut *p), mark.noted(), mark.outbox_noted())
    };
    if let Err(e) = durable_flush(db, dir) {
        // Not durable anywhere yet: back in front of later changes, for the log.
        put_back(pending, taken);
        return Err(e);
    }
    mark.outbox_synced(outbox_upto);
    mark.persist_checkpoint(upto).map_err(|e| format!("store watermark: {e}"))?;
    *generation += 1;
    let fresh = LogFile::create(dir, *generation).map_err(|e| format!("store log create: {e}"))?;
    *log = Some(fresh);
    super::wal::remove_before(dir, *generation).map_err(|e| format!("store log list: {e}"))
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
