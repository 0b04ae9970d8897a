//! Operations, black-box: `posbridge doctor` against a live broker + simulator + agent and
//! against a dead broker, `posbridge provision`, and the agent's systemd notifications
//! (READY/WATCHDOG/STOPPING) on a fake NOTIFY_SOCKET. Loopback only.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

async fn sim() -> (std::net::SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let (addr, _) = approving_ip_sim(Some(7), 0, &stop).await;
    (addr, stop)
}

async fn posbridge(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .await
        .expect("run posbridge")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The table row of one check, e.g. `row(out, "broker")`.
fn row<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.strip_prefix(check).is_some_and(|rest| rest.starts_with("  ")))
        .unwrap_or_else(|| panic!("no {check:?} row in:\n{out}"))
}

fn status_of(row: &str) -> &str {
    row.split_whitespace().find(|w| matches!(*w, "ok" | "WARN" | "FAIL")).unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_all_green_with_the_agent_running_then_stopped() {
    let broker = embedded();
    let (addr, _sim) = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-doc", broker.port()).ip("ip-1", addr);
    let (cloud, mut agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let config = agent.config.to_string_lossy().into_owned();

    let out = posbridge(&["doctor", "--config", &config]).await;
    let t = text(&out);
    assert!(out.status.success(), "doctor failed:\n{t}");
    assert!(!t.contains("FAIL"), "{t}");
    assert_eq!(status_of(row(&t, "broker")), "ok", "{t}");
    assert!(row(&t, "broker").contains("posbridge-shop-doc-doctor"), "{t}");
    assert_eq!(status_of(row(&t, "agent")), "ok", "{t}");
    assert!(row(&t, "agent").contains("online"), "{t}");
    assert!(row(&t, "store").contains("in use by the running agent (ok)"), "{t}");
    assert_eq!(status_of(row(&t, "device key")), "ok", "{t}");
    assert_eq!(status_of(row(&t, "terminal ip-1 (ip)")), "ok", "{t}");
    assert!(row(&t, "terminal ip-1 (ip)").contains("connected"), "{t}");
    assert_eq!(status_of(row(&t, "clock")), "ok", "{t}");
    assert_eq!(status_of(row(&t, "disk")), "ok", "{t}");

    // The doctor's session did not disturb the agent's: a payment still goes through.
    cloud.send(pay("doc-1", "ip-1", 700)).await;
    assert_eq!(cloud.result("doc-1").await["state"], "succeeded");

    // Agent stopped: the doctor opens the store itself and says the agent is offline
    // (a warning, not a failure).
    let st = agent.sigterm();
    assert!(st.success());
    let out = posbridge(&["doctor", "--config", &config]).await;
    let t = text(&out);
    assert!(out.status.success(), "doctor failed:\n{t}");
    assert_eq!(status_of(row(&t, "agent")), "WARN", "{t}");
    assert!(row(&t, "agent").contains("offline"), "{t}");
    let store = row(&t, "store");
    assert_eq!(status_of(store), "ok", "{t}");
    assert!(store.contains("1 commands, 0 unfinished"), "{t}");
    assert!(store.contains("outbox 0"), "{t}");
    assert_eq!(status_of(row(&t, "terminal ip-1 (ip)")), "ok", "{t}");
    // And the agent can take its store back afterwards.
    agent.spawn(&[]);
    cloud.send(pay("doc-2", "ip-1", 800)).await;
    assert_eq!(cloud.result("doc-2").await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_with_a_fix_when_the_broker_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = free_port();
    let pw = dir.path().join("mqtt.password");
    std::fs::write(&pw, "hunter2-not-for-logs\n").expect("pw");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    }
    let config = write_config(dir.path(), "posbridge.toml", &format!(
            "agent_id = \"shop-down\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{dead}\"\nusername = \"shop-down\"\npassword_file = \"{}\"\n[store]\npath = \"{}\"\n",
            pw.display(),
            dir.path().join("store").display()
        ));
    let out = posbridge(&["doctor", "--config", &config.to_string_lossy()]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let broker = row(&t, "broker");
    assert_eq!(status_of(broker), "FAIL", "{t}");
    assert!(broker.contains(&format!("127.0.0.1:{dead}")), "{t}");
    // The fix hint is on the line after the failing row.
    let after: Vec<&str> = t.lines().skip_while(|l| *l != broker).take(2).collect();
    assert!(after.get(1).is_some_and(|l| l.contains("fix:") && l.contains("mqtt.url")), "{t}");
    assert_eq!(status_of(row(&t, "mqtt.password_file")), "ok", "{t}");
    assert!(!t.contains("hunter2"), "the password leaked:\n{t}");
    // Nothing was created where the agent's store will live.
    assert!(!dir.path().join("store").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_config_error_as_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "bad.toml",
        "agent_id = \"x\"\n[mqtt]\nurll = \"mqtt://127.0.0.1\"\n",
    );
    let out = posbridge(&["doctor", "--config", &config.to_string_lossy()]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(status_of(row(&t, "config")), "FAIL", "{t}");
    assert!(t.contains("mqtt.urll"), "{t}");
}

fn recv_all_until(sock: &UnixDatagram, stop: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !stop(&got) {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!("no notification (so far {got:?}): {e}"),
        }
    }
    got
}

fn fake_notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    (sock, path.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, path) = fake_notify_socket(dir.path());
    let spec = AgentSpec::new("shop-sd", broker.port());
    // WatchdogSec=1s: fed every 500 ms.
    let mut agent = Agent::start_with(
        &spec,
        dir.path(),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")],
        &[],
    );
    let got = tokio::task::spawn_blocking(move || {
        let got = recv_all_until(&sock, |g| g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3);
        (sock, got)
    })
    .await
    .expect("join");
    let (sock, got) = got;
    assert!(got[0].starts_with("READY=1\n"), "{got:?}");
    assert!(got[0].contains("connected to the broker"), "{got:?}");
    assert!(got[1..].iter().all(|m| m == "WATCHDOG=1"), "{got:?}");
    let status = tokio::task::spawn_blocking(move || agent.sigterm()).await.expect("join");
    assert!(status.success());
    let after = recv_all_until(&sock, |g| g.iter().any(|m| m.starts_with("STOPPING=1")));
    assert!(after.iter().all(|m| m == "WATCHDOG=1" || m.starts_with("STOPPING=1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_ready_without_a_broker_after_a_bounded_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, path) = fake_notify_socket(dir.path());
    let spec = AgentSpec::new("shop-offline", free_port());
    let started = std::time::Instant::now();
    let _agent = Agent::start_with(&spec, dir.path(), &[("NOTIFY_SOCKET", &path)], &[]);
    let got = tokio::task::spawn_blocking(move || recv_all_until(&sock, |g| !g.is_empty()))
        .await
        .expect("join");
    assert!(got[0].starts_with("READY=1\n"), "{got:?}");
    assert!(got[0].contains("broker not reached"), "{got:?}");
    let waited = started.elapsed();
    assert!(waited >= posbridge::systemd::READY_TIMEOUT, "ready too early: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_writes_a_config_that_passes_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("etc/posbridge.toml");
    let state = dir.path().join("state");
    let pw = dir.path().join("mqtt.password");
    std::fs::write(&pw, "s3cret-provisioned\n").expect("pw");
    let o = posbridge(&[
        "provision",
        "--agent-id",
        "shop-077",
        "--broker-url",
        "mqtt://127.0.0.1:1883",
        "--username",
        "shop-077",
        "--password-file",
        &pw.to_string_lossy(),
        "--terminal",
        "ip:ip-1:127.0.0.1:8080",
        "--terminal",
        "token:token-1:usb",
        "--terminal",
        "paywall:pw-1:https://paywall.example/api",
        "--out",
        &out.to_string_lossy(),
        "--store-dir",
        &state.to_string_lossy(),
        "--user",
        "posbridge-test-no-such-user",
    ])
    .await;
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("topic read posbridge/shop-077/cmd"), "{t}");
    // Least privilege: the agent writes only what it publishes, never a command.
    assert!(t.contains("topic write posbridge/shop-077/result"), "{t}");
    assert!(!t.contains("topic write posbridge/shop-077/#"), "{t}");
    assert!(!t.contains("topic write posbridge/shop-077/cmd"), "{t}");
    assert!(t.contains("device key"), "{t}");
    assert!(state.join("device.key").exists());
    let c = posbridge(&["check", "--config", &out.to_string_lossy()]).await;
    let ct = text(&c);
    assert!(c.status.success(), "{ct}");
    assert!(ct.contains("\"agent_id\": \"shop-077\""), "{ct}");
    assert!(!ct.contains("s3cret-provisioned") && !t.contains("s3cret-provisioned"));
    // A bad terminal spec is refused and writes nothing.
    let bad = dir.path().join("bad.toml");
    let o = posbridge(&[
        "provision",
        "--agent-id",
        "x",
        "--broker-url",
        "mqtt://h",
        "--terminal",
        "ip:nope",
        "--out",
        &bad.to_string_lossy(),
        "--store-dir",
        &state.to_string_lossy(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!bad.exists());
    // The Paywall terminal provision wrote is switched off: doctor warns, it does not fail.
    let d = posbridge(&["doctor", "--config", &out.to_string_lossy()]).await;
    let dt = text(&d);
    let pw = row(&dt, "terminal pw-1 (paywall)");
    assert_eq!(status_of(pw), "WARN", "{dt}");
    assert!(pw.contains("disabled"), "{dt}");
}

/// The .deb's contents as cargo-deb will read them (the real `cargo deb` is not run in CI:
/// see docs/operator-guide.md "Cross builds and packages"), its maintainer scripts, and the example config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_metadata_scripts_udev_rule_and_example_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(&manifest, config::FileFormat::Toml))
        .build()
        .expect("Cargo.toml parses");
    let assets: Vec<Vec<String>> =
        parsed.get("package.metadata.deb.assets").expect("package.metadata.deb.assets");
    let dest = |src: &str| -> String {
        let a = assets
            .iter()
            .find(|a| a[0] == src)
            .unwrap_or_else(|| panic!("no asset {src}: {assets:?}"));
        format!("{}{}", a[1], a.get(2).map(|m| format!(" {m}")).unwrap_or_default())
    };
    assert_eq!(dest("target/release/posbridge"), "usr/bin/ 755");
    assert_eq!(dest("systemd/posbridge.service"), "lib/systemd/system/ 644");
    assert_eq!(dest("deploy/99-posbridge.rules"), "lib/udev/rules.d/ 644");
    assert!(dest("deploy/posbridge.toml.example").starts_with("usr/share/doc/posbridge/"));
    for a in &assets {
        if !a[0].starts_with("target/") {
            assert!(root.join(&a[0]).is_file(), "asset {} missing", a[0]);
        }
    }
    let scripts: String =
        parsed.get("package.metadata.deb.maintainer-scripts").expect("maintainer-scripts");
    let depends: String = parsed.get("package.metadata.deb.depends").expect("depends");
    assert!(depends.contains("adduser"), "postinst uses adduser: {depends}");
    for name in ["postinst", "prerm", "postrm"] {
        let p = root.join(&scripts).join(name);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{name} is not executable");
        let st = std::process::Command::new("sh").arg("-n").arg(&p).status().expect("sh");
        assert!(st.success(), "{name}: sh -n failed");
    }
    let postinst = std::fs::read_to_string(root.join(&scripts).join("postinst")).expect("read");
    assert!(postinst.contains("adduser --system"));
    assert!(postinst.contains("systemctl enable posbridge.service"));
    // Started only when a configuration exists.
    assert!(postinst.contains("if [ -f \"$CONFIG\" ]"));

    let rules = std::fs::read_to_string(root.join("deploy/99-posbridge.rules")).expect("rules");
    for pid in ["2d00", "2d01"] {
        assert!(
            rules.lines().any(|l| !l.starts_with('#')
                && l.contains("ATTR{idVendor}==\"18d1\"")
                && l.contains(&format!("ATTR{{idProduct}}==\"{pid}\""))
                && l.contains("GROUP=\"posbridge-usb\"")
                && l.contains("MODE=\"0660\"")),
            "no rule for 18d1:{pid}"
        );
    }
    let unit = std::fs::read_to_string(root.join("systemd/posbridge.service")).expect("unit");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=posbridge",
        "ConfigurationDirectory=posbridge",
        "SupplementaryGroups=posbridge-usb",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "unit lacks {line}");
    }
    // TimeoutStopSec leaves room above the agent's drain (20 s) + flush/offline (5 s).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop > posbridge::agent::DRAIN_TIMEOUT.as_secs() + 5, "{stop}");

    let example = root.join("deploy/posbridge.toml.example");
    let o = posbridge(&["check", "--config", &example.to_string_lossy()]).await;
    assert!(o.status.success(), "{}", text(&o));
}

/// Doctor over `mqtts://` with the agent's TLS settings (CA file, client certificate) and a
/// password: ok with the right one; FAIL naming the refusal and the fix with a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_over_mqtts_checks_tls_and_credentials() {
    if !mosquitto_available() {
        return;
    }
    let pki = common::tls::pki();
    let tls_port = free_port();
    let _m = pki.mosquitto(tls_port, "agent", "right-password");
    wait_port(tls_port);

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki.write_client_files(d);
    let config = |pw: &str| {
        let pw_file = d.join(format!("{pw}.pw"));
        std::fs::write(&pw_file, format!("{pw}\n")).expect("pw");
        let path = d.join(format!("{pw}.toml"));
        std::fs::write(
            &path,
            format!(
                "agent_id = \"shop-tls-doc\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"agent\"\npassword_file = \"{}\"\nca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\n[store]\npath = \"{d}/store\"\n",
                pw_file.display(),
                d = d.display()
            ),
        )
        .expect("config");
        path.to_string_lossy().into_owned()
    };

    let out = posbridge(&["doctor", "--config", &config("right-password")]).await;
    let t = text(&out);
    assert_eq!(status_of(row(&t, "broker")), "ok", "{t}");
    assert!(row(&t, "broker").contains("as \"agent\""), "{t}");
    assert_eq!(status_of(row(&t, "mqtt.client_key_file")), "ok", "{t}");

    let out = posbridge(&["doctor", "--config", &config("wrong-password")]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let broker = row(&t, "broker");
    assert_eq!(status_of(broker), "FAIL", "{t}");
    assert!(broker.contains("refused the login"), "{t}");
    assert!(t.contains("mosquitto_passwd"), "{t}");
    assert!(!t.contains("wrong-password\n") && !t.contains("right-password"), "{t}");
}

/// `doctor` fails a Kaspi terminal whose certificate is not checked (`tls = "insecure"`),
/// and its `security` check reports the unsigned opt-in as a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_an_unchecked_kaspi_certificate_and_warns_on_unsigned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "posbridge.toml", &format!(
            "agent_id = \"shop-tls-off\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[store]\npath = \"{}\"\n[security]\nallow_unsigned = true\n[[terminals]]\nid = \"k-1\"\nkind = \"kaspi\"\nurl = \"https://127.0.0.1:{}\"\ntls = \"insecure\"\nprotected = false\n",
            free_port(),
            dir.path().join("store").display(),
            free_port()
        ));
    let out = posbridge(&["doctor", "--config", &config.to_string_lossy()]).await;
    let t = text(&out);
    assert_eq!(status_of(row(&t, "terminal k-1 tls")), "FAIL", "{t}");
    assert_eq!(status_of(row(&t, "security")), "WARN", "{t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
}

/// glibc's arenas besides the main one in process `pid`: each keeps the unused part of
/// its 64 MiB reservation as an anonymous mapping with no access (thread stacks' guards
/// are a page).
fn thread_arenas(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = || {
                let (a, b) = f.first()?.split_once('-')?;
                u64::from_str_radix(b, 16).ok()?.checked_sub(u64::from_str_radix(a, 16).ok()?)
            };
            f.len() == 5 && f[1] == "---p" && size().is_some_and(|s| s >= 1 << 20)
        })
        .count()
}

/// An idle agent gives back the memory its start and its last burst of work used: the
/// code and read-only data that ran stop counting in its RSS (they stay in the page
/// cache; `telemetry::release_when_idle`), and it goes on working. docs/performance.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_gives_back_the_code_pages_it_ran() {
    let broker = embedded();
    let (addr, stop) = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-idle", broker.port()).ip("ip-1", addr);
    let (cloud, agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let file_rss = || agent.proc_status("RssFile:").expect("RssFile");
    // The start's own release, 2 s after the connect, first: the payments come after it.
    wait_log(agent.log_path(), "no release after the start", |l| l.contains("after=\"start\""))
        .await;
    for i in 0..3 {
        let r = cloud.ask(pay(&format!("idle-{i}"), "ip-1", 100)).await;
        assert_eq!(r["state"], "succeeded", "{r}");
    }
    // glibc gave the agent's threads no arenas of their own (`telemetry::tune_allocator`):
    // each would be a 64 MiB reservation whose holes only it reuses.
    let arenas = thread_arenas(agent.pid().expect("pid"));
    assert_eq!(arenas, 0, "the agent has {arenas} thread arenas besides glibc's main one");
    // Then the file-backed RSS halves once the agent is idle.
    let worked = file_rss();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let idle = loop {
        let now = file_rss();
        if now * 2 < worked {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "file-backed RSS {now} KiB, {worked} KiB after the payments: never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(agent.log().contains("after=\"work\""), "{}", agent.log_tail(20));
    eprintln!("file-backed RSS (KiB): {worked} after 3 payments, {idle} idle again");
    let r = cloud.ask(pay("idle-9", "ip-1", 100)).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    stop.cancel();
}

/// The bench's `BENCH_WRAP` (a profiler around the agent) and the crash tests' strace:
/// under a wrapper that runs the agent as its child, the kit's pid is the agent's (what
/// the bench reads memory, CPU and writes of), and every way the kit ends an agent
/// (restart, SIGTERM, stop, drop) ends the agent, not only its wrapper. The wrapper here
/// is a shell that, like strace, dies of a SIGTERM or SIGKILL sent to it and leaves its
/// child running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_agent_is_measured_and_ended_as_the_agent() {
    let broker = embedded();
    let (addr, _sim) = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("shop-wrap", broker.port()).ip("ip-1", addr);
    let cloud = Cloud::connect(broker.port(), "shop-wrap", "cloud-wrap", false).await;
    let is_online = |v: &serde_json::Value| v["state"] == "online";
    // `"$@"; exit $?`: sh runs the agent as a child of its own (no exec of a last command)
    // and passes its exit status on.
    let mut agent =
        Agent::start_with(&spec, dir.path(), &[], &["sh", "-c", "\"$@\"; exit $?", "sh"]);
    cloud.online().await;
    let first = agent.pid().expect("running");
    let exe = std::fs::read_link(format!("/proc/{first}/exe")).expect("the agent's exe");
    assert_eq!(exe.file_name(), Some("posbridge".as_ref()), "pid {first} is {}", exe.display());
    // A restart (kill -9, as the crash tests use it) ends the agent itself.
    let onlines = cloud.all("status").iter().filter(|v| is_online(v)).count();
    agent.restart(&[]);
    assert!(!running(first), "kill -9 left the agent {first} running");
    cloud.wait_n("status", Duration::from_secs(20), onlines + 1, is_online).await;
    let second = agent.pid().expect("running");
    assert_ne!(second, first);
    // SIGTERM reaches the agent, which stops cleanly (exit 0, passed on by the wrapper).
    assert!(agent.sigterm().success(), "the agent did not stop cleanly on SIGTERM");
    assert!(!running(second), "SIGTERM left the agent {second} running");
    // `stop` (the bench's end of a figure) too.
    let onlines = cloud.all("status").iter().filter(|v| is_online(v)).count();
    agent.restart(&[]);
    cloud.wait_n("status", Duration::from_secs(20), onlines + 1, is_online).await;
    let third = agent.pid().expect("running");
    agent.stop();
    assert!(!running(third), "stop left the agent {third} running");
    // And dropping the kit's agent.
    agent.restart(&[]);
    cloud.wait_n("status", Duration::from_secs(20), onlines + 2, is_online).await;
    let fourth = agent.pid().expect("running");
    drop(agent);
    assert!(!running(fourth), "the agent {fourth} outlived its wrapper");
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}
