//! Footprint: idle RSS with one terminal of each of the five kinds (against their
//! simulators), the stripped binary's size, and the time from start to `online`; the idle
//! RSS of an agent with one IP terminal over a minute that starts with a few payments (the
//! issue's setting); and the idle RSS of an agent whose store holds a retention's worth of
//! finished payments.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use posbridge::testkit::Broker;
use serde_json::json;

use crate::kit::{
    agent_bin, cmd_topic, ip_sim, ip_terminal, ip_terminals, production_build, run_id, spec,
    start_online, status_mib, Client,
};
use crate::{Figure, Report};
use rumqttc::QoS;

pub(crate) async fn bench_footprint(broker: &Broker, out: &mut Report) -> Result<()> {
    let port = broker.port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ip_addr, _ip) = ip_sim(0).await?;
    let token = posbridge::sim::token::TokenSim::loopback(
        posbridge::sim::token::SimOptions::default(),
        None,
    )
    .await?;
    let token_addr = token.local_addr();
    token.spawn(shutdown.clone());
    let kaspi = posbridge::sim::kaspi::KaspiSim::bind(
        "127.0.0.1:0".parse()?,
        posbridge::sim::kaspi::SimOptions::default(),
    )
    .await?;
    let kaspi_url = kaspi.url();
    kaspi.spawn(shutdown.clone());
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let pw = posbridge::sim::paywall::PaywallSim::bind(any, Default::default()).await?;
    let kv = posbridge::sim::kuveyt::KuveytSim::bind(any, Default::default()).await?;
    let (pw_url, kv_url) = (pw.base_url("test"), kv.base_url("test"));
    pw.spawn(shutdown.clone());
    kv.spawn(shutdown.clone());
    let dir = tempfile::tempdir()?;
    let fp_id = run_id("bench-fp");
    let (k, s) = (dir.path().join("api_key"), dir.path().join("secret"));
    std::fs::write(&k, "test-api-key")?;
    std::fs::write(&s, "test-secret")?;
    let mut spec = ip_terminal(spec(&fp_id, port, 16), "ip-1", &ip_addr)?;
    spec.extra = format!(
        "[[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{token_addr}\"\n\
         [[terminals]]\nid = \"kaspi-1\"\nkind = \"kaspi\"\nurl = \"{kaspi_url}\"\nprotected = false\n\
         [[terminals]]\nid = \"paywall-1\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"{pw_url}\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\napi_key_file = \"{k}\"\nclient_key_file = \"{s}\"\n\
         [[terminals]]\nid = \"kuveyt-1\"\nkind = \"kuveyt\"\nmode = \"test\"\ntest_url = \"{kv_url}\"\napi_key_file = \"{k}\"\napi_secret_file = \"{s}\"\n",
        k = k.display(),
        s = s.display()
    );
    let mut cloud = Client::of(port, &fp_id, "cloud", "status", true).await?;
    let bin = agent_bin()?;
    let t = Instant::now();
    let agent = start_online(dir.path(), &spec, &[], &mut cloud).await?;
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Idle: let the drivers finish connecting and the allocator settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = status_mib(&agent, "VmRSS:");
    let (anon, file) = (status_mib(&agent, "RssAnon:"), status_mib(&agent, "RssFile:"));
    let threads = agent.proc_status("Threads:").unwrap_or(0);
    println!("footprint: idle RSS {rss:.1} MiB = anon {anon:.1} + file-backed {file:.1} (+ shmem); {threads} threads");
    out.json["footprint_parts"] =
        json!({"rss_anon_mib": anon, "rss_file_mib": file, "threads": threads});
    drop(agent);
    shutdown.cancel();
    let size = std::fs::metadata(&bin)?.len() as f64 / (1024.0 * 1024.0);
    let stripped = {
        let out = dir.path().join("posbridge.stripped");
        let ok = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(&bin)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            std::fs::metadata(&out)?.len() as f64 / (1024.0 * 1024.0)
        } else {
            size
        }
    };
    out.figs.push(Figure {
        name: "idle RSS, 5 terminal kinds".into(),
        value: rss,
        unit: "MiB",
        limit: 8.0,
        ratio: rss / 8.0,
        goal: "≤ 8 MiB".into(),
        met: rss <= 8.0,
    });
    out.figs.push(goal_for_production(Figure {
        name: format!("binary, stripped ({})", std::env::consts::ARCH),
        value: stripped,
        unit: "MiB",
        limit: 8.0,
        ratio: stripped / 8.0,
        goal: "≤ 8 MiB".into(),
        met: stripped <= 8.0,
    })?);
    out.figs.push(Figure {
        name: "start to online".into(),
        value: start_ms,
        unit: "ms",
        limit: 200.0,
        ratio: start_ms / 200.0,
        goal: "≤ 200 ms".into(),
        met: start_ms <= 200.0,
    });
    out.json["footprint"] = json!({"idle_rss_mib": rss, "binary_mib": size, "binary_stripped_mib": stripped, "start_to_online_ms": start_ms, "arch": std::env::consts::ARCH});
    Ok(())
}

/// The RSS of an agent with one IP terminal (the shop's common case): 3 s after it came
/// online, then sampled every second for `watch` after five payments, which map the
/// payment path's code and buffers; the figure is the highest sample. The agent gives the
/// memory a burst used back after `telemetry::IDLE_AFTER` of quiet, so the samples show
/// both the level after work and the level it returns to.
pub(crate) async fn bench_idle_rss(
    broker: &Broker, watch: Duration, out: &mut Report,
) -> Result<()> {
    let port = broker.port();
    let (sim_addr, _sim) = ip_sim(0).await?;
    let dir = tempfile::tempdir()?;
    let idle_id = run_id("bench-idle");
    let spec = ip_terminal(spec(&idle_id, port, 16), "ip-1", &sim_addr)?;
    let mut status = Client::of(port, &idle_id, "status", "status", true).await?;
    let mut cloud = Client::of(port, &idle_id, "cloud", "result", true).await?;
    let agent = start_online(dir.path(), &spec, &[], &mut status).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = status_mib(&agent, "VmRSS:");
    for i in 0..5 {
        let cmd = json!({"v":1,"id":format!("idle-{i}"),"op":"payment","terminal":"ip-1","amount":100,"currency":"AZN"});
        cloud.client.publish(cmd_topic(&idle_id), QoS::AtLeastOnce, false, cmd.to_string()).await?;
        let (_, p) = cloud.recv(Duration::from_secs(20)).await?;
        let v: serde_json::Value = serde_json::from_slice(&p)?;
        if v["state"] != "succeeded" {
            anyhow::bail!("an idle-RSS payment ended {v}");
        }
    }
    let mut samples = Vec::new();
    let t = Instant::now();
    while t.elapsed() < watch {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(status_mib(&agent, "VmRSS:"));
    }
    let (max, last) = (
        samples.iter().copied().fold(started, f64::max),
        samples.last().copied().unwrap_or(started),
    );
    let shown: Vec<String> = samples.iter().step_by(5).map(|v| format!("{v:.1}")).collect();
    println!(
        "footprint: one IP terminal ({}): idle RSS {started:.1} MiB 3 s after online; after 5 payments, every 5 s: {} MiB; highest {max:.1}, last {last:.1}",
        agent_bin()?.display(),
        shown.join(" ")
    );
    out.figs.push(goal_for_production(Figure {
        name: "idle RSS, 1 IP terminal (highest)".into(),
        value: max,
        unit: "MiB",
        limit: 8.0,
        ratio: max / 8.0,
        goal: "≤ 8 MiB".into(),
        met: max <= 8.0,
    })?);
    out.json["idle_rss"] =
        json!({"started_mib": started, "samples_mib": samples, "max_mib": max, "last_mib": last});
    Ok(())
}

/// A goal that issue 17 sets for the production build (`--no-default-features`): the
/// figure says which build it measured, and with the default build (the simulators
/// compiled in) it is a report; `BENCH_AGENT_BIN` runs the figure on a production build.
fn goal_for_production(mut fig: Figure) -> Result<Figure> {
    if production_build(&agent_bin()?) {
        fig.name = format!("{}, production", fig.name);
    } else {
        fig.name = format!("{}, default build", fig.name);
        fig.goal = format!("report ({} in production)", fig.goal);
        fig.met = true;
    }
    Ok(fig)
}

/// Idle RSS of an agent restarted on a store of `n` finished payments (run through the IP
/// simulator, so each record has its journal and result), against the same agent on an
/// empty store: what the records the store keeps (`store.retention`) cost in memory.
pub(crate) async fn bench_store_rss(broker: &Broker, n: usize, out: &mut Report) -> Result<()> {
    const TERMINALS: usize = 4;
    let port = broker.port();
    let (sim_addr, _sim) = ip_sim(0).await?;
    let dir = tempfile::tempdir()?;
    let st_id = run_id("bench-st");
    let spec = ip_terminals(spec(&st_id, port, n / TERMINALS + 10), "ip-", TERMINALS, &sim_addr)?;
    let mut status = Client::of(port, &st_id, "status", "status", true).await?;
    let mut cloud = Client::of(port, &st_id, "cloud", "result", true).await?;
    let idle_rss = |agent: &posbridge::testkit::Agent| {
        (status_mib(agent, "VmRSS:"), status_mib(agent, "RssAnon:"))
    };
    // Idle long enough for the first prune pass (right after the open), which hands the
    // memory the open's checks freed back to the kernel.
    let settle = Duration::from_secs(3);
    let mut agent = start_online(dir.path(), &spec, &[], &mut status).await?;
    tokio::time::sleep(settle).await;
    let (empty, empty_anon) = idle_rss(&agent);
    for i in 0..n {
        let cmd = json!({"v":1,"id":format!("st-{i}"),"op":"payment","terminal":format!("ip-{}", i % TERMINALS),"amount":100 + (i % 900) as i64,"currency":"AZN"});
        cloud.client.publish(cmd_topic(&st_id), QoS::AtLeastOnce, false, cmd.to_string()).await?;
    }
    let mut done = 0;
    while done < n {
        let (_, p) = match cloud.recv(Duration::from_secs(60)).await {
            Ok(m) => m,
            Err(e) => anyhow::bail!("{done}/{n} payments answered: {e:#}\n{}", agent.log_tail(20)),
        };
        let v: serde_json::Value = serde_json::from_slice(&p)?;
        if v["state"] != "succeeded" {
            anyhow::bail!("a store-filling payment ended {v}");
        }
        done += 1;
    }
    agent.stop();
    let agent = start_online(dir.path(), &spec, &[], &mut status).await?;
    tokio::time::sleep(settle).await;
    let (full, full_anon) = idle_rss(&agent);
    let store_mib = dir_bytes(&dir.path().join("store")) as f64 / (1024.0 * 1024.0);
    let per_1000 = (full - empty) / n as f64 * 1000.0;
    println!(
        "footprint: idle RSS on a store of {n} finished payments ({store_mib:.1} MiB on disk): {full:.1} MiB (anon {full_anon:.1}); on an empty store {empty:.1} MiB (anon {empty_anon:.1}): {per_1000:+.2} MiB per 1 000 payments kept"
    );
    out.figs.push(Figure {
        name: format!("idle RSS, store of {n} payments"),
        value: full,
        unit: "MiB",
        limit: empty,
        ratio: full / empty,
        goal: "report (empty store = limit)".into(),
        met: true,
    });
    out.json["store_rss"] = json!({"payments": n, "store_mib": store_mib, "rss_mib": full, "rss_anon_mib": full_anon,
        "empty_rss_mib": empty, "empty_rss_anon_mib": empty_anon, "mib_per_1000_payments": per_1000});
    Ok(())
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
