//! `posbridge fleet` end to end: a small fleet in one process under load, with its broker
//! stopped mid-run (when mosquitto is installed: CI installs it) and a share of the agents
//! restarted; the report says every command got its one result and none ran twice.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

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

/// `posbridge cloud watch` beside a running fleet shows every agent online, each with its
/// terminal, while the load runs: the operator's view of a fleet, from the retained status
/// and terminals the agents publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_watch_shows_every_agent_of_a_running_fleet() {
    use tokio::io::AsyncBufReadExt;
    const AGENTS: usize = 30;
    let broker = embedded();
    let url = format!("mqtt://127.0.0.1:{}", broker.port());
    let mut watch = tokio::process::Command::new(agent_bin())
        .args(["cloud", "--broker", &url, "watch", "--every", "1", "--json"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cloud watch");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let args: Vec<String> =
        ["fleet", "--agents", "30", "--rate", "30", "--duration", "10", "--broker", &url]
            .map(String::from)
            .to_vec();
    let fleet = tokio::spawn(async move { fleet_run(&args, 300).await });

    // Every agent shows up online with its terminal, while the fleet still runs.
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("watch --json line");
            let agents = v["agents"].as_array().cloned().unwrap_or_default();
            let online = agents.iter().filter(|a| a["state"] == "online").count();
            if online == AGENTS {
                return agents;
            }
        }
        panic!("cloud watch ended");
    })
    .await
    .expect("cloud watch shows every agent online");
    assert!(!fleet.is_finished(), "seen while the fleet runs");
    for a in &seen {
        assert!(a["agent"].as_str().is_some_and(|id| id.starts_with("fleet-")), "{a}");
        assert!(a["terminals"].to_string().contains("ip-1"), "{a}");
    }
    let (r, _) = fleet.await.expect("fleet");
    assert_eq!(r["agents"], AGENTS, "{r}");
}
