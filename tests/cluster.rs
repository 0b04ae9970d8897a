//! posbridge on a 3-node RabbitMQ cluster (`deploy/rabbitmq-cluster.sh`, the documented
//! scale-out path): a fleet of agents under load while the node the agents are connected
//! to is killed (SIGKILL) for good. Only moving to the next node in `mqtt.urls` gets the
//! commands sent after that answered; every command gets its one result, none runs twice.
//!
//! Needs rabbitmq-server (`.ci/run` installs it). Without it the test says SKIP, except
//! where `POSBRIDGE_REQUIRE_RABBITMQ` is set (CI), where a missing broker fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Cluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn run(script: &Path, args: &[&str], dir: &Path, port: u16) -> std::process::Output {
        Command::new("bash")
            .arg(script)
            .args(args)
            .args(["--dir", &dir.display().to_string(), "--mqtt-port", &port.to_string()])
            .output()
            .expect("run deploy/rabbitmq-cluster.sh")
    }

    /// `None` (SKIP) where rabbitmq-server is not installed and this is not CI.
    fn start() -> Option<Cluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rabbitmq-cluster.sh");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = Cluster::run(&script, &["start"], dir.path(), port);
        if out.status.code() == Some(3) && std::env::var_os("POSBRIDGE_REQUIRE_RABBITMQ").is_none()
        {
            eprintln!("SKIP: rabbitmq-server is not installed");
            return None;
        }
        assert!(out.status.success(), "cluster start: {}", output_text(&out));
        Some(Cluster { script, dir, port })
    }

    fn command(&self, args: &str) -> String {
        format!(
            "bash {} {args} --dir {} --mqtt-port {}",
            self.script.display(),
            self.dir.path().display(),
            self.port
        )
    }

    fn urls(&self) -> Vec<String> {
        (0..3).map(|i| format!("mqtt://127.0.0.1:{}", self.port + i)).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Cluster::run(&self.script, &["stop"], self.dir.path(), self.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_survive_their_cluster_node_being_killed_mid_payment() {
    let Some(cluster) = Cluster::start() else { return };
    let mut args: Vec<String> =
        ["fleet", "--agents", "20", "--rate", "40", "--duration", "12", "--kill-broker-at", "4"]
            .map(String::from)
            .to_vec();
    for url in cluster.urls() {
        args.extend(["--broker".to_string(), url]);
    }
    args.extend(["--outage".into(), "4".into(), "--kill-cmd".into(), cluster.command("kill 1")]);
    args.extend(["--settle", "90"].map(String::from));
    let (r, text) = fleet_run(&args, 480).await;
    assert_eq!(r["faults"]["broker_killed"], true, "{r}");
    assert!(text.contains("node 1 killed"), "{text}");
}
