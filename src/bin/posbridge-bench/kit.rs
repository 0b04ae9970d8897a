//! The test kit (`posbridge::testkit`) as the bench uses it: [`Client`] (the cloud-side
//! [`pos::Client`] with the bench's error handling), the agent binary found or built next to this
//! one, an [`AgentSpec`] for one figure, the agent started on it, the broker paused and
//! resumed, an IP simulator, the wait for the agent's `online` status, and a byte search
//! in payloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use posbridge::pos;
use posbridge::testkit::{Agent, AgentSpec, Broker};

/// A [`pos::Client`] with the bench's error handling and a deep request queue.
pub(crate) struct Client(pos::Client);

impl Client {
    pub(crate) async fn connect(
        port: u16, id: &str, sub: Option<&str>, clean: bool,
    ) -> Result<Client> {
        let mut o = pos::Options::loopback(port, id, sub);
        o.clean = clean;
        o.keep_alive = Duration::from_secs(30);
        o.capacity = 100_000;
        Ok(Client(pos::Client::connect(o, Duration::from_secs(10)).await?))
    }

    /// The client `<agent_id>-<name>`, subscribed to the agent's `topic` (`#`: all).
    pub(crate) async fn of(
        port: u16, agent_id: &str, name: &str, topic: &str, clean: bool,
    ) -> Result<Client> {
        let sub = format!("{}/{topic}", pos::root(agent_id));
        Self::connect(port, &format!("{agent_id}-{name}"), Some(&sub), clean).await
    }

    pub(crate) async fn recv(&mut self, within: Duration) -> Result<(String, bytes::Bytes)> {
        let m = self.0.recv(within).await.context("timed out waiting for a message")?;
        Ok((m.topic, m.payload))
    }
}

impl std::ops::Deref for Client {
    type Target = pos::Client;
    fn deref(&self) -> &pos::Client {
        &self.0
    }
}

/// `base` with this process's count of agents so far (`bench-in-3`): each run's agent gets a
/// client id, and so a broker session and topics, of its own. With one id for every run,
/// whatever the broker kept for a killed agent's session, or a late result of it, could
/// reach the next run (an `intake` run of 4 million commands a second, its agent's CPU
/// unmoved: performance.md, fourteenth measurement).
pub(crate) fn run_id(base: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static AGENTS: AtomicUsize = AtomicUsize::new(0);
    format!("{base}-{}", AGENTS.fetch_add(1, Ordering::Relaxed))
}

/// The topic the agent `agent_id` takes commands on.
pub(crate) fn cmd_topic(agent_id: &str) -> String {
    format!("{}/cmd", pos::root(agent_id))
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn agent_bin() -> Result<PathBuf> {
    // `BENCH_AGENT_BIN=…`: another build of the agent (the production build, say:
    // `cargo build --release --no-default-features --bin posbridge --target-dir target/prod`).
    if let Some(p) = std::env::var_os("BENCH_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("posbridge");
    if !bin.exists() {
        // `cargo run --bin posbridge-bench` builds only this binary: build the agent too.
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = if cfg!(debug_assertions) { vec![] } else { vec!["--release"] };
            let st =
                Command::new(cargo).args(["build", "--bin", "posbridge"]).args(profile).status()?;
            if !st.success() {
                bail!("cargo build --bin posbridge failed");
            }
        }
    }
    if !bin.exists() {
        bail!("{} not found: run `cargo build --release --bins` first", bin.display());
    }
    Ok(bin)
}

/// A new directory for an agent's files (its store, its configuration), under
/// `BENCH_STORE_DIR` when that is set, else the system's temporary directory. Given a file
/// system of its own (a loop-mounted ext4, say), the device counter `e2e` and `soak` read
/// then counts the agent's writes alone, its file system's journal included
/// (`docs/performance.md`).
pub(crate) fn agent_dir() -> Result<tempfile::TempDir> {
    Ok(match std::env::var_os("BENCH_STORE_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    })
}

/// Whether `bin` is a production build (`--no-default-features`: no simulators but the IP
/// terminal's), which the footprint goals are for.
pub(crate) fn production_build(bin: &Path) -> bool {
    Command::new(bin)
        .args(["sim", "--help"])
        .output()
        .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("token"))
        .unwrap_or(false)
}

/// The agent for one figure: unsigned commands, quiet logs (BENCH_LOG=debug to see what it
/// does; logging costs time), no telemetry during the run.
pub(crate) fn spec(agent_id: &str, port: u16, queue_depth: usize) -> AgentSpec {
    AgentSpec {
        queue_depth,
        keep_alive: "30s".into(),
        telemetry_interval: "60s".into(),
        log_level: std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ..AgentSpec::new(agent_id, port)
    }
}

/// An IP terminal with customer time allowed for.
pub(crate) fn ip_terminal(s: AgentSpec, id: &str, addr: &str) -> Result<AgentSpec> {
    Ok(s.ip_with(id, addr.parse()?, &[("op_timeout", "120s")]))
}

/// `n` IP terminals `{prefix}0` … at the same simulator.
pub(crate) fn ip_terminals(
    mut s: AgentSpec, prefix: &str, n: usize, addr: &str,
) -> Result<AgentSpec> {
    for t in 0..n {
        s = ip_terminal(s, &format!("{prefix}{t}"), addr)?;
    }
    Ok(s)
}

/// A `kB` field of the agent's `/proc/<pid>/status` (`VmRSS:`, `RssAnon:` …) in MiB.
pub(crate) fn status_mib(agent: &Agent, field: &str) -> f64 {
    agent.proc_status(field).unwrap_or(0) as f64 / 1024.0
}

/// The agent started on `spec` in `dir`, with `env` set in its environment (a test
/// build's variables: the stages file, a short retention, the checkpoint bound).
pub(crate) fn start_agent(dir: &Path, spec: &AgentSpec, env: &[(&str, &str)]) -> Result<Agent> {
    // The kit's Agent runs the binary named here (built if missing).
    std::env::set_var("POSBRIDGE_BIN", agent_bin()?);
    // `BENCH_WRAP="heaptrack -o /tmp/agent"`: the agent under a profiler (its figures
    // then describe the profiler too: for finding where memory goes, not for numbers).
    // The kit reads and signals (stops, kills) the agent's own process, the wrapper's child.
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let wrapper: Vec<&str> = wrap.split_whitespace().collect();
    Ok(Agent::start_with(spec, dir, env, &wrapper))
}

/// Graceful broker stop (mosquitto saves its sessions) and start again.
pub(crate) fn pause(broker: &mut Broker) -> Result<()> {
    match broker {
        Broker::Mosquitto(m) => {
            m.stop();
            Ok(())
        }
        Broker::Embedded { .. } => bail!("the embedded broker cannot be restarted"),
    }
}

pub(crate) fn resume(broker: &mut Broker) {
    if let Broker::Mosquitto(m) = broker {
        m.resume();
    }
}

pub(crate) async fn ip_sim(delay_ms: u64) -> Result<(String, tokio_util::sync::CancellationToken)> {
    use posbridge::sim::ip::{IpSim, SimOptions};
    let stop = tokio_util::sync::CancellationToken::new();
    let sim = IpSim::loopback(SimOptions::approving(Some(1), delay_ms)).await?;
    let addr = sim.local_addr().to_string();
    sim.spawn(stop.clone());
    Ok((addr, stop))
}

/// The agent started on `spec` in `dir`, once `status` (subscribed to its status) saw it
/// online; else the error with the log's tail.
pub(crate) async fn start_online(
    dir: &Path, spec: &AgentSpec, env: &[(&str, &str)], status: &mut Client,
) -> Result<Agent> {
    let agent = start_agent(dir, spec, env)?;
    if let Err(e) = wait_online(status, Duration::from_secs(20)).await {
        bail!("{e:#}\n{}", agent.log_tail(20));
    }
    Ok(agent)
}

pub(crate) async fn wait_online(c: &mut Client, within: Duration) -> Result<()> {
    if !c.0.online(within).await {
        bail!("agent never came online");
    }
    Ok(())
}

/// CPU time the live threads of process `pid` have run so far, in ns
/// (`/proc/<pid>/task/*/schedstat`, first field).
pub(crate) fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    Some(cpu_ns_by_thread(pid)?.values().sum())
}

/// [`cpu_ns`] by thread name, threads of one pool together (`sled-io-0`, `sled-io-1`, …
/// are `sled-io`): what explains where a figure's CPU went (the runtime's workers, the
/// checkpoint thread putting changes into sled, sled's I/O threads). A thread that ended
/// meanwhile is no longer counted.
pub(crate) fn cpu_ns_by_thread(pid: Option<u32>) -> Option<BTreeMap<String, u64>> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", pid?)).ok()?;
    let mut by = BTreeMap::new();
    for t in tasks.flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let ns = s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        *by.entry(thread_group(name.trim())).or_insert(0) += ns;
    }
    Some(by)
}

/// A thread's name without a pool's trailing `-<number>`.
pub(crate) fn thread_group(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((pool, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => pool.into(),
        _ => name.into(),
    }
}

/// µs of CPU per operation of each thread group between two [`cpu_ns_by_thread`] readings
/// (a group that started meanwhile counts from zero).
pub(crate) fn per_op_by_thread(
    before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, ops: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, ns)| {
            let was = before.get(name).copied().unwrap_or(0);
            (name.clone(), ns.saturating_sub(was) as f64 / ops.max(1) as f64 / 1000.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_grouped_by_name() {
        assert_eq!(thread_group("sled-io-12"), "sled-io");
        assert_eq!(thread_group("posbridge-ckpt"), "posbridge-ckpt");
        assert_eq!(thread_group("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_group("x-"), "x-");
    }

    /// A named thread that burns CPU shows under its name, and its time between two
    /// readings is what it ran.
    #[test]
    fn a_threads_cpu_is_found_under_its_name() {
        let me = Some(std::process::id());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("bench-burn-7".into())
            .spawn(move || {
                let _ = wait.recv();
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(50) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                }
                let _ = done.send(());
                // Alive until read: an ended thread is no longer counted.
                std::thread::park();
            })
            .expect("spawn");
        let before = cpu_ns_by_thread(me).expect("readable");
        go.send(()).expect("go");
        finished.recv().expect("burned");
        let after = cpu_ns_by_thread(me).expect("readable");
        let per = per_op_by_thread(&before, &after, 1);
        worker.thread().unpark();
        let burned = per.get("bench-burn").copied().unwrap_or(0.0);
        assert!(burned >= 20_000.0, "bench-burn ran {burned} µs of a 50 ms spin: {per:?}");
    }
}
