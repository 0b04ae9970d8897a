//! Periodic metrics on `{root}/telemetry` (`mqtt-api.md`: Telemetry).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::BusStats;
use crate::engine::{Engine, Outbound};

/// One heartbeat; `interval` is this agent's telemetry interval (`interval_s`: so a
/// watcher knows when its silence means something).
pub fn snapshot(engine: &Engine, bus: &BusStats, interval: Duration) -> Value {
    let uptime = (chrono::Utc::now() - engine.started_at()).num_seconds();
    let broker = bus.broker.lock().ok().and_then(|b| b.clone());
    let money_blocked = matches!(engine.store().money_hold(), Ok(Some(_)));
    let mut v = json!({
        "v": crate::api::API_VERSION,
        "ts": crate::api::ts(chrono::Utc::now()),
        // The heartbeat: what the retained `status` and `terminals/…` say, again, for a
        // client that cannot rely on retained messages (mqtt-api.md: telemetry).
        "state": "online",
        "started_at": crate::api::ts(engine.started_at()),
        "money_blocked": money_blocked,
        "terminals": engine.terminal_states(),
        "broker": broker,
        "uptime_s": uptime,
        "interval_s": interval.as_secs(),
        "version": crate::VERSION,
        "mqtt_reconnects": bus.reconnects.load(Ordering::Relaxed),
        "dropped_commands": bus.dropped_commands.load(Ordering::Relaxed),
        "intake_queue_full": bus.intake_queue_full.load(Ordering::Relaxed),
        "outbox_len": engine.store().outbox_len(),
        "queue_len": engine.queue_lens(),
        "commands": engine.stats().by_state(),
        "commands_received": engine.stats().commands_received.load(Ordering::Relaxed),
        "store_bytes": engine.store().size_on_disk(),
        "rss_bytes": rss_bytes(),
        "last_error": engine.last_errors(),
    });
    if let Some(t) = cpu_temp_c() {
        v["cpu_temp_c"] = json!(t);
    }
    v
}

pub async fn run(
    engine: Engine, bus: Arc<BusStats>, interval: Duration, out: mpsc::UnboundedSender<Outbound>,
    stop: CancellationToken,
) {
    let interval = interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let _ = out.send(Outbound::Telemetry(snapshot(&engine, &bus, interval)));
            }
        }
    }
}

/// What the agent can give back while idle: freed heap ([`release_freed_memory`]) and
/// the mappings of code it no longer runs ([`release_code_pages`]). Run by
/// [`release_when_idle`].
///
/// `after` says what preceded it (`"start"`, `"work"`), for the log. Once a
/// second at most per process (`posbridge fleet` runs many agents in one).
pub fn release_idle_memory(after: &'static str) {
    static LAST: Once1s = Once1s::new();
    if !LAST.due() {
        return;
    }
    release_freed_memory();
    let released = release_code_pages();
    tracing::debug!(after, released_kib = released / 1024, "released idle memory");
}

/// How long after the first connect the start-up's memory is released: the drivers'
/// first connects are done by then.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long without a new command before the memory a burst of work mapped is released.
pub const IDLE_AFTER: Duration = Duration::from_secs(10);

/// Release idle memory ([`release_idle_memory`]) [`SETTLE`] after the broker connection
/// first comes up, then each time the agent has received no command for [`IDLE_AFTER`]
/// after receiving some. An idle agent then holds what idling needs, not what its start
/// or its last payments ran; the next payment maps its code again, from memory (minor
/// faults, well under a millisecond), or from the disk if the kernel needed the pages.
pub async fn release_when_idle(engine: Engine, bus: Arc<BusStats>, stop: CancellationToken) {
    let received = || engine.stats().commands_received.load(Ordering::Relaxed);
    let settled = async {
        bus.until_connected().await;
        tokio::time::sleep(SETTLE).await;
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = settled => release_idle_memory("start"),
    }
    let (mut seen, mut busy) = (received(), false);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(IDLE_AFTER) => {}
        }
        let now = received();
        if now != seen {
            (seen, busy) = (now, true);
        } else if busy {
            busy = false;
            release_idle_memory("work");
        }
    }
}

/// Give back what a checkpoint freed ([`release_freed_memory`]): putting the changes into
/// sled and dropping them from the store's memory frees a few hundred KiB at a time, in
/// holes glibc keeps. Run after each checkpoint, so the agent's RSS under a steady load
/// stays level instead of climbing between the prune passes that trimmed before
/// (`docs/performance.md`, eighth measurement). Once a second at most per process
/// (`posbridge fleet` checkpoints many agents).
pub fn release_after_checkpoint() {
    static LAST: Once1s = Once1s::new();
    if LAST.due() {
        release_freed_memory();
    }
}

/// A process-wide "at most once a second".
struct Once1s(std::sync::Mutex<Option<std::time::Instant>>);

impl Once1s {
    const fn new() -> Self {
        Once1s(std::sync::Mutex::new(None))
    }

    /// True (and the second starts) when the last `true` is a second old or more.
    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

/// Set glibc's allocator up for a small, long-running agent, before any thread starts
/// (`main`). Left as glibc's defaults when `GLIBC_TUNABLES` sets any `glibc.malloc.*`
/// (the operator's choice wins). glibc only; a no-op elsewhere.
///
/// - One arena (`M_ARENA_MAX`). glibc gives each thread that allocates under contention
///   an arena of its own, up to 8 per core, each a 64 MiB reservation whose freed holes
///   only that arena reuses. The agent's threads (two runtime workers, the store's sync
///   and checkpoint threads, sled's) allocate little each; glibc's per-thread cache
///   serves their small blocks without the arena's lock.
/// - Fixed thresholds (`M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`: glibc's initial 128 KiB).
///   Left dynamic, the first large block freed (sled's buffers) raises both, after which
///   such blocks come from the heap and leave holes there instead of going back to the
///   kernel when freed.
///
/// Together they took the 10-minute soak's swing from 3.0 to 1.7 MiB and its level from
/// 22.5 to 20.3 MiB (`docs/performance.md`, eighth measurement).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
            return;
        }
        // SAFETY: mallopt takes two integers; it only changes glibc's allocator settings.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        }
    }
}

/// Give memory the allocator holds freed back to the kernel. glibc keeps freed heap for
/// reuse, and a walk of the whole store (the checks at open, a prune) frees much more than
/// the agent then uses: an agent started on a 41 MB store went from 49.6 to 29.4 MiB of
/// RSS (`docs/performance.md`). glibc only; a no-op elsewhere.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Stop mapping the pages of code and read-only data the agent has touched so far (its
/// own binary's and the C library's), keeping them in the page cache; returns the bytes
/// of mappings released. Start-up runs code that an idle agent never runs again (the
/// configuration, the store's checks, the connects), and the kernel maps files 64 KiB
/// around each fault: 5.5 MiB of the production binary stayed resident in an idle agent.
/// What runs afterwards comes back as a minor fault, from memory, with no read from the
/// disk; what does not stays out of the agent's RSS, and is what the kernel reclaims first
/// under memory pressure (page cache no process maps).
///
/// Only file mappings that are not writable and hold no page of their own (`Anonymous:
/// 0 kB` in `/proc/self/smaps`: never written, like relocated data is) are released:
/// their contents are the file's, so dropping them changes nothing the process can see.
/// Linux only; 0 elsewhere.
pub fn release_code_pages() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0;
        for (start, end) in clean_file_mappings(&smaps) {
            // SAFETY: [start, end) is a whole mapping of this process, of a file, not
            // writable and with no anonymous (copied-on-write) page: MADV_DONTNEED only
            // unmaps its pages, and the next access maps the same bytes from the file (kept
            // in the page cache). No memory the program wrote is discarded.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if rc == 0 {
                released += (end - start) as u64;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The `[start, end)` of each mapping in `smaps` (`/proc/self/smaps`) that maps a file,
/// is not writable and holds no anonymous page.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read, while its fields are: Some((start, end)) if it is a
    // candidate so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                // A mapping's header: start-end perms offset dev inode [path].
                let perms = words.next().unwrap_or("");
                let inode = words.nth(2).unwrap_or("0");
                let path = words.next().unwrap_or("");
                let candidate = perms.len() == 4
                    && perms.as_bytes()[1] == b'-'
                    && inode != "0"
                    && path.starts_with('/')
                    && start < end;
                current = candidate.then_some((start, end));
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if words.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

/// Resident set size from `/proc/self/statm` (Linux), 0 elsewhere.
pub fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

fn cpu_temp_c() -> Option<f64> {
    let s = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let milli: f64 = s.trim().parse().ok()?;
    Some(milli / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c02d9000 r--p 00000000 fe:00 10216196                   /usr/bin/posbridge
Size:               2916 kB
Rss:                1200 kB
Anonymous:             0 kB
55d0c02d9000-55d0c07bb000 r-xp 002d9000 fe:00 10216196                   /usr/bin/posbridge
Size:               4999 kB
Anonymous:             0 kB
55d0c07bb000-55d0c07e9000 r--p 007bb000 fe:00 10216196                   /usr/bin/posbridge
Size:                184 kB
Anonymous:           184 kB
55d0c07e9000-55d0c07f0000 rw-p 007e9000 fe:00 10216196                   /usr/bin/posbridge
Anonymous:            28 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0                          [vvar]
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f1000000000-7f1000100000 r-xp 00028000 fe:00 2000                       /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
";

    /// Code and read-only data are released; relocated data (copied on write: it has
    /// anonymous pages), writable mappings, the heap and the kernel's own pages are not.
    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![
                (0x55d0c0000000, 0x55d0c02d9000),
                (0x55d0c02d9000, 0x55d0c07bb000),
                (0x7f1000000000, 0x7f1000100000),
            ]
        );
    }

    /// In this process: some of its own mappings are released, and the program goes on
    /// running the code and reading the data they held.
    #[test]
    fn releasing_code_pages_keeps_the_program_running() {
        let table: Vec<u64> = (0..1000u64).map(|i| i * i).collect();
        assert!(release_code_pages() > 0);
        let s = format!("{}", table.iter().sum::<u64>());
        assert_eq!(s, "332833500");
        assert!(!clean_file_mappings(
            &std::fs::read_to_string("/proc/self/smaps").unwrap_or_default()
        )
        .is_empty());
    }
}
