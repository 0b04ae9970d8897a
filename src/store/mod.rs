//! The durable store on sled: commands (which double as the idempotency index), their
//! journal of device steps, the result outbox, and a recency index for `list` and resume.
//!
//! Everything lives in one sled tree with key prefixes so that a record and the outbox
//! entry carrying its result are written in one atomic batch.
//!
//! Durability: sled's `flush()` only issues `sync_file_range`, which does not survive a
//! power cut (`CRATES.md`). [`Store::commit`] therefore follows every flush with an
//! `fdatasync` of sled's data file, and coalesces concurrent callers into one sync
//! (group commit) — see `sync.rs`.

mod inspect;
mod record;
mod sync;

pub use inspect::Inspection;
pub use record::{CmdState, CommandRecord, JournalEntry, OutMsg};

use std::path::{Path, PathBuf};

use thiserror::Error;

use sync::Syncer;

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
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    syncer: Syncer,
    path: PathBuf,
    /// Outbox sequence numbers must become visible in order: the pump reads forward from
    /// a cursor, so an entry with a lower seq landing after a higher one would be skipped
    /// until the next reconnect. Allocation and apply happen under this lock.
    write_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

const CMD: &[u8] = b"c\0";
const RECENT: &[u8] = b"r\0";
const OUTBOX: &[u8] = b"o\0";
const SECRET: &[u8] = b"s\0";

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
        StoreError::Sled(sled::Error::Io(io)) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

impl Store {
    /// Open (or create) the store under `dir` (`store.path`); sled's files live in
    /// `dir/sled`, beside the device key. A store that sled cannot open, or whose checksum
    /// fails, is renamed to `dir/sled.damaged-<timestamp>` and a fresh one is started; the
    /// report says so. Must be called inside a tokio runtime (the syncer is a task).
    pub fn open(dir: &Path) -> Result<(Store, OpenReport), StoreError> {
        let path = &dir.join("sled");
        let mut report = OpenReport::default();
        let db = match Self::try_open(path) {
            Ok(db) => db,
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
                report.moved_aside = Some(aside.display().to_string());
                report.error = Some(e.to_string());
                Self::try_open(path)?
            }
        };
        let data_file = path.join("db");
        let syncer = Syncer::start(db.clone(), data_file, path.join("blobs"));
        let store = Store {
            db,
            syncer,
            path: path.to_path_buf(),
            write_lock: Default::default(),
        };
        for item in store.db.scan_prefix(CMD) {
            let (k, v) = item?;
            if serde_json::from_slice::<CommandRecord>(&v).is_err() {
                report.corrupt_records += 1;
                tracing::error!(key = %String::from_utf8_lossy(&k[2..]), "undecodable command record in store");
            }
        }
        Ok((store, report))
    }

    fn try_open(path: &Path) -> Result<sled::Db, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            // We flush and fdatasync ourselves before every acknowledgement; sled's own
            // periodic flush only adds write amplification.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
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

    /// Make every write issued before this call durable (flush + fdatasync). Concurrent
    /// callers share one sync.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.syncer.sync().await
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
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
        let mut batch = sled::Batch::default();
        for r in records {
            let v = serde_json::to_vec(r).map_err(|source| StoreError::Corrupt {
                key: r.cmd.id.clone(),
                source,
            })?;
            batch.insert(key(CMD, r.cmd.id.as_bytes()), v);
            batch.insert(seq_key(RECENT, r.seq), r.cmd.id.as_bytes());
        }
        let _g = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        for m in outbox {
            let seq = self.next_seq()?;
            let v = serde_json::to_vec(m).map_err(|source| StoreError::Corrupt {
                key: format!("outbox/{seq}"),
                source,
            })?;
            batch.insert(seq_key(OUTBOX, seq), v);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Outbox entries with seq ≥ `from`, oldest first, at most `limit`.
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, OutMsg)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .range(seq_key(OUTBOX, from)..seq_key(OUTBOX, u64::MAX))
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
        self.db.remove(seq_key(OUTBOX, seq))?;
        Ok(())
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
        self.db.insert(secret_key(terminal, name), sealed)?;
        Ok(())
    }

    pub fn get_secret(&self, terminal: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(secret_key(terminal, name))?.map(|v| v.to_vec()))
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
