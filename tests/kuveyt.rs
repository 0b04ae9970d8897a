//! Black-box tests of the `kuveyt` pay-by-link terminal: the real binary, an embedded
//! broker and the pay-by-link mock (`posbridge::sim::kuveyt`) on 127.0.0.1 port 0.
//! Outcomes are chosen by the mock's amount conventions (the last two minor digits); the
//! verify interval is the minimum the config allows (2 s).
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use posbridge::sim::kuveyt::{KuveytSim, KuveytSimOptions, KuveytStats};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const T: &str = "kv-1";

type Rig = common::Rig<KuveytStats>;

fn terminal(mode: &str, test_url: &str, live_url: &str, dir: &Path) -> String {
    let keys = write_key_files(
        dir,
        &[("api_key_file", "test-api-key"), ("api_secret_file", "test-secret")],
    );
    format!(
        "[[terminals]]\nid = \"{T}\"\nkind = \"kuveyt\"\nmode = \"{mode}\"\ntest_url = \"{test_url}\"\nlive_url = \"{live_url}\"\nreturn_url = \"https://shop.example/return\"\ncancel_url = \"https://shop.example/cancel\"\npoll_interval = \"2s\"\n{keys}"
    )
}

async fn rig(name: &str, mode: &str, env: &[(&str, &str)]) -> Rig {
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = KuveytSim::bind("127.0.0.1:0".parse().expect("addr"), KuveytSimOptions::default())
        .await
        .expect("mock");
    let stop = CancellationToken::new();
    let stats = sim.stats();
    let mut spec = AgentSpec::new(name, broker.port());
    spec.extra = terminal(mode, &sim.base_url("test"), &sim.base_url("live"), dir.path());
    sim.spawn(stop.clone());
    Rig::start(broker, dir, &spec, env, stats, stop).await
}

fn pay(id: &str, amount: i64, within: Duration) -> Value {
    let expires = chrono::Utc::now() + chrono::Duration::from_std(within).expect("dur");
    json!({"v":1,"id":id,"op":"payment","terminal":T,"amount":amount,"currency":"TRY",
           "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
           "customer":{"name":"Ahmet Yılmaz","email":"customer@example.com","phone":"+905551234567"}})
}

/// A payment the customer has 30 s for.
fn payment(id: &str, amount: i64) -> Value {
    pay(id, amount, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_url_on_evt_then_completed() {
    let r = rig("kv-ok", "test", &[]).await;
    r.cloud.send(payment("p-1", 15000)).await;
    let evt = r
        .cloud
        .wait("evt", Duration::from_secs(20), |v| {
            v["id"] == "p-1" && v["detail"]["payment_url"].is_string()
        })
        .await;
    let links = r.stats.links();
    assert_eq!(links.len(), 1);
    let link = &links[0];
    assert_eq!(link.amount, "150.00");
    assert_eq!(link.order_id, "kv-ok/p-1");
    assert_eq!(link.env, "test");
    assert_eq!(evt["state"], "in_progress");
    assert_eq!(evt["detail"]["transaction_id"], link.transaction_id.as_str());
    assert!(evt["detail"]["payment_url"].as_str().unwrap_or("").ends_with(&link.transaction_id));
    let res = r.cloud.result("p-1").await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(res["mode"], "test");
    assert_eq!(res["payment"]["transaction_id"], link.transaction_id.as_str());
    assert_eq!(res["payment"]["method"], "pay_by_link");
    assert_eq!(r.stats.counters().payments_created, 1);
    assert!(!r.agent.log().contains("test-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_gives_up_fails() {
    let r = rig("kv-fail", "test", &[]).await;
    r.cloud.send(payment("f-1", 15051)).await;
    r.cloud.send(payment("f-2", 15052)).await;
    let res = r.cloud.result("f-1").await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "declined");
    assert_eq!(res["mode"], "test");
    let res = r.cloud.result("f-2").await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "cancelled_by_customer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_unknown_then_status_verifies_again() {
    let r = rig("kv-late", "test", &[]).await;
    // 53: stays pending.
    let res = r.cloud.ask(pay("w-1", 15053, Duration::from_secs(5))).await;
    assert_unknown(&res);
    assert_eq!(res["mode"], "test");
    let tid = r.stats.links()[0].transaction_id.clone();
    assert!(r.stats.links()[0].verifies >= 2, "verified until the deadline");
    // The customer pays late; `status` asks the provider again.
    assert!(r.stats.complete(&tid, "completed"));
    let st = status_reconciled(&r.cloud, "w-2", "w-1").await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(st["target"]["reconciled"]["payment"]["transaction_id"], tid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_answer_is_retried_with_the_same_order() {
    let r = rig("kv-lost", "test", &[]).await;
    let res = r.cloud.ask(payment("l-1", 15055)).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(r.stats.counters().payments_created, 1, "one payment");
    assert_eq!(r.stats.links()[0].create_requests, 2, "asked again, same order id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_on_create_until_the_deadline_is_unknown() {
    let r = rig("kv-503", "test", &[]).await;
    let res = r.cloud.ask(pay("e-1", 15054, Duration::from_secs(5))).await;
    assert_unknown_because(&res, "503");
    assert!(r.stats.counters().create_requests >= 2, "retried with the same order id");
    assert_eq!(r.stats.counters().payments_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_or_invalid_is_rejected_before_any_request() {
    let r = rig("kv-off", "disabled", &[]).await;
    let res = r.cloud.ask(payment("x-1", 15000)).await;
    assert_eq!(res["state"], "rejected", "{res}");
    assert_eq!(res["error"]["code"], "device_unavailable");
    assert_eq!(res["mode"], "disabled");
    drop(r);

    let r = rig("kv-bad", "test", &[]).await;
    let mut bad = payment("b-1", 15000);
    bad["customer"]["phone"] = json!("1".repeat(21));
    let res = r.cloud.ask(bad).await;
    assert!(error_message(&res, "rejected", "bad_request").starts_with("field customer.phone"));
    assert_eq!(r.stats.counters().create_requests, 0);
}

/// kill -9 before and after the create request was journalled: the restarted agent
/// creates at most once and verifies the same payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_around_create_resumes_and_creates_once() {
    for (n, point) in
        ["journal:kuveyt_creating:after", "journal:kuveyt_created:after"].iter().enumerate()
    {
        let mut r = rig(&format!("kv-crash-{n}"), "test", &[(CRASH_AT, point)]).await;
        let id = format!("k-{n}");
        r.crash_at(payment(&id, 15000), point).await;
        assert_eq!(r.stats.counters().payments_created, n as u64, "{point}");
        r.agent.restart(&[]);
        let res = r.cloud.result(&id).await;
        assert_eq!(res["state"], "succeeded", "{point}: {res}\n{}", r.agent.log());
        assert_eq!(r.stats.counters().payments_created, 1, "{point}: created once");
        assert_eq!(r.stats.counters().create_requests, 1, "{point}: one create request");
        assert_eq!(res["payment"]["transaction_id"], r.stats.links()[0].transaction_id.as_str());
    }
}

/// Answers cut short — the create's (59) or a verify's (58) — are asked about again by the
/// same order id / transaction, never taken as a failure: one payment, and the outcome is
/// the provider's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_answers_are_asked_again_never_failed() {
    let r = rig("kv-garbled", "test", &[]).await;
    r.cloud.send(payment("g-1", 15058)).await;
    r.cloud.send(payment("g-2", 15059)).await;
    for id in ["g-1", "g-2"] {
        let res = r.cloud.result(id).await;
        assert_eq!(res["state"], "succeeded", "{id}: {res}\n{}", r.agent.log());
    }
    assert_eq!(r.stats.counters().payments_created, 2, "one payment per command");
    assert!(
        r.stats.counters().create_requests >= 3,
        "the garbled create was repeated with the same order id"
    );
    let orders: Vec<String> = r.stats.links().into_iter().map(|l| l.order_id).collect();
    assert!(orders.contains(&"kv-garbled/g-2".to_string()), "{orders:?}");
}

/// A provider answer that carries the full card number (spaced) and track 2 data: masked
/// before anything of it is kept or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_card_number_from_the_provider_is_never_kept_or_sent() {
    let mut r = rig("kv-pan", "test", &[]).await;
    r.assert_card_number_masked(
        payment("pan-1", 15060),
        "4111 11** **** 1111",
        &["4111111111111111", "4111 1111 1111 1111"],
    )
    .await;
}
