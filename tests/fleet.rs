//! `posbridge fleet` end to end: a small fleet in one process under load, with its broker
//! stopped mid-run (when mosquitto is installed: CI installs it) and a share of the agents
//! restarted; the report says every command got its one result and none ran twice.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_faults_loses_nothing_and_runs_nothing_twice() {
    let mut args: Vec<String> =
        ["fleet", "--agents", "30", "--rate", "60", "--duration", "5", "--restart", "20@3"]
            .map(String::from)
            .to_vec();
    let kill = posbridge::testkit::mosquitto_available();
    if kill {
        args.extend(["--kill-broker-at", "1", "--outage", "2"].map(String::from));
    }
    args.extend(["--settle", "60"].map(String::from));
    let (r, text) = fleet_run(&args, 300).await;
    assert_eq!(r["by_state"]["succeeded"], 300, "{r}");
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
