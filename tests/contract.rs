//! The MQTT contract end to end: the real binary, a real broker (embedded rumqttd and
//! mosquitto), the IP terminal simulator, a cloud POS client. Loopback only.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::*;
use posbridge::sim::ip::{IpSim, SimOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn sim(fail_rate: f64, delay_ms: u64) -> (IpSim, CancellationToken) {
    let s =
        IpSim::loopback(SimOptions { fail_rate, seed: Some(42), delay_ms, ..Default::default() })
            .await
            .expect("sim");
    (s, CancellationToken::new())
}

/// A broker, one IP terminal simulator that approves everything, an agent with it as
/// `ip-1`, and a cloud POS client, all on loopback.
struct IpRig {
    cloud: Cloud,
    agent: Agent,
    stats: posbridge::sim::ip::SimStats,
    ctl: posbridge::sim::ip::SimControl,
    stop: CancellationToken,
    dir: tempfile::TempDir,
    _broker: Broker,
}

impl Drop for IpRig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn ip_rig(broker: Broker, agent_id: &str) -> IpRig {
    ip_rig_with(broker, agent_id, 0, |spec| spec).await
}

/// The same with a customer time of `delay_ms` at the terminal and the agent's spec
/// changed by `tweak`.
async fn ip_rig_with(
    broker: Broker, agent_id: &str, delay_ms: u64, tweak: impl FnOnce(AgentSpec) -> AgentSpec,
) -> IpRig {
    let (sim, stop) = sim(0.0, delay_ms).await;
    let (addr, stats, ctl) = (sim.local_addr(), sim.stats(), sim.control());
    sim.spawn(stop.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = tweak(AgentSpec::new(agent_id, broker.port()).ip("ip-1", addr));
    let (cloud, agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    IpRig { cloud, agent, stats, ctl, stop, dir, _broker: broker }
}

/// Every scenario of the demo plus the bad-input cases, against one broker.
async fn contract_scenarios(broker: Broker, agent_id: &str) {
    let mut rig =
        ip_rig_with(broker, agent_id, 0, |spec| AgentSpec { max_bytes: 4096, ..spec }).await;
    let IpRig { cloud, agent, stats, ctl: control, stop, .. } = &mut rig;
    let status = cloud.wait("status", Duration::from_secs(5), |v| v["state"] == "online").await;
    assert_eq!(status["v"], 1);
    assert!(status["version"].is_string() && status["started_at"].is_string());

    // Approved payment.
    let r = cloud.ask(pay("p-1", "ip-1", 1500)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["op"], "payment");
    assert_eq!(r["amount"], 1500);
    let txn = r["payment"]["transaction_id"].as_str().expect("txn").to_string();
    assert!(r["payment"]["card_mask"].is_string() && r["payment"]["auth_code"].is_string());
    assert!(r["started_at"].is_string() && r["finished_at"].is_string());
    // Progress went out on evt.
    cloud
        .wait("evt", Duration::from_secs(5), |v| v["id"] == "p-1" && v["state"] == "accepted")
        .await;
    cloud
        .wait("evt", Duration::from_secs(5), |v| v["id"] == "p-1" && v["state"] == "in_progress")
        .await;

    // Declined payment.
    control.set_fail_rate(1.0);
    let r = cloud.ask(pay("p-2", "ip-1", 2500)).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert!(r["error"]["code"].is_string() && r["error"]["device_code"].is_string(), "{r}");
    control.set_fail_rate(0.0);

    // Duplicate id: the stored result again, never a second charge.
    cloud.send(pay("p-1", "ip-1", 1500)).await;
    let all = cloud.wait_n("result", Duration::from_secs(10), 2, |v| v["id"] == "p-1").await;
    assert_eq!(all[0], all[1], "a duplicate republishes the stored result unchanged");
    assert_eq!(stats.executions("p-1"), 1);

    // Refund by original, then an over-refund is refused before the terminal sees it.
    let r = cloud.ask(json!({"v":1,"id":"r-1","op":"refund","terminal":"ip-1","amount":1000,"original":"p-1"})).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["currency"], "AZN");
    let r = cloud
        .ask(
            json!({"v":1,"id":"r-2","op":"refund","terminal":"ip-1","amount":501,"original":"p-1"}),
        )
        .await;
    assert_eq!(r["state"], "rejected");
    assert_eq!(r["error"]["code"], "invalid_amount");
    assert_eq!(stats.executions("r-2"), 0);
    // Refund of a failed payment is refused.
    cloud
        .send(json!({"v":1,"id":"r-3","op":"refund","terminal":"ip-1","amount":1,"original":"p-2"}))
        .await;
    assert_eq!(cloud.result("r-3").await["state"], "rejected");

    // Malformed JSON: rejected with id null and the raw bytes echoed.
    cloud.send_raw(br#"{"v":1,"id":"bad-1","op":"pay"#.to_vec()).await;
    let r = cloud
        .wait("result", Duration::from_secs(10), |v| {
            v["id"].is_null() && v["raw"].as_str().is_some_and(|s| s.contains("bad-1"))
        })
        .await;
    assert_eq!(r["state"], "rejected");
    assert_eq!(r["error"]["code"], "bad_request");

    // Oversize payload (> commands.max_bytes = 4096): rejected unparsed, connection intact.
    let big = format!(r#"{{"v":1,"id":"big-1","op":"ping","pad":"{}"}}"#, "x".repeat(10_000));
    cloud.send_raw(big.into_bytes()).await;
    let r = cloud
        .wait("result", Duration::from_secs(10), |v| {
            v["id"].is_null()
                && v["error"]["message"].as_str().is_some_and(|m| m.contains("max_bytes"))
        })
        .await;
    assert_eq!(r["raw"].as_str().map(str::len), Some(256));

    // Wrong type names the field and keeps the id.
    let r = cloud.ask(json!({"v":1,"id":"t-1","op":"payment","terminal":"ip-1","amount":"15","currency":"AZN"})).await;
    assert_eq!(r["error"]["code"], "bad_request");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("amount")), "{r}");

    // Expired before it started: the device is never touched.
    let r = cloud.ask(json!({"v":1,"id":"e-1","op":"payment","terminal":"ip-1","amount":100,"currency":"AZN","expires_at":"2020-01-01T00:00:00Z"})).await;
    assert_eq!(r["state"], "expired");
    assert_eq!(stats.executions("e-1"), 0);

    // Unknown terminal, unsupported op.
    cloud.send(pay("u-1", "nope", 100)).await;
    assert_eq!(cloud.result("u-1").await["error"]["code"], "unknown_terminal");
    cloud.send(json!({"v":1,"id":"f-1","op":"fiscal_info","terminal":"ip-1"})).await;
    assert_eq!(cloud.result("f-1").await["error"]["code"], "unsupported_op");

    // device_info, ping, status, list.
    let r = cloud.ask(json!({"v":1,"id":"d-1","op":"device_info","terminal":"ip-1"})).await;
    assert_eq!(r["state"], "succeeded");
    assert_eq!(r["device"]["terminal_id"], "IPT-0001");
    let r = cloud.ask(json!({"v":1,"id":"ping-1","op":"ping"})).await;
    assert_eq!(r["state"], "succeeded");
    assert!(r["agent"]["uptime_s"].is_number());
    let r = cloud.ask(json!({"v":1,"id":"s-1","op":"status","target":"p-1"})).await;
    assert_eq!(r["target"]["state"], "succeeded");
    assert_eq!(r["target"]["result"]["payment"]["transaction_id"], txn.as_str());
    cloud.send(json!({"v":1,"id":"s-2","op":"status","target":"never-sent"})).await;
    assert_eq!(cloud.result("s-2").await["error"]["code"], "not_found");
    let r = cloud
        .ask(json!({"v":1,"id":"l-1","op":"list","terminal":"ip-1","state":"succeeded","limit":10}))
        .await;
    let items = r["items"].as_array().expect("items");
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, vec!["d-1", "r-1", "p-1"], "newest first, filtered: {r}");

    // Retained terminal state and telemetry.
    let t =
        cloud.wait("terminals/ip-1", Duration::from_secs(10), |v| v["state"] == "connected").await;
    assert_eq!(t["identity"]["terminal_id"], "IPT-0001");
    let tel =
        cloud.wait("telemetry", Duration::from_secs(10), |v| v["outbox_len"].is_number()).await;
    assert!(tel["uptime_s"].is_number() && tel["queue_len"]["ip-1"].is_number(), "{tel}");

    // Clean shutdown publishes offline.
    let st = agent.sigterm();
    assert!(st.success(), "agent exit: {st:?}\n{}", agent.log());
    let off = cloud.wait("status", Duration::from_secs(10), |v| v["state"] == "offline").await;
    assert_eq!(off["version"], posbridge::VERSION, "{off}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_over_embedded_broker() {
    contract_scenarios(embedded(), "shop-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_over_mosquitto() {
    if !mosquitto_available() {
        return;
    }
    let m = Mosquitto::start();
    contract_scenarios(Broker::Mosquitto(m), "shop-mosq").await;
}

/// Queue full → busy; cancel of a queued command; cancel of a running one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_and_cancel() {
    let rig =
        ip_rig_with(embedded(), "shop-q", 1500, |spec| AgentSpec { queue_depth: 2, ..spec }).await;
    let IpRig { cloud, stats, stop, .. } = &rig;

    cloud.send(pay("q-1", "ip-1", 100)).await;
    cloud
        .wait("evt", Duration::from_secs(10), |v| v["id"] == "q-1" && v["state"] == "in_progress")
        .await;
    cloud.send(pay("q-2", "ip-1", 100)).await;
    cloud.send(pay("q-3", "ip-1", 100)).await;
    let r = cloud.ask(pay("q-4", "ip-1", 100)).await;
    assert_eq!(r["state"], "rejected");
    assert_eq!(r["error"]["code"], "busy");

    cloud.send(json!({"v":1,"id":"c-1","op":"cancel","target":"q-3"})).await;
    assert_eq!(cloud.result("c-1").await["state"], "succeeded");
    let r = cloud.result("q-3").await;
    assert_eq!(r["state"], "cancelled");
    let r = cloud.ask(json!({"v":1,"id":"c-2","op":"cancel","target":"q-1"})).await;
    assert_eq!(r["state"], "failed");
    assert_eq!(r["error"]["code"], "not_cancellable");

    assert_eq!(cloud.result("q-1").await["state"], "succeeded");
    assert_eq!(cloud.result("q-2").await["state"], "succeeded");
    assert_eq!(stats.executions("q-3"), 0, "a cancelled command never reaches the terminal");
    assert_eq!(stats.executions("q-4"), 0);
    stop.cancel();
}

/// A terminal that is not there: the payment fails cleanly (money cannot have moved), and
/// the retained terminal state says disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_terminal_fails_cleanly() {
    let broker = embedded();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-dead", broker.port()).ip("ip-1", dead);
    let (cloud, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let r = cloud.ask(pay("x-1", "ip-1", 100)).await;
    assert_eq!(r["state"], "failed");
    assert_eq!(r["error"]["code"], "device_unavailable");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("could not connect")));
    let t = cloud
        .wait("terminals/ip-1", Duration::from_secs(10), |v| v["state"] == "disconnected")
        .await;
    assert!(t["last_error"].is_string());
}

/// The terminal performs the payment, then its answer is lost, cut short, or names another
/// `ref`. None of these is a verdict: the agent sends the same request with the same `ref`
/// again (`ip-terminal.md`: the same operation, answered from the terminal's books) and
/// reports the terminal's real answer. One execution each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_garbled_and_foreign_answers_settle_on_the_same_ref() {
    let r = ip_rig(embedded(), "ip-answers").await;
    let (cloud, stats, ctl) = (&r.cloud, &r.stats, &r.ctl);
    let faults: [(&str, &dyn Fn()); 3] = [
        ("lost", &|| ctl.lose_next_answer()),
        ("garbled", &|| ctl.garble_next_answer()),
        ("foreign", &|| ctl.foreign_next_answer()),
    ];
    for (name, inject) in faults {
        inject();
        let id = format!("ans-{name}");
        let before = stats.requests();
        let res = cloud.ask(pay(&id, "ip-1", 1500)).await;
        assert_eq!(res["state"], "succeeded", "{name}: {res}\n{}", r.agent.log());
        assert!(res["payment"]["transaction_id"].is_string(), "{res}");
        assert_eq!(stats.executions(&id), 1, "{name}: charged once");
        assert!(stats.requests() >= before + 2, "{name}: asked again");
    }
}

/// Large device answers never silence the agent (`mqtt-api.md`: Durability promise 9):
/// 25 payments whose raw answers are ~60 KB each, then `list` of all of them, then a new
/// payment. The list answer stays within 256 KiB (items carry no raw device bodies, marked
/// `device_truncated`), pages continue with `next` → `cursor`, and the later payment's
/// result still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_device_answers_and_long_lists_stay_bounded() {
    let r = ip_rig(embedded(), "ip-big").await;
    let (cloud, ctl) = (&r.cloud, &r.ctl);
    ctl.set_message_padding(60 * 1024);
    for i in 0..25 {
        // One at a time: the queue holds 16.
        cloud.send(pay(&format!("big-{i}"), "ip-1", 1000 + i)).await;
        let r = cloud.result(&format!("big-{i}")).await;
        assert_eq!(r["state"], "succeeded", "{r}");
        assert!(r["device"]["message"].as_str().is_some_and(|m| m.len() > 60_000));
    }
    let l = cloud.ask(json!({"v":1,"id":"big-list","op":"list","limit":500})).await;
    let items = l["items"].as_array().expect("items");
    assert_eq!(items.len(), 25, "{l}");
    assert!(l.to_string().len() <= 256 * 1024);
    assert_eq!(items[0]["result"]["device_truncated"], true);
    assert!(items[0]["result"].get("device").is_none());
    // Pages: 10, then the rest by cursor, newest first, nothing twice.
    let p1 = cloud.ask(json!({"v":1,"id":"big-p1","op":"list","limit":10})).await;
    let next = p1["next"].as_str().expect("next").to_string();
    let p2 = cloud.ask(json!({"v":1,"id":"big-p2","op":"list","limit":500,"cursor":next})).await;
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (a, b) = (ids(&p1), ids(&p2));
    assert_eq!(a.len(), 10);
    assert!(p2.get("next").is_none(), "{p2}");
    // p2 holds the 15 older payments and p1's own list command is newer than all.
    let all: std::collections::BTreeSet<_> = a.iter().chain(b.iter()).collect();
    assert_eq!(all.len(), a.len() + b.len(), "no item twice");
    for i in 0..25 {
        assert!(all.contains(&format!("big-{i}")), "big-{i} missing");
    }
    // A bad cursor is a clear error.
    let bad = cloud.ask(json!({"v":1,"id":"big-bad","op":"list","cursor":"abc"})).await;
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");
    // And results keep flowing.
    cloud.send(pay("big-after", "ip-1", 500)).await;
    assert_eq!(cloud.result("big-after").await["state"], "succeeded");
}

/// Commands come at QoS 1 only (`mqtt-api.md`: Durability promise 9): a QoS 0 publish on
/// `cmd` — which no broker would redeliver, so the agent could not acknowledge it only
/// once durable — is dropped without a result, counted in telemetry (`dropped_commands`),
/// and the agent goes on taking QoS 1 commands. Against mosquitto: the embedded rumqttd
/// delivers a QoS 0 publish at the subscription's QoS 1, so no client behind it can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_commands_are_dropped_and_counted() {
    if !mosquitto_available() {
        return;
    }
    let r = ip_rig(Broker::Mosquitto(Mosquitto::start()), "ip-qos0").await;
    let (cloud, stats) = (&r.cloud, &r.stats);
    for i in 0..3 {
        cloud
            .client
            .publish(
                format!("{}/cmd", cloud.root),
                rumqttc::QoS::AtMostOnce,
                false,
                pay(&format!("q0-{i}"), "ip-1", 500).to_string().into_bytes(),
            )
            .await
            .expect("publish");
    }
    cloud.send(pay("q1-ok", "ip-1", 500)).await;
    assert_eq!(cloud.result("q1-ok").await["state"], "succeeded");
    cloud.wait("telemetry", Duration::from_secs(10), |v| v["dropped_commands"] == 3).await;
    for i in 0..3 {
        let id = format!("q0-{i}");
        assert!(cloud.results_for(&id).is_empty(), "{id}: no result");
        assert_eq!(stats.executions(&id), 0, "{id}: never executed");
    }
    assert!(r.agent.log().contains("not a plain QoS 1 publish"));
}

/// No full card number is stored, logged or published (`mqtt-api.md`: Durability promise
/// 10): a terminal whose answers carry card numbers (spaced, and as track data)
/// has it masked to the first 6 and last 4 digits in the result, in `list`, in the store's
/// files and in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_from_a_device_never_leave_the_device() {
    let mut r = ip_rig(embedded(), "ip-pan").await;
    let (cloud, ctl) = (&r.cloud, &r.ctl);
    ctl.set_message(Some("approved card 4111 1111 1111 1111 track ;5555555555554444=2512?".into()));
    let res = cloud.ask(pay("pan-1", "ip-1", 1200)).await;
    assert_eq!(res["state"], "succeeded", "{res}");
    let msg = res["device"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("4111 11** **** 1111"), "{msg}");
    assert!(msg.contains("555555******4444"), "{msg}");
    let st = cloud.ask(json!({"v":1,"id":"pan-st","op":"status","target":"pan-1"})).await;
    assert!(!st.to_string().contains("5555555555554444"), "{st}");
    // Nothing on disk or in the log holds either number.
    assert!(r.agent.sigterm().success());
    for pan in ["4111 1111 1111 1111", "5555555555554444"] {
        let file = file_containing(r.dir.path(), pan.as_bytes());
        assert!(file.is_none(), "{file:?} holds a card number");
    }
}

/// A command naming another agent is refused, signed or not (`mqtt-api.md`: `agent`);
/// naming this one is fine, and so is leaving it out when unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_another_agent_is_refused() {
    let r = ip_rig(embedded(), "ip-mine").await;
    let (cloud, stats) = (&r.cloud, &r.stats);
    let mut other = pay("ag-1", "ip-1", 500);
    other["agent"] = json!("ip-theirs");
    let r = cloud.ask(other).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(stats.executions("ag-1"), 0);
    let mut mine = pay("ag-2", "ip-1", 500);
    mine["agent"] = json!("ip-mine");
    cloud.send(mine).await;
    assert_eq!(cloud.result("ag-2").await["state"], "succeeded");
}

/// A refund that does not name the payment this agent ran (`original`) is refused unless
/// `security.allow_unreferenced_refunds` says otherwise: nothing checks what it refunds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_refunds_are_refused_by_default() {
    let r = ip_rig(embedded(), "ip-unref").await;
    let (cloud, stats) = (&r.cloud, &r.stats);
    let p = cloud.ask(pay("u-pay", "ip-1", 500)).await;
    let r = cloud
        .ask(json!({"v":1,"id":"u-ref","op":"refund","terminal":"ip-1","amount":100,
                     "transaction_id": p["payment"]["transaction_id"], "method":"card"}))
        .await;
    assert_eq!(r["state"], "rejected", "{r}");
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(stats.executions("u-ref"), 0);
}

/// A terminal removed from the configuration: at the next start the agent clears its
/// retained `terminals/{id}` (an empty retained message), so a monitor that subscribes
/// later sees only the terminals that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_terminal_has_its_retained_state_cleared() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, _stats) = approving_ip_sim(Some(5), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let both = AgentSpec::new("shop-gone", broker.port()).ip("ip-1", addr).ip("ip-2", addr);
    let (cloud, mut agent) = Cloud::with_agent(&both, dir.path(), &[]).await;
    let within = Duration::from_secs(10);
    cloud.wait("terminals/ip-2", within, |v| v["state"] == "connected").await;
    assert!(agent.sigterm().success());

    let one = AgentSpec::new("shop-gone", broker.port()).ip("ip-1", addr);
    std::fs::write(&agent.config, one.toml(&dir.path().join("store"))).expect("config");
    agent.restart(&[]);
    // The agent clears ip-2 on connecting: an empty retained message (JSON null here).
    cloud.wait("terminals/ip-2", within, |v| v.is_null()).await;
    // A monitor subscribing now gets ip-1's retained state and nothing for ip-2. The
    // broker delivers to one client in order, so once this ping's result is in, every
    // retained message it sent at subscribe time is too.
    let monitor = Cloud::connect(broker.port(), "shop-gone", "monitor", false).await;
    monitor.wait("terminals/ip-1", within, |v| v["state"].is_string()).await;
    monitor.send(serde_json::json!({"v":1,"id":"gone-ping","op":"ping"})).await;
    assert_eq!(monitor.result("gone-ping").await["state"], "succeeded");
    assert!(monitor.all("terminals/ip-2").is_empty(), "{:?}", monitor.all("terminals/ip-2"));
    stop.cancel();
}
