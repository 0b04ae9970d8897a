//! `posbridge fleet`: many agents in one process against one broker, a cloud load
//! generator, and a report of what the fleet promise looks like at scale: every command
//! answered (lost = 0), none run twice (double = 0, counted by the terminal simulator
//! itself), command → result latency percentiles, and memory per agent.
//!
//! Each agent is `agent::run` as a task with its own store directory, its own IP terminal
//! (one shared simulator process-wide, one connection per agent) and its own MQTT
//! connection. The cloud side is one [`crate::pos::Client`] with a persistent session
//! that sends payments round-robin at `--rate` and resends, once, the ids still
//! unanswered when sending stops (a safe retry by design: the same id is never run again).
//! Faults: `--kill-broker-at S` stops the broker (our own mosquitto) for `--outage` seconds;
//! `--restart PCT@S` stops that share of the agents and starts them again on their stores.
//! Loopback only; the counts and times are bounded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MqttEndpoint};
use crate::pos;
use crate::sim::ip::{IpSim, SimOptions, SimStats};
use crate::testkit::{AgentSpec, Broker};

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// How many agents (tasks in this process, each with its own store and terminal).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
    agents: u64,
    /// Payments per second across the fleet.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=20000))]
    rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// A running broker on loopback (`mqtt://127.0.0.1:PORT`); repeat it for a cluster's
    /// nodes (the agents get them as `mqtt.urls`, the cloud uses the first). Default: a
    /// mosquitto of our own when installed, else the embedded broker.
    #[arg(long)]
    broker: Vec<String>,
    /// Stop the broker this many seconds into the run, for `--outage` seconds: our own
    /// mosquitto, or with `--kill-cmd` a node of a cluster given by `--broker`.
    #[arg(long)]
    kill_broker_at: Option<u64>,
    /// The shell command that kills a broker node (with `--broker`), e.g.
    /// `deploy/rabbitmq-cluster.sh kill 1`.
    #[arg(long, requires = "kill_broker_at")]
    kill_cmd: Option<String>,
    /// The shell command that brings it back after `--outage` (optional).
    #[arg(long, requires = "kill_cmd")]
    revive_cmd: Option<String>,
    /// How long the broker stays down.
    #[arg(long, default_value_t = 3)]
    outage: u64,
    /// Restart a share of the agents: `PCT@SECONDS`, e.g. `10@20` stops 10 % of them 20 s
    /// into the run and starts them again on their stores.
    #[arg(long)]
    restart: Option<String>,
    /// Where the agents' stores go (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long to wait for the last results once sending has stopped, in seconds.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Also write the report (one JSON object) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One running agent.
struct Member {
    id: String,
    cfg_text: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Member {
    fn start(id: String, cfg_text: String) -> anyhow::Result<Member> {
        let cfg = Config::from_toml_str(&cfg_text).with_context(|| format!("{id}: config"))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::agent::run(cfg, stop.clone()));
        Ok(Member { id, cfg_text, stop, task })
    }

    /// Stop in order (the agent's own shutdown) and start again on the same store.
    async fn restart(self) -> anyhow::Result<Member> {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{}: stopped with {e:#}", self.id),
            Err(e) => bail!("{}: {e}", self.id),
        }
        Member::start(self.id, self.cfg_text)
    }
}

/// What the run saw.
#[derive(Default)]
struct Tally {
    sent_at: HashMap<String, Instant>,
    /// First result per id: its state and latency.
    done: HashMap<String, (String, Duration)>,
    /// Results for ids already answered (delivery is at least once).
    redelivered: u64,
    /// Results for ids this run did not send.
    foreign: u64,
    /// `error.code` of the results that have one, counted.
    errors: HashMap<String, u64>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Let this process open what a fleet needs (per agent: its MQTT and terminal sockets,
/// the simulator's side, store files): the soft limit up to the hard one.
fn raise_fd_limit(agents: u64) -> anyhow::Result<()> {
    let need = agents * 12 + 256;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur >= need as libc::rlim_t {
        return Ok(());
    }
    lim.rlim_cur = lim.rlim_max.min(need as libc::rlim_t);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if lim.rlim_cur < need as libc::rlim_t {
        bail!(
            "{agents} agents need about {need} open files; this shell allows {} (ulimit -Hn): \
             run fewer agents or raise the limit",
            lim.rlim_max
        );
    }
    Ok(())
}

/// `PCT@SECONDS`.
fn parse_restart(s: &str) -> anyhow::Result<(u64, u64)> {
    let (p, t) = s.split_once('@').context("--restart PCT@SECONDS, e.g. 10@20")?;
    let (p, t): (u64, u64) = (p.trim().parse()?, t.trim().parse()?);
    if p == 0 || p > 100 {
        bail!("--restart: the share is a percentage, 1 to 100");
    }
    Ok((p, t))
}

/// The brokers given, checked to be on loopback: (host, port) each.
fn loopback_brokers(urls: &[String]) -> anyhow::Result<Vec<(String, u16)>> {
    urls.iter()
        .map(|u| {
            let ep = MqttEndpoint::parse("--broker", u)?;
            let lo = ep.host == "localhost"
                || ep.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !lo || ep.tls {
                bail!("--broker {u:?}: the fleet tool runs on loopback only, plain mqtt://");
            }
            Ok((ep.host, ep.port))
        })
        .collect()
}

pub async fn run(a: FleetArgs) -> anyhow::Result<bool> {
    raise_fd_limit(a.agents)?;
    let restart = a.restart.as_deref().map(parse_restart).transpose()?;
    let given = loopback_brokers(&a.broker)?;
    let mut own: Option<Broker> = None;
    let ports: Vec<u16> = if given.is_empty() {
        let b = Broker::start();
        let p = b.port();
        own = Some(b);
        vec![p]
    } else {
        given.iter().map(|(_, p)| *p).collect()
    };
    if a.kill_broker_at.is_some()
        && a.kill_cmd.is_none()
        && !matches!(own, Some(Broker::Mosquitto(_)))
    {
        bail!("--kill-broker-at needs the fleet's own mosquitto (no --broker; mosquitto installed) or --kill-cmd");
    }
    let broker_name = match &own {
        Some(b) => format!("{} (own)", b.name()),
        None => a.broker.join(","),
    };
    let tmp = tempfile::tempdir()?;
    let base = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    // One simulated terminal per AGENTS_PER_SIM agents (a simulator serves at most
    // `sim::listen::MAX_CONNECTIONS` connections, and each agent keeps one).
    let sim_stop = CancellationToken::new();
    let mut sims = Vec::new();
    for _ in 0..a.agents.div_ceil(AGENTS_PER_SIM) {
        let sim = IpSim::loopback(SimOptions::approving(None, 0)).await?;
        sims.push((sim.local_addr(), sim.stats()));
        sim.spawn(sim_stop.clone());
    }
    let stats: Vec<SimStats> = sims.iter().map(|(_, s)| s.clone()).collect();

    // The cloud: one persistent session, subscribed to every agent's status and results,
    // on the last broker given (the agents start on the first: on a cluster, killing the
    // agents' node leaves the cloud where it is).
    let cloud_port = ports[ports.len() - 1];
    let mut o =
        pos::Options::loopback(cloud_port, &format!("fleet-cloud-{}", std::process::id()), None);
    o.clean = false;
    o.keep_alive = Duration::from_secs(30);
    o.capacity = 100_000;
    o.subscribe = vec!["posbridge/+/status".into(), "posbridge/+/result".into()];
    let mut cloud = pos::Client::connect(o, Duration::from_secs(10)).await?;

    let rss_before = rss_kib();
    let started = Instant::now();
    let mut members: Vec<Option<Member>> = Vec::new();
    for i in 0..a.agents {
        let id = format!("fleet-{i:05}");
        let dir = base.join(&id);
        std::fs::create_dir_all(&dir)?;
        let sim_addr = sims[(i / AGENTS_PER_SIM) as usize].0;
        let mut spec = AgentSpec::new(&id, ports[0]).ip("ip-1", sim_addr);
        spec.failover_ports = ports[1..].to_vec();
        spec.log_level = "error".into();
        spec.telemetry_interval = "30s".into();
        spec.keep_alive = "30s".into();
        members.push(Some(Member::start(id, spec.toml(&dir.join("store")))?));
        // Start in slices, so a thousand stores do not open at once.
        if i % 50 == 49 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut online = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30 + a.agents / 10);
    while online.len() < a.agents as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = cloud.recv(left).await else {
            bail!("only {} of {} agents came online", online.len(), a.agents);
        };
        if m.topic.ends_with("/status") && json_of(&m)["state"] == "online" {
            online.insert(m.topic);
        }
    }
    let start_s = started.elapsed().as_secs_f64();
    let rss_online = rss_kib();
    eprintln!("fleet: {} agents online in {start_s:.1} s on {broker_name}", a.agents);

    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let receiver = {
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(m) = cloud.next().await {
                if !m.topic.ends_with("/result") {
                    continue;
                }
                let v = json_of(&m);
                let (Some(id), Some(state)) = (v["id"].as_str(), v["state"].as_str()) else {
                    continue;
                };
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                let Some(at) = t.sent_at.get(id).copied() else {
                    t.foreign += 1;
                    continue;
                };
                if t.done.contains_key(id) {
                    t.redelivered += 1;
                } else {
                    if let Some(code) = v["error"]["code"].as_str() {
                        *t.errors.entry(format!("{state}/{code}")).or_default() += 1;
                    }
                    t.done.insert(id.to_string(), (state.to_string(), at.elapsed()));
                }
            }
        })
    };
    let sender = pos::Client::connect(
        {
            let mut o = pos::Options::loopback(
                cloud_port,
                &format!("fleet-load-{}", std::process::id()),
                None,
            );
            o.clean = false;
            o.capacity = 100_000;
            o
        },
        Duration::from_secs(10),
    )
    .await?;

    // Send at `rate` for `duration`, in 10 ms ticks. The faults run beside the load, at
    // their times, in tasks of their own.
    let run_start = Instant::now();
    let outage = match (a.kill_broker_at, own.take()) {
        (Some(at), b) if a.kill_cmd.is_some() => {
            own = b;
            let (kill, revive) = (a.kill_cmd.clone().unwrap_or_default(), a.revive_cmd.clone());
            let down = Duration::from_secs(a.outage);
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(at)).await;
                eprintln!("fleet: at {at} s: {kill}");
                shell(&kill).await;
                if let Some(revive) = revive {
                    tokio::time::sleep(down).await;
                    eprintln!("fleet: {revive}");
                    shell(&revive).await;
                }
                None
            }))
        }
        (Some(at), Some(Broker::Mosquitto(mut m))) => {
            let down = Duration::from_secs(a.outage);
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(at)).await;
                eprintln!("fleet: broker stopped at {at} s for {} s", down.as_secs());
                m.stop();
                tokio::time::sleep(down).await;
                m.resume();
                eprintln!("fleet: broker back");
                Some(Broker::Mosquitto(m))
            }))
        }
        (_, b) => {
            own = b;
            None
        }
    };
    let ids: Vec<String> = members.iter().flatten().map(|m| m.id.clone()).collect();
    let restarting = restart.map(|(pct, at)| {
        let n = (members.len() * pct as usize).div_ceil(100);
        let slice: Vec<Member> = members.iter_mut().take(n).filter_map(Option::take).collect();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(at)).await;
            eprintln!("fleet: restarting {} agents at {at} s", slice.len());
            let mut set = tokio::task::JoinSet::new();
            for m in slice {
                set.spawn(m.restart());
            }
            let mut back = Vec::new();
            while let Some(r) = set.join_next().await {
                back.push(r.map_err(anyhow::Error::from).and_then(|r| r));
            }
            back
        })
    });
    let total = a.rate * a.duration;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < total {
        tick.tick().await;
        let due = ((run_start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while sent < due {
            let agent = &ids[(sent % ids.len() as u64) as usize];
            let id = format!("{agent}-p{sent}");
            let cmd = json!({"v":1,"id":id,"op":"payment","terminal":"ip-1",
                "amount": 100 + (sent % 900) as i64,"currency":"AZN"});
            tally.lock().unwrap_or_else(|p| p.into_inner()).sent_at.insert(id, Instant::now());
            sender.send(&pos::root(agent), cmd.to_string().into_bytes()).await?;
            sent += 1;
        }
    }
    // The faults end before the settling starts.
    let broker_killed = outage.is_some();
    if let Some(t) = outage {
        if let Some(b) = t.await? {
            own = Some(b);
        }
    }
    let mut restarted = 0;
    if let Some(t) = restarting {
        for m in t.await? {
            members.push(Some(m?));
            restarted += 1;
        }
    }
    let send_s = run_start.elapsed().as_secs_f64();

    // Wait for the rest; resend (same id: safe) what is still unanswered halfway.
    let settle_until = Instant::now() + Duration::from_secs(a.settle);
    let resend_at = Instant::now() + Duration::from_secs(a.settle / 2);
    let mut resent = 0u64;
    loop {
        let missing: Vec<String> = {
            let t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.sent_at.keys().filter(|id| !t.done.contains_key(*id)).cloned().collect()
        };
        if missing.is_empty() || Instant::now() >= settle_until {
            break;
        }
        if resent == 0 && Instant::now() >= resend_at {
            for id in &missing {
                let agent = id.rsplit_once("-p").map_or(id.as_str(), |(a, _)| a);
                let n: i64 = id.rsplit_once("-p").and_then(|(_, n)| n.parse().ok()).unwrap_or(0);
                let cmd = json!({"v":1,"id":id,"op":"payment","terminal":"ip-1",
                    "amount": 100 + n % 900,"currency":"AZN"});
                sender.send(&pos::root(agent), cmd.to_string().into_bytes()).await?;
            }
            resent = missing.len() as u64;
            eprintln!("fleet: resent {resent} unanswered ids");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.abort();
    let rss_end = rss_kib();

    let report = {
        let t = tally.lock().unwrap_or_else(|p| p.into_inner());
        report(
            &a,
            &t,
            &stats,
            Report {
                broker: broker_name,
                sent,
                resent,
                send_s,
                start_s,
                restarted,
                broker_killed,
                rss_before,
                rss_online,
                rss_end,
            },
        )
    };
    let members: Vec<Member> = members.into_iter().flatten().collect();
    for m in &members {
        m.stop.cancel();
    }
    let stopping = async {
        for m in members {
            let _ = m.task.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), stopping).await.is_err() {
        eprintln!("fleet: some agents did not stop within 30 s");
    }
    drop(own);
    sim_stop.cancel();
    print_report(&report);
    if let Some(p) = &a.json {
        std::fs::write(p, report.to_string()).with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(report["lost"] == 0 && report["double"] == 0 && report["phantom"] == 0)
}

/// Run a fault command through `sh -c`; its failure is reported, not fatal.
async fn shell(cmd: &str) {
    match tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("fleet: {cmd:?} exited with {s}"),
        Err(e) => eprintln!("fleet: {cmd:?}: {e}"),
    }
}

fn json_of(m: &pos::Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

struct Report {
    broker: String,
    sent: u64,
    resent: u64,
    send_s: f64,
    start_s: f64,
    restarted: usize,
    broker_killed: bool,
    rss_before: u64,
    rss_online: u64,
    rss_end: u64,
}

/// Agents per simulated terminal process-wide.
const AGENTS_PER_SIM: u64 = 50;

fn report(a: &FleetArgs, t: &Tally, stats: &[SimStats], r: Report) -> Value {
    let mut lat: Vec<f64> = t.done.values().map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[(((lat.len() - 1) as f64) * p).round() as usize]
    };
    let mut by_state: HashMap<&str, u64> = HashMap::new();
    for (s, _) in t.done.values() {
        *by_state.entry(s.as_str()).or_default() += 1;
    }
    // Counted by the terminal itself: runs per ref (the command id).
    let (mut double, mut phantom) = (0u64, 0u64);
    for (id, (state, _)) in &t.done {
        let runs: u32 = stats.iter().map(|s| s.executions(id)).sum();
        if runs > 1 {
            double += 1;
        }
        if state == "succeeded" && runs == 0 {
            phantom += 1;
        }
    }
    let per_agent = |kib: u64| (kib.saturating_sub(r.rss_before)) as f64 / a.agents as f64;
    json!({
        "agents": a.agents, "broker": r.broker, "rate_per_s": a.rate, "duration_s": a.duration,
        "send_s": r.send_s, "start_s": r.start_s,
        "sent": r.sent, "results": t.done.len(), "by_state": by_state, "errors": t.errors,
        "lost": r.sent.saturating_sub(t.done.len() as u64), "double": double, "phantom": phantom,
        "resent": r.resent, "redelivered": t.redelivered, "foreign": t.foreign,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "executions": stats.iter().map(SimStats::total_executions).sum::<u64>(),
        "faults": {"broker_killed": r.broker_killed, "agents_restarted": r.restarted},
        "rss_kib": {"before": r.rss_before, "online": r.rss_online, "end": r.rss_end},
        "rss_per_agent_kib": {"online": per_agent(r.rss_online), "end": per_agent(r.rss_end)},
    })
}

fn print_report(r: &Value) {
    let ms = |k: &str| r["latency_ms"][k].as_f64().unwrap_or(f64::NAN);
    println!("| {:<34} | {:>16} |", "fleet", "");
    println!("|{}|{}|", "-".repeat(36), "-".repeat(18));
    let rows: Vec<(&str, String)> = vec![
        ("agents", r["agents"].to_string()),
        ("broker", r["broker"].as_str().unwrap_or("").to_string()),
        ("commands sent", r["sent"].to_string()),
        ("results (one per id)", r["results"].to_string()),
        ("lost (must be 0)", r["lost"].to_string()),
        ("executed twice (must be 0)", r["double"].to_string()),
        ("succeeded, never executed (0)", r["phantom"].to_string()),
        ("resent after sending stopped", r["resent"].to_string()),
        ("results delivered again", r["redelivered"].to_string()),
        ("command → result p50", format!("{:.1} ms", ms("p50"))),
        ("command → result p99", format!("{:.1} ms", ms("p99"))),
        ("command → result max", format!("{:.1} ms", ms("max"))),
        (
            "memory per agent (online)",
            format!("{:.0} KiB", r["rss_per_agent_kib"]["online"].as_f64().unwrap_or(0.0)),
        ),
        ("start to all online", format!("{:.1} s", r["start_s"].as_f64().unwrap_or(0.0))),
    ];
    for (k, v) in rows {
        println!("| {k:<34} | {v:>16} |");
    }
    println!("FLEET_JSON {r}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert_eq!(parse_restart("10@20").expect("ok"), (10, 20));
        for bad in ["10", "0@5", "101@5", "x@1"] {
            assert!(parse_restart(bad).is_err(), "{bad}");
        }
        assert!(
            loopback_brokers(&["mqtt://127.0.0.1:1883".into(), "mqtt://[::1]:1884".into()]).is_ok()
        );
        for bad in ["mqtt://192.0.2.1:1883", "mqtts://127.0.0.1:8883", "mqtt://example.com"] {
            assert!(loopback_brokers(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
