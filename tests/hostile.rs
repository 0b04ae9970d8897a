//! Hostile inputs: each gets a clear error, nothing crashes, nothing is lost.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_refused_and_the_agent_keeps_going() {
    let (_broker, _dir, cloud, mut agent) = agent_with_a_silent_terminal("shop-hostile").await;

    let deep = format!(
        r#"{{"v":1,"id":"deep-1","op":"ping","basket":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // (what it is, payload)
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty payload", Vec::new()),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x9c]),
        ("deep nesting", deep.into_bytes()),
        ("huge number", br#"{"v":1,"id":"huge-1","op":"payment","terminal":"ip-1","amount":1e400,"currency":"AZN"}"#.to_vec()),
        ("huge integer", br#"{"v":1,"id":"huge-2","op":"payment","terminal":"ip-1","amount":99999999999999999999999,"currency":"AZN"}"#.to_vec()),
        ("negative amount", br#"{"v":1,"id":"neg-1","op":"payment","terminal":"ip-1","amount":-5,"currency":"AZN"}"#.to_vec()),
        ("zero amount", br#"{"v":1,"id":"zero-1","op":"payment","terminal":"ip-1","amount":0,"currency":"AZN"}"#.to_vec()),
        ("unicode id", "{\"v\":1,\"id\":\"платёж-1\",\"op\":\"ping\"}".as_bytes().to_vec()),
        ("id too long", format!(r#"{{"v":1,"id":"{}","op":"ping"}}"#, "a".repeat(65)).into_bytes()),
        ("array", b"[1,2,3]".to_vec()),
        ("lowercase currency", br#"{"v":1,"id":"cur-1","op":"payment","terminal":"ip-1","amount":5,"currency":"azn"}"#.to_vec()),
        ("null op", br#"{"v":1,"id":"op-1","op":null}"#.to_vec()),
    ];
    for (_what, payload) in &cases {
        cloud.send_raw(payload.clone()).await;
    }
    // One answer per hostile payload, each rejected with a reason.
    let rejected = cloud
        .wait_n("result", Duration::from_secs(20), cases.len(), |v| v["state"] == "rejected")
        .await;
    for r in &rejected {
        let code = r["error"]["code"].as_str().unwrap_or("");
        assert!(code == "bad_request", "{r}");
        assert!(!r["error"]["message"].as_str().unwrap_or("").is_empty(), "{r}");
    }
    // Ids that were valid are kept on the rejection; invalid ones are null.
    let by_id = |id: &str| rejected.iter().any(|r| r["id"] == id);
    assert!(by_id("neg-1") && by_id("zero-1") && by_id("huge-2") && by_id("cur-1"));
    assert!(
        rejected
            .iter()
            .any(|r| r["error"]["message"].as_str().is_some_and(|m| m.contains("recursion limit"))),
        "deep nesting is refused by the parser's depth limit, not by a stack overflow"
    );
    assert!(!rejected.iter().any(|r| r["id"] == "платёж-1"));

    // Still alive and answering.
    cloud.send(json!({"v":1,"id":"alive-1","op":"ping"})).await;
    assert_eq!(cloud.result("alive-1").await["state"], "succeeded");
    assert!(agent.wait_exit(Duration::from_millis(10)).is_none(), "agent still running");
}

/// A terminal that takes the request and never answers: the outcome is `unknown` with
/// `needs_reconciliation` (never `failed`: money may have moved). When the terminal finally
/// finishes, a `status` query learns the real outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_never_answers_gives_unknown_then_status_reconciles() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(None, 2_500, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-slow", broker.port()).ip_with(
        "ip-1",
        addr,
        &[("op_timeout", "300ms"), ("recovery_window", "300ms")],
    );
    let (cloud, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;

    let r = cloud.ask(pay("slow-1", "ip-1", 700)).await;
    assert_unknown(&r);

    // The terminal finishes in its own time.
    assert!(stats.executed("slow-1", Duration::from_secs(10)).await, "terminal finished");
    let s = status_reconciled(&cloud, "st-1", "slow-1").await;
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["target"]["state"], "unknown", "the published outcome stays unknown");
    assert!(s["target"]["reconciled"]["payment"]["transaction_id"].is_string());
    // Exactly one final result was published for the payment itself.
    assert_eq!(cloud.results_for("slow-1").len(), 1);
    stop.cancel();
}
