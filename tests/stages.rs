//! `POSBRIDGE_STAGES`: the agent notes when each payment reaches each stage of its path,
//! for `posbridge-bench`'s breakdown (docs/performance.md), and writes them at stop.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::collections::HashMap;

use common::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_payment_is_noted_in_order() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, _) = approving_ip_sim(Some(1), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stages = dir.path().join("stages.jsonl");
    let spec = AgentSpec::new("stages", broker.port()).ip("ip-1", addr);
    let cloud = Cloud::connect(broker.port(), "stages", "cloud-stages", false).await;
    let mut agent = Agent::start_with(
        &spec,
        dir.path(),
        &[(posbridge::stages::ENV, stages.to_str().expect("utf-8 path"))],
        &[],
    );
    cloud.online().await;
    cloud.send(pay("st-1", "ip-1", 1500)).await;
    assert_eq!(cloud.result("st-1").await["state"], "succeeded");
    // The result's PUBACK may reach the agent after the cloud has the result; the agent
    // waits at stop until its outbox is empty, so `result_acked` is noted by then.
    assert!(agent.sigterm().success(), "{}", agent.log());
    let text = std::fs::read_to_string(&stages).expect("stages written at stop");
    let mut at: HashMap<String, u64> = HashMap::new();
    // Each log commit's steps, by its id.
    let mut commits: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let (id, stage, ns) = (
            v["id"].as_str().expect("id"),
            v["stage"].as_str().expect("stage").to_string(),
            v["ns"].as_u64().expect("ns"),
        );
        if id == "st-1" {
            at.insert(stage, ns);
        } else if id.starts_with(posbridge::stages::COMMIT_PREFIX) {
            commits.entry(id.to_string()).or_default().insert(stage, ns);
        }
    }
    let mut last = 0;
    let stage_at = |stage: &str| *at.get(stage).unwrap_or_else(|| panic!("no {stage} in {text}"));
    for stage in posbridge::stages::PATH {
        let t = stage_at(stage);
        assert!(t >= last, "{stage} before the stage ahead of it: {at:?}");
        last = t;
    }
    let [durable, puback] = posbridge::stages::COMMAND_ACK.map(stage_at);
    assert!(stage_at("received") <= durable && durable <= puback, "{at:?}");
    // The terminal was idle: the payment's one sync before the device call is the
    // worker's first journal step, which covers the command too (one sync less).
    assert!(durable >= stage_at("worker"), "the command was synced on its own: {at:?}");
    // Each log commit notes its write and its fdatasync, in order; one began inside each
    // of the payment's two syncs (the bench splits them into write and fdatasync).
    let commits: Vec<[u64; 3]> = commits
        .values()
        .map(|c| {
            posbridge::stages::COMMIT
                .map(|s| *c.get(s).unwrap_or_else(|| panic!("a commit without {s}: {c:?}")))
        })
        .collect();
    assert!(commits.iter().all(|[a, b, c]| a <= b && b <= c), "{commits:?}");
    for (from, to) in [("device_call", "device_answer"), ("device_answer", "result_durable")] {
        let (a, b) = (stage_at(from), stage_at(to));
        assert!(
            commits.iter().any(|[w, _, s]| a <= *w && *s <= b),
            "no log commit between {from} and {to}: {commits:?} {at:?}"
        );
    }
    stop.cancel();
}
