//! The command line a field engineer uses: check, secret set, a damaged store at start.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn minimal(dir: &std::path::Path) -> String {
    format!(
        "agent_id = \"shop-1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"agent\"\npassword_file = \"{}/pw\"\n[store]\npath = \"{}/store\"\n[[terminals]]\nid = \"ip-1\"\nkind = \"ip\"\naddr = \"127.0.0.1:9\"\n",
        dir.display(),
        dir.display()
    )
}

#[test]
fn check_prints_effective_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "posbridge.toml", &minimal(dir.path()));
    let out = posbridge_with(&["check"], &cfg).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["agent_id"], "shop-1");
    assert_eq!(v["mqtt"]["client_id"], "posbridge-shop-1", "defaults are shown");
    assert_eq!(v["commands"]["default_ttl"], "2m");

    let bad = write_config(
        dir.path(),
        "posbridge.toml",
        &minimal(dir.path()).replace("[commands]", "").replace("[store]", "[store]\nfoo = 1"),
    );
    let out = posbridge_with(&["check"], &bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.foo") && err.contains("posbridge.toml"), "{err}");

    let out = posbridge_with(&["check"], &dir.path().join("missing.toml")).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn env_overrides_reach_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "posbridge.toml", &minimal(dir.path()));
    let out = posbridge_with(&["check"], &cfg)
        .env("POSBRIDGE__COMMANDS__QUEUE_DEPTH", "3")
        .output()
        .expect("run");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["commands"]["queue_depth"], 3);
}

/// `store.retention` is the idempotency window: under a day is refused with the key named
/// (a resent payment whose id was pruned would run again). Only a test build's
/// `POSBRIDGE_TEST_SHORT_RETENTION=1` (the soak bench) accepts a shorter one.
#[test]
fn a_retention_under_a_day_is_refused_unless_a_test_build_asks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = minimal(dir.path()).replace("[store]", "[store]\nretention = \"2m\"");
    let cfg = write_config(dir.path(), "posbridge.toml", &text);
    let out = posbridge_with(&["check"], &cfg)
        .env_remove(posbridge::faults::SHORT_RETENTION_ENV)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.retention: must be at least 1d"), "{err}");
    let out = posbridge_with(&["check"], &cfg)
        .env(posbridge::faults::SHORT_RETENTION_ENV, "1")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["store"]["retention"], "2m");
}

#[test]
fn secret_set_stores_encrypted_and_never_echoes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "posbridge.toml", &minimal(dir.path()));
    let out = secret_set(&cfg, "ip-1", "api_key", "very-secret-value-123\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!printed.contains("very-secret-value-123"));
    // The key file exists, private; the value is not in any store file in clear.
    let key = dir.path().join("store").join("device.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    for entry in walk(&dir.path().join("store")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(21).any(|w| w == b"very-secret-value-123"),
            "plaintext secret found in {}",
            entry.display()
        );
    }
    // Unknown terminal is refused.
    let out = posbridge_with(&["secret", "set", "nope", "api_key"], &cfg)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not configured"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A store that cannot be opened is moved aside (never deleted), the agent starts on a
/// fresh one, and says so on the retained status topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_reported_on_status() {
    // First run creates the store; then garble it while the agent is stopped.
    let (_broker, dir, cloud, mut agent) = agent_with_a_silent_terminal("shop-damaged").await;
    let st = restart_on_a_damaged_store(&mut agent, &cloud, dir.path(), |store| {
        store["moved_aside"].is_string()
    })
    .await;
    let aside = st["store"]["moved_aside"].as_str().expect("path");
    assert!(std::path::Path::new(aside).join("db").exists(), "damaged copy kept at {aside}");
    assert!(agent.log().contains("moving it aside"));
}

/// Two agents on one store: the second refuses to start instead of moving the first's
/// live store aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_is_not_mistaken_for_damage() {
    let (_broker, dir, _cloud, _first) = agent_with_a_silent_terminal("shop-twice").await;
    let out = posbridge_with(&["run"], &dir.path().join("posbridge.toml"))
        .output()
        .expect("second agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    let entries: Vec<String> = std::fs::read_dir(dir.path().join("store"))
        .expect("store dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!entries.iter().any(|e| e.contains("damaged")), "{entries:?}");
}

/// The "damaged store charges twice": pay with id X, stop, damage sled's files
/// (as a power cut on an SD card may), start again, send X again. X is answered from
/// what was salvaged and never executed a second time; a new payment is refused with
/// `store_damaged` until an operator runs `posbridge store acknowledge`, which the
/// retained status and `doctor` say; afterwards payments run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_never_forgets_an_id_and_holds_money_until_acknowledged() {
    let broker = embedded();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(1), 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-salvage", broker.port()).ip("ip-1", addr);
    let (cloud, mut agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let first = cloud.ask(pay("x-1", "ip-1", 1500)).await;
    assert_eq!(first["state"], "succeeded", "{first}");

    let st = restart_on_a_damaged_store(&mut agent, &cloud, dir.path(), |store| {
        store["money_blocked"].is_object()
    })
    .await;
    assert!(st["store"]["salvaged"].as_u64().unwrap_or(0) >= 1, "{st}");

    // The same id again: answered from the salvaged record, never executed.
    cloud.send(pay("x-1", "ip-1", 1500)).await;
    cloud.wait_n("result", Duration::from_secs(10), 2, |v| v["id"] == "x-1").await;
    let again = cloud.results_for("x-1");
    assert_eq!(again[1]["state"], "succeeded", "{again:?}");
    assert_eq!(again[1]["payment"]["transaction_id"], first["payment"]["transaction_id"]);
    assert_eq!(stats.executions("x-1"), 1, "never charged twice");
    // A new payment waits for the operator.
    let held = cloud.ask(pay("x-2", "ip-1", 700)).await;
    assert_eq!(held["state"], "rejected", "{held}");
    assert_eq!(held["error"]["code"], "store_damaged", "{held}");
    assert_eq!(stats.executions("x-2"), 0);
    // Non-money ops still work.
    cloud.send(serde_json::json!({"v":1,"id":"x-st","op":"status","target":"x-1"})).await;
    assert_eq!(cloud.result("x-st").await["target"]["state"], "succeeded");

    // doctor (agent stopped) says why and what to run.
    assert!(agent.sigterm().success());
    let config = dir.path().join("posbridge.toml");
    let doctor = posbridge_with(&["doctor"], &config).output().expect("doctor");
    let text = output_text(&doctor);
    assert!(text.contains("REFUSED"), "{text}");
    assert!(text.contains("posbridge store acknowledge"), "{text}");
    // Still held after a plain restart; the operator acknowledges while the agent runs
    // (through its control socket), and payments run again without a restart.
    agent.restart(&[]);
    cloud.online().await;
    let held = cloud.ask(pay("x-2b", "ip-1", 700)).await;
    assert_eq!(held["error"]["code"], "store_damaged", "{held}");
    let ack = posbridge_with(&["store", "acknowledge"], &config).output().expect("acknowledge");
    let text = output_text(&ack);
    assert!(ack.status.success(), "{text}");
    assert!(text.contains("money hold lifted") && text.contains("running agent"), "{text}");
    cloud.send(pay("x-3", "ip-1", 900)).await;
    assert_eq!(cloud.result("x-3").await["state"], "succeeded");
    assert_eq!(stats.executions("x-3"), 1);
    // The retained status and the heartbeat say so too; a second acknowledge finds
    // nothing to lift.
    let lifted = |v: &serde_json::Value| {
        v["state"] == "online"
            && v["store"].is_object()
            && v["store"].get("money_blocked").is_none()
    };
    cloud.wait("status", Duration::from_secs(10), lifted).await;
    cloud.wait("telemetry", Duration::from_secs(10), |v| v["money_blocked"] == false).await;
    let again = posbridge_with(&["store", "acknowledge"], &config).output().expect("again");
    assert!(output_text(&again).contains("no money hold"), "{}", output_text(&again));
    // A restart after it: this start's status no longer reports the hold.
    assert!(agent.sigterm().success());
    let is_online = |v: &serde_json::Value| v["state"] == "online";
    let before = cloud.all("status").iter().filter(|v| is_online(v)).count();
    agent.restart(&[]);
    let online = cloud.wait_n("status", Duration::from_secs(20), before + 1, is_online).await;
    let fresh = online.last().expect("online status");
    assert!(fresh.get("store").is_none(), "hold lifted: {fresh}");
    stop.cancel();
}

/// Run as root on a store that belongs to the agent's user, the tools that open the store
/// refuse (files they created would be root's and lock the agent out) and say how to run
/// them. Only meaningful as root (CI is root); elsewhere the check does not apply.
#[test]
fn store_tools_refuse_root_on_the_agents_store() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("store dir");
    std::os::unix::fs::chown(&store, Some(65534), Some(65534)).expect("chown");
    let cfg = write_config(dir.path(), "posbridge.toml", &minimal(dir.path()));
    for args in [
        vec!["store", "acknowledge", "--config"],
        vec!["secret", "set", "ip-1", "api_key", "--config"],
    ] {
        let out = output_with_stdin(Command::new(BIN).args(&args).arg(&cfg), b"value\n");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("belongs to uid 65534"), "{args:?}: {err}");
        assert!(err.contains("sudo -u posbridge"), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(&store).expect("read").count(),
        0,
        "nothing was created in the agent's store"
    );
}
