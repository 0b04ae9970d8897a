//! Test-only fault hooks, compiled in only with the `failpoints` feature (the tests'
//! default). Production builds (`--no-default-features`, what the .deb ships) get the
//! no-op versions at the end of this file: no environment variable can make a shop's
//! agent abort or fail its I/O on purpose.
//!
//! `POSBRIDGE_FAULT_ABORT_AT=<point>` makes the agent call `abort()` (as sudden as
//! `kill -9`: no destructors, no flush) the first time it reaches `<point>`, e.g.
//! `journal:ip_sending:before` or `intake:stored`. The crash tests use it to stop the
//! agent exactly between two journal writes.

pub const ENV: &str = "POSBRIDGE_FAULT_ABORT_AT";

#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    use std::sync::OnceLock;
    static T: OnceLock<String> = OnceLock::new();
    let t = T.get_or_init(|| std::env::var(ENV).unwrap_or_default());
    if !t.is_empty() && t == point {
        eprintln!("posbridge: fault injection: aborting at {point}");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// `POSBRIDGE_TEST_SHORT_RETENTION=1`: accept a `store.retention` below its floor
/// (`config::MIN_RETENTION`), so that the soak bench can keep a store pruned as fast as it
/// fills. Compiled in only with the `failpoints` feature: no environment variable can
/// shorten a shop's idempotency window.
pub const SHORT_RETENTION_ENV: &str = "POSBRIDGE_TEST_SHORT_RETENTION";

#[cfg(feature = "failpoints")]
pub fn short_retention_allowed() -> bool {
    std::env::var(SHORT_RETENTION_ENV).is_ok_and(|v| v == "1")
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn short_retention_allowed() -> bool {
    false
}

/// `POSBRIDGE_TEST_CHECKPOINT_EVERY=<seconds>` (at least 1): the checkpoint schedule's
/// time bound (`engine::CheckpointSchedule`: an hour), for tests and benches that need a
/// checkpoint within their run. Compiled in only with the `failpoints` feature.
pub const CHECKPOINT_EVERY_ENV: &str = "POSBRIDGE_TEST_CHECKPOINT_EVERY";

#[cfg(feature = "failpoints")]
pub fn checkpoint_every() -> Option<std::time::Duration> {
    let secs: u64 = std::env::var(CHECKPOINT_EVERY_ENV).ok()?.parse().ok()?;
    (secs >= 1).then(|| std::time::Duration::from_secs(secs))
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn checkpoint_every() -> Option<std::time::Duration> {
    None
}

/// `POSBRIDGE_IO_FAULTS=<point>=<eio|enospc>@<n>[,…]`: the `n`-th time (1-based) the
/// store reaches `<point>` and every time after, the I/O there fails with that error
/// instead of running. `@if:<path>` instead of `@<n>`: it fails whenever `<path>` exists
/// (a test creates the file at the moment it wants the disk to fail). Points:
/// `wal:allocate` (log space allocated ahead; refused, the log grows with its appends),
/// `wal:append` (the log write), `wal:sync` (its `fdatasync`), `sled:flush` (a
/// checkpoint's flush + `fdatasync`). Compiled in only
/// with the `failpoints` feature (the tests' default; production builds use
/// `--no-default-features` and leave it out).
pub const IO_ENV: &str = "POSBRIDGE_IO_FAULTS";

#[cfg(feature = "failpoints")]
pub fn io(point: &str) -> std::io::Result<()> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};
    struct Rule {
        err: i32,
        from: u64,
        when_exists: Option<std::path::PathBuf>,
        seen: AtomicU64,
    }
    static RULES: OnceLock<HashMap<String, Rule>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let rules = RULES.get_or_init(|| {
        let spec = std::env::var(IO_ENV).unwrap_or_default();
        spec.split(',')
            .filter_map(|r| {
                let (point, rest) = r.split_once('=')?;
                let (kind, n) = rest.split_once('@').unwrap_or((rest, "1"));
                let err = match kind {
                    "eio" => libc::EIO,
                    "enospc" => libc::ENOSPC,
                    _ => return None,
                };
                let (from, when_exists) = match n.strip_prefix("if:") {
                    Some(path) => (1, Some(std::path::PathBuf::from(path))),
                    None => (n.parse().ok()?, None),
                };
                Some((point.to_string(), Rule { err, from, when_exists, seen: AtomicU64::new(0) }))
            })
            .collect()
    });
    let Some(rule) = rules.get(point) else {
        return Ok(());
    };
    let _g = LOCK.lock();
    if rule.when_exists.as_ref().is_some_and(|p| !p.exists()) {
        return Ok(());
    }
    let n = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= rule.from {
        eprintln!("posbridge: fault injection: I/O error at {point} (call {n})");
        return Err(std::io::Error::from_raw_os_error(rule.err));
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn io(_point: &str) -> std::io::Result<()> {
    Ok(())
}
