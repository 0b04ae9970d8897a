//! Where a payment's time goes, for `posbridge-bench` (`docs/performance.md`): with
//! `POSBRIDGE_STAGES=<file>` in its environment the agent notes, per command id, the
//! moment (CLOCK_MONOTONIC, the same clock the bench reads) it reached each stage:
//!
//! `received` (the command came off the connection) → `worker` (its terminal's worker took
//! it) → `device_call` → `device_answer` → `result_durable` → `result_sent` (the result
//! was handed to the connection) → `result_acked` (the broker's PUBACK for it). Beside that
//! path, the command's own `durable` (the sync covering it returned) and `puback` (its
//! PUBACK was handed to the connection): for a terminal that was idle, that sync is the
//! worker's first journal step's, so they come after `worker` (`engine::intake`).
//!
//! Kept in memory and written as JSON lines (`{"id":…,"stage":…,"ns":…}`) when the agent
//! stops, so recording adds no I/O to the path it measures. Without the variable every
//! call is one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

pub const ENV: &str = "POSBRIDGE_STAGES";

/// The stages a payment passes, in order.
pub const PATH: [&str; 7] = [
    "received",
    "worker",
    "device_call",
    "device_answer",
    "result_durable",
    "result_sent",
    "result_acked",
];

/// The command's own sync and PUBACK, beside [`PATH`]: after `received`, in this order.
pub const COMMAND_ACK: [&str; 2] = ["durable", "puback"];

/// A log commit's steps (`store/wal.rs`), noted under ids [`next_commit`] hands out: the
/// write began, the write returned, the `fdatasync` returned.
pub const COMMIT: [&str; 3] = ["log_write", "log_written", "log_synced"];

/// The id to note the next log commit's steps under; `None` when recording is off.
pub fn next_commit() -> Option<String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    enabled().then(|| format!("{COMMIT_PREFIX}{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// What every log commit's id starts with.
pub const COMMIT_PREFIX: &str = "log-commit-";

struct Recorder {
    path: std::path::PathBuf,
    marks: Mutex<Vec<(String, &'static str, u64)>>,
}

static ON: AtomicBool = AtomicBool::new(false);
static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Read the environment once, at start.
pub fn init() {
    if let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        let r = RECORDER.get_or_init(|| Recorder {
            path: path.into(),
            marks: Mutex::new(Vec::with_capacity(64 * 1024)),
        });
        ON.store(true, Ordering::Relaxed);
        tracing::info!(path = %r.path.display(), "recording stage timestamps for the bench");
    }
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// CLOCK_MONOTONIC in nanoseconds (0 when recording is off).
pub fn now() -> u64 {
    if !enabled() {
        return 0;
    }
    monotonic_ns()
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `id` reached `stage` now.
pub fn mark(id: &str, stage: &'static str) {
    if enabled() {
        mark_at(id, stage, monotonic_ns());
    }
}

/// `id` reached `stage` at `ns` (from [`now`]).
pub fn mark_at(id: &str, stage: &'static str, ns: u64) {
    if !enabled() || ns == 0 {
        return;
    }
    if let Some(r) = RECORDER.get() {
        if let Ok(mut m) = r.marks.lock() {
            m.push((id.to_string(), stage, ns));
        }
    }
}

/// Write what was recorded (at stop).
pub fn write() {
    let Some(r) = RECORDER.get() else { return };
    let marks = match r.marks.lock() {
        Ok(mut m) => std::mem::take(&mut *m),
        Err(_) => return,
    };
    let mut out = String::with_capacity(marks.len() * 64);
    for (id, stage, ns) in marks {
        out.push_str(&serde_json::json!({ "id": id, "stage": stage, "ns": ns }).to_string());
        out.push('\n');
    }
    if let Err(e) = std::fs::write(&r.path, out) {
        tracing::warn!(path = %r.path.display(), error = %e, "could not write the stage timestamps");
    }
}
