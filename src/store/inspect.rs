//! A look at a store for `posbridge doctor`: counts, size, consistency. Unlike
//! [`Store::open`] it never moves a damaged store aside and never creates one.

use std::path::Path;

use super::{CmdState, MoneyHold, Store, StoreError, CACHE_BYTES, CMD, HOLD, OUTBOX};

/// What `posbridge doctor` reports about a store it could open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inspection {
    /// Money commands are refused after store damage until `posbridge store acknowledge`.
    pub money_hold: Option<MoneyHold>,
    pub records: usize,
    /// Results not yet acknowledged by the broker.
    pub outbox: usize,
    /// Commands queued or running when the agent stopped (resumed at next start).
    pub unfinished: usize,
    /// Commands that ended `unknown` and were not reconciled since.
    pub unknown: usize,
    pub corrupt: usize,
    pub size_bytes: u64,
}

impl Store {
    /// Inspect the store under `dir` (`store.path`). `Ok(None)`: no store there yet (the
    /// agent creates it at first start). `Err(StoreError::InUse)`: another process (the
    /// running agent) holds it. Other errors: it cannot be opened or fails its checksum.
    pub fn inspect(dir: &Path) -> Result<Option<Inspection>, StoreError> {
        let path = dir.join("sled");
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Ok(None);
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(StoreError::open_at(&path))?;
        db.checksum()?;
        // Count what the agent will see: sled plus its write-ahead log (changes since the
        // last checkpoint). Replaying only re-applies whole values the agent applies too.
        super::wal::replay(&db, &path)?;
        let mut out =
            Inspection { size_bytes: db.size_on_disk().unwrap_or(0), ..Default::default() };
        for item in db.scan_prefix(CMD) {
            let (k, v) = item?;
            out.records += 1;
            match super::packed::record(&k, &v) {
                Some(r) if !r.state.is_final() => out.unfinished += 1,
                Some(r) if r.state == CmdState::Unknown && r.reconciled.is_none() => {
                    out.unknown += 1
                }
                Some(_) => {}
                None => out.corrupt += 1,
            }
        }
        out.outbox = db.scan_prefix(OUTBOX).count();
        out.money_hold = db.get(HOLD)?.and_then(|v| serde_json::from_slice(&v).ok());
        Ok(Some(out))
    }
}
