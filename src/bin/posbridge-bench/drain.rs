//! Outbox drain: a store holding `n` results, the agent started while the broker is away,
//! and the time until the cloud has every result after the broker returns (mosquitto only).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use serde_json::{json, Value};

use crate::kit::{pause, resume, run_id, spec, start_agent, Client};
use crate::{Figure, Report};

pub(crate) async fn bench_drain(broker: &mut Broker, n: usize, out: &mut Report) -> Result<()> {
    if matches!(broker, Broker::Embedded { .. }) {
        println!("drain: skipped (needs mosquitto: the embedded broker cannot be restarted)");
        return Ok(());
    }
    let port = broker.port();
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let agent_id = run_id("bench-dr");
    // A persistent cloud session, so results published while it reconnects are queued.
    {
        let c = Client::of(port, &agent_id, "cloud", "result", false).await?;
        c.client.disconnect().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pause(broker)?;
    // The outbox, filled with n results as the engine writes them, then closed.
    {
        let (store, _) = posbridge::store::Store::open(&store_dir)?;
        for i in 0..n {
            let mut rej = posbridge::api::Rejection::new(
                posbridge::api::ErrorCode::Busy,
                format!("bench result {i}: terminal busy (commands.queue_depth)"),
            );
            rej.id = Some(format!("dr-{i}"));
            let msg = posbridge::store::OutMsg::result(&posbridge::api::ResultMsg::rejected(&rej));
            store.write(&[], &[msg])?;
        }
        store.commit().await?;
    }
    let agent = start_agent(dir.path(), &spec(&agent_id, port, 16), &[])?;
    // The agent is up, has tried and failed to connect; the broker is away 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    resume(broker);
    let t = Instant::now();
    let mut cloud = Client::of(port, &agent_id, "cloud", "result", false).await?;
    let mut got = std::collections::HashSet::new();
    // The first result marks the agent's reconnect: how the figure splits between the
    // reconnect cycle (the agent's backoff) and the drain itself.
    let mut first = None;
    while got.len() < n {
        let (_, p) = match cloud.recv(Duration::from_secs(60)).await {
            Ok(m) => m,
            Err(e) => bail!("{}/{n} delivered: {e:#}\n{}", got.len(), agent.log_tail(20)),
        };
        first.get_or_insert_with(|| t.elapsed());
        let v: Value = serde_json::from_slice(&p)?;
        if let Some(id) = v["id"].as_str() {
            got.insert(id.to_string());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    drop(agent);
    let first_ms = first.map_or(0.0, |f| f.as_secs_f64() * 1000.0);
    println!(
        "drain: first result {first_ms:.0} ms after the broker returned (the agent's reconnect), all {n} {:.0} ms after that",
        secs * 1000.0 - first_ms
    );
    out.figs.push(Figure {
        name: format!("outbox drain ({n})"),
        value: secs * 1000.0,
        unit: "ms",
        limit: 500.0,
        ratio: secs / 0.5,
        goal: "≤ 0.5 s after broker returns".into(),
        met: secs <= 0.5,
    });
    out.json["drain"] = json!({"n": n, "ms_after_broker_returns": secs * 1000.0, "outage_s": 3,
        "first_result_ms": first_ms, "ms_after_first_result": secs * 1000.0 - first_ms});
    Ok(())
}
