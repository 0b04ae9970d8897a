//! Durability: kill -9 at every journal point, broker outages, commands sent while the
//! agent is down, and proof that the store really calls fdatasync.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::*;
use posbridge::sim::ip::SimStats;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Wait (by the simulator's events) until the terminal has executed `id`.
async fn executed(stats: &SimStats, id: &str) {
    assert!(stats.executed(id, Duration::from_secs(20)).await, "terminal executed {id}");
}

/// Whether the command a test needs ran and succeeded (its `status`). If not, the test
/// cannot run here for `why` and says SKIP; but where the variable `ci` is set (in CI) it
/// must run, and fails saying `must`.
fn succeeded_or_skips(
    status: std::io::Result<std::process::ExitStatus>, ci: &str, must: &str, why: &str,
) -> bool {
    if status.is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(std::env::var_os(ci).is_none(), "{must}");
    eprintln!("SKIP: {why}");
    false
}

/// The agent's `degraded` status names `why`, and the agent stops with a non-zero exit
/// (so that systemd restarts it).
fn assert_degraded_then_stops(agent: &mut Agent, degraded: &Value, why: &str) {
    assert!(degraded["reason"].as_str().is_some_and(|r| r.contains(why)), "{degraded}");
    let st = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent stops after a store failure\n{}", agent.log()));
    assert!(!st.success(), "non-zero exit so systemd restarts it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_every_journal_point_never_charges_twice() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 100, &stop).await;
    for (n, point) in IP_JOURNAL_POINTS.iter().enumerate() {
        let agent_id = format!("crash-{n}");
        let id = format!("k-{n}");
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = AgentSpec::new(&agent_id, broker.port()).ip("ip-1", addr);
        let (cloud, mut agent) =
            Cloud::with_agent(&spec, dir.path(), &[(posbridge::faults::ENV, point)]).await;
        cloud.send(pay(&id, "ip-1", 700)).await;
        assert_aborts_at(&mut agent, point, Duration::from_secs(20));
        assert!(agent.log().contains(&format!("aborting at {point}")), "{point}");

        agent.restart(&[]);
        let r = cloud.result(&id).await;
        assert_eq!(r["state"], "succeeded", "{point}: {r}\n{}", agent.log());
        assert_eq!(stats.executions(&id), 1, "{point}: the terminal ran it exactly once");
        // Any repeat delivery (allowed: at least once) carries the same outcome.
        for other in cloud.results_for(&id) {
            assert_eq!(
                other["payment"]["transaction_id"], r["payment"]["transaction_id"],
                "{point}"
            );
        }
        let st = agent.sigterm();
        assert!(st.success(), "{point}: clean stop after resume");
    }
    stop.cancel();
}

/// kill -9 inside a checkpoint, after its changes went into sled and before sled was made
/// durable (sled may have written some of them on its own): the restart replays the log
/// over whatever sled holds. The payment's outcome survives, the terminal ran it once, and
/// its id is still known: sent again, it gets the stored result, not a second charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_inside_a_checkpoint_loses_nothing_and_charges_once() {
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 0, &stop).await;
    let broker = embedded();
    let spec = AgentSpec::new("crash-ckpt", broker.port()).ip("ip-1", addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let point = "store:checkpoint:applied";
    // A checkpoint within a second of the payment's changes (an hour in production).
    let env = [(posbridge::faults::ENV, point), (posbridge::faults::CHECKPOINT_EVERY_ENV, "1")];
    let mut rig = Rig::start(broker, dir, &spec, &env, stats, stop).await;
    rig.crash_at(pay("ck-1", "ip-1", 700), point).await;
    assert!(rig.agent.log().contains(&format!("aborting at {point}")), "{}", rig.agent.log());

    rig.agent.restart(&[]);
    let r = rig.cloud.result("ck-1").await;
    assert_eq!(r["state"], "succeeded", "{r}\n{}", rig.agent.log());
    assert_eq!(rig.stats.executions("ck-1"), 1, "the terminal ran it once");
    let before = rig.cloud.results_for("ck-1").len();
    rig.cloud.send(pay("ck-1", "ip-1", 700)).await;
    let all = rig
        .cloud
        .wait_n("result", Duration::from_secs(10), before + 1, |v| v["id"] == "ck-1")
        .await;
    assert!(all.iter().all(|v| *v == r), "the resend gets the stored result: {all:?}");
    assert_eq!(rig.stats.executions("ck-1"), 1, "the resend was answered from the store");
    assert!(rig.agent.sigterm().success(), "clean stop\n{}", rig.agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_while_a_payment_runs_loses_nothing() {
    let Some(mut m) = Mosquitto::if_installed() else { return };
    let port = m.port;
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 1500, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-outage", port).ip("ip-1", addr);
    let (cloud, agent) = Cloud::with_agent_persistent(&spec, dir.path(), &[]).await;

    cloud.send(pay("o-1", "ip-1", 900)).await;
    cloud
        .wait("evt", Duration::from_secs(10), |v| v["id"] == "o-1" && v["state"] == "in_progress")
        .await;
    m.stop();
    // The payment finishes while the broker is down; its result waits in the outbox.
    executed(&stats, "o-1").await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !agent.log().contains("command finished") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("agent finished the payment offline");
    m.restart();
    let r = cloud.result("o-1").await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(stats.executions("o-1"), 1);

    // And the agent still takes commands on the new connection.
    cloud.send(pay("o-2", "ip-1", 100)).await;
    assert_eq!(cloud.result("o-2").await["state"], "succeeded");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_agent_is_down_are_run_after_restart() {
    let Some(m) = Mosquitto::if_installed() else { return };
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-down", m.port).ip("ip-1", addr);
    let (cloud, mut agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    agent.kill9();
    // The will tells the cloud the agent is gone, and which version it ran.
    let will = cloud.wait("status", Duration::from_secs(20), |v| v["state"] == "offline").await;
    assert_eq!(will["version"], posbridge::VERSION, "{will}");
    for i in 0..5 {
        cloud.send(pay(&format!("w-{i}"), "ip-1", 100 + i)).await;
    }
    agent.restart(&[]);
    for i in 0..5 {
        let id = format!("w-{i}");
        assert_eq!(cloud.result(&id).await["state"], "succeeded");
        assert_eq!(stats.executions(&id), 1);
    }
    stop.cancel();
}

/// sled's flush is only sync_file_range; the store must fdatasync (CRATES.md). Trace it:
/// every commit is an fdatasync of the write-ahead log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_are_fdatasynced() {
    let strace =
        std::process::Command::new("strace").arg("-V").stdout(std::process::Stdio::null()).status();
    if !succeeded_or_skips(
        strace,
        "POSBRIDGE_REQUIRE_MOSQUITTO",
        "CI must have strace (.ci/run installs it)",
        "strace not installed",
    ) {
        return;
    }
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, _) = approving_ip_sim(Some(1), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("strace.out");
    let trace_s = trace.display().to_string();
    let spec = AgentSpec::new("shop-strace", broker.port()).ip("ip-1", addr);
    let cloud = Cloud::connect(broker.port(), "shop-strace", "cloud-strace", false).await;
    let mut agent = Agent::start_with(
        &spec,
        dir.path(),
        &[],
        &["strace", "-f", "-qq", "-y", "-e", "trace=fdatasync", "-o", &trace_s],
    );
    cloud.online().await;
    cloud.send(pay("sync-1", "ip-1", 100)).await;
    assert_eq!(cloud.result("sync-1").await["state"], "succeeded");
    agent.kill9();
    let out = std::fs::read_to_string(&trace).expect("trace");
    let n =
        out.lines().filter(|l| l.contains("fdatasync(") && l.contains("posbridge-wal.")).count();
    // The command together with the journal before the terminal is asked (the terminal
    // was idle: one sync covers both before the PUBACK), then the answer together with
    // the result: two syncs of the log.
    assert!(n >= 2, "expected ≥ 2 fdatasync calls of the log for one payment, saw {n}:\n{out}");
    stop.cancel();
}

/// Fail-stop on a store that cannot sync (`mqtt-api.md`: Durability promise 8). The disk
/// starts failing (EIO on the log's fdatasync, through the `failpoints` layer) while a
/// payment runs on the terminal, and again when a new command arrives: nothing is
/// acknowledged after the failure (no result, no PUBACK), the retained status says
/// `degraded` with the reason, the agent exits non-zero — and after the restart every
/// command reaches its result, each executed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_errors_stop_acknowledging_and_lose_nothing() {
    for (n, fail_on) in ["result", "intake"].iter().enumerate() {
        let broker = embedded();
        let stop = CancellationToken::new();
        let (addr, stats) =
            approving_ip_sim(Some(1), if *fail_on == "result" { 400 } else { 0 }, &stop).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let trigger = dir.path().join("disk-fails");
        let agent_id = format!("failstop-{n}");
        let spec = AgentSpec::new(&agent_id, broker.port()).ip("ip-1", addr);
        let faults = format!("wal:sync=eio@if:{}", trigger.display());
        let env = [(posbridge::faults::IO_ENV, faults.as_str())];
        let (cloud, mut agent) = Cloud::with_agent_persistent(&spec, dir.path(), &env).await;
        cloud.send(pay("ok-1", "ip-1", 1000)).await;
        assert_eq!(cloud.result("ok-1").await["state"], "succeeded");
        if *fail_on == "result" {
            // The payment is on the terminal (its sending step durable); the disk fails
            // before its result can be made durable.
            cloud.send(pay("fs-1", "ip-1", 1100)).await;
            cloud
                .wait("evt", Duration::from_secs(10), |v| {
                    v["id"] == "fs-1" && v["sub_state"] == "WaitTerminal"
                })
                .await;
            std::fs::write(&trigger, b"").expect("trigger");
        } else {
            std::fs::write(&trigger, b"").expect("trigger");
            cloud.send(pay("fs-1", "ip-1", 1100)).await;
        }
        let degraded = cloud.degraded(&agent).await;
        assert_degraded_then_stops(&mut agent, &degraded, "store");
        assert!(cloud.results_for("fs-1").is_empty(), "nothing published after the failure");
        // The disk is back; the restart replays the log and settles everything.
        std::fs::remove_file(&trigger).expect("untrigger");
        agent.restart(&[]);
        let r = cloud.result("fs-1").await;
        assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.log());
        assert_eq!(stats.executions("fs-1"), 1, "{fail_on}: charged once");
        assert_eq!(stats.executions("ok-1"), 1);
        assert!(agent.sigterm().success());
        stop.cancel();
    }
}

/// Real ENOSPC: the store on a small tmpfs that fills up while payments arrive. Every
/// command acknowledged before the disk filled reaches its result; the first write that
/// cannot be made durable stops the agent (`degraded`, non-zero exit) without
/// acknowledging anything after it; a restart on the still-full disk stops again; once
/// space returns, the restarted agent runs every remaining command exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_agent_and_loses_nothing() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_fs) = posbridge::testkit::Tmpfs::mount(&dir.path().join("store"), "6m") else {
        return;
    };
    // What the operator frees when space returns. Freeing only the filler's bytes would
    // return nothing if the store itself grew into the space first (sled grows at a
    // checkpoint by what the log held), and the restart would stop again at its replay.
    let ballast = dir.path().join("store").join("ballast");
    std::fs::write(&ballast, vec![1u8; 2 * 1024 * 1024]).expect("ballast");
    let spec = AgentSpec::new("enospc", broker.port()).ip("ip-1", addr);
    let (cloud, mut agent) = Cloud::with_agent_persistent(&spec, dir.path(), &[]).await;
    cloud.send(pay("d-0", "ip-1", 1000)).await;
    assert_eq!(cloud.result("d-0").await["state"], "succeeded");
    // Fill the disk to the last byte, and keep it full: the log has space allocated
    // ahead (store/wal.rs), and each checkpoint frees the old log's, so a filler that
    // stopped once would leave the agent room forever. Like another process that writes
    // whatever space appears.
    let filler = dir.path().join("store").join("filler");
    let stop_filling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let filling = {
        let (filler, stop) = (filler.clone(), stop_filling.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut wrote = false;
                for size in [64 * 1024, 4096, 512, 1] {
                    while f.write_all(&vec![0u8; size]).is_ok() {
                        wrote = true;
                    }
                }
                if !wrote {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let mut sent = vec!["d-0".to_string()];
    let mut degraded = None;
    for i in 1..=1000 {
        let id = format!("d-{i}");
        cloud.send(pay(&id, "ip-1", 1000 + i)).await;
        sent.push(id);
        if let Some(st) = cloud.all("status").into_iter().find(|v| v["state"] == "degraded") {
            degraded = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let degraded = match degraded {
        Some(d) => d,
        None => cloud.degraded(&agent).await,
    };
    assert_degraded_then_stops(&mut agent, &degraded, "No space left");
    // systemd restarts it while the disk is still full: the start puts the log into sled,
    // which needs room, so it stops again (and must lose nothing doing so).
    agent.restart(&[]);
    let st = agent.wait_exit(Duration::from_secs(30));
    eprintln!("restart on a full disk: {st:?}");
    let st = st.unwrap_or_else(|| panic!("stops on a full disk\n{}", agent.log_tail(40)));
    assert!(!st.success());
    assert!(agent.log_tail(5).contains("No space left"), "{}", agent.log_tail(40));
    // Space returns; the restart settles everything, once each.
    stop_filling.store(true, std::sync::atomic::Ordering::Relaxed);
    filling.join().expect("filler thread");
    std::fs::remove_file(&filler).expect("free space");
    std::fs::remove_file(&ballast).expect("free space");
    agent.restart(&[]);
    for id in &sent {
        let r = cloud.try_result(id).await.unwrap_or_else(|e| {
            let store = dir.path().join("store");
            let du = std::process::Command::new("du").arg("-ab").arg(&store).output();
            let du = du.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!("{id}: no result after the restart\n{du:?}\n{}\n{e}", agent.log_tail(60))
        });
        assert_eq!(r["state"], "succeeded", "{id}: {r}\n{}", agent.log());
        assert_eq!(stats.executions(id), 1, "{id}: executed once");
    }
    assert!(agent.sigterm().success());
    stop.cancel();
}
