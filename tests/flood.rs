//! A flood of commands bigger than the agent's intake queue (`bus::gate::MAX_QUEUED`): the
//! agent takes no more while the queue is full, acknowledges what it queued on the same
//! connection, then reconnects so the broker delivers the rest. Every command gets its
//! result. (Dropping the connection as soon as the queue was full sent the queued
//! commands' PUBACKs to a dead connection: the broker delivered them again and again, and
//! a flood of 60 000 made next to no progress.)
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_bigger_than_the_intake_queue_is_taken_in_full() {
    const N: usize = 3 * posbridge::bus::gate::MAX_QUEUED;
    let broker = posbridge::testkit::Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = AgentSpec::new("flood", broker.port());
    spec.log_level = "info".into();
    let (cloud, agent) = Cloud::with_agent_persistent(&spec, dir.path(), &[]).await;

    // Its own listener for the results: counting ids, not recording every message.
    let mut o = posbridge::pos::Options::loopback(
        broker.port(),
        "flood-results",
        Some("posbridge/flood/result"),
    );
    o.clean = false;
    let mut results =
        posbridge::pos::Client::connect(o, Duration::from_secs(10)).await.expect("results");

    // As fast as the cloud's client can publish: cheap commands, answered by the engine.
    for i in 0..N {
        cloud.send(serde_json::json!({"v": 1, "id": format!("flood-{i}"), "op": "ping"})).await;
    }
    let mut answered = HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(240), async {
        while answered.len() < N {
            let Some(m) = results.next().await else { break };
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if let Some(id) = v["id"].as_str().filter(|id| id.starts_with("flood-")) {
                assert_eq!(v["state"], "succeeded", "{v}");
                answered.insert(id.to_string());
            }
        }
    })
    .await;
    let log = agent.log();
    assert!(all.is_ok(), "{} of {N} answered within 240 s\n{}", answered.len(), agent.log_tail(20));
    // The flood did overfill the queue, so the test went through the skip-and-drain path.
    assert!(
        log.contains("intake queue full"),
        "the queue never filled: not a flood\n{}",
        agent.log_tail(20)
    );
    assert!(log.contains("intake queue drained"), "{}", agent.log_tail(20));
    // And telemetry tells the operator so.
    let t = cloud
        .wait("telemetry", Duration::from_secs(10), |v| v["intake_queue_full"].as_u64() > Some(0))
        .await;
    assert!(t["intake_queue_full"].as_u64() >= Some(1), "{t}");
}
