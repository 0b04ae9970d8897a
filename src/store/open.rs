//! Opening the store with recovery: replay the write-ahead log; a store sled cannot open,
//! whose checksum fails or that lost data behind the watermark is moved aside (never
//! deleted), a fresh one is started, every command id found in the damaged copy is
//! salvaged into it (`salvage.rs`), and money commands are held until an operator
//! acknowledges (`mqtt-api.md`: Durability promise 7).

use std::path::Path;

use super::*;

/// What happened when the store was opened; reported on `status` and in logs.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpenReport {
    /// Where a damaged store was moved to (never deleted) before a fresh one was started.
    pub moved_aside: Option<String>,
    pub error: Option<String>,
    /// Records that could not be decoded (kept in place, reported).
    pub corrupt_records: u64,
    /// Commits replayed from the write-ahead log (changes made since the last
    /// checkpoint, e.g. before a crash or power cut). Logged, not published.
    #[serde(skip)]
    pub replayed_commits: u64,
    /// Command ids salvaged from the damaged copy into the fresh store (this start).
    pub salvaged: Option<u64>,
    /// Money commands are refused until an operator acknowledges the damage
    /// (`posbridge store acknowledge`); kept across restarts until then.
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
                std::fs::rename(path, &aside).map_err(StoreError::io_at(path))?;
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
        let newest = last_seq(&db, RECENT)?;
        if let Some(n) = newest {
            mark.note(n);
        }
        if replayed.records > 0 {
            tracing::info!(commits = replayed.records, "store: replayed the write-ahead log");
        }
        // Start from a durable sled and an empty log: what was replayed is checkpointed
        // now, so the old logs can go. Also makes durable anything sled wrote on its own
        // before a crash, since the pump treats whatever the outbox holds now as durable.
        sync::durable_flush(&db, path).map_err(StoreError::Sync)?;
        mark.persist_checkpoint(newest.unwrap_or(0)).map_err(StoreError::io_at(mark.path()))?;
        let log = wal::LogFile::create(path, last_gen + 1).map_err(StoreError::io_at(path))?;
        wal::retire_before(path, log.generation).map_err(StoreError::io_at(path))?;
        wal::prepare_spare(path, log.generation).map_err(StoreError::io_at(path))?;
        // Whatever the outbox holds at open was read back from disk: durable.
        let last_outbox = last_seq(&db, OUTBOX)?;
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
            hold_on: std::sync::Arc::new(AtomicBool::new(true)),
        };
        report.money_blocked = store.money_hold()?;
        store.hold_on.store(report.money_blocked.is_some(), Ordering::Release);
        for item in store.db.scan_prefix(CMD) {
            let (k, v) = item?;
            if super::packed::record(&k, &v).is_none() {
                report.corrupt_records += 1;
                tracing::error!(key = %String::from_utf8_lossy(&k[2..]), "undecodable command record in store");
            }
        }
        Ok((store, report))
    }

    /// Put what was salvaged into a fresh db, results of the `unknown` ones into the
    /// outbox, and the money hold.
    fn write_salvage(
        db: &sled::Db, found: &salvage::Salvage, aside: &Path, why: &StoreError,
    ) -> Result<MoneyHold, StoreError> {
        let mut seq = 0u64;
        let corrupt = |key: &str, source| StoreError::Corrupt { key: key.to_string(), source };
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
        if !self.hold_on.load(Ordering::Acquire) {
            // As `read` would: nothing is answered from a store that failed.
            self.refuse_after_failure()?;
            return Ok(None);
        }
        match self.read(HOLD)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key: "money hold".into(), source }),
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
            self.hold_on.store(false, Ordering::Release);
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
        std::fs::create_dir_all(path).map_err(StoreError::io_at(path))?;
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            // Durability comes from our write-ahead log and our checkpoints (flush +
            // fdatasync); sled's own periodic flush only adds write amplification.
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
        let db = opened.map_err(StoreError::open_at(path))?;
        // Walks every page: catches a store that opens but is internally inconsistent.
        db.checksum()?;
        Ok(db)
    }
}

/// The sequence number in the last key under `prefix`, if any.
fn last_seq(db: &sled::Db, prefix: &[u8]) -> Result<Option<u64>, StoreError> {
    let last = db.scan_prefix(prefix).next_back().transpose()?;
    Ok(last.and_then(|(k, _)| seq_of(&k)))
}
