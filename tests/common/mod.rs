//! Black-box test harness: brokers (embedded rumqttd or a real mosquitto), the agent as a
//! child process (so it can be killed with SIGKILL), the IP terminal simulator, and a
//! cloud POS client. Everything on loopback.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::Notify;

pub const BIN: &str = env!("CARGO_BIN_EXE_posbridge");

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------- brokers

pub enum Broker {
    Embedded { port: u16 },
    Mosquitto(Mosquitto),
}

impl Broker {
    pub fn port(&self) -> u16 {
        match self {
            Broker::Embedded { port } => *port,
            Broker::Mosquitto(m) => m.port,
        }
    }
}

pub fn embedded() -> Broker {
    Broker::Embedded {
        port: posbridge::broker::start_embedded().expect("embedded broker"),
    }
}

/// A real mosquitto on loopback, with persistence so sessions survive a restart.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra configuration appended after the plain loopback listener.
    extra: String,
}

pub fn mosquitto_available() -> bool {
    let found = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var_os("POSBRIDGE_REQUIRE_MOSQUITTO").is_some() {
        panic!("POSBRIDGE_REQUIRE_MOSQUITTO is set but mosquitto is not installed");
    }
    if !found {
        eprintln!("SKIP: mosquitto not installed (CI installs it via .ci/run)");
    }
    found
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with(|_| String::new())
    }

    /// Start with extra listeners/settings; `extra` gets the broker's temp dir to put
    /// certificates and password files in.
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = extra(dir.path());
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            extra,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("conf");
        // CRATES.md: nodelay (latency), a deep queue (never drop QoS 1), big messages.
        writeln!(
            f,
            "# As root, mosquitto drops to user mosquitto, which cannot write our temp dir.\nuser root\nper_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nmax_inflight_messages 100\nmessage_size_limit 0\npersistence true\npersistence_location {dir}/\nautosave_interval 1\n",
            port = self.port,
            dir = self.dir.path().display()
        )
        .expect("write conf");
        f.write_all(self.extra.as_bytes())
            .expect("write extra conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        wait_port(self.port);
    }

    /// Graceful stop (SIGTERM: mosquitto saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), libc_sigterm());
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_port(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

fn libc_sigterm() -> i32 {
    15
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

// ---------------------------------------------------------------- agent

pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// A program to run the agent under (e.g. strace) and its arguments.
    wrapper: Vec<String>,
}

pub struct AgentSpec {
    pub agent_id: String,
    pub broker_port: u16,
    pub terminals: Vec<(String, String)>, // (id, addr) of IP terminals
    pub queue_depth: usize,
    pub max_bytes: usize,
    pub extra: String,
}

impl AgentSpec {
    pub fn new(agent_id: &str, broker_port: u16) -> Self {
        AgentSpec {
            agent_id: agent_id.into(),
            broker_port,
            terminals: vec![],
            queue_depth: 16,
            max_bytes: 65536,
            extra: String::new(),
        }
    }

    pub fn ip(mut self, id: &str, addr: std::net::SocketAddr) -> Self {
        self.terminals.push((id.into(), addr.to_string()));
        self
    }

    pub fn toml(&self, store: &Path) -> String {
        let mut s = format!(
            "agent_id = \"{}\"\n{}\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive = \"5s\"\n[store]\npath = \"{}\"\n[commands]\nqueue_depth = {}\nmax_bytes = {}\n[telemetry]\ninterval = \"1s\"\n[log]\nlevel = \"debug\"\n",
            self.agent_id,
            self.extra,
            self.broker_port,
            store.display(),
            self.queue_depth,
            self.max_bytes
        );
        if !self.extra.contains("[security]") {
            // Most tests send unsigned commands; the secure default has tests of its own.
            s.push_str("[security]\nallow_unsigned = true\n");
        }
        for (id, addr) in &self.terminals {
            s.push_str(&format!(
                "[[terminals]]\nid = \"{id}\"\nkind = \"ip\"\naddr = \"{addr}\"\nop_timeout = \"20s\"\n"
            ));
        }
        s
    }
}

impl Agent {
    /// Write the config into a fresh directory (store inside it) and start the binary.
    pub fn start(spec: &AgentSpec, dir: &Path) -> Agent {
        Self::start_with(spec, dir, &[], &[])
    }

    pub fn start_with(
        spec: &AgentSpec,
        dir: &Path,
        env: &[(&str, &str)],
        wrapper: &[&str],
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove(posbridge::faults::ENV)
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 the agent started under a wrapper (strace): the wrapper's children first,
    /// which a SIGKILL of the wrapper would leave running.
    #[allow(dead_code)]
    pub fn kill9_tree(&mut self) {
        if let Some(c) = &self.child {
            let pid = c.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let _ = Command::new("kill").arg("-9").arg(child).status();
            }
        }
        self.kill9();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), libc_sigterm());
        c.wait().expect("wait")
    }

    /// Wait for the process to end by itself (a fault-injection abort).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------- cloud POS

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
    pub retain: bool,
}

/// A cloud POS client that records everything under `{root}/#`.
pub struct Cloud {
    pub client: AsyncClient,
    pub root: String,
    seen: Arc<Mutex<Vec<Msg>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    /// `persistent`: keep a session on the broker (results queue up while the broker
    /// or this client is away).
    pub async fn connect(port: u16, agent_id: &str, client_id: &str, persistent: bool) -> Cloud {
        let root = format!("posbridge/{agent_id}");
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(!persistent)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut el) = AsyncClient::new(o, 1000);
        el.network_options.set_tcp_nodelay(true);
        let seen: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let subscribed = Arc::new(Notify::new());
        let (s2, n2, sub2, c2, r2) = (
            seen.clone(),
            notify.clone(),
            subscribed.clone(),
            client.clone(),
            root.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = c2.subscribe(format!("{r2}/#"), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => sub2.notify_one(),
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if let Ok(mut v) = s2.lock() {
                            v.push(Msg {
                                topic: p.topic.clone(),
                                json,
                                retain: p.retain,
                            });
                        }
                        n2.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), subscribed.notified())
            .await
            .expect("cloud subscribed");
        Cloud {
            client,
            root,
            seen,
            notify,
            task,
        }
    }

    pub async fn send(&self, v: Value) {
        self.send_raw(v.to_string().into_bytes()).await;
    }

    pub async fn send_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("{}/cmd", self.root),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish");
    }

    /// A message the agent published (any topic under its root but `cmd`) whose JSON text
    /// contains `needle`.
    pub fn published_containing(&self, needle: &str) -> Option<String> {
        let cmd = format!("{}/cmd", self.root);
        self.seen.lock().ok().and_then(|v| {
            v.iter()
                .filter(|m| m.topic != cmd)
                .map(|m| format!("{}: {}", m.topic, m.json))
                .find(|t| t.contains(needle))
        })
    }

    pub fn all(&self, sub: &str) -> Vec<Value> {
        let topic = format!("{}/{}", self.root, sub);
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|m| m.topic == topic)
                    .map(|m| m.json.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wait until a message on `{root}/{sub}` satisfies `pred` (messages already seen count).
    pub async fn wait(&self, sub: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_n(sub, within, 1, pred).await.remove(0)
    }

    /// Wait until `n` messages on `{root}/{sub}` satisfy `pred`; returns all that do.
    pub async fn wait_n(
        &self,
        sub: &str,
        within: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.try_wait_n(sub, within, n, pred)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The retained status turns `degraded` (a store failure); on a timeout the panic
    /// carries the agent's log, which says why it did not.
    pub async fn degraded(&self, agent: &Agent) -> Value {
        match self
            .try_wait_n("status", Duration::from_secs(20), 1, |v| {
                v["state"] == "degraded"
            })
            .await
        {
            Ok(mut v) => v.remove(0),
            Err(e) => panic!("{e}\nagent log:\n{}", agent.log()),
        }
    }

    async fn try_wait_n(
        &self,
        sub: &str,
        within: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, String> {
        let topic = format!("{}/{}", self.root, sub);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let found: Vec<Value> = self
                .seen
                .lock()
                .map(|v| {
                    v.iter()
                        .filter(|m| m.topic == topic && pred(&m.json))
                        .map(|m| m.json.clone())
                        .collect()
                })
                .unwrap_or_default();
            if found.len() >= n {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "timed out waiting for {n} message(s) on {topic}; seen: {:#?}",
                    self.seen.lock().map(|v| v.clone()).unwrap_or_default()
                ));
            }
        }
    }

    pub async fn result(&self, id: &str) -> Value {
        let id = Value::String(id.to_string());
        self.wait("result", Duration::from_secs(30), |v| v["id"] == id)
            .await
    }

    pub fn results_for(&self, id: &str) -> Vec<Value> {
        self.all("result")
            .into_iter()
            .filter(|v| v["id"] == id)
            .collect()
    }

    pub async fn online(&self) {
        self.wait("status", Duration::from_secs(20), |v| {
            v["state"] == "online"
        })
        .await;
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn pay(id: &str, terminal: &str, amount: i64) -> Value {
    serde_json::json!({"v":1,"id":id,"op":"payment","terminal":terminal,"amount":amount,"currency":"AZN"})
}

/// Damage a stopped agent's store the way a power cut on an SD card can: garble the
/// headers of sled's config and data files under `dir/store/sled`.
pub fn garble_sled_headers(dir: &Path) {
    let sled_dir = dir.join("store").join("sled");
    for name in ["conf", "db"] {
        let p = sled_dir.join(name);
        if let Ok(mut bytes) = std::fs::read(&p) {
            for b in bytes.iter_mut().take(64) {
                *b ^= 0x5A;
            }
            std::fs::write(&p, bytes).expect("write");
        }
    }
}

/// The first file under `dir` (recursively) whose bytes contain `needle`.
pub fn file_containing(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|e| {
        let p = e.path();
        if p.is_dir() {
            file_containing(&p, needle)
        } else {
            std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                .then_some(p)
        }
    })
}
