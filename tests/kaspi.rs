//! Kaspi Smart POS end to end: the real binary, an embedded broker, the Kaspi simulator
//! (HTTP or HTTPS) on 127.0.0.1 port 0, a cloud POS client.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use posbridge::sim::kaspi::{Cashier, KaspiSim, SimControl, SimOptions, SimStats, SimTls};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

struct Sim {
    url: String,
    port: u16,
    stats: SimStats,
    control: SimControl,
    tls: Option<SimTls>,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sim(opts: SimOptions) -> Sim {
    let s = KaspiSim::bind("127.0.0.1:0".parse().expect("addr"), opts).await.expect("kaspi sim");
    let stop = CancellationToken::new();
    let out = Sim {
        url: s.url(),
        port: s.local_addr().port(),
        stats: s.stats(),
        control: s.control(),
        tls: s.tls().cloned(),
        stop: stop.clone(),
    };
    s.spawn(stop);
    out
}

fn plain_opts(customer_ms: u64) -> SimOptions {
    SimOptions {
        seed: Some(3),
        customer_time: Duration::from_millis(customer_ms),
        actualize_gap: Duration::from_millis(200),
        ..Default::default()
    }
}

fn tls_opts(protected: bool) -> SimOptions {
    SimOptions {
        tls_name: Some("pos1.kaspiros.kz".into()),
        protected,
        cashier: Cashier::Allow(Duration::from_millis(100)),
        ..plain_opts(100)
    }
}

/// One `[[terminals]]` table with test timings; `extra` adds TLS keys.
fn terminal(id: &str, url: &str, protected: bool, extra: &str) -> String {
    format!(
        "[[terminals]]\nid = \"{id}\"\nkind = \"kaspi\"\nurl = \"{url}\"\nprotected = {protected}\nregister_name = \"posbridge-test\"\npoll_interval = \"50ms\"\nactualize_interval = \"200ms\"\nactualize_window = \"1s\"\npayment_timeout = \"20s\"\nrequest_timeout = \"3s\"\nregister_timeout = \"10s\"\n{extra}"
    )
}

fn spec(agent_id: &str, broker: u16, terminals: &[String]) -> AgentSpec {
    AgentSpec { extra: terminals.concat(), ..AgentSpec::new(agent_id, broker) }
}

/// An agent with one plain-HTTP terminal `kaspi-1` at the simulator.
fn plain_spec(agent_id: &str, broker: &Broker, s: &Sim) -> AgentSpec {
    spec(agent_id, broker.port(), &[terminal("kaspi-1", &s.url, false, "")])
}

/// A broker, a simulator with no customer time, and the agent `agent_id` with its plain
/// terminal in a temp dir, its cloud client online.
async fn plain_rig(agent_id: &str) -> (Broker, Sim, tempfile::TempDir, Cloud, Agent) {
    let broker = embedded();
    let s = sim(plain_opts(0)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sp = plain_spec(agent_id, &broker, &s);
    let (cloud, agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    (broker, s, dir, cloud, agent)
}

/// The protected terminal `kaspi-1` at the simulator by IP over HTTPS, verified against
/// the certificate's name via tls_name + the simulator's CA (written into `dir`); `more`
/// adds keys.
fn verified_terminal(s: &Sim, dir: &Path, more: &str) -> String {
    let ca = dir.join("sim-ca.pem");
    std::fs::write(&ca, &s.tls.as_ref().expect("tls").ca_pem).expect("ca");
    let keys = format!(
        "tls = \"verify\"\ntls_name = \"pos1.kaspiros.kz\"\nca_file = \"{}\"\n{more}",
        ca.display()
    );
    let url = format!("https://127.0.0.1:{}", s.port);
    terminal("kaspi-1", &url, true, &keys)
}

fn kzt(id: &str, amount: i64) -> Value {
    json!({"v":1,"id":id,"op":"payment","terminal":"kaspi-1","amount":amount,"currency":"KZT"})
}

/// `posbridge kaspi register` against the simulator, as a field engineer runs it.
fn register(spec: &AgentSpec, dir: &Path) -> std::process::Output {
    let config = dir.join("posbridge.toml");
    std::fs::write(&config, spec.toml(&dir.join("store"))).expect("config");
    std::process::Command::new(BIN)
        .args(["kaspi", "register", "kaspi-1", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run register")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_declines_refund_and_device_info_over_http() {
    let broker = embedded();
    let s = sim(plain_opts(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sp = plain_spec("kaspi-http", &broker, &s);
    let env = [("POSBRIDGE__SECURITY__ALLOW_UNREFERENCED_REFUNDS", "true")];
    let (cloud, agent) = Cloud::with_agent(&sp, dir.path(), &env).await;

    // Not whole tenge: rejected before any request to the terminal.
    let r = cloud.ask(kzt("bad-1", 150_050)).await;
    assert_eq!(r["state"], "rejected", "{r}");
    assert_eq!(r["error"]["code"], "invalid_amount");
    cloud
        .send(json!({"v":1,"id":"bad-2","op":"payment","terminal":"kaspi-1","amount":100,"currency":"USD"}))
        .await;
    assert_eq!(cloud.result("bad-2").await["state"], "rejected");
    assert_eq!(s.stats.counts().payments_started, 0);

    // Card, approved (amount convention …12), own receipt.
    let mut card = kzt("card-1", 151_200);
    card["own_receipt"] = json!(true);
    let r = cloud.ask(card).await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
    assert_eq!(r["amount"], 151_200);
    let p = &r["payment"];
    assert_eq!(p["method"], "card");
    assert_eq!(p["transaction_id"], r["device"]["chequeInfo"]["rrn"]);
    assert!(p["card_mask"].as_str().expect("mask").contains("*****"));
    assert!(p["auth_code"].is_string());
    assert_eq!(p["receipt"]["store_name"], "Kaspi Mark");
    assert_eq!(p["receipt"]["amount_tenge"], 1512);
    assert!(r["device"]["processId"].is_string());
    assert_eq!(s.stats.counts().last_owncheque.as_deref(), Some("true"));
    // Device sub-states went out on evt.
    cloud
        .wait("evt", T, |v| {
            v["id"] == "card-1" && v["state"] == "in_progress" && v["sub_state"] == "WaitUser"
        })
        .await;

    // QR, approved: the transaction id is the orderNumber.
    let r = cloud.ask(kzt("qr-1", 51_100)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["payment"]["method"], "qr");
    assert_eq!(r["payment"]["transaction_id"], r["device"]["chequeInfo"]["orderNumber"]);
    cloud.wait("evt", T, |v| v["id"] == "qr-1" && v["sub_state"] == "WaitForQrConfirmation").await;

    // Declined card (…13) and customer cancel (…15).
    let r = cloud.ask(kzt("dec-1", 21_300)).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "declined");
    assert_eq!(r["error"]["device_code"], "CardTransactionFailure");
    let r = cloud.ask(kzt("can-1", 21_500)).await;
    assert_eq!(r["error"]["code"], "cancelled_by_customer", "{r}");
    // Payments blocked (…06): the terminal's 106 refuses before anything starts.
    let r = cloud.ask(kzt("blk-1", 10_600)).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["device_code"].as_i64()),
        (Some("failed"), Some(106)),
        "{r}"
    );

    // Refund by original: the engine fills method + rrn; the terminal checks them.
    let r = cloud.ask(json!({"v":1,"id":"ref-1","op":"refund","terminal":"kaspi-1","amount":100_000,"original":"card-1"})).await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
    assert_eq!(r["device"]["chequeInfo"]["type"], "refund");
    // Refund by explicit transaction id + method (the QR payment).
    let qr = cloud.result("qr-1").await;
    cloud
        .send(json!({"v":1,"id":"ref-2","op":"refund","terminal":"kaspi-1","amount":100,"currency":"KZT",
                     "transaction_id": qr["payment"]["transaction_id"], "method":"qr"}))
        .await;
    assert_eq!(cloud.result("ref-2").await["state"], "succeeded");
    // Allowed without `original`, but the transaction is this agent's own payment: the
    // over-refund check still applies (511 ₸ paid, 1 ₸ refunded).
    let r = cloud.ask(json!({"v":1,"id":"ref-3","op":"refund","terminal":"kaspi-1","amount":51_100,"currency":"KZT",
                     "transaction_id": qr["payment"]["transaction_id"], "method":"qr"})).await;
    assert_eq!(r["error"]["code"], "invalid_amount", "{r}");
    assert_eq!(s.stats.counts().refunds_started, 2);
    assert_eq!(s.stats.counts().payments_started, 4);

    // device_info and the retained terminal state.
    let r = cloud.ask(json!({"v":1,"id":"info-1","op":"device_info","terminal":"kaspi-1"})).await;
    assert_eq!(r["device"]["serialNum"], "00043010171", "{r}");
    let t = cloud.wait("terminals/kaspi-1", T, |v| v["state"] == "connected").await;
    assert_eq!(t["identity"]["serial"], "00043010171");
    assert_eq!(t["identity"]["terminal_id"], "31452963");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_is_actualized_then_a_later_status_resolves_it() {
    let (_broker, s, _dir, cloud, _agent) = plain_rig("kaspi-unk").await;

    s.control.unknown_for_next(u64::MAX);
    let r = cloud.ask(kzt("u-1", 11_100)).await;
    assert_unknown_because(&r, "actualizing");
    let c = s.stats.counts();
    // Window 1 s, interval 200 ms: several actualizes, never two too close.
    assert!(c.actualize_calls >= 3, "{c:?}");
    assert_eq!(c.actualize_too_soon, 0, "{c:?}");
    assert_eq!(r["device"]["processId"], s.stats.process_ids()[0]);

    // The terminal learns the outcome later; a status command asks again.
    s.control.settle_unknown();
    let st = status_reconciled(&cloud, "s-1", "u-1").await;
    assert_eq!(st["target"]["reconciled"]["payment"]["method"], "qr");
    assert_eq!(s.stats.counts().payments_started, 1, "never paid twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_start_answer_is_unknown_never_failed() {
    let (_broker, s, _dir, cloud, _agent) = plain_rig("kaspi-lost").await;
    s.control.lose_next_answer("payment");
    let r = cloud.ask(kzt("l-1", 11_200)).await;
    assert_unknown(&r);
    assert_eq!(s.stats.counts().payments_started, 1);
    // A lost status answer, on the other hand, is just asked again.
    s.control.lose_next_answer("status");
    cloud.send(kzt("l-2", 11_200)).await;
    assert_eq!(cloud.result("l-2").await["state"], "succeeded");
}

/// The terminal runs the payment, then: its answer to `/v2/payment` is lost (18: no
/// processId to ask by), or its receipt shows another amount than requested (17: not this
/// payment's answer), or its first status answers are cut short (19: asked again). Never
/// `failed`; one payment each; the last settles to the terminal's real answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_foreign_and_garbled_answers_are_never_failed() {
    let (_broker, s, _dir, cloud, agent) = plain_rig("kaspi-answers").await;
    // (id, amount in tiyn, expected state)
    let cases = [
        ("a-lost", 11_800, "unknown"),
        ("a-foreign", 11_700, "unknown"),
        ("a-garbled", 11_900, "succeeded"),
    ];
    for (n, (id, amount, want)) in cases.iter().enumerate() {
        let r = cloud.ask(kzt(id, *amount)).await;
        assert_eq!(r["state"], *want, "{id}: {r}\n{}", agent.log());
        if *want == "unknown" {
            assert_eq!(r["needs_reconciliation"], true, "{r}");
        }
        assert_eq!(s.stats.counts().payments_started, n as u64 + 1, "{id}: one /v2/payment");
    }
    // The foreign receipt is kept raw for the operator, and `status` does not take it.
    let st = cloud.ask(json!({"v":1,"id":"a-st","op":"status","target":"a-foreign"})).await;
    assert!(st["target"].get("reconciled").is_none(), "{st}");
    assert!(agent.log().contains("receipt amount differs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_around_the_process_id_never_pays_twice() {
    let broker = embedded();
    // (abort point, forget processes before restart, expected state, payments the
    // terminal started for this command)
    let cases: [(&str, bool, &str, u64); 4] = [
        // processId durable: resume polls the same process.
        ("journal:kaspi_process:after", false, "succeeded", 1),
        // Sent, processId not yet durable: cannot know.
        ("journal:kaspi_process:before", false, "unknown", 1),
        // Journalled as sending, died before the request left: still cannot know.
        ("journal:kaspi_sending:after", false, "unknown", 0),
        // processId durable but the terminal forgot it (24 h / its own restart): 101.
        ("journal:kaspi_process:after", true, "unknown", 1),
    ];
    for (n, (point, forget, want, started)) in cases.iter().enumerate() {
        // A fresh terminal each time: one left busy by the previous case would answer 107.
        let s = sim(plain_opts(1500)).await;
        let agent_id = format!("kaspi-crash-{n}");
        let id = format!("c-{n}");
        let dir = tempfile::tempdir().expect("tempdir");
        let sp = plain_spec(&agent_id, &broker, &s);
        let before = s.stats.counts().payments_started;
        let env = [(posbridge::faults::ENV, *point)];
        let (cloud, mut agent) = Cloud::with_agent(&sp, dir.path(), &env).await;
        cloud.send(kzt(&id, 11_200)).await;
        assert_aborts_at(&mut agent, point, T);
        if *forget {
            s.control.forget_processes();
        }
        agent.restart(&[]);
        let r = cloud.result(&id).await;
        assert_eq!(r["state"], *want, "{point} forget={forget}: {r}\n{}", agent.log());
        assert_eq!(
            s.stats.counts().payments_started - before,
            *started,
            "{point}: payments the terminal started"
        );
        if *want == "unknown" {
            assert_eq!(r["needs_reconciliation"], true, "{r}");
        }
        if *forget {
            assert_eq!(r["error"]["device_code"], 101, "{r}");
        }
        if *point == "journal:kaspi_process:after" && !*forget {
            let pid = r["device"]["processId"].as_str().expect("pid");
            assert_eq!(s.stats.starts_of(pid), 1, "the same process, started once");
            assert!(agent.log().contains("polling the journalled Kaspi process"));
        }
        assert!(agent.sigterm().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_api_register_renew_and_failed_renewal_over_verified_tls() {
    let broker = embedded();
    let s = sim(tls_opts(true)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Addressed by IP, verified against the certificate's name via tls_name + ca_file.
    let sp = spec("kaspi-tok", broker.port(), &[verified_terminal(&s, dir.path(), "")]);

    // Enrolment by the field engineer.
    let out = register(&sp, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "register failed: {stderr}");
    assert!(stderr.contains("registered"), "{stderr}");
    assert_eq!(s.stats.counts().registers, 1);

    let (cloud, agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    let r = cloud.ask(kzt("t-1", 11_200)).await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
    assert_eq!(s.stats.counts().revokes, 0);

    // Tokens are encrypted at rest and never logged.
    let (access, refresh) = s.stats.tokens_of("posbridge-test").expect("issued");
    for needle in [&access, &refresh] {
        assert!(
            file_containing(&dir.path().join("store"), needle.as_bytes()).is_none(),
            "token in clear in the store"
        );
        assert!(!agent.log().contains(needle.as_str()), "token in the log");
    }

    // 403: token past its expiration → one renewal, then the payment runs.
    s.control.expire_tokens_now();
    cloud.send(kzt("t-2", 11_200)).await;
    assert_eq!(cloud.result("t-2").await["state"], "succeeded");
    assert_eq!(s.stats.counts().revokes, 1);
    // 401 "Session expires…" → one renewal.
    s.control.require_renewal();
    cloud.send(kzt("t-3", 11_200)).await;
    assert_eq!(cloud.result("t-3").await["state"], "succeeded");
    assert_eq!(s.stats.counts().revokes, 2);
    assert_eq!(s.stats.counts().payments_started, 3);

    // Renewal fails: a clear terminal error that says how to re-register; no payment.
    s.control.break_refresh();
    s.control.expire_tokens_now();
    let r = cloud.ask(kzt("t-4", 11_200)).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "unauthorized");
    let msg = r["error"]["message"].as_str().expect("message");
    assert!(msg.contains("posbridge kaspi register kaspi-1"), "{msg}");
    assert_eq!(s.stats.counts().payments_started, 3);
    cloud
        .wait("terminals/kaspi-1", T, |v| {
            v["state"] == "error"
                && v["last_error"].as_str().is_some_and(|e| e.contains("kaspi register"))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_tokens_survive_a_restart() {
    let broker = embedded();
    let s = sim(SimOptions {
        // Shorter than renew_before: the driver renews ahead of expiry.
        token_lifetime: Duration::from_secs(1800),
        ..tls_opts(true)
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let t = verified_terminal(&s, dir.path(), "renew_before = \"1h\"\n");
    let sp = spec("kaspi-renew", broker.port(), &[t]);
    let out = register(&sp, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (cloud, mut agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    cloud.send(kzt("r-1", 11_200)).await;
    assert_eq!(cloud.result("r-1").await["state"], "succeeded");
    let renewed = s.stats.counts().revokes;
    assert!(renewed >= 1, "renewed before expiry");
    // The old pair died at the terminal; only the durably stored new one works now.
    agent.restart(&[]);
    let r = cloud.ask(kzt("r-2", 11_200)).await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
    assert_eq!(s.stats.counts().auth_refused, 0, "never used a dead token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pin_match_mismatch_and_unverified_names() {
    let broker = embedded();
    let s = sim(tls_opts(false)).await;
    let tls = s.tls.clone().expect("tls");
    let url = format!("https://127.0.0.1:{}", s.port);
    let wrong = "00".repeat(32);
    let terminals = [
        terminal(
            "kaspi-1",
            &url,
            false,
            &format!("tls = \"pin\"\npin_sha256 = \"{}\"\n", tls.cert_sha256),
        ),
        terminal("kaspi-2", &url, false, &format!("tls = \"pin\"\npin_sha256 = \"{wrong}\"\n")),
        // verify without the simulator's CA: the certificate must be refused.
        terminal("kaspi-3", &url, false, "tls = \"verify\"\ntls_name = \"pos1.kaspiros.kz\"\n"),
        terminal("kaspi-4", &url, false, "tls = \"insecure\"\n"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let sp = spec("kaspi-pin", broker.port(), &terminals);
    let (cloud, agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    for t in ["kaspi-1", "kaspi-2", "kaspi-3", "kaspi-4"] {
        cloud.send(json!({"v":1,"id":format!("i-{t}"),"op":"device_info","terminal":t})).await;
    }
    let ok = cloud.result("i-kaspi-1").await;
    assert_eq!(ok["state"], "succeeded", "{ok}\n{}", agent.log());
    assert_eq!(ok["device"]["terminalId"], "31452963");
    let bad = cloud.result("i-kaspi-2").await;
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["error"]["code"], "device_unavailable");
    let m = bad["error"]["message"].as_str().expect("msg");
    // The fingerprint the terminal presented is named. (A random certificate's hex can
    // hold a digit run that reads as a card number; the log masking then hides part of
    // it, so only its last 6 characters are checked when they are not all digits.)
    let tail = &tls.cert_sha256[tls.cert_sha256.len() - 6..];
    assert!(m.contains("pin mismatch") && m.contains("the terminal presented sha256"), "{m}");
    assert!(
        m.contains(&tls.cert_sha256)
            || tail.bytes().all(|b| b.is_ascii_digit())
            || m.contains(tail),
        "{m}"
    );
    // A payment to the mismatching terminal never leaves the agent: failed, not unknown.
    let r = cloud.ask(json!({"v":1,"id":"p-kaspi-2","op":"payment","terminal":"kaspi-2","amount":11_200,"currency":"KZT"})).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["code"].as_str()),
        (Some("failed"), Some("device_unavailable")),
        "{r}"
    );
    assert_eq!(s.stats.counts().payments_started, 0);
    let unverified = cloud.result("i-kaspi-3").await;
    assert_eq!(unverified["state"], "failed", "{unverified}");
    assert_eq!(cloud.result("i-kaspi-4").await["state"], "succeeded");
    assert!(agent.log().contains("tls = \\\"insecure\\\"") || agent.log().contains("insecure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_waits_for_the_cashier_and_says_why_it_failed() {
    let broker = embedded();
    let s = sim(SimOptions { cashier: Cashier::Ignore, ..tls_opts(true) }).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let t = verified_terminal(&s, dir.path(), "")
        .replace("register_timeout = \"10s\"", "register_timeout = \"1s\"");
    let sp = spec("kaspi-reg", broker.port(), &[t]);

    // Nobody presses anything: the command gives up after register_timeout.
    let out = register(&sp, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("did the cashier press"), "{err}");
    // The cashier presses "Deny": the terminal's 105 text is shown.
    s.control.set_cashier(Cashier::Deny(Duration::from_millis(50)));
    let out = register(&sp, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Register Error"), "{err}");
    // Without a token the agent refuses payments with the enrolment hint.
    let (cloud, mut agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    let r = cloud.ask(kzt("n-1", 11_200)).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("posbridge kaspi register kaspi-1")));
    assert_eq!(s.stats.counts().payments_started, 0);
    assert!(agent.sigterm().success());
    // "Allow": registered, and the agent pays.
    s.control.set_cashier(Cashier::Allow(Duration::from_millis(50)));
    let out = register(&sp, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.spawn(&[]);
    cloud.send(kzt("n-2", 11_200)).await;
    assert_eq!(cloud.result("n-2").await["state"], "succeeded");
}

/// A terminal firmware that puts the full card number in its answer (`cardMask`, and track
/// 2 data in the cheque): the number appears in no MQTT message and in none of the store's
/// files or the log — masked to its first 6 and last 4 digits (`mqtt-api.md` 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_card_number_from_the_terminal_is_never_kept_or_sent() {
    let (_broker, _s, dir, cloud, mut agent) = plain_rig("kaspi-pan").await;
    let r = cloud.ask(kzt("pan-1", 12_000)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["payment"]["card_mask"], "411111******1111", "{r}");
    assert!(agent.sigterm().success());
    assert_card_number_nowhere(&cloud, dir.path(), &["4111111111111111"]);
}

/// Enrolling a Kaspi terminal while the agent runs: `posbridge kaspi register` goes
/// through the agent's control socket (the store is single-process), payments on the other
/// terminal go on, and the enrolled terminal takes payments without a restart. `secret
/// set` does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_secret_set_while_the_agent_runs() {
    let broker = embedded();
    let s = sim(tls_opts(true)).await;
    let stop = CancellationToken::new();
    let (ip, stats) = approving_ip_sim(Some(5), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sp =
        spec("kaspi-live", broker.port(), &[verified_terminal(&s, dir.path(), "")]).ip("ip-1", ip);
    let (cloud, mut agent) = Cloud::with_agent(&sp, dir.path(), &[]).await;
    // Not enrolled yet: the Kaspi terminal refuses to pay, the IP terminal pays.
    assert_eq!(cloud.ask(kzt("live-0", 11_200)).await["error"]["code"], "unauthorized");
    assert_eq!(cloud.ask(pay("live-ip-0", "ip-1", 100)).await["state"], "succeeded");

    let out = register(&sp, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "register failed: {stderr}");
    assert!(
        stderr.contains("registered") && stderr.contains("through the running agent"),
        "{stderr}"
    );
    assert_eq!(s.stats.counts().registers, 1);
    // The same agent process, never stopped: both terminals pay.
    assert!(agent.wait_exit(Duration::from_millis(1)).is_none(), "the agent kept running");
    assert_eq!(cloud.ask(kzt("live-1", 11_200)).await["state"], "succeeded");
    assert_eq!(cloud.ask(pay("live-ip-1", "ip-1", 100)).await["state"], "succeeded");
    // Registering again (a reset terminal, say) replaces the pair the terminal accepts; the
    // running driver takes the stored one at the terminal's first refusal, no renewal.
    let out = register(&sp, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.stats.counts().registers, 2);
    assert_eq!(cloud.ask(kzt("live-2", 11_200)).await["state"], "succeeded", "{}", agent.log());
    assert_eq!(s.stats.counts().revokes, 0);
    assert_eq!(stats.executions("live-ip-1"), 1);
    // The tokens reached the store encrypted, never in clear.
    let (access, _) = s.stats.tokens_of("posbridge-test").expect("issued");
    assert!(file_containing(&dir.path().join("store"), access.as_bytes()).is_none());

    // `secret set` through the agent too (the value from stdin, never in the log).
    let mut child = std::process::Command::new(BIN)
        .args(["secret", "set", "ip-1", "api_key", "--config"])
        .arg(dir.path().join("posbridge.toml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run secret set");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"s3cret-live-value\n").expect("write");
    }
    let out = child.wait_with_output().expect("secret set");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stored (encrypted) by the running agent"), "{text}");
    assert!(!agent.log().contains("s3cret-live-value"), "secret in the log");
    assert!(file_containing(&dir.path().join("store"), b"s3cret-live-value").is_none());
    assert!(agent.sigterm().success());
    stop.cancel();
}
