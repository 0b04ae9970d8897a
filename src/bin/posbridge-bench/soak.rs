//! Memory over a long run (`soak --minutes M`): payments at `--rate` per second (50 by
//! default) through the IP simulator for M minutes, the agent's RSS sampled every 10 s.
//! After a warm-up (a tenth of the run, at least one minute) the RSS must stay flat:
//! growth from the end of the warm-up to the end, and the spread of the samples after it,
//! within 1 MiB. Every payment must get its result. Not part of `all` (it takes minutes).
//! Every 0.5 s after the warm-up it also samples what the RSS is made of (file-backed,
//! heap, sled's segment buffers) and prints the range of each: what moves the figure.
//!
//! It also prints how long results took (command published → result received: median,
//! p99, the longest and when) and how many payments were rejected `busy`: the terminal's
//! queue (64) fills only when the agent, the broker or this machine stalled for more than
//! 64 / rate seconds (1.3 s at 50/s). Such a refusal is a definite answer (the device was
//! never asked), so it counts as answered; any other outcome than `succeeded` or `busy`
//! fails the run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::{Agent, Broker};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::kit::{agent_dir, cmd_topic, ip_sim, ip_terminal, run_id, spec, start_online, Client};
use crate::wear::Written;
use crate::{Figure, Report};

pub(crate) async fn bench_soak(
    broker: &Broker, minutes: u64, rate: f64, retention: Option<&str>, out: &mut Report,
) -> Result<()> {
    let port = broker.port();
    let (sim_addr, _sim) = ip_sim(0).await?;
    let dir = agent_dir()?;
    let agent_id = run_id("bench-soak");
    let cmd_to = cmd_topic(&agent_id);
    let mut spec = ip_terminal(spec(&agent_id, port, 64), "ip-1", &sim_addr)?;
    let mut env = Vec::new();
    if let Some(r) = retention {
        spec.extra = format!("[store]\nretention = {}\n", Value::from(r));
        // Under the configuration's one-day floor: accepted by this (test) build only.
        env.push((posbridge::faults::SHORT_RETENTION_ENV, "1"));
    }
    let mut cloud = Client::of(port, &agent_id, "cloud", "#", true).await?;
    let agent = start_online(dir.path(), &spec, &env, &mut cloud).await?;
    let run = Duration::from_secs(minutes * 60);
    let warm = (run / 10).max(Duration::from_secs(60)).min(run);
    let kib = || agent.proc_status("VmRSS:").unwrap_or(0);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sample = tokio::time::interval(Duration::from_secs(10));
    let mut fine = tokio::time::interval(Duration::from_millis(500));
    let mut parts = RssParts::default();
    let (mut sent, mut answered) = (0u64, HashSet::new());
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut lat = Latencies::default();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut at_warm: Option<u64> = None;
    // What the agent wrote towards its store's device from the warm-up on, per payment:
    // SD-card wear in a steady state (a store that is pruned, and sled cleaning its
    // segments), where the `e2e` figure measures a fresh store. Both counters: the
    // process's `write_bytes` and the store's device (see `wear.rs`).
    let store_dir = dir.path().join("store");
    let mut written_at_warm: Option<(Written, u64)> = None;
    while start.elapsed() < run {
        tokio::select! {
            _ = tick.tick() => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    let id = format!("soak-{sent}");
                    let cmd = json!({"v":1,"id":id,"op":"payment","terminal":"ip-1","amount":100 + (sent % 900) as i64,"currency":"AZN"});
                    cloud.client.publish(cmd_to.as_str(), QoS::AtLeastOnce, false, cmd.to_string()).await?;
                    sent_at.insert(id, Instant::now());
                    sent += 1;
                }
            }
            _ = sample.tick() => {
                let t = start.elapsed();
                samples.push((t.as_secs_f64(), kib()));
                if at_warm.is_none() && t >= warm {
                    at_warm = Some(kib());
                    written_at_warm = Some((Written::now(agent.pid(), &store_dir), sent));
                }
            }
            _ = fine.tick() => {
                if start.elapsed() >= warm {
                    parts.sample(&agent, start.elapsed().as_secs_f64());
                }
            }
            m = cloud.recv(Duration::from_secs(30)) => {
                let (topic, p) = m?;
                if topic.ends_with("/result") {
                    let v: Value = serde_json::from_slice(&p)?;
                    if v["state"] != "succeeded" && v["error"]["code"] != "busy" {
                        bail!("soak payment ended {v}");
                    }
                    if let Some(id) = v["id"].as_str() {
                        lat.result(&v, sent_at.remove(id), start);
                        answered.insert(id.to_string());
                    }
                }
            }
        }
    }
    // The last results.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (answered.len() as u64) < sent && Instant::now() < deadline {
        if let Ok((topic, p)) = cloud.recv(Duration::from_secs(5)).await {
            if topic.ends_with("/result") {
                let v: Value = serde_json::from_slice(&p)?;
                if let Some(id) = v["id"].as_str() {
                    lat.result(&v, sent_at.remove(id), start);
                    answered.insert(id.to_string());
                }
            }
        }
    }
    let end = kib();
    let warm_kib = at_warm.unwrap_or(end);
    let (written_per_payment, device_per_payment) = match written_at_warm {
        Some((w0, n0)) if sent > n0 => {
            w0.per_op(&Written::now(agent.pid(), &store_dir), (sent - n0) as usize)
        }
        _ => (None, None),
    };
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} B"));
    println!(
        "soak: store writes per payment after the warm-up (steady state): agent process {} (`/proc/PID/io` write_bytes, whole page-cache folios), device {} (all processes on it; alone with BENCH_STORE_DIR on a file system of its own)",
        show(written_per_payment),
        show(device_per_payment)
    );
    let after: Vec<u64> =
        samples.iter().filter(|(t, _)| *t >= warm.as_secs_f64()).map(|(_, k)| *k).collect();
    let (lo, hi) =
        (after.iter().min().copied().unwrap_or(end), after.iter().max().copied().unwrap_or(end));
    let growth_mib = (end as f64 - warm_kib as f64) / 1024.0;
    let spread_mib = (hi - lo) as f64 / 1024.0;
    let lost = sent.saturating_sub(answered.len() as u64);
    println!(
        "soak: {minutes} min at {rate}/s, store.retention {}: {sent} payments, {lost} unanswered; RSS {:.1} MiB after the {:.0}-s warm-up, {:.1} MiB at the end (growth {growth_mib:+.2} MiB, spread {spread_mib:.2} MiB after warm-up)",
        retention.unwrap_or("default"),
        warm_kib as f64 / 1024.0,
        warm.as_secs_f64(),
        end as f64 / 1024.0
    );
    lat.print();
    parts.print();
    parts.write_series(&agent)?;
    out.figs.push(Figure {
        name: format!("RSS growth over {minutes} min soak"),
        value: growth_mib.abs().max(spread_mib),
        unit: "MiB",
        limit: 1.0,
        ratio: growth_mib.abs().max(spread_mib),
        goal: "flat within 1 MiB".into(),
        met: growth_mib.abs() <= 1.0 && spread_mib <= 1.0 && lost == 0,
    });
    out.json["soak"] = json!({
        "minutes": minutes, "rate_per_s": rate, "retention": retention, "sent": sent, "unanswered": lost,
        "warmup_s": warm.as_secs_f64(), "rss_kib_after_warmup": warm_kib, "rss_kib_end": end,
        "rss_kib_min_after_warmup": lo, "rss_kib_max_after_warmup": hi,
        "growth_mib": growth_mib, "spread_mib": spread_mib,
        "written_bytes_per_payment_after_warmup": written_per_payment,
        "device_bytes_per_payment_after_warmup": device_per_payment,
        "samples": samples.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
        "results": lat.json(),
        "rss_parts_mib": parts.json(),
    });
    if lost > 0 {
        bail!("{lost} soak payments got no result");
    }
    Ok(())
}

/// Where the agent's RSS is, every 0.5 s after the warm-up: the figure's 10-s samples say
/// how far it moves, these say what moves (twelfth measurement in `docs/performance.md`).
/// Each sample: RSS, file-backed pages (code), the heap, and the anonymous mappings of
/// 256 KiB to 1 MiB: sled's segment buffers (512 KiB each, the only allocations that size,
/// each mapped when sled starts a segment and unmapped once it is written).
#[derive(Default)]
struct RssParts {
    samples: Vec<[u64; 4]>,
    /// When each sample was taken, seconds into the run.
    at: Vec<f64>,
}

impl RssParts {
    const NAMES: [&'static str; 4] = ["rss", "file", "heap", "segment_buffers"];

    fn sample(&mut self, agent: &Agent, at: f64) {
        let (Some(rss), Some(file)) = (agent.proc_status("VmRSS:"), agent.proc_status("RssFile:"))
        else {
            return;
        };
        if let Some([heap, buffers]) = agent.pid().and_then(heap_and_segment_buffers) {
            self.samples.push([rss, file, heap, buffers]);
            self.at.push(at);
        }
    }

    /// Lowest and highest of part `i`, MiB.
    fn range(&self, i: usize) -> Option<(f64, f64)> {
        let v = self.samples.iter().map(|s| s[i] as f64 / 1024.0);
        Some((v.clone().reduce(f64::min)?, v.reduce(f64::max)?))
    }

    fn print(&self) {
        let show = |i: usize| {
            self.range(i)
                .map_or("n/a".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2} (spread {:.2})", hi - lo))
        };
        println!(
            "soak: RSS every 0.5 s after the warm-up, MiB ({} samples): RSS {}; file-backed {}; heap {}; sled's segment buffers {}",
            self.samples.len(),
            show(0),
            show(1),
            show(2),
            show(3)
        );
    }

    /// `BENCH_SOAK_SERIES=FILE`: every sample, one line each (seconds into the run, then
    /// the parts in KiB), to set beside the agent's log (`BENCH_LOG`) and see what moves
    /// them when; the agent's log is copied beside it (`FILE.agent.log`), since its
    /// directory goes at the end of the run.
    fn write_series(&self, agent: &Agent) -> Result<()> {
        let Some(path) = std::env::var_os("BENCH_SOAK_SERIES") else { return Ok(()) };
        let mut text = format!("t_s {}\n", Self::NAMES.join(" "));
        for (t, s) in self.at.iter().zip(&self.samples) {
            text += &format!("{t:.1} {} {} {} {}\n", s[0], s[1], s[2], s[3]);
        }
        std::fs::write(&path, text)?;
        let mut log = path.clone();
        log.push(".agent.log");
        std::fs::copy(agent.log_path(), &log)?;
        println!("soak: the 0.5-s samples are in {}", std::path::Path::new(&path).display());
        Ok(())
    }

    fn json(&self) -> Value {
        let parts: serde_json::Map<String, Value> = Self::NAMES
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.range(i).map(|(lo, hi)| (n.to_string(), json!([lo, hi]))))
            .collect();
        json!({ "samples": self.samples.len(), "min_max": parts })
    }
}

/// The resident KiB of process `pid`'s heap and of sled's segment buffers (its anonymous
/// mappings of 256 KiB to 1 MiB), from `/proc/<pid>/smaps`.
fn heap_and_segment_buffers(pid: u32) -> Option<[u64; 2]> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut kib = [0u64; 2];
    // Where the mapping being read counts: 0 the heap, 1 a segment buffer, None neither.
    let mut counts_in = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping's header: start-end perms offset dev inode [path].
            let size =
                u64::from_str_radix(b, 16).ok()?.saturating_sub(u64::from_str_radix(a, 16).ok()?);
            counts_in = match words.nth(4) {
                Some("[heap]") => Some(0),
                None if (256 << 10..1 << 20).contains(&size) => Some(1),
                _ => None,
            };
        } else if let (Some(i), "Rss:") = (counts_in, first) {
            kib[i] += words.next().and_then(|k| k.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(kib)
}

/// Command published → result received, over the soak.
#[derive(Default)]
struct Latencies {
    ms: Vec<f64>,
    /// The longest, and when its result came (seconds into the run).
    worst: (f64, f64),
    busy: u64,
}

impl Latencies {
    fn result(&mut self, v: &Value, sent: Option<Instant>, start: Instant) {
        if v["error"]["code"] == "busy" {
            self.busy += 1;
        }
        let Some(sent) = sent else { return };
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        if ms > self.worst.0 {
            self.worst = (ms, start.elapsed().as_secs_f64());
        }
        self.ms.push(ms);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
    }

    fn print(&self) {
        println!(
            "soak: results after {:.1} ms median, {:.1} ms p99, {:.0} ms at most ({:.0} s into the run); {} rejected busy",
            self.quantile(0.5),
            self.quantile(0.99),
            self.worst.0,
            self.worst.1,
            self.busy
        );
    }

    fn json(&self) -> Value {
        json!({
            "p50_ms": self.quantile(0.5), "p99_ms": self.quantile(0.99),
            "max_ms": self.worst.0, "max_at_s": self.worst.1, "busy": self.busy,
        })
    }
}
