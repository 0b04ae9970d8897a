//! Group commit: one `flush` + `fdatasync` covers every write issued before the sync
//! started. A caller registers *after* its write, and is answered only by a sync that
//! began after it registered, so no acknowledgement can run ahead of the sync covering it.

use std::fs::File;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::{Mark, StoreError};

type Waiter = oneshot::Sender<Result<(), String>>;

/// The syncer task holds no `Db` between requests (each request brings one), so dropping
/// the last `Store` closes the database at once and it can be reopened.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    mark: Arc<Mark>,
    tx: mpsc::UnboundedSender<(sled::Db, Waiter)>,
}

impl Syncer {
    pub fn mark(&self) -> &Mark {
        &self.mark
    }

    pub fn start(db: sled::Db, data_file: PathBuf, blobs_dir: PathBuf, mark: Mark) -> Syncer {
        let mark = Arc::new(mark);
        let task_mark = mark.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<(sled::Db, Waiter)>();
        tokio::spawn(async move {
            // Opened once (fsync is per inode), not once per sync.
            let mut data_fd: Option<Arc<File>> = None;
            while let Some((db, first)) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok((_, w)) = rx.try_recv() {
                    waiters.push(w);
                }
                let data_file = data_file.clone();
                let blobs_dir = blobs_dir.clone();
                let mark = task_mark.clone();
                if data_fd.is_none() {
                    data_fd = File::open(&data_file).ok().map(Arc::new);
                }
                let fd = data_fd.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let upto = mark.noted();
                    let outbox_upto = mark.outbox_noted();
                    durable_flush(&db, fd.as_deref(), &data_file, &blobs_dir)?;
                    mark.outbox_synced(outbox_upto);
                    mark.persist(upto)
                        .map_err(|e| format!("store watermark: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(format!("sync task failed: {e}")));
                if let Err(e) = &res {
                    tracing::error!(error = %e, "store sync failed");
                }
                for w in waiters {
                    let _ = w.send(res.clone());
                }
            }
        });
        Syncer { db, mark, tx }
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.db.clone(), tx))
            .map_err(|_| StoreError::Sync("syncer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Sync("syncer stopped".into()))?
            .map_err(StoreError::Sync)
    }
}

/// sled `flush` (write + `sync_file_range`), then `fdatasync` of the data file so the
/// bytes and the metadata needed to read them survive a power cut. Values too large for
/// a segment live in `blobs/` files, which sled writes without syncing: sync those too.
fn durable_flush(
    db: &sled::Db,
    fd: Option<&File>,
    data_file: &std::path::Path,
    blobs_dir: &std::path::Path,
) -> Result<(), String> {
    db.flush().map_err(|e| format!("flush: {e}"))?;
    let opened;
    let f = match fd {
        Some(f) => f,
        None => {
            opened =
                File::open(data_file).map_err(|e| format!("open {}: {e}", data_file.display()))?;
            &opened
        }
    };
    f.sync_data()
        .map_err(|e| format!("fdatasync {}: {e}", data_file.display()))?;
    if let Ok(entries) = std::fs::read_dir(blobs_dir) {
        for entry in entries.flatten() {
            if let Ok(f) = File::open(entry.path()) {
                f.sync_data()
                    .map_err(|e| format!("fdatasync {}: {e}", entry.path().display()))?;
            }
        }
        if let Ok(d) = File::open(blobs_dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
