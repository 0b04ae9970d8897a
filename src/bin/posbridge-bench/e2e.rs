//! The payment round trip: a cloud client's payment command to its `succeeded` result
//! through the broker, the agent and the IP simulator, p50 and p99 against the floor of
//! one QoS 1 request → reply, one simulator call and the durability promise's syncs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::breakdown;
use crate::floors::{floor_rr, floor_sim, floor_sync, PROMISE_SYNCS};
use crate::kit::{agent_dir, cmd_topic, ip_sim, ip_terminal, run_id, spec, start_online, Client};
use crate::wear::{self, Written};
use crate::{micros, pct, Figure, Report};

pub(crate) async fn bench_e2e(broker: &Broker, n: usize, out: &mut Report) -> Result<()> {
    let port = broker.port();
    let (sim_addr, _sim) = ip_sim(0).await?;
    let dir = agent_dir()?;
    let agent_id = run_id("bench-e2e");
    let cmd_to = cmd_topic(&agent_id);
    let spec = ip_terminal(spec(&agent_id, port, 16), "ip-1", &sim_addr)?;
    let mut cloud = Client::of(port, &agent_id, "cloud", "#", true).await?;
    // The agent notes each payment's stages (posbridge::stages), written when it stops.
    let stages_file = dir.path().join("stages.jsonl");
    let (stages_path, every) =
        (stages_file.display().to_string(), wear::E2E_CHECKPOINT_EVERY_S.to_string());
    let env = [
        (posbridge::stages::ENV, stages_path.as_str()),
        (posbridge::faults::CHECKPOINT_EVERY_ENV, every.as_str()),
    ];
    let mut agent = start_online(dir.path(), &spec, &env, &mut cloud).await?;
    let mut lat = Vec::with_capacity(n);
    let mut times: HashMap<String, (u64, u64)> = HashMap::new();
    let store_dir = dir.path().join("store");
    let mut before = Written::default();
    for i in 0..n + 20 {
        if i == 20 {
            before = Written::now(agent.pid(), &store_dir);
        }
        let id = format!("e2e-{i}");
        let cmd =
            json!({"v":1,"id":id,"op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN"});
        let t = Instant::now();
        let sent = posbridge::stages::monotonic_ns();
        cloud.client.publish(cmd_to.as_str(), QoS::AtLeastOnce, false, cmd.to_string()).await?;
        loop {
            let (topic, p) = match cloud.recv(Duration::from_secs(30)).await {
                Ok(m) => m,
                Err(e) => bail!("{e:#}\n{}", agent.log_tail(20)),
            };
            if topic.ends_with("/result") {
                let v: Value = serde_json::from_slice(&p)?;
                if v["id"] == id.as_str() {
                    if v["state"] != "succeeded" {
                        bail!("payment {id} ended {v}");
                    }
                    break;
                }
            }
        }
        if i >= 20 {
            lat.push(micros(t.elapsed()));
            times.insert(id, (sent, posbridge::stages::monotonic_ns()));
        }
    }
    let after_loop = Written::now(agent.pid(), &store_dir);
    // One checkpoint (sled made durable, the log dropped) is part of what payments cost:
    // the next one, when the agent's schedule makes it (up to a minute for these few, with
    // the bound this bench starts it with).
    let generation = wear::log_generation(&store_dir);
    if !wear::next_checkpoint(&store_dir, generation).await {
        eprintln!("e2e: no checkpoint came; the wear figure leaves it out");
    }
    let after_checkpoint = Written::now(agent.pid(), &store_dir);
    agent.stop();
    match breakdown::medians(&stages_file, &times) {
        Ok(steps) => breakdown::report(&steps, &mut out.json),
        Err(e) => eprintln!("e2e: no stage breakdown: {e:#}"),
    }
    let mut rr = floor_rr(port, n).await?;
    let mut sim = floor_sim(&sim_addr, n).await?;
    let fdir = tempfile::tempdir()?;
    let floor_before = wear::process_written("self");
    let mut sync = tokio::task::block_in_place(|| floor_sync(fdir.path(), n))?;
    let floor_written = match (floor_before, wear::process_written("self")) {
        // floor_sync runs 20 warm-up syncs before its n samples.
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / (n + 20) as f64),
        _ => None,
    };
    let (rr50, sim50, sync50) = (pct(&mut rr, 0.5), pct(&mut sim, 0.5), pct(&mut sync, 0.5));
    let floor = rr50 + sim50 + PROMISE_SYNCS * sync50;
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    out.figs.push(Figure {
        name: "payment round trip p50".into(),
        value: p50,
        unit: "µs",
        limit: floor,
        ratio: p50 / floor,
        goal: "≤ 1.2 × floor".into(),
        met: p50 <= 1.2 * floor,
    });
    out.figs.push(Figure {
        name: "payment round trip p99".into(),
        value: p99,
        unit: "µs",
        limit: floor,
        ratio: p99 / floor,
        goal: "≤ floor + 2 ms".into(),
        met: p99 <= floor + 2000.0,
    });
    let (proc_loop, dev_loop) = before.per_op(&after_loop, n);
    let (proc_all, dev_all) = before.per_op(&after_checkpoint, n);
    if let (Some(v), Some(f)) = (proc_all, floor_written) {
        let limit = PROMISE_SYNCS * f;
        out.figs.push(Figure {
            name: "store writes per payment".into(),
            value: v,
            unit: "B",
            limit,
            ratio: v / limit,
            goal: "≤ 8 KiB".into(),
            met: v <= 8192.0,
        });
    }
    out.json["wear"] = json!({
        "process_bytes_per_payment": proc_all, "process_bytes_per_payment_before_checkpoint": proc_loop,
        "device_bytes_per_payment": dev_all, "device_bytes_per_payment_before_checkpoint": dev_loop,
        "floor_process_bytes_per_sync": floor_written, "syncs": PROMISE_SYNCS,
    });
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} B"));
    println!(
        "wear: per payment, agent process {} ({} before the checkpoint), device {} ({} before; all processes on it); floor {} per sync",
        show(proc_all), show(proc_loop), show(dev_all), show(dev_loop), show(floor_written)
    );
    out.json["e2e"] = json!({
        "n": n, "p50_us": p50, "p99_us": p99, "floor_us": floor,
        "floor_parts_us": {"qos1_rr_p50": rr50, "sim_call_p50": sim50, "sync_p50": sync50, "syncs": PROMISE_SYNCS},
        "ratio_p50": p50 / floor, "p99_minus_floor_us": p99 - floor,
    });
    println!(
        "e2e: floor parts p50: QoS1 rr {rr50:.0} µs, sim call {sim50:.0} µs, durable write {sync50:.0} µs × {PROMISE_SYNCS}"
    );
    Ok(())
}
