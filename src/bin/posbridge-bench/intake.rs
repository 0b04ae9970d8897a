//! Durable intake: a burst of payment commands for 50 terminals, each stored, synced and
//! acknowledged by the agent, against the broker's own QoS 1 throughput.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use rumqttc::QoS;
use serde_json::json;

use crate::floors::floor_throughput;
use crate::kit::{
    cmd_topic, contains, cpu_ns, cpu_ns_by_thread, ip_sim, ip_terminals, per_op_by_thread, run_id,
    spec, start_online, Client,
};
use crate::{Figure, Report};

pub(crate) async fn bench_intake(broker: &Broker, n: usize, out: &mut Report) -> Result<()> {
    let port = broker.port();
    const TERMINALS: usize = 50;
    // Every terminal's first payment hangs at the (slow) simulator; the rest queue behind it.
    let (sim_addr, _sim) = ip_sim(600_000).await?;
    let dir = tempfile::tempdir()?;
    let agent_id = run_id("bench-in");
    let spec = ip_terminals(spec(&agent_id, port, n / TERMINALS + 10), "t", TERMINALS, &sim_addr)?;
    // `accepted` events are QoS 0 and may be dropped by the broker in a burst (the
    // contract allows it), so they cannot be counted. Instead a `ping` goes last: intake
    // stores and acknowledges in arrival order, so its (QoS 1) result means every payment
    // before it was stored, synced and PUBACKed. Any payment result would be a rejection.
    let mut cloud = Client::of(port, &agent_id, "cloud", "result", true).await?;
    let mut status = Client::of(port, &agent_id, "status", "status", true).await?;
    let agent = start_online(dir.path(), &spec, &[], &mut status).await?;
    let mut cmds: Vec<String> = (0..n)
        .map(|i| {
            json!({"v":1,"id":format!("in-{i}"),"op":"payment","terminal":format!("t{}", i % TERMINALS),"amount":1500,"currency":"AZN"}).to_string()
        })
        .collect();
    let size = cmds.iter().map(String::len).sum::<usize>() / n.max(1);
    // The closing ping's id names this run's agent too: a result with any other id is not
    // this run's end.
    let last = format!("{agent_id}-last");
    cmds.push(json!({"v":1,"id":last,"op":"ping"}).to_string());
    let publ = Client::connect(port, "bench-in-pub", None, true).await?;
    // Where the CPU goes: the agent's and the broker's, per command, against the broker's
    // per message in the floor run (mosquitto only; the embedded broker has no process).
    let broker_pid = match broker {
        Broker::Mosquitto(m) => m.pid(),
        Broker::Embedded { .. } => None,
    };
    // And this process's (the feeding and receiving clients): on two cores the three
    // share, the sum per command is what bounds the rate.
    let me = Some(std::process::id());
    // The agent's by thread (its total is their sum), the broker's, this process's.
    let cpu = || (cpu_ns_by_thread(agent.pid()), cpu_ns(broker_pid), cpu_ns(me));
    let cpu0 = cpu();
    let t = Instant::now();
    let c = publ.client.clone();
    let cmd_to = cmd_topic(&agent_id);
    let feeder = tokio::spawn(async move {
        for cmd in cmds {
            if c.publish(cmd_to.as_str(), QoS::AtLeastOnce, false, cmd).await.is_err() {
                return;
            }
        }
    });
    let closing = format!("\"{last}\"");
    loop {
        let (_, p) = match cloud.recv(Duration::from_secs(120)).await {
            Ok(m) => m,
            Err(e) => bail!("no result for the closing ping: {e:#}\n{}", agent.log_tail(20)),
        };
        if contains(&p, closing.as_bytes()) {
            break;
        }
        if contains(&p, b"\"in-") {
            bail!("a payment was refused during intake: {}", String::from_utf8_lossy(&p));
        }
        println!(
            "intake: ignored a result that is not this run's: {}",
            String::from_utf8_lossy(&p)
        );
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let cpu1 = cpu();
    feeder.abort();
    drop(agent);
    let (b0, c0) = (cpu_ns(broker_pid), cpu_ns(me));
    let floor = floor_throughput(port, n, size).await?;
    let (b1, c1) = (cpu_ns(broker_pid), cpu_ns(me));
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n as f64 / 1000.0),
        _ => None,
    };
    let total = |by: &Option<std::collections::BTreeMap<String, u64>>| {
        by.as_ref().map(|by| by.values().sum::<u64>())
    };
    let agent_us = per(total(&cpu0.0), total(&cpu1.0));
    let (broker_us, floor_us) = (per(cpu0.1, cpu1.1), per(b0, b1));
    // An agent that stored and acknowledged n commands spent CPU on each: a run where it
    // did not measured something else.
    if let Some(a) = agent_us.filter(|a| *a < 1.0) {
        bail!("the agent spent {a:.2} µs of CPU per command: this run did not measure its intake");
    }
    let (clients_us, floor_clients_us) = (per(cpu0.2, cpu1.2), per(c0, c1));
    if let (Some(a), Some(b), Some(c), Some(f), Some(fc)) =
        (agent_us, broker_us, clients_us, floor_us, floor_clients_us)
    {
        println!(
            "intake: CPU per command: agent {a:.1} µs + broker {b:.1} µs + bench clients {c:.1} µs = {:.1} µs; the broker's floor run, per message: broker {f:.1} µs + clients {fc:.1} µs = {:.1} µs",
            a + b + c,
            f + fc
        );
    }
    // The agent's part by thread: the runtime's workers (MQTT, parsing, the id check, the
    // log), the checkpoint thread (the flood's changes into sled), sled's I/O threads.
    let by_thread = match (&cpu0.0, &cpu1.0) {
        (Some(a), Some(b)) => per_op_by_thread(a, b, n),
        _ => Default::default(),
    };
    if !by_thread.is_empty() {
        let parts: Vec<String> = by_thread
            .iter()
            .filter(|(_, us)| **us >= 0.05)
            .map(|(name, us)| format!("{name} {us:.1} µs"))
            .collect();
        println!("intake: the agent's CPU per command by thread: {}", parts.join(", "));
    }
    out.figs.push(Figure {
        name: "durable intake".into(),
        value: rate,
        unit: "cmd/s",
        limit: floor,
        ratio: rate / floor,
        goal: "≥ 0.9 × broker QoS1".into(),
        met: rate >= 0.9 * floor,
    });
    out.json["intake"] = json!({"n": n, "cmd_per_s": rate, "broker_qos1_msg_per_s": floor, "ratio": rate / floor, "payload_bytes": size,
        "agent_cpu_us_per_cmd": agent_us, "broker_cpu_us_per_cmd": broker_us, "clients_cpu_us_per_cmd": clients_us,
        "broker_cpu_us_per_msg_floor": floor_us, "clients_cpu_us_per_msg_floor": floor_clients_us,
        "agent_cpu_us_per_cmd_by_thread": by_thread});
    Ok(())
}
