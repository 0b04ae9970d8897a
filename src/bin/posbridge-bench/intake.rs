//! Durable intake: a burst of payment commands for 50 terminals, each stored, synced and
//! acknowledged by the agent, against the broker's own QoS 1 throughput. Measured twice:
//! with the machine's cores split between the broker side and the receiving side (the
//! goal's figure: in a shop the broker is not on the agent's CPU, see `cores`), and on one
//! shared machine (reported, as measured since the first measurement).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use rumqttc::QoS;
use serde_json::json;

use crate::cores::{self, Split};
use crate::floors::floor_throughput;
use crate::kit::{
    cmd_topic, contains, cpu_ns, cpu_ns_by_thread, ip_sim, ip_terminals, per_op_by_thread, run_id,
    spec, start_online, Client,
};
use crate::{Figure, Report};

/// The goal, on the split figure (or on the shared one where the cores cannot be split).
const GOAL: &str = "≥ 0.9 × broker QoS1";

pub(crate) async fn bench_intake(broker: &Broker, n: usize, out: &mut Report) -> Result<()> {
    let split = match Split::of_this_process().map(|s| (Pinned::new(&s, broker_pid(broker)), s)) {
        Some((Ok(pinned), split)) => {
            let m = measure(broker, n, Some(&split.receiver)).await;
            drop(pinned);
            let m = m?;
            println!("{}", m.cpu_line("cores split"));
            Some((m, split))
        }
        // A container whose CPUs cannot be chosen: measured on the machine as it is.
        Some((Err(e), _)) => {
            println!(
                "intake: the cores could not be split ({e:#}): the shared figure stands for it"
            );
            None
        }
        None => {
            println!("intake: one CPU, so no split figure: the shared one stands for it");
            None
        }
    };
    let shared = measure(broker, n, None).await?;
    println!("{}", shared.cpu_line("one machine shared"));
    // `intake` is the goal's figure; the shared one is `intake_shared`, or both when it is
    // all there is.
    match &split {
        Some((m, cpus)) => {
            out.figs.push(m.figure("durable intake", GOAL, true));
            out.figs.push(shared.figure(
                "durable intake, one machine shared",
                "report (the goal's is split)",
                false,
            ));
            out.json["intake"] = m.json(Some(cpus));
        }
        None => {
            out.figs.push(shared.figure("durable intake", GOAL, true));
            out.json["intake"] = shared.json(None);
        }
    }
    out.json["intake_shared"] = shared.json(None);
    Ok(())
}

/// mosquitto's process; the embedded broker runs in this one.
fn broker_pid(broker: &Broker) -> Option<u32> {
    match broker {
        Broker::Mosquitto(m) => m.pid(),
        Broker::Embedded { .. } => None,
    }
}

/// The bench (its clients, an embedded broker) and mosquitto on the broker side's CPUs
/// while it lives; all of this process's CPUs again when dropped, a failed figure's too.
struct Pinned {
    all: Vec<usize>,
    broker_pid: Option<u32>,
}

impl Pinned {
    fn new(split: &Split, broker_pid: Option<u32>) -> Result<Pinned> {
        // Built first, so that a failure half-way is undone by its drop.
        let p = Pinned { all: split.all.clone(), broker_pid };
        cores::pin_process(std::process::id(), &split.broker)?;
        if let Some(pid) = broker_pid {
            cores::pin_process(pid, &split.broker)?;
        }
        Ok(p)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in [Some(std::process::id()), self.broker_pid].into_iter().flatten() {
            if let Err(e) = cores::pin_process(pid, &self.all) {
                eprintln!("intake: could not give process {pid} all its CPUs back: {e}");
            }
        }
    }
}

/// One intake run and its floor, and the CPU each side spent.
struct Measured {
    n: usize,
    size: usize,
    rate: f64,
    floor: f64,
    agent_us: Option<f64>,
    broker_us: Option<f64>,
    clients_us: Option<f64>,
    floor_us: Option<f64>,
    floor_clients_us: Option<f64>,
    by_thread: std::collections::BTreeMap<String, f64>,
}

/// The burst, with the agent (and the floor's subscriber) on `receiver` CPUs when given.
async fn measure(broker: &Broker, n: usize, receiver: Option<&[usize]>) -> Result<Measured> {
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
    if let (Some(cpus), Some(pid)) = (receiver, agent.pid()) {
        // Every thread it has; those it starts later inherit the CPUs.
        cores::pin_process(pid, cpus)?;
    }
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
    let broker_pid = broker_pid(broker);
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
    let floor = floor_throughput(port, n, size, receiver).await?;
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
    // The agent's part by thread: the runtime's workers (MQTT, parsing, the id check, the
    // log), the checkpoint thread (the flood's changes into sled), sled's I/O threads.
    let by_thread = match (&cpu0.0, &cpu1.0) {
        (Some(a), Some(b)) => per_op_by_thread(a, b, n),
        _ => Default::default(),
    };
    Ok(Measured {
        n,
        size,
        rate,
        floor,
        agent_us,
        broker_us,
        clients_us,
        floor_us,
        floor_clients_us,
        by_thread,
    })
}

impl Measured {
    /// Where the CPU went, per command and per floor message, and the agent's by thread.
    fn cpu_line(&self, how: &str) -> String {
        let mut line = format!(
            "intake ({how}): {:.0} cmd/s against the broker's {:.0} msg/s",
            self.rate, self.floor
        );
        if let (Some(a), Some(b), Some(c), Some(f), Some(fc)) =
            (self.agent_us, self.broker_us, self.clients_us, self.floor_us, self.floor_clients_us)
        {
            line += &format!(
                "\n  CPU per command: agent {a:.1} µs + broker {b:.1} µs + bench clients {c:.1} µs = {:.1} µs; the broker's floor run, per message: broker {f:.1} µs + clients {fc:.1} µs = {:.1} µs",
                a + b + c,
                f + fc
            );
        }
        let parts: Vec<String> = self
            .by_thread
            .iter()
            .filter(|(_, us)| **us >= 0.05)
            .map(|(name, us)| format!("{name} {us:.1} µs"))
            .collect();
        if !parts.is_empty() {
            line += &format!("\n  the agent's CPU per command by thread: {}", parts.join(", "));
        }
        line
    }

    fn figure(&self, name: &str, goal: &str, counts: bool) -> Figure {
        Figure {
            name: name.into(),
            value: self.rate,
            unit: "cmd/s",
            limit: self.floor,
            ratio: self.rate / self.floor,
            goal: goal.into(),
            // A report-only figure is never a goal missed.
            met: !counts || self.rate >= 0.9 * self.floor,
        }
    }

    fn json(&self, split: Option<&Split>) -> serde_json::Value {
        json!({"n": self.n, "cmd_per_s": self.rate, "broker_qos1_msg_per_s": self.floor,
            "ratio": self.rate / self.floor, "payload_bytes": self.size,
            "cpus": split.map(|s| json!({"broker": s.broker, "receiver": s.receiver})),
            "agent_cpu_us_per_cmd": self.agent_us, "broker_cpu_us_per_cmd": self.broker_us,
            "clients_cpu_us_per_cmd": self.clients_us,
            "broker_cpu_us_per_msg_floor": self.floor_us,
            "clients_cpu_us_per_msg_floor": self.floor_clients_us,
            "agent_cpu_us_per_cmd_by_thread": self.by_thread})
    }
}
