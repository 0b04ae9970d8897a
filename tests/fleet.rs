//! `posbridge fleet` end to end: a small fleet in one process under load, with its broker
//! stopped mid-run (when mosquitto is installed: CI installs it) and a share of the agents
//! restarted; the report says every command got its one result and none ran twice.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_faults_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("fleet.json");
    let mut args: Vec<String> =
        ["fleet", "--agents", "30", "--rate", "60", "--duration", "5", "--restart", "20@3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let kill = posbridge::testkit::mosquitto_available();
    if kill {
        args.extend(["--kill-broker-at", "1", "--outage", "2"].map(String::from));
    }
    args.extend(["--settle".into(), "60".into(), "--json".into(), report.display().to_string()]);
    let out = tokio::process::Command::new(agent_bin())
        .args(&args)
        .output()
        .await
        .expect("run posbridge fleet");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
    assert_eq!(r["sent"], 300, "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["double"].as_u64(), r["phantom"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["results"], r["sent"], "{r}");
    assert_eq!(r["by_state"]["succeeded"], 300, "{r}");
    // The terminals ran each payment exactly once: as many executions as payments.
    assert_eq!(r["executions"], 300, "{r}");
    assert_eq!(r["faults"]["agents_restarted"], 6, "{r}");
    assert_eq!(r["faults"]["broker_killed"], kill, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().is_some_and(|p| p > 0.0), "{r}");
    assert!(text.contains("FLEET_JSON"), "{text}");
}

/// Bad arguments get a clear error, before anything starts.
#[tokio::test]
async fn fleet_refuses_non_loopback_brokers_and_bad_shares() {
    for (args, says) in [
        (vec!["fleet", "--broker", "mqtt://192.0.2.1:1883"], "loopback only"),
        (vec!["fleet", "--restart", "0@5"], "percentage"),
        (vec!["fleet", "--agents", "0"], "agents"),
    ] {
        let out =
            tokio::process::Command::new(agent_bin()).args(&args).output().await.expect("run");
        let text = output_text(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
}
