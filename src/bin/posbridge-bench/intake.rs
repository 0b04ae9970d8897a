//! Durable intake: a burst of payment commands for 50 terminals, each stored, synced and
//! acknowledged by the agent, against the broker's own QoS 1 throughput.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use rumqttc::QoS;
use serde_json::json;

use crate::floors::floor_throughput;
use crate::kit::{contains, ip_sim, ip_terminal, spec, start_online, Client};
use crate::{Figure, Report};

pub(crate) async fn bench_intake(broker: &Broker, n: usize, out: &mut Report) -> Result<()> {
    let port = broker.port();
    const TERMINALS: usize = 50;
    // Every terminal's first payment hangs at the (slow) simulator; the rest queue behind it.
    let (sim_addr, _sim) = ip_sim(600_000).await?;
    let dir = tempfile::tempdir()?;
    let mut spec = spec("bench-in", port, n / TERMINALS + 10);
    for t in 0..TERMINALS {
        spec = ip_terminal(spec, &format!("t{t}"), &sim_addr)?;
    }
    // `accepted` events are QoS 0 and may be dropped by the broker in a burst (the
    // contract allows it), so they cannot be counted. Instead a `ping` goes last: intake
    // stores and acknowledges in arrival order, so its (QoS 1) result means every payment
    // before it was stored, synced and PUBACKed. Any payment result would be a rejection.
    let mut cloud = Client::of(port, "bench-in", "cloud", "result", true).await?;
    let mut status = Client::of(port, "bench-in", "status", "status", true).await?;
    let agent = start_online(dir.path(), &spec, &mut status).await?;
    let mut cmds: Vec<String> = (0..n)
        .map(|i| {
            json!({"v":1,"id":format!("in-{i}"),"op":"payment","terminal":format!("t{}", i % TERMINALS),"amount":1500,"currency":"AZN"}).to_string()
        })
        .collect();
    let size = cmds.iter().map(String::len).sum::<usize>() / n.max(1);
    cmds.push(json!({"v":1,"id":"in-last","op":"ping"}).to_string());
    let publ = Client::connect(port, "bench-in-pub", None, true).await?;
    let t = Instant::now();
    let c = publ.client.clone();
    let feeder = tokio::spawn(async move {
        for cmd in cmds {
            if c.publish("posbridge/bench-in/cmd", QoS::AtLeastOnce, false, cmd).await.is_err() {
                return;
            }
        }
    });
    let (_, p) = match cloud.recv(Duration::from_secs(120)).await {
        Ok(m) => m,
        Err(e) => bail!("no result for the closing ping: {e:#}\n{}", agent.log_tail(20)),
    };
    if !contains(&p, b"\"in-last\"") {
        bail!("a payment was refused during intake: {}", String::from_utf8_lossy(&p));
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    feeder.abort();
    drop(agent);
    let floor = floor_throughput(port, n, size).await?;
    out.figs.push(Figure {
        name: "durable intake".into(),
        value: rate,
        unit: "cmd/s",
        limit: floor,
        ratio: rate / floor,
        goal: "≥ 0.9 × broker QoS1".into(),
        met: rate >= 0.9 * floor,
    });
    out.json["intake"] = json!({"n": n, "cmd_per_s": rate, "broker_qos1_msg_per_s": floor, "ratio": rate / floor, "payload_bytes": size});
    Ok(())
}
