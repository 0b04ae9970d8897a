//! posbridge on a 3-node RabbitMQ cluster (`deploy/rabbitmq-cluster.sh`, the documented
//! scale-out path): a fleet of agents under load while the node the agents are connected
//! to is killed (SIGKILL) for good. Only moving to the next node in `mqtt.urls` gets the
//! commands sent after that answered; every command gets its one result, none runs twice.
//!
//! Then, on the nodes left, the least-privilege logins of `deploy/rabbitmq-users.sh`: a
//! shop's agent and the cloud each with their own user, in their own vhost.
//!
//! Needs rabbitmq-server (`.ci/run` installs it). Without it the test says SKIP, except
//! where `POSBRIDGE_REQUIRE_RABBITMQ` is set (CI), where a missing broker fails the test.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

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
    ///
    /// The three nodes listen on 21 ports from `port` on (see the script). A port picked
    /// free can be taken before a node binds it, by any process on the machine (CI once
    /// lost node 2 that way, its ports being in the kernel's ephemeral range, where every
    /// outgoing connection takes one). So the block is picked below that range with every
    /// port free, and a cluster that did not start is stopped and started again on a new
    /// block, at most three times, each failure's reason printed.
    fn start() -> Option<Cluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rabbitmq-cluster.sh");
        let mut failures = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port_block(CLUSTER_PORTS);
            let out = Cluster::run(&script, &["start"], dir.path(), port);
            if out.status.code() == Some(3)
                && std::env::var_os("POSBRIDGE_REQUIRE_RABBITMQ").is_none()
            {
                eprintln!("SKIP: rabbitmq-server is not installed");
                return None;
            }
            let cluster = Cluster { script: script.clone(), dir, port };
            if out.status.success() {
                return Some(cluster);
            }
            let why = format!("cluster start on port {port}: {}", output_text(&out));
            eprintln!("{why}");
            failures.push(why);
            drop(cluster);
        }
        panic!("the cluster did not start three times:\n{}", failures.join("\n"));
    }

    fn command(&self, args: &str) -> String {
        format!(
            "bash {} {args} --dir {} --mqtt-port {}",
            self.script.display(),
            self.dir.path().display(),
            self.port
        )
    }

    /// Run `deploy/rabbitmq-users.sh KIND NAME` against node `node`, `password` on stdin.
    fn add_user(&self, node: u16, kind: &str, name: &str, password: &str) {
        let script = self.script.with_file_name("rabbitmq-users.sh");
        let ctl = self.command(&format!("ctl {node}"));
        let mut cmd = Command::new("bash");
        cmd.arg(script).args([kind, name]).env("RABBITMQCTL", ctl);
        let out = output_with_stdin(&mut cmd, format!("{password}\n").as_bytes());
        assert!(out.status.success(), "rabbitmq-users.sh {kind} {name}: {}", output_text(&out));
        assert!(!output_text(&out).contains(password), "the password is never printed");
    }

    fn urls(&self) -> Vec<String> {
        (0..3).map(|i| format!("mqtt://127.0.0.1:{}", self.port + i)).collect()
    }
}

/// Ports one cluster listens on, from its MQTT port on: MQTT +0..2, AMQP +10..12,
/// distribution +20..22.
const CLUSTER_PORTS: u16 = 23;

/// The first of `n` consecutive loopback ports that are all free now, below the kernel's
/// ephemeral range (`ip_local_port_range`) where that range leaves room.
fn free_port_block(n: u16) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) =
        if ephemeral_low > 12_000 + n { (10_000, ephemeral_low - n) } else { (1_024, 65_000) };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for k in 0..1_000u32 {
        let span = u32::from(high - low);
        let first = low + ((seed.wrapping_add(k.wrapping_mul(7_919))) % span) as u16;
        let all_free =
            (first..first + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return first;
        }
    }
    free_port()
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

    least_privilege_logins(&cluster).await;
}

/// The users of `deploy/rabbitmq-users.sh` (docs/fleet.md) on the two nodes left: the
/// shop's agent (login `posbridge:shop-p1`, vhost `posbridge`) takes a payment that the
/// cloud's login sends with `posbridge cloud pay` through the other node. The shop's login
/// cannot send a command, not even to itself, and another shop's login cannot read its
/// results while it can read its own commands.
async fn least_privilege_logins(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (kind, name, password) in [
        ("shop", "shop-p1", "pw-shop-1"),
        ("shop", "shop-p2", "pw-shop-2"),
        ("cloud", "cloud-p", "pw-cloud"),
    ] {
        cluster.add_user(2, kind, name, password);
        std::fs::write(dir.path().join(name), format!("{password}\n")).expect("password file");
    }
    let login = |user: &str, password: &str, client_id: &str, port: u16, subscribe: &[&str]| {
        let mut o = posbridge::pos::Options::loopback(port, client_id, None);
        o.subscribe = subscribe.iter().map(|s| s.to_string()).collect();
        o.credentials = Some((format!("posbridge:{user}"), password.to_string()));
        posbridge::pos::Client::connect(o, std::time::Duration::from_secs(10))
    };
    let (node2, node3) = (cluster.port + 1, cluster.port + 2);

    // The shop's agent, its status watched by the cloud's login on the agent's node
    // (RabbitMQ keeps retained messages per node: this one is live, not retained).
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, stats) = approving_ip_sim(None, 0, &stop).await;
    let mut watch =
        login("cloud-p", "pw-cloud", "posbridge-cloud-watch", node2, &["posbridge/shop-p1/status"])
            .await
            .expect("the cloud's login reads a shop's status");
    let mut spec = AgentSpec::new("shop-p1", node2).ip("ip-1", addr);
    spec.extra = format!(
        "[mqtt]\nusername = \"posbridge:shop-p1\"\npassword_file = \"{}\"\n",
        dir.path().join("shop-p1").display()
    );
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let agent = Agent::start(&spec, &agent_dir);
    assert!(watch.online(std::time::Duration::from_secs(30)).await, "{}", agent.log_tail(30));

    // A payment from the cloud's login, through node 3.
    let cloud = |user: &str, args: &[&str]| {
        let mut cmd = tokio::process::Command::new(agent_bin());
        cmd.args(["cloud", "--broker", &format!("mqtt://127.0.0.1:{node3}")])
            .args(["--username", &format!("posbridge:{user}"), "--password-file"])
            .arg(dir.path().join(user))
            .args(["--agent", "shop-p1", "--wait", "20"])
            .args(args)
            .env_remove("RUST_LOG");
        cmd.output()
    };
    let pay =
        ["--id", "perm-pay-1", "pay", "--terminal", "ip-1", "--minor", "1250", "--currency", "TRY"];
    let out = cloud("cloud-p", &pay).await.expect("posbridge cloud");
    assert_eq!(out.status.code(), Some(0), "{}\n{}", output_text(&out), agent.log_tail(30));
    assert_eq!(stats.executions("perm-pay-1"), 1);

    // The shop's own login publishing a command: refused by the broker, never run.
    let forged =
        login("shop-p1", "pw-shop-1", "forger", node3, &[]).await.expect("publish-only login");
    let cmd = serde_json::json!({"v": 1, "id": "perm-forged", "op": "payment", "terminal": "ip-1",
        "amount": 100, "currency": "TRY"});
    let _ = forged.send("posbridge/shop-p1", cmd.to_string().into_bytes()).await;
    // Asked after it: the agent never saw that id, and the terminal never ran it.
    let out = cloud("cloud-p", &["status", "--target", "perm-forged"]).await.expect("status");
    let text = output_text(&out);
    assert!(text.contains("\"not_found\""), "{text}");
    assert_eq!(stats.executions("perm-forged"), 0);

    // Another shop's login: its own commands yes, shop-p1's results no.
    login("shop-p2", "pw-shop-2", "posbridge-shop-p2", node3, &["posbridge/shop-p2/cmd"])
        .await
        .expect("a shop's login reads its own commands");
    let err =
        login("shop-p2", "pw-shop-2", "posbridge-shop-p2", node3, &["posbridge/shop-p1/result"])
            .await
            .err()
            .expect("another shop's results are refused");
    assert!(err.to_string().contains("no MQTT connection"), "{err}");
    stop.cancel();
}
