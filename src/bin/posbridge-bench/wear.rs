//! SD-card wear: bytes the agent writes to its store's device per payment, from the
//! kernel's own counters, against the floor of the durability promise's syncs.
//!
//! Two counters, read around the e2e payments and again after the store's next checkpoint
//! (sled made durable, the log dropped: [`next_checkpoint`]), so checkpoints are paid
//! for:
//! - `/proc/<agent>/io` `write_bytes`: what the agent process sent towards the device,
//!   counted in whole page-cache folios when a write dirties one: a 400 B record synced
//!   alone costs a 4 KiB page, and a few bytes written into a file the kernel caches in
//!   large folios (ext4 since Linux 6.16: up to 2 MiB) count the whole folio, while the
//!   device is sent only the blocks written (measured on a loop-mounted ext4: 100 B into
//!   a cached 8 MiB file, 2 097 152 B of `write_bytes`, 1 024 B to the device). sled's
//!   data file is such a file, so in a steady store this counter runs far above the
//!   device's;
//! - `/sys/dev/block/<store's device>/stat` sectors written: what the device really took,
//!   the file system's journal included, but from every process on that device (noisy on
//!   a shared machine; reported beside the figure). With `BENCH_STORE_DIR` on a file
//!   system of its own, it is the agent's alone. The floor's samples interleaved with
//!   the payments (`e2e`) write to it too: what the device took during them is taken out,
//!   unless one of the agent's checkpoints ran meanwhile (then it all counts as the
//!   agent's).
//!
//! The floor is the same process counter read around the floor's syncs in this process
//! (one ~400 B append + `fdatasync` each), times the promise's 3 syncs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `write_bytes` of process `pid` (`self` for this one).
pub(crate) fn process_written(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("write_bytes:"))?.trim().parse().ok()
}

/// Bytes written to the block device holding `path` since boot (all processes).
pub(crate) fn device_written(path: &Path) -> Option<u64> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let s = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    // Field 7 (index 6): sectors written, in 512-byte units whatever the device's own.
    let sectors: u64 = s.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// Both counters at one moment.
#[derive(Clone, Copy, Default)]
pub(crate) struct Written {
    process: Option<u64>,
    device: Option<u64>,
}

impl Written {
    pub(crate) fn now(pid: Option<u32>, store: &Path) -> Written {
        Written {
            process: pid.and_then(|p| process_written(&p.to_string())),
            device: device_written(store),
        }
    }

    /// The same, with `bytes` another writer put on the store's device taken out.
    pub(crate) fn less_device(mut self, bytes: u64) -> Written {
        self.device = self.device.map(|d| d.saturating_sub(bytes));
        self
    }

    /// Bytes per operation between `self` (earlier) and `later`: (process, device).
    pub(crate) fn per_op(&self, later: &Written, ops: usize) -> (Option<f64>, Option<f64>) {
        let d = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / ops as f64);
        (d(self.process, later.process), d(self.device, later.device))
    }
}

/// The write-ahead log generations in the agent's store at `store` (`store/wal.rs`:
/// `posbridge-wal.<generation>` in sled's directory). A checkpoint starts a new one, then,
/// once sled is durable, retires the older ones.
pub(crate) fn log_generations(store: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(store.join("sled")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("posbridge-wal.")?.parse().ok())
        .collect()
}

/// The newest log generation in the store at `store`.
pub(crate) fn log_generation(store: &Path) -> Option<u64> {
    log_generations(store).into_iter().max()
}

/// The checkpoint schedule's time bound `e2e` starts its agent with
/// (`POSBRIDGE_TEST_CHECKPOINT_EVERY`; an hour in production), so that its few payments'
/// checkpoint comes within the run and counts in what they cost the device.
pub(crate) const E2E_CHECKPOINT_EVERY_S: u64 = 60;

/// Wait until a checkpoint that began after generation `after` has finished (its older
/// logs retired): at most [`E2E_CHECKPOINT_EVERY_S`] and two looks. False if none did.
pub(crate) async fn next_checkpoint(store: &Path, after: Option<u64>) -> bool {
    let s = posbridge::engine::CheckpointSchedule::default();
    let until = std::time::Instant::now()
        + std::time::Duration::from_secs(E2E_CHECKPOINT_EVERY_S)
        + s.look_every * 2;
    while std::time::Instant::now() < until {
        let g = log_generations(store);
        if !g.is_empty() && g.iter().all(|&g| Some(g) > after) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
