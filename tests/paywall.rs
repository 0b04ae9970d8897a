//! Black-box tests of the `paywall` terminal: the real binary, an embedded broker, and
//! the Paywall mock (`posbridge::sim::paywall`) on 127.0.0.1 port 0. Outcomes are chosen
//! by the mock's amount conventions (the last two minor digits).
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use posbridge::sim::paywall::{PaywallSim, PaywallSimOptions, PaywallStats};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const GUID: &str = "8ff33705-57c7-42dc-8341-a0053e7f3009";
const T: &str = "pw-1";

type Rig = common::Rig<PaywallStats>;

/// Key files for the test environment, as an operator would write them.
fn key_files(dir: &Path) -> String {
    write_key_files(dir, &[("api_key_file", "test-api-key"), ("client_key_file", "test-secret")])
}

fn terminal(mode: &str, test_url: &str, live_url: &str, extra: &str) -> String {
    format!(
        "[[terminals]]\nid = \"{T}\"\nkind = \"paywall\"\nmode = \"{mode}\"\ntest_url = \"{test_url}\"\nlive_url = \"{live_url}\"\nterminal_guid = \"{GUID}\"\nop_timeout = \"20s\"\nrecovery_window = \"3s\"\n{extra}"
    )
}

async fn mock(opts: PaywallSimOptions) -> (PaywallSim, CancellationToken) {
    let sim = PaywallSim::bind("127.0.0.1:0".parse().expect("addr"), opts).await.expect("mock");
    (sim, CancellationToken::new())
}

/// Broker + mock + agent + cloud POS. `setup` gets the mock's test and live URLs and the
/// temp dir and returns the terminal's TOML; `before_start` runs with the written config
/// before the agent starts (e.g. `posbridge secret set`).
async fn rig_with(
    name: &str, opts: PaywallSimOptions, setup: impl FnOnce(&str, &str, &Path) -> String,
    before_start: impl FnOnce(&Path), env: &[(&str, &str)],
) -> Rig {
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, stop) = mock(opts).await;
    let (test_url, live_url) = (sim.base_url("test"), sim.base_url("live"));
    let stats = sim.stats();
    sim.spawn(stop.clone());
    let mut spec = AgentSpec::new(name, broker.port());
    spec.extra = setup(&test_url, &live_url, dir.path());
    std::fs::write(dir.path().join("posbridge.toml"), spec.toml(&dir.path().join("store")))
        .expect("config");
    before_start(&dir.path().join("posbridge.toml"));
    Rig::start(broker, dir, &spec, env, stats, stop).await
}

/// Whether a payment at the mock reaches `status` within 20 s.
async fn reaches(r: &Rig, status: i64) -> bool {
    r.stats
        .wait_until(Duration::from_secs(20), |s| s.payments().iter().any(|p| p.status == status))
        .await
}

/// The default mock, the terminal in `mode` with test key files, the agent with `env`.
async fn rig_in(name: &str, mode: &str, env: &[(&str, &str)]) -> Rig {
    rig_with(
        name,
        PaywallSimOptions::default(),
        |t, l, d| terminal(mode, t, l, &key_files(d)),
        |_| {},
        env,
    )
    .await
}

async fn rig(name: &str) -> Rig {
    rig_in(name, "test", &[]).await
}

fn sale(id: &str, amount: i64) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":T,"amount":amount,"currency":"TRY",
           "display_code":"Kişisel Bakım",
           "products":[{"name":"Saç Tıraşı","amount":amount,"quantity":1,"tax_group_id":10,"unit_code_id":1,"payment_method_id":2}],
           "customer":{"type":1,"first_name":"eda","last_name":"meda","identity":"11111111110"}})
}

fn muc(agent_id: &str, id: &str) -> String {
    posbridge::drivers::paywall::api::merchant_unique_code(agent_id, id).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_succeeds_in_test_mode_with_mode_on_the_result() {
    let r = rig("pw-ok").await;
    let res = r.cloud.ask(sale("s-1", 2200)).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(res["mode"], "test");
    assert_eq!(res["amount"], 2200);
    let payments = r.stats.payments();
    assert_eq!(payments.len(), 1);
    let p = &payments[0];
    assert_eq!(p.env, "test");
    assert_eq!(p.amount_minor, 2200);
    assert_eq!(p.merchant_unique_code, muc("pw-ok", "s-1"));
    assert_eq!(res["payment"]["transaction_id"], p.payment_request_id.as_str());
    assert_eq!(r.stats.counters().sale_requests, 1);
    // The same id again: the stored result, no second request to Paywall.
    r.cloud.send(sale("s-1", 2200)).await;
    r.cloud.wait_n("result", Duration::from_secs(10), 2, |v| v["id"] == "s-1").await;
    assert_eq!(r.stats.counters().sale_requests, 1);
    // Credentials never reach the log.
    assert!(!r.agent.log().contains("test-api-key"));
    assert!(!r.agent.log().contains("test-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_sale_fails_with_paywall_codes() {
    let r = rig("pw-decl").await;
    let res = r.cloud.ask(sale("d-1", 2251)).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["mode"], "test");
    assert_eq!(res["error"]["code"], "declined");
    assert_eq!(res["error"]["device_code"]["error_code"], 51);
    assert_eq!(res["error"]["device_code"]["client_message"], "PaymentDeclined");
    assert!(res.get("needs_reconciliation").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_products_are_rejected_before_any_request() {
    let r = rig("pw-val").await;
    // Sum rule.
    let mut bad = sale("v-1", 2200);
    bad["products"][0]["amount"] = json!(2100);
    r.cloud.send(bad).await;
    // Length rule (customer.phone: 20).
    let mut long = sale("v-2", 2200);
    long["customer"]["phone"] = json!("0".repeat(21));
    r.cloud.send(long).await;
    // Required field.
    let mut missing = sale("v-3", 2200);
    missing["products"][0].as_object_mut().expect("obj").remove("tax_group_id");
    r.cloud.send(missing).await;
    for (id, field) in [
        ("v-1", "field products:"),
        ("v-2", "field customer.phone:"),
        ("v-3", "field products[0].tax_group_id:"),
    ] {
        let res = r.cloud.result(id).await;
        assert_eq!(res["state"], "rejected", "{res}");
        assert_eq!(res["error"]["code"], "bad_request");
        let msg = res["error"]["message"].as_str().unwrap_or("");
        assert!(msg.starts_with(field), "{id}: {msg}");
        assert_eq!(res["mode"], "test");
    }
    assert_eq!(r.stats.counters().sale_requests, 0, "no sale reached Paywall");
    assert_eq!(r.stats.counters().payments_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_terminal_rejects_with_device_unavailable() {
    let r = rig_in("pw-off", "disabled", &[]).await;
    let res = r.cloud.ask(sale("x-1", 2200)).await;
    assert!(error_message(&res, "rejected", "device_unavailable").contains("disabled"));
    assert_eq!(res["mode"], "disabled");
    assert_eq!(r.stats.requests(), 0, "a disabled terminal never calls Paywall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_uses_live_url_and_secrets_from_the_store() {
    let r = rig_with(
        "pw-live",
        PaywallSimOptions::default(),
        // Live credentials only in the secrets store; test key files present but unused.
        |t, l, d| terminal("live", t, l, &key_files(d)),
        |config| {
            for (name, value) in
                [("live_api_key", "live-api-key"), ("live_client_key", "live-secret")]
            {
                let out = secret_set(config, T, name, value);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        },
        &[],
    )
    .await;
    let res = r.cloud.ask(sale("l-1", 2200)).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", r.agent.log());
    assert_eq!(res["mode"], "live");
    let p = r.stats.payments();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].env, "live", "the live environment took the sale");
    assert!(r.agent.log().contains("secret pw-1/live_api_key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_unauthorized() {
    let r = rig_with(
        "pw-401",
        PaywallSimOptions::default(),
        |t, l, d| {
            std::fs::write(d.join("k1"), "nope").expect("k");
            std::fs::write(d.join("k2"), "nope").expect("k");
            terminal(
                "test",
                t,
                l,
                &format!(
                    "api_key_file = \"{}\"\nclient_key_file = \"{}\"\n",
                    d.join("k1").display(),
                    d.join("k2").display()
                ),
            )
        },
        |_| {},
        &[],
    )
    .await;
    let res = r.cloud.ask(sale("u-1", 2200)).await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "unauthorized");
    assert_eq!(r.stats.counters().payments_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_sale_goes_through_sync_cancel() {
    let r = rig("pw-cancel").await;
    r.cloud.send(sale("c-1", 2253)).await;
    assert!(
        reaches(&r, posbridge::drivers::paywall::api::STATUS_ON_DEVICE).await,
        "the sale reached the device"
    );
    let cancel = r.cloud.ask(json!({"v":1,"id":"c-2","op":"cancel","target":"c-1"})).await;
    assert_eq!(cancel["state"], "succeeded", "{cancel}\n{}", r.agent.log());
    let res = r.cloud.result("c-1").await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "cancelled_by_customer");
    assert_eq!(res["mode"], "test");
    assert_eq!(r.stats.cancel_requests(), 1);
    assert_eq!(r.stats.payments()[0].status, posbridge::drivers::paywall::api::STATUS_CANCELLED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_the_device_received_the_sale_rolls_it_back() {
    let r = rig("pw-rollback").await;
    // 60: slow, and the device has not received the sale yet.
    r.cloud.send(sale("rb-1", 2260)).await;
    assert!(reaches(&r, posbridge::drivers::paywall::api::STATUS_WAITING).await);
    r.cloud.send(json!({"v":1,"id":"rb-2","op":"cancel","target":"rb-1"})).await;
    assert_eq!(r.cloud.result("rb-2").await["state"], "succeeded");
    let res = r.cloud.result("rb-1").await;
    assert_eq!(res["state"], "failed", "{res}");
    assert_eq!(res["error"]["code"], "cancelled_by_customer");
    assert_eq!(r.stats.counters().rollback_requests, 1, "sale/rollback, not sync/cancel");
    assert_eq!(r.stats.cancel_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_odd_answers_are_resolved_by_inquiry() {
    let r = rig("pw-lost").await;
    // 55: answer lost; 57: 502 HTML after success; 58: empty body; 59: text/plain.
    for (id, amount) in [("o-55", 2255), ("o-57", 2257), ("o-58", 2258), ("o-59", 2259)] {
        let res = r.cloud.ask(sale(id, amount)).await;
        assert_eq!(res["state"], "succeeded", "{id}: {res}\n{}", r.agent.log());
        let p = r
            .stats
            .payments()
            .into_iter()
            .find(|p| p.merchant_unique_code == muc("pw-lost", id))
            .expect("payment");
        assert_eq!(res["payment"]["transaction_id"], p.payment_request_id.as_str());
        assert_eq!(p.sale_requests, 1, "{id}: sold once, then only asked");
    }
    assert_eq!(r.stats.counters().payments_created, 4);
    assert!(r.stats.counters().list_requests >= 4);
}

/// A 503 page after the sale request says nothing about the sale (paywall.md: a transport
/// error after the request was sent is `unknown`), and Paywall listing no such sale proves
/// nothing either: `unknown` + `needs_reconciliation`, never `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_after_the_sale_request_is_unknown_never_failed() {
    let r = rig("pw-503").await;
    let res = r.cloud.ask(sale("e-1", 2254)).await;
    assert_unknown_because(&res, "503");
    assert_eq!(r.stats.counters().payments_created, 0);
    assert!(r.stats.counters().list_requests >= 2, "asked again within the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolved_sale_is_unknown_then_status_asks_again() {
    let r = rig("pw-unk").await;
    // 56: the answer is lost and the sale stays on the device.
    let res = r.cloud.ask(sale("n-1", 2256)).await;
    assert_unknown(&res);
    assert_eq!(res["mode"], "test");
    // The customer finishes paying; a later `status` learns it from Paywall.
    assert!(r.stats.complete(&muc("pw-unk", "n-1"), "succeeded"));
    let st = status_reconciled(&r.cloud, "n-2", "n-1").await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert_eq!(r.stats.counters().payments_created, 1);
}

/// kill -9 around the sale request; the restarted agent asks by MerchantUniqueCode and
/// never sells again. Killed after the code was journalled but before the request left,
/// Paywall has no such sale — which proves nothing (the list may lag, and whether a
/// repeated code is idempotent on the real service is unverified): `unknown`, nothing
/// sold. Killed after the sale: the lookup finds it, `succeeded`, sold once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_around_the_sale_resumes_and_sells_once() {
    for (n, (point, want)) in
        [("journal:paywall_sale_sending:after", "unknown"), ("journal:answer:before", "succeeded")]
            .iter()
            .enumerate()
    {
        let mut r = rig_in(&format!("pw-crash-{n}"), "test", &[(CRASH_AT, point)]).await;
        let id = format!("k-{n}");
        r.crash_at(sale(&id, 2200), point).await;
        // Before the request: nothing at Paywall yet; after the answer: sold once.
        let sold = u64::from(n == 1);
        assert_eq!(r.stats.counters().payments_created, sold, "{point}");
        r.agent.restart(&[]);
        let res = r.cloud.result(&id).await;
        assert_eq!(res["state"], *want, "{point}: {res}\n{}", r.agent.log());
        assert_eq!(res["mode"], "test");
        assert_eq!(r.stats.counters().payments_created, sold, "{point}: never sold again");
        if *want == "unknown" {
            assert_eq!(res["needs_reconciliation"], true, "{res}");
            continue;
        }
        let p = &r.stats.payments()[0];
        assert_eq!(p.sale_requests, 1, "{point}: one sale request");
        assert_eq!(res["payment"]["transaction_id"], p.payment_request_id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_certificate_and_ca_file() {
    let opts = PaywallSimOptions { tls: true, ..Default::default() };
    // The certificate is made when the mock binds; the rig writes it for ca_file.
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, stop) = mock(opts).await;
    let test_url = sim.base_url("test");
    assert!(test_url.starts_with("https://127.0.0.1:"), "{test_url}");
    std::fs::write(dir.path().join("ca.pem"), sim.cert_pem().expect("cert")).expect("ca");
    let stats = sim.stats();
    sim.spawn(stop.clone());
    let mut spec = AgentSpec::new("pw-tls", broker.port());
    spec.extra = terminal(
        "test",
        &test_url,
        "https://paywall.invalid/live",
        &format!(
            "{}ca_file = \"{}\"\n",
            key_files(dir.path()),
            dir.path().join("ca.pem").display()
        ),
    );
    let (cloud, agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let res = cloud.ask(sale("t-1", 2200)).await;
    assert_eq!(res["state"], "succeeded", "{res}\n{}", agent.log());
    assert_eq!(stats.counters().payments_created, 1);
    stop.cancel();
}

/// The headline case: the sale went through on Paywall, its answer was lost, and
/// Paywall's listing does not show it yet. Never `failed` (a POS would sell again):
/// `unknown` + `needs_reconciliation`, one sale; once Paywall can tell, `status` reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_with_an_unlisted_sale_is_unknown_then_status_reconciles() {
    let r = rig("pw-unlisted").await;
    let res = r.cloud.ask(sale("u-1", 2262)).await;
    assert_unknown(&res);
    assert_eq!(r.stats.counters().payments_created, 1, "the customer was charged once");
    assert!(r.stats.counters().list_requests >= 2, "asked again within the window");
    let code = muc("pw-unlisted", "u-1");
    assert!(r.stats.publish(&code), "the mock knows the sale");
    status_reconciled(&r.cloud, "u-2", "u-1").await;
    assert_eq!(r.stats.counters().payments_created, 1);
    let sold: Vec<_> =
        r.stats.payments().into_iter().filter(|p| p.merchant_unique_code == code).collect();
    assert_eq!(sold.len(), 1);
    assert_eq!(sold[0].sale_requests, 1, "sold once, then only asked");
}

/// A sale answer with its JSON cut short is not a verdict: the agent asks by
/// MerchantUniqueCode and reports what Paywall says, once sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_sale_answer_is_asked_about_not_failed() {
    let r = rig("pw-garbled").await;
    let res = r.cloud.ask(sale("g-1", 2261)).await;
    assert_eq!(res["state"], "succeeded", "{res}");
    assert_eq!(r.stats.counters().payments_created, 1);
    let p = r
        .stats
        .payments()
        .into_iter()
        .find(|p| p.merchant_unique_code == muc("pw-garbled", "g-1"))
        .expect("payment");
    assert_eq!(p.sale_requests, 1);
    assert_eq!(res["payment"]["transaction_id"], p.payment_request_id.as_str());
}

/// A Paywall answer that carries the full card number and track 2 data: masked before the
/// agent keeps or sends any of it — in no MQTT message, in no file of the store or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_card_number_from_paywall_is_never_kept_or_sent() {
    let mut r = rig("pw-pan").await;
    r.assert_card_number_masked(sale("pan-1", 2263), "411111******1111", &["4111111111111111"])
        .await;
}
