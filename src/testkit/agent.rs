//! The agent binary as a child process, and its configuration as a typed spec.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `posbridge` binary beside the running test or bench executable (cargo puts both in
/// `target/<profile>/`; integration tests run from its `deps/`). `POSBRIDGE_BIN` wins.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POSBRIDGE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let bin = d.join("posbridge");
        if bin.is_file() {
            return bin;
        }
    }
    panic!("no posbridge binary beside {} (build it: cargo build --bins)", exe.display())
}

/// An IP terminal in the spec: id, address, and keys besides `addr` (`op_timeout`, …).
#[derive(Debug, Clone)]
pub struct IpTerminal {
    pub id: String,
    pub addr: String,
    pub settings: Vec<(String, String)>,
}

/// The agent's configuration for a test: the common keys typed, more terminals and
/// sections in `extra` (TOML, merged table by table; `[[terminals]]` are appended).
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub agent_id: String,
    pub broker_port: u16,
    /// More brokers after `broker_port`, tried in order (`mqtt.urls`); empty: `mqtt.url`.
    pub failover_ports: Vec<u16>,
    pub terminals: Vec<IpTerminal>,
    pub queue_depth: usize,
    pub max_bytes: usize,
    pub keep_alive: String,
    pub telemetry_interval: String,
    pub log_level: String,
    /// Without a `[security]` in `extra`, unsigned commands are allowed: most tests send
    /// unsigned ones; the secure default has tests of its own.
    pub extra: String,
}

impl AgentSpec {
    pub fn new(agent_id: &str, broker_port: u16) -> Self {
        AgentSpec {
            agent_id: agent_id.into(),
            broker_port,
            failover_ports: vec![],
            terminals: vec![],
            queue_depth: 16,
            max_bytes: 65536,
            keep_alive: "5s".into(),
            telemetry_interval: "1s".into(),
            log_level: "debug".into(),
            extra: String::new(),
        }
    }

    /// An IP terminal with the tests' `op_timeout` (20 s).
    pub fn ip(self, id: &str, addr: std::net::SocketAddr) -> Self {
        self.ip_with(id, addr, &[("op_timeout", "20s")])
    }

    /// An IP terminal with its own settings (durations as strings).
    pub fn ip_with(
        mut self, id: &str, addr: std::net::SocketAddr, settings: &[(&str, &str)],
    ) -> Self {
        self.terminals.push(IpTerminal {
            id: id.into(),
            addr: addr.to_string(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
        self
    }

    /// The configuration file's text, with the store under `store`.
    pub fn toml(&self, store: &Path) -> String {
        use toml::{Table, Value};
        let table = |pairs: Vec<(&str, Value)>| -> Value {
            Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        let mut t = Table::new();
        t.insert("agent_id".into(), self.agent_id.clone().into());
        let url = |port: &u16| Value::from(format!("mqtt://127.0.0.1:{port}"));
        let broker = match self.failover_ports.is_empty() {
            true => ("url", url(&self.broker_port)),
            false => {
                let all = std::iter::once(&self.broker_port).chain(&self.failover_ports);
                ("urls", Value::Array(all.map(url).collect()))
            }
        };
        t.insert(
            "mqtt".into(),
            table(vec![broker, ("keep_alive", self.keep_alive.clone().into())]),
        );
        t.insert("store".into(), table(vec![("path", store.display().to_string().into())]));
        t.insert(
            "commands".into(),
            table(vec![
                ("queue_depth", (self.queue_depth as i64).into()),
                ("max_bytes", (self.max_bytes as i64).into()),
            ]),
        );
        t.insert(
            "telemetry".into(),
            table(vec![("interval", self.telemetry_interval.clone().into())]),
        );
        t.insert("log".into(), table(vec![("level", self.log_level.clone().into())]));
        let terminals: Vec<Value> = self
            .terminals
            .iter()
            .map(|ip| {
                let mut pairs: Vec<(&str, Value)> = vec![
                    ("id", ip.id.clone().into()),
                    ("kind", "ip".into()),
                    ("addr", ip.addr.clone().into()),
                ];
                pairs.extend(ip.settings.iter().map(|(k, v)| (k.as_str(), v.clone().into())));
                table(pairs)
            })
            .collect();
        t.insert("terminals".into(), Value::Array(terminals));
        let extra: Table = self
            .extra
            .parse()
            .unwrap_or_else(|e| panic!("AgentSpec.extra is not TOML: {e}\n{}", self.extra));
        if !extra.contains_key("security") {
            t.insert("security".into(), table(vec![("allow_unsigned", true.into())]));
        }
        merge(&mut t, extra);
        toml::to_string(&t).expect("serialise the agent config")
    }
}

/// `from` into `into`: tables merge key by key, arrays append, anything else replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b)) => a.extend(b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The agent (`posbridge run`) as a child process; stderr goes to `agent.log` in its
/// directory. Dropping it kills it.
pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// A program to run the agent under (e.g. strace) and its arguments.
    wrapper: Vec<String>,
}

impl Agent {
    /// Write the config into `dir` (store inside it) and start the binary.
    pub fn start(spec: &AgentSpec, dir: &Path) -> Agent {
        Self::start_with(spec, dir, &[], &[])
    }

    pub fn start_with(
        spec: &AgentSpec, dir: &Path, env: &[(&str, &str)], wrapper: &[&str],
    ) -> Agent {
        let config = dir.join("posbridge.toml");
        std::fs::write(&config, spec.toml(&dir.join("store"))).expect("write config");
        let mut a = Agent {
            dir: dir.to_path_buf(),
            config,
            child: None,
            log: dir.join("agent.log"),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn(env);
        a
    }

    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let bin = agent_bin();
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove(crate::faults::ENV)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn agent"));
    }

    /// Start again with the same config and store.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.spawn(env);
    }

    /// kill -9 the agent (a crash, a power cut). Under a wrapper (strace, `BENCH_WRAP`),
    /// the agent first, then the wrapper's other children and the wrapper: a SIGKILL of
    /// the wrapper alone would leave the agent running, detached.
    pub fn kill9(&mut self) {
        // The wrapper reaps it and ends by itself (strace, `sh -c`).
        self.kill9_within(Duration::from_secs(2));
    }

    /// SIGTERM to the agent (under a wrapper, to the agent itself: strace and a shell end
    /// on SIGTERM and leave their child running) and wait for the exit: the agent's exit
    /// status, or its wrapper's, which strace and `sh -c '"$@"; exit $?'` pass on.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let target = self.pid().expect("running");
        let mut c = self.child.take().expect("running");
        super::broker::signal(target, libc::SIGTERM);
        c.wait().expect("wait")
    }

    /// SIGTERM (to the agent, as [`Agent::sigterm`]), and SIGKILL if it has not stopped
    /// within 5 s.
    pub fn stop(&mut self) {
        if let Some(target) = self.pid() {
            super::broker::signal(target, libc::SIGTERM);
        }
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            self.kill9();
        }
    }

    /// Wait for the process to end by itself (a fault-injection abort, a fail-stop).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The agent's process: the child, or under a wrapper (`BENCH_WRAP`, strace) the
    /// wrapper's descendant that runs the agent's binary, so that what is read of it
    /// (memory, CPU, writes) is the agent's. A wrapper that runs the agent in its own
    /// process (`env`, valgrind) is that process.
    pub fn pid(&self) -> Option<u32> {
        let wrapper = self.child.as_ref()?.id();
        if self.wrapper.is_empty() {
            return Some(wrapper);
        }
        let bin = std::fs::canonicalize(agent_bin()).ok();
        let mut todo = vec![wrapper];
        while let Some(p) = todo.pop() {
            let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok();
            if exe.is_some() && exe == bin {
                return Some(p);
            }
            todo.extend(children(p));
        }
        Some(wrapper)
    }

    /// SIGKILL the agent; under a wrapper, give the wrapper `within` to end by itself (a
    /// profiler writing its file), then SIGKILL what is left of it.
    fn kill9_within(&mut self, within: Duration) {
        if let Some(agent) = self.agent_pid() {
            super::broker::signal(agent, libc::SIGKILL);
            if self.wait_exit(within).is_some() {
                return;
            }
        }
        if self.wrapped() {
            if let Some(c) = &self.child {
                for child in children(c.id()) {
                    super::broker::signal(child, libc::SIGKILL);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wrapped(&self) -> bool {
        !self.wrapper.is_empty()
    }

    /// Under a wrapper, the agent's own process when it is not the wrapper's.
    fn agent_pid(&self) -> Option<u32> {
        let wrapper = self.child.as_ref()?.id();
        self.pid().filter(|p| self.wrapped() && *p != wrapper)
    }

    /// A `kB` (or count) field of `/proc/<pid>/status`, e.g. `VmRSS:`.
    pub fn proc_status(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// The file the agent logs to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        let s = self.log();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9_within(Duration::from_secs(30));
    }
}

/// The child processes of `pid` (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_a_valid_config_and_extra_merges() {
        let mut spec =
            AgentSpec::new("shop-1", 1883).ip("ip-1", "127.0.0.1:9000".parse().expect("addr"));
        spec.extra = "topic_prefix = \"t\"\n[commands]\ndefault_ttl = \"30s\"\n[[terminals]]\nid = \"ip-2\"\nkind = \"ip\"\naddr = \"127.0.0.1:9001\"\n".into();
        let text = spec.toml(Path::new("/tmp/store"));
        let c = crate::config::Config::from_toml_str(&text).expect("valid config");
        assert_eq!(c.terminals.len(), 2);
        assert_eq!(c.commands.queue_depth, 16);
        assert_eq!(c.commands.default_ttl, Duration::from_secs(30));
        assert!(c.security.allow_unsigned);
        assert_eq!(c.topic_prefix, "t");
    }
}
