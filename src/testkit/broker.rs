//! MQTT brokers for tests and benchmarks: a real mosquitto on loopback (persistent, so
//! sessions survive a restart), or the embedded rumqttd.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (bound and released: another process could take it meanwhile).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// Wait until something listens on `127.0.0.1:port` (at most 5 s).
pub fn wait_port(port: u16) {
    for _ in 0..2500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

pub enum Broker {
    Embedded { port: u16 },
    Mosquitto(Mosquitto),
}

impl Broker {
    /// mosquitto when installed (configured as in the tests), else the embedded broker.
    pub fn start() -> Broker {
        if mosquitto_available() {
            return Broker::Mosquitto(Mosquitto::start());
        }
        Self::embedded()
    }

    #[cfg(feature = "embedded-broker")]
    pub fn embedded() -> Broker {
        Broker::Embedded { port: crate::broker::start_embedded().expect("embedded broker") }
    }

    #[cfg(not(feature = "embedded-broker"))]
    pub fn embedded() -> Broker {
        panic!("no mosquitto installed and built without the embedded-broker feature")
    }

    pub fn port(&self) -> u16 {
        match self {
            Broker::Embedded { port } => *port,
            Broker::Mosquitto(m) => m.port,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Broker::Mosquitto(_) => "mosquitto",
            Broker::Embedded { .. } => "rumqttd (embedded)",
        }
    }
}

/// Is mosquitto installed? With `POSBRIDGE_REQUIRE_MOSQUITTO` set (CI), its absence is a
/// failure, not a skip.
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

/// A real mosquitto on loopback, with persistence so sessions survive a restart.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra configuration appended after the plain loopback listener.
    extra: String,
}

impl Mosquitto {
    /// A started mosquitto when it is installed; `None` (the test skips) otherwise.
    pub fn if_installed() -> Option<Mosquitto> {
        mosquitto_available().then(Mosquitto::start)
    }

    pub fn start() -> Mosquitto {
        Self::start_with(|_| String::new())
    }

    /// The running mosquitto's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start with extra listeners/settings; `extra` gets the broker's temp dir to put
    /// certificates and password files in.
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = extra(dir.path());
        let mut m = Mosquitto { port: free_port(), dir, child: None, extra };
        m.resume();
        m
    }

    /// Start it again after [`Mosquitto::stop`], on the same port with the same sessions.
    pub fn resume(&mut self) {
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
        f.write_all(self.extra.as_bytes()).expect("write extra conf");
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
            sigterm(&c);
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.resume();
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

/// SIGTERM to a child process.
pub(super) fn sigterm(c: &Child) {
    signal(c.id(), libc::SIGTERM);
}

/// Send `sig` to process `pid` (one of ours or its descendant); a gone process is no error.
pub(super) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes two integers; it has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}
