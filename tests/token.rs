//! The Token fiscal register end to end: the real binary, an embedded broker, the
//! register simulator speaking the real protocol over TCP on loopback.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use posbridge::drivers::token::basket_id;
use posbridge::sim::token::{SimControl, SimOptions, TokenSim};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn sim() -> (SocketAddr, SimControl, CancellationToken) {
    let s = token_sim(7).await;
    let stop = CancellationToken::new();
    let (addr, ctl) = (s.local_addr(), s.control());
    s.spawn(stop.clone());
    (addr, ctl, stop)
}

fn spec(agent_id: &str, broker: u16, addr: SocketAddr) -> AgentSpec {
    let mut s = AgentSpec::new(agent_id, broker);
    s.extra = format!(
        "[[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{addr}\"\nconnect_timeout = \"3s\"\nop_timeout = \"10s\"\nrecovery_window = \"1s\"\n"
    );
    s
}

fn sale(id: &str) -> Value {
    json!({"v": 1, "id": id, "op": "payment", "terminal": "token-1", "amount": 2000, "currency": "TRY",
    "basket": {
        "items": [ {"name": "Su", "price": 500, "quantity": 1, "section_no": 1},
                   {"name": "Armut", "price": 1500, "quantity": 1, "section_no": 1} ],
        "payments": [ {"type": 1, "amount": 1000, "description": "yarısı nakit"},
                      {"type": 3, "amount": 1000, "description": "yarısı kredi kartı"} ]
    }})
}

struct Rig {
    cloud: Cloud,
    agent: Agent,
    ctl: SimControl,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
    _broker: Broker,
}

async fn rig(agent_id: &str) -> Rig {
    let broker = embedded();
    let (addr, ctl, stop) = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud, agent) =
        Cloud::with_agent(&spec(agent_id, broker.port(), addr), dir.path(), &[]).await;
    Rig { cloud, agent, ctl, stop, _dir: dir, _broker: broker }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fiscal_sale_end_to_end_with_fiscal_and_device_info() {
    let r = rig("tok-e2e").await;
    let cloud = &r.cloud;

    let fi = cloud.ask(json!({"v":1,"id":"fi-1","op":"fiscal_info","terminal":"token-1"})).await;
    assert_eq!(fi["state"], "succeeded", "{fi}");
    assert_eq!(fi["device"]["sections"][0]["name"], "GİDA");
    assert_eq!(fi["device"]["receiptLimit"], 990000);

    let di = cloud.ask(json!({"v":1,"id":"di-1","op":"device_info","terminal":"token-1"})).await;
    assert_eq!(di["state"], "succeeded", "{di}");
    assert_eq!(di["device"]["fiscal_no"], "AV0000000121");
    assert_eq!(di["device"]["cert_serial"], "AV0000000121");

    let res = cloud.ask(sale("s-1")).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(res["amount"], 2000);
    assert_eq!(res["payment"]["method"], "mixed");
    assert!(res["payment"]["transaction_id"].is_string());
    assert!(res["payment"]["receipt"]["receipt_no"].is_number());
    let bid = basket_id("tok-e2e", "s-1");
    assert_eq!(res["device"]["basketID"], bid.as_str());
    assert_eq!(r.ctl.sales(&bid), 1);

    // The retained terminal state carries the fiscal number.
    let t = cloud
        .wait("terminals/token-1", Duration::from_secs(10), |v| {
            v["identity"]["fiscal_no"] == "AV0000000121"
        })
        .await;
    assert_eq!(t["kind"], "token");

    // A repeated id is never run again.
    cloud.send(sale("s-1")).await;
    cloud.wait_n("result", Duration::from_secs(10), 2, |v| v["id"] == "s-1").await;
    assert_eq!(r.ctl.sales(&bid), 1);
    r.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_baskets_are_rejected_before_any_device_traffic() {
    let r = rig("tok-bad").await;
    let cloud = &r.cloud;
    let mut wrong_total = sale("b-1");
    wrong_total["basket"]["payments"][0]["amount"] = json!(900);
    let mut no_items = sale("b-2");
    no_items["basket"]["items"] = json!([]);
    let mut no_basket = sale("b-3");
    no_basket.as_object_mut().map(|m| m.remove("basket"));
    let mut amount = sale("b-4");
    amount["amount"] = json!(1999);
    for (cmd, field) in [
        (wrong_total, "field basket.payments"),
        (no_items, "field basket.items"),
        (no_basket, "field basket:"),
        (amount, "field amount"),
    ] {
        let res = cloud.ask(cmd).await;
        assert_eq!(res["state"], "rejected", "{res}");
        assert_eq!(res["error"]["code"], "bad_request");
        let msg = res["error"]["message"].as_str().expect("message");
        assert!(msg.starts_with(field), "{msg} should name {field}");
    }
    assert_eq!(r.ctl.baskets_received(), 0);
    r.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_error_type60_is_failed_with_device_code() {
    let r = rig("tok-60").await;
    r.ctl.set(|k| k.error_next_basket = Some("KASA KAPALI".into()));
    let res = r.cloud.ask(sale("e-1")).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "device_error");
    assert_eq!(res["error"]["device_code"], "KASA KAPALI");
    assert_eq!(r.ctl.total_sales(), 0);

    // A customer cancel is a definite failure too.
    r.ctl.set(|k| k.cancel_next = true);
    let res = r.cloud.ask(sale("e-2")).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "cancelled_by_customer");
    assert_eq!(res["error"]["device_code"], -1);
    r.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_drop_mid_sale_is_unknown_unless_the_result_arrives_after_reconnect() {
    let r = rig("tok-drop").await;
    // The result is redelivered after the reconnect: the real outcome.
    r.ctl.set(|k| {
        k.drop_link_mid_sale = true;
        k.redeliver_after_reconnect = true;
    });
    let res = r.cloud.ask(sale("d-1")).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(r.ctl.sales(&basket_id("tok-drop", "d-1")), 1);

    // No redelivery: unknown + needs_reconciliation, and the basket is never resent.
    r.ctl.set(|k| {
        k.drop_link_mid_sale = true;
        k.redeliver_after_reconnect = false;
    });
    let before = r.ctl.baskets_received();
    let res = r.cloud.ask(sale("d-2")).await;
    assert_unknown(&res);
    assert_eq!(r.ctl.baskets_received(), before + 1, "never resent");
    assert_eq!(r.ctl.sales(&basket_id("tok-drop", "d-2")), 1);

    // The terminal works again afterwards.
    r.cloud.send(sale("d-3")).await;
    assert_eq!(r.cloud.result("d-3").await["state"], "succeeded");
    r.stop.cancel();
}

/// kill -9 at each journal point around the basket: never two sales, and an outcome
/// that is the device's or `unknown`, never a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_basket_and_result_never_sells_twice() {
    let broker = embedded();
    let (addr, ctl, stop) = sim().await;
    // (point, expected final state, expected sales)
    let points = [
        ("journal:token_basket:before", "succeeded", 1),
        ("journal:token_basket:after", "unknown", 0),
        // The sale result and the command's result become durable in one commit: a kill
        // before it leaves the sale unknown (the register cannot be asked about a basket).
        ("journal:answer:before", "unknown", 1),
        ("journal:answer:after", "unknown", 1),
        ("worker:finished", "succeeded", 1),
    ];
    for (n, (point, want, sales)) in points.iter().enumerate() {
        let agent_id = format!("tok-crash-{n}");
        let id = format!("c-{n}");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cloud, mut agent) = Cloud::with_agent(
            &spec(&agent_id, broker.port(), addr),
            dir.path(),
            &[(posbridge::faults::ENV, point)],
        )
        .await;
        cloud.send(sale(&id)).await;
        assert_aborts_at(&mut agent, point, Duration::from_secs(20));
        agent.restart(&[]);
        let res = cloud.result(&id).await;
        assert_eq!(res["state"], *want, "{point}: {res}\n{}", agent.log());
        if *want == "unknown" {
            assert_eq!(res["needs_reconciliation"], true, "{point}");
        }
        let bid = basket_id(&agent_id, &id);
        assert_eq!(ctl.sales(&bid), *sales, "{point}: sales of {bid}");
        assert!(agent.sigterm().success(), "{point}: clean stop");
    }
    assert!(ctl.total_sales() <= 4, "one sale per case at most");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usb_transport_without_a_register_is_device_unavailable_with_the_cause() {
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = AgentSpec::new("tok-usb", broker.port());
    s.extra = "[[terminals]]\nid = \"token-1\"\nkind = \"token\"\ntransport = \"usb\"\n".into();
    let (cloud, _agent) = Cloud::with_agent(&s, dir.path(), &[]).await;
    let res = cloud.ask(json!({"v":1,"id":"u-1","op":"fiscal_info","terminal":"token-1"})).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "device_unavailable");
    let msg = res["error"]["message"].as_str().expect("message");
    // This machine has no USB subsystem at all; a CI host with USB but no register
    // finds nothing to open. Either way the message names the cause and the fix, and
    // nothing was sent to any device.
    assert!(msg.starts_with("USB: "), "{msg}");
    assert!(
        (msg.contains("no USB subsystem (/sys/bus/usb missing)") && msg.contains("/dev/bus/usb"))
            || (msg.contains("no Token register on the bus") && msg.contains("posbridge usb list")),
        "{msg}"
    );
    // A bad basket is still rejected up front, whatever the transport.
    let mut bad = sale("u-2");
    bad["basket"]["items"][0]["section_no"] = json!("one");
    let res = cloud.ask(bad).await;
    assert_eq!(res["state"], "rejected");
    assert!(res["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("field basket.items[0].section_no")));
}

/// Strict mode: a register whose certificate chains to the configured CA and whose
/// serialNumber matches its fiscal number sells; one signed by another CA is refused at
/// the handshake and never receives a basket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_accepts_the_ca_and_refuses_a_stranger() {
    use posbridge::sim::token::TestCa;
    let broker = embedded();
    let ca = TestCa::generate("Test OKC-S2").expect("ca");
    let stranger = TestCa::generate("Not Kamu SM").expect("ca");
    let good = TokenSim::loopback(SimOptions::default(), Some(&ca)).await.expect("sim");
    let bad = TokenSim::loopback(SimOptions::default(), Some(&stranger)).await.expect("sim");
    let (good_addr, bad_addr, bad_ctl) = (good.local_addr(), bad.local_addr(), bad.control());
    let stop = CancellationToken::new();
    good.spawn(stop.clone());
    bad.spawn(stop.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("okc-s2.pem");
    std::fs::write(&ca_path, ca.pem()).expect("ca file");
    let mut s = AgentSpec::new("tok-strict", broker.port());
    for (id, addr) in [("token-1", good_addr), ("token-2", bad_addr)] {
        s.extra.push_str(&format!(
            "[[terminals]]\nid = \"{id}\"\nkind = \"token\"\ntransport = \"tcp\"\naddr = \"{addr}\"\nstrict = true\nca_file = \"{}\"\n",
            ca_path.display()
        ));
    }
    let (cloud, agent) = Cloud::with_agent(&s, dir.path(), &[]).await;
    let res = cloud.ask(sale("st-1")).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", agent.log());

    let mut other = sale("st-2");
    other["terminal"] = json!("token-2");
    let res = cloud.ask(other).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "device_error");
    let msg = res["error"]["message"].as_str().expect("message");
    assert!(msg.contains("does not chain to the configured CA"), "{msg}");
    assert_eq!(bad_ctl.baskets_received(), 0);
    stop.cancel();
}

/// `posbridge usb list` never panics; on a machine without USB (this one) it says so
/// and exits 0.
#[test]
fn usb_list_reports_the_bus_or_its_absence() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args(["usb", "list"])
        .output()
        .expect("run posbridge");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    if std::path::Path::new("/sys/bus/usb").exists() {
        assert!(stdout.starts_with("BUS-ADDR") || stdout.starts_with("no USB devices"), "{stdout}");
    } else {
        assert!(stdout.starts_with("no USB subsystem (/sys/bus/usb missing)"), "{stdout}");
    }
}

/// The register sells (the receipt prints), then its sale result is lost, cut short, or
/// names another basket. Never `failed` — the POS would ring the sale again and print a
/// second fiscal receipt: `unknown` + `needs_reconciliation`, one sale, the basket sent
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_garbled_or_foreign_sale_result_is_unknown_never_failed() {
    let r = rig("tok-answers").await;
    type Knob = fn(&mut posbridge::sim::token::Knobs);
    let faults: [(&str, Knob); 3] = [
        ("lost", |k| k.lose_next_result = true),
        ("garbled", |k| k.garble_next_result = true),
        ("foreign", |k| k.foreign_next_result = true),
    ];
    for (n, (name, knob)) in faults.into_iter().enumerate() {
        r.ctl.set(knob);
        let id = format!("ans-{name}");
        let res = r.cloud.ask(sale(&id)).await;
        assert_eq!(res["state"], "unknown", "{name}: {res}\n{}", r.agent.log());
        assert_eq!(res["needs_reconciliation"], true, "{res}");
        let bid = basket_id("tok-answers", &id);
        assert_eq!(r.ctl.sales(&bid), 1, "{name}: sold once");
        assert_eq!(r.ctl.baskets_received(), n as u64 + 1, "{name}: basket sent once");
        if name == "garbled" {
            // The unreadable answer is kept for the operator.
            let log = r.agent.log();
            assert!(log.contains("unreadable sale result"), "{log}");
        }
    }
    // The link stays usable: the next sale goes through.
    r.cloud.send(sale("ans-after")).await;
    assert_eq!(r.cloud.result("ans-after").await["state"], "succeeded");
    r.stop.cancel();
}

/// A register firmware that puts the full card number (and track 2 data) in its sale
/// result: it appears in no MQTT message and in none of the store's files or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_card_number_from_the_register_is_never_kept_or_sent() {
    let mut r = rig("tok-pan").await;
    r.ctl.set(|k| k.card_number_next = true);
    let res = r.cloud.ask(sale("pan-1")).await;
    assert_eq!(res["state"], "succeeded", "{res}");
    let item = &res["device"]["paymentItems"][0];
    assert_eq!(item["cardNumber"], "411111******1111", "{res}");
    assert!(r.agent.sigterm().success());
    assert_card_number_nowhere(&r.cloud, r._dir.path(), &["4111111111111111"]);
    r.stop.cancel();
}

/// The register's certificate is pinned at its first enrolment: the same register is
/// accepted again (also after a restart of the agent), another one at the same address
/// is refused before any basket, with the way to accept a replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_register_at_the_same_address_is_refused() {
    let broker = embedded();
    let (addr, _ctl, stop) = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cloud, mut agent) =
        Cloud::with_agent(&spec("tok-pin", broker.port(), addr), dir.path(), &[]).await;
    cloud.send(sale("pin-1")).await;
    assert_eq!(cloud.result("pin-1").await["state"], "succeeded");
    agent.restart(&[]);
    cloud.send(json!({"v":1,"id":"pin-2","op":"device_info","terminal":"token-1"})).await;
    assert_eq!(cloud.result("pin-2").await["state"], "succeeded");
    // The register is swapped for another one (another certificate) on the same address.
    stop.cancel();
    // The old listener closes asynchronously: retry the bind (bounded).
    let mut other = None;
    for _ in 0..100 {
        let opts = SimOptions { seed: Some(8), ..Default::default() };
        if let Ok(s) = TokenSim::bind(addr, opts, None).await {
            other = Some(s);
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = other.expect("another register on the same address");
    let other_ctl = other.control();
    let stop2 = CancellationToken::new();
    other.spawn(stop2.clone());
    agent.restart(&[]);
    let r = cloud.ask(sale("pin-3")).await;
    assert_ne!(r["state"], "succeeded", "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or("").contains("not the one enrolled"), "{r}");
    assert_eq!(other_ctl.baskets_received(), 0, "no basket reached the stranger");
    stop2.cancel();
}
