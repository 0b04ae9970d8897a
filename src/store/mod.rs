//! The durable store on sled: commands (which double as the idempotency index), their
//! journal of device steps, the result outbox, and a recency index for `list` and resume.
//!
//! Everything lives in one sled tree with key prefixes so that a record and the outbox
//! entry carrying its result are written in one atomic batch.
//!
//! Durability: every change is applied to sled and appended, in the same order, to a
//! write-ahead log (`wal.rs`). [`Store::commit`] writes the log and `fdatasync`s it, once
//! for all concurrent callers (group commit, `sync.rs`); sled itself is made durable
//! (flush + `fdatasync`: its `flush()` alone is only `sync_file_range`, `CRATES.md`) at
//! checkpoints, after which the log is dropped. Open replays the log over sled.

mod inspect;
mod record;
pub mod salvage;
mod sync;
mod wal;

pub use inspect::Inspection;
pub use record::{CmdState, CommandRecord, JournalEntry, OutMsg};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use sync::{lock_pending, Pending, Syncer};
use wal::LoggedBatch;

/// sled's default cache is 1 GiB; a Raspberry Pi wants a few MiB.
pub const CACHE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(sled::Error),
    #[error("the store at {path} is in use by another process (is another posbridge running, or the agent while using `posbridge secret`?)")]
    InUse { path: PathBuf },
    #[error("store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store record {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
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

/// What happened when the store was opened; reported on `status` and in logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpenReport {
    /// Where a damaged store was moved to (never deleted) before a fresh one was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records that could not be decoded (kept in place, reported).
    pub corrupt_records: u64,
    /// Commits replayed from the write-ahead log (changes made since the last
    /// checkpoint, e.g. before a crash or power cut). Logged, not published.
    #[serde(skip)]
    pub replayed_commits: u64,
    /// Command ids salvaged from the damaged copy into the fresh store (this start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salvaged: Option<u64>,
    /// Money commands are refused until an operator acknowledges the damage
    /// (`posbridge store acknowledge`); kept across restarts until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub money_blocked: Option<MoneyHold>,
}

/// Why money commands are refused: a store was found damaged and not everything it held
/// can be proven salvaged. Lifted only by an operator (`posbridge store acknowledge`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoneyHold {
    /// When the damage was found.
    pub since: String,
    /// Where the damaged copy was moved.
    pub moved_aside: String,
    /// What failed at open.
    pub error: String,
    /// Command ids salvaged, and how many of them as `unknown`.
    pub salvaged: u64,
    pub salvaged_unknown: u64,
    /// Files of the damaged copy that could not be searched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_not_searched: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    syncer: Syncer,
    path: PathBuf,
    /// Changes not yet in the log. Its lock also orders writers: outbox sequence numbers
    /// must become visible in order (the pump reads forward from a cursor, so an entry
    /// with a lower seq landing after a higher one would be skipped until the next
    /// reconnect), and the log must hold changes in the order sled applied them.
    pending: Pending,
    /// The last sequence number handed out (records and outbox entries share it).
    seq: std::sync::Arc<AtomicU64>,
}

const CMD: &[u8] = b"c\0";
const RECENT: &[u8] = b"r\0";
const OUTBOX: &[u8] = b"o\0";
const SECRET: &[u8] = b"s\0";
/// The money hold after store damage (one key).
const HOLD: &[u8] = b"m\0money_hold";

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

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

/// Errors that mean the files are damaged (move aside and start fresh), as opposed to
/// errors of the environment (permissions, a second process holding the lock, a full
/// disk), which must stop the agent with a clear message instead.
fn is_damage(e: &StoreError) -> bool {
    use std::io::ErrorKind;
    match e {
        StoreError::Sled(sled::Error::Corruption { .. }) => true,
        StoreError::Sled(sled::Error::Unsupported(_)) => true,
        StoreError::Sled(sled::Error::ReportableBug(_)) => true,
        StoreError::Panicked(_) | StoreError::LostData { .. } | StoreError::LogDamaged { .. } => {
            true
        }
        StoreError::Sled(sled::Error::Io(io)) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

/// For the command-line tools that open the store (`secret set`, `kaspi register`, `store
/// acknowledge`): run as root on a store that belongs to the agent's user, they would
/// leave root-owned files the agent cannot open. Refuse, and say how to run them.
pub fn refuse_root_on_foreign_store(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if me != 0 {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() != 0 => Err(format!(
            "{} belongs to uid {}, the agent's user; run this as that user (`sudo -u posbridge posbridge …`): files written as root would lock the agent out of its store",
            dir.display(),
            m.uid()
        )),
        _ => Ok(()),
    }
}

impl Store {
    /// Open (or create) the store under `dir` (`store.path`); sled's files live in
    /// `dir/sled`, beside the device key. A store that sled cannot open, or whose checksum
    /// fails, is renamed to `dir/sled.damaged-<timestamp>` and a fresh one is started; the
    /// report says so.
    pub fn open(dir: &Path) -> Result<(Store, OpenReport), StoreError> {
        let path = &dir.join("sled");
        let mark = Mark::new(dir.join("sled.mark"));
        let mut report = OpenReport::default();
        let opened = Self::try_open(path).and_then(|db| {
            mark.check_checkpoint(&db)?;
            let (replayed, last_gen) = wal::replay(&db, path)?;
            mark.check_commit(&db)?;
            Ok((db, replayed, last_gen))
        });
        let (db, replayed, last_gen) = match opened {
            Ok(o) => o,
            Err(e) if !is_damage(&e) => return Err(e),
            Err(e) => {
                let aside = PathBuf::from(format!(
                    "{}.damaged-{}",
                    path.display(),
                    chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
                ));
                tracing::error!(store = %path.display(), moved_to = %aside.display(), error = %e,
                    "store could not be opened; moving it aside and starting a fresh one — reconcile commands from the damaged copy");
                std::fs::rename(path, &aside).map_err(|source| StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                let _ = std::fs::rename(mark.path(), format!("{}.mark", aside.display()));
                report.moved_aside = Some(aside.display().to_string());
                report.error = Some(e.to_string());
                let db = Self::try_open(path)?;
                // Never forget an id: what the damaged copy still shows goes into the
                // fresh store (made durable with the flush below), and money commands
                // wait for an operator.
                let found = salvage::salvage(&aside, &aside.display().to_string());
                let hold = Self::write_salvage(&db, &found, &aside, &e)?;
                tracing::error!(salvaged = hold.salvaged, as_unknown = hold.salvaged_unknown,
                    not_searched = hold.files_not_searched.len(),
                    "store damage: command ids salvaged from the damaged copy; money commands are refused until `posbridge store acknowledge`");
                report.salvaged = Some(hold.salvaged);
                (db, wal::Replayed::default(), 0)
            }
        };
        report.replayed_commits = replayed.records;
        let newest = db
            .scan_prefix(RECENT)
            .next_back()
            .transpose()?
            .and_then(|(k, _)| seq_of(&k));
        if let Some(n) = newest {
            mark.note(n);
        }
        if replayed.records > 0 {
            tracing::info!(
                commits = replayed.records,
                "store: replayed the write-ahead log"
            );
        }
        // Start from a durable sled and an empty log: what was replayed is checkpointed
        // now, so the old logs can go. Also makes durable anything sled wrote on its own
        // before a crash, since the pump treats whatever the outbox holds now as durable.
        sync::durable_flush(&db, path).map_err(StoreError::Sync)?;
        mark.persist_checkpoint(newest.unwrap_or(0))
            .map_err(|source| StoreError::Io {
                path: mark.path().to_path_buf(),
                source,
            })?;
        let log = wal::LogFile::create(path, last_gen + 1).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        wal::remove_before(path, log.generation).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Whatever the outbox holds at open was read back from disk: durable.
        let last_outbox = db
            .scan_prefix(OUTBOX)
            .next_back()
            .transpose()?
            .and_then(|(k, _)| seq_of(&k));
        if let Some(last) = last_outbox {
            mark.note_outbox(last);
            mark.outbox_synced(last);
        }
        // Sequence numbers continue above everything the store holds. sled's own id
        // generator only knows what sled persisted, not what the log replayed.
        let seq_start = newest.unwrap_or(0).max(last_outbox.unwrap_or(0));
        let pending = Pending::default();
        let syncer = Syncer::start(db.clone(), path.to_path_buf(), mark, pending.clone(), log);
        let store = Store {
            db,
            syncer,
            path: path.to_path_buf(),
            pending,
            seq: std::sync::Arc::new(AtomicU64::new(seq_start)),
        };
        report.money_blocked = store.money_hold()?;
        for item in store.db.scan_prefix(CMD) {
            let (k, v) = item?;
            if serde_json::from_slice::<CommandRecord>(&v).is_err() {
                report.corrupt_records += 1;
                tracing::error!(key = %String::from_utf8_lossy(&k[2..]), "undecodable command record in store");
            }
        }
        Ok((store, report))
    }

    /// Put what was salvaged into a fresh db, results of the `unknown` ones into the
    /// outbox, and the money hold.
    fn write_salvage(
        db: &sled::Db,
        found: &salvage::Salvage,
        aside: &Path,
        why: &StoreError,
    ) -> Result<MoneyHold, StoreError> {
        let mut seq = 0u64;
        let corrupt = |key: &str, source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        };
        for r in &found.records {
            seq += 1;
            let mut r = r.clone();
            r.seq = seq;
            let v = serde_json::to_vec(&r).map_err(|e| corrupt(&r.cmd.id, e))?;
            db.insert(key(CMD, r.cmd.id.as_bytes()), v)?;
            db.insert(seq_key(RECENT, seq), r.cmd.id.as_bytes())?;
            // Every salvaged result is published (again): whether the broker took it before
            // the damage cannot be known, and consumers dedupe by id.
            if let Some(res) = &r.result {
                seq += 1;
                let m =
                    serde_json::to_vec(&OutMsg::result(res)).map_err(|e| corrupt("outbox", e))?;
                db.insert(seq_key(OUTBOX, seq), m)?;
            }
        }
        let hold = MoneyHold {
            since: crate::api::ts(chrono::Utc::now()),
            moved_aside: aside.display().to_string(),
            error: why.to_string(),
            salvaged: found.records.len() as u64,
            salvaged_unknown: found.unknown.len() as u64,
            files_not_searched: found.files_skipped.clone(),
        };
        let v = serde_json::to_vec(&hold).map_err(|e| corrupt("money hold", e))?;
        db.insert(HOLD, v)?;
        Ok(hold)
    }

    /// The money hold after store damage, if an operator has not lifted it yet.
    pub fn money_hold(&self) -> Result<Option<MoneyHold>, StoreError> {
        match self.db.get(HOLD)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: "money hold".into(),
                    source,
                }),
        }
    }

    /// Lift the money hold (`posbridge store acknowledge`); durable when this returns.
    pub async fn lift_money_hold(&self) -> Result<Option<MoneyHold>, StoreError> {
        let hold = self.money_hold()?;
        if hold.is_some() {
            let mut b = LoggedBatch::default();
            b.remove(HOLD);
            self.apply(b)?;
            self.commit().await?;
        }
        Ok(hold)
    }

    fn try_open(path: &Path) -> Result<sled::Db, StoreError> {
        // A handle to this store dropped a moment ago in this process may still hold sled's
        // lock while sled's I/O threads write out its last buffers: wait for that briefly.
        // Another process holding it (a running agent) is still reported, after the wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Self::try_open_once(path) {
                Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open_once(path: &Path) -> Result<sled::Db, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            // We flush and fdatasync ourselves before every acknowledgement; sled's own
            // periodic flush only adds write amplification.
            .flush_every_ms(None);
        // sled 0.34 panics on some garbled files instead of returning an error.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                StoreError::Panicked(msg)
            })?;
        let db = opened.map_err(|e| match e {
            // sled reports the flock failure as a custom io error (kind Other).
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::InUse {
                    path: path.to_path_buf(),
                }
            }
            other => StoreError::Sled(other),
        })?;
        // Walks every page: catches a store that opens but is internally inconsistent.
        db.checksum()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make every write issued before this call durable (log write + fdatasync).
    /// Concurrent callers share one sync.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.syncer.sync().await
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
        let mut p = lock_pending(&self.pending);
        b.frame_into(&mut p);
        b.apply_to(&self.db)?;
        Ok(())
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn get(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        match self.db.get(key(CMD, id.as_bytes()))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: id.to_string(),
                    source,
                }),
        }
    }

    /// Write records and outbox messages atomically (one sled batch). Not yet durable:
    /// call [`Store::commit`] before acting on it.
    pub fn write(&self, records: &[&CommandRecord], outbox: &[OutMsg]) -> Result<(), StoreError> {
        self.refuse_after_failure()?;
        let mut batch = LoggedBatch::default();
        for r in records {
            let v = serde_json::to_vec(r).map_err(|source| StoreError::Corrupt {
                key: r.cmd.id.clone(),
                source,
            })?;
            batch.insert(&key(CMD, r.cmd.id.as_bytes()), &v);
            batch.insert(&seq_key(RECENT, r.seq), r.cmd.id.as_bytes());
        }
        let outbox: Vec<Vec<u8>> = outbox
            .iter()
            .map(|m| {
                serde_json::to_vec(m).map_err(|source| StoreError::Corrupt {
                    key: "outbox".into(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let mut p = lock_pending(&self.pending);
        let mut max_outbox = 0;
        for v in &outbox {
            let seq = self.next_seq()?;
            max_outbox = seq;
            batch.insert(&seq_key(OUTBOX, seq), v);
        }
        batch.frame_into(&mut p);
        if records.is_empty() || outbox.is_empty() {
            batch.apply_to(&self.db)?;
        } else {
            batch.apply_atomically(&self.db)?;
        }
        // Only after the batch is applied: a sync that reads these marks covers the batch.
        if let Some(max) = records.iter().map(|r| r.seq).max() {
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
        for item in self
            .db
            .range(seq_key(OUTBOX, from)..=seq_key(OUTBOX, durable))
            .take(limit)
        {
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

    /// The broker acknowledged this outbox entry. Not synced: a lost delete only means the
    /// result is delivered again, which the contract allows (at least once).
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        let mut b = LoggedBatch::default();
        b.remove(&seq_key(OUTBOX, seq));
        self.apply(b)
    }

    pub fn outbox_len(&self) -> usize {
        self.db.scan_prefix(OUTBOX).count()
    }

    /// Records newest first (by arrival order), for `list` and resume.
    pub fn recent(&self) -> impl Iterator<Item = Result<CommandRecord, StoreError>> + '_ {
        self.db.scan_prefix(RECENT).rev().filter_map(move |item| {
            let (_, id) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
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
        for item in self.db.scan_prefix(CMD) {
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

    /// Store an already-encrypted secret (see `crate::secrets`). Not yet durable.
    pub fn put_secret(&self, terminal: &str, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let mut b = LoggedBatch::default();
        b.insert(&secret_key(terminal, name), sealed);
        self.apply(b)
    }

    pub fn get_secret(&self, terminal: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(secret_key(terminal, name))?.map(|v| v.to_vec()))
    }

    /// Delete finished records that finished before `before`, oldest first, at most
    /// `limit`. The newest record is always kept (the watermark points at it). Returns how
    /// many were deleted. Not synced: a prune lost in a crash simply happens again.
    pub fn prune(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let newest = self
            .db
            .scan_prefix(RECENT)
            .next_back()
            .transpose()?
            .and_then(|(k, _)| seq_of(&k));
        let mut deleted = 0;
        for item in self.db.scan_prefix(RECENT) {
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
                    r.state.is_final()
                        && r.expires_at < chrono::Utc::now()
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
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl Mark {
    fn new(path: PathBuf) -> Mark {
        Mark {
            path,
            noted: Default::default(),
            written: Default::default(),
            checkpointed: Default::default(),
            outbox_noted: Default::default(),
            outbox_durable: Default::default(),
            file: Default::default(),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// (commit, checkpoint). A mark of 8 bytes is from before the log existed, when
    /// every commit was a sled checkpoint: both values are that one.
    fn read(&self) -> (u64, u64) {
        let b = std::fs::read(&self.path).unwrap_or_default();
        let at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes)
        };
        match (at(0), at(8)) {
            (Some(c), Some(k)) => (c, k),
            (Some(c), None) => (c, c),
            _ => (0, 0),
        }
    }

    /// Before the log is replayed: sled alone must hold the checkpointed record.
    fn check_checkpoint(&self, db: &sled::Db) -> Result<(), StoreError> {
        let (commit, checkpoint) = self.read();
        self.written.store(commit, Ordering::Relaxed);
        self.checkpointed.store(checkpoint, Ordering::Relaxed);
        if checkpoint > 0 && !db.contains_key(seq_key(RECENT, checkpoint))? {
            return Err(StoreError::LostData {
                expected: checkpoint,
            });
        }
        Ok(())
    }

    /// After the log is replayed: the newest committed record must be there.
    fn check_commit(&self, db: &sled::Db) -> Result<(), StoreError> {
        let (commit, _) = self.read();
        if commit > 0 && !db.contains_key(seq_key(RECENT, commit))? {
            return Err(StoreError::LostData { expected: commit });
        }
        Ok(())
    }

    /// A record with this seq was written (not yet durable).
    fn note(&self, seq: u64) {
        self.noted.fetch_max(seq, Ordering::Relaxed);
    }

    fn write_file(&self) -> std::io::Result<()> {
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

    fn note_outbox(&self, seq: u64) {
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

    fn outbox_durable(&self) -> u64 {
        self.outbox_durable.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
