//! Broker failover (`mqtt.urls`): two real mosquittos on loopback; the agent's broker dies
//! mid-payment, the agent moves to the next one, the result arrives there, and nothing
//! runs twice; its telemetry heartbeat names the broker and the terminals' states. `doctor`
//! checks every broker of the list.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

fn in_progress(id: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |v| v["id"] == id && v["state"] == "in_progress"
}

/// Agent `agent_id` with one IP terminal at `addr`, given brokers `first` then `next`.
fn listing(agent_id: &str, first: u16, next: u16, addr: std::net::SocketAddr) -> AgentSpec {
    let mut spec = AgentSpec::new(agent_id, first).ip("ip-1", addr);
    spec.failover_ports = vec![next];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_broker_dies_mid_payment_and_the_result_arrives_on_the_second() {
    let Some(first) = Mosquitto::if_installed() else { return };
    let second = Mosquitto::start();
    // A payment long enough to kill the broker while the terminal runs it.
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(3), 1500, &stop).await;
    let spec = listing("fo-1", first.port, second.port, addr);
    // The cloud keeps a session on both brokers, subscribed before the agent starts.
    let on_first = Cloud::connect(first.port, "fo-1", "cloud-first", true).await;
    let on_second = Cloud::connect(second.port, "fo-1", "cloud-second", true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start_with(&spec, dir.path(), &[], &[]);
    on_first.online().await;
    assert!(on_second.all("status").is_empty(), "the agent starts on the first broker of the list");

    on_first.send(pay("fo-pay-1", "ip-1", 1200)).await;
    on_first.wait("evt", Duration::from_secs(10), in_progress("fo-pay-1")).await;
    drop(first); // SIGKILL: the broker is gone mid-payment

    on_second.online().await;
    let r = on_second.result("fo-pay-1").await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
    assert_eq!(stats.executions("fo-pay-1"), 1);
    assert!(agent.log().contains("broker connection lost"), "{}", agent.log());

    // The cloud, unsure, sends the same id again on the second broker: answered from
    // the store, never charged twice.
    on_second.send(pay("fo-pay-1", "ip-1", 1200)).await;
    let again =
        on_second.wait_n("result", Duration::from_secs(10), 2, |v| v["id"] == "fo-pay-1").await;
    assert!(again.iter().all(|v| v["state"] == "succeeded"), "{again:?}");
    assert_eq!(again[0]["payment"], again[1]["payment"]);
    assert_eq!(stats.executions("fo-pay-1"), 1);

    // The heartbeat on telemetry says where the agent is and what its terminals are
    // doing, without relying on retained messages.
    let at = format!("127.0.0.1:{}", second.port);
    let beat = on_second.wait("telemetry", Duration::from_secs(10), |v| v["broker"] == at).await;
    assert_eq!(beat["state"], "online", "{beat}");
    assert_eq!(beat["terminals"]["ip-1"]["kind"], "ip", "{beat}");
    assert!(beat["terminals"]["ip-1"]["state"].is_string(), "{beat}");

    // And new work goes through the second broker.
    let r = on_second.ask(pay("fo-pay-2", "ip-1", 300)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(stats.executions("fo-pay-2"), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_first_broker_is_skipped_at_start() {
    let Some(live) = Mosquitto::if_installed() else { return };
    let dead = free_port();
    let stop = CancellationToken::new();
    let (addr, _) = approving_ip_sim(Some(4), 0, &stop).await;
    let spec = listing("fo-2", dead, live.port, addr);
    let cloud = Cloud::connect(live.port, "fo-2", "cloud-fo-2", false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _agent = Agent::start_with(&spec, dir.path(), &[], &[]);
    cloud.online().await;
    let r = cloud.ask(pay("fo2-pay-1", "ip-1", 500)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_every_broker_of_the_list() {
    let Some(live) = Mosquitto::if_installed() else { return };
    let dead = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "posbridge.toml",
        &format!(
            "agent_id = \"shop-fo\"\n[mqtt]\nurls = [\"mqtt://127.0.0.1:{}\", \"mqtt://127.0.0.1:{dead}\"]\n[store]\npath = \"{}\"\n",
            live.port,
            dir.path().join("store").display()
        ),
    );
    let out = posbridge_with(&["doctor"], &config).output().expect("run posbridge doctor");
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "one broker is down:\n{t}");
    let row = |name: &str| {
        t.lines()
            .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with("  ")))
            .unwrap_or_else(|| panic!("no {name} row in:\n{t}"))
            .to_string()
    };
    let (ok, down) = (row("broker[0]"), row("broker[1]"));
    assert!(ok.contains(" ok ") && ok.contains(&live.port.to_string()), "{t}");
    assert!(down.contains("FAIL") && down.contains(&dead.to_string()), "{t}");
    // The fix names the list entry that is wrong.
    let fix = t.lines().skip_while(|l| *l != down).nth(1).unwrap_or("");
    assert!(fix.contains("fix:") && fix.contains("mqtt.urls[1]"), "{t}");
}

/// A broker that cannot be reached is retried without end (5 attempts a second for the
/// first 10 s of an outage) and logged at `warn` once, with the attempts after it at
/// `debug`: a field engineer's journal is not flooded while the shop's network is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retried_and_logged_once() {
    let spec = AgentSpec::new("fo-quiet", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start_with(&spec, dir.path(), &[], &[]);
    let log = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let log = agent.log();
            if log.matches("broker still unreachable").count() >= 5 {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no five reconnect attempts:\n{}", agent.log()));
    assert_eq!(log.matches("broker connection lost").count(), 1, "{log}");
}
