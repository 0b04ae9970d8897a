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
