//! Black-box test harness: the library's test kit (`posbridge::testkit`: brokers, the
//! agent as a child process, its typed config, the cloud POS client) plus what only the
//! tests need. Everything on loopback.
#![allow(dead_code)]

pub mod tls;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use posbridge::testkit::*;

/// The agent binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_posbridge");

/// The environment variable naming the point at which the agent aborts (`kill -9` in the
/// middle of its work).
pub const CRASH_AT: &str = posbridge::faults::ENV;

/// Every point at which the agent writes something its promise depends on: first in the
/// order a payment on an IP terminal passes them, then the Token and Paywall ones.
pub const JOURNAL_POINTS: &[&str] = &[
    "journal:started:before",
    "journal:started:after",
    "journal:ip_sending:before",
    "journal:ip_sending:after",
    // The command's PUBACK comes after the sending step's commit, which covers it too
    // (the terminal was idle).
    "intake:stored",
    "journal:answer:before",
    "journal:answer:after",
    "worker:finished",
    "journal:token_basket:before",
    "journal:token_basket:after",
    "journal:paywall_sale_sending:before",
    "journal:paywall_sale_sending:after",
    // A checkpoint has put its changes into sled but not yet made sled durable.
    "store:checkpoint:applied",
];

/// The points a payment on an IP terminal passes, in order.
pub const IP_JOURNAL_POINTS: &[&str] = JOURNAL_POINTS.split_at(8).0;

pub fn embedded() -> Broker {
    Broker::embedded()
}

/// A broker, a temp dir, a simulator (its `stats` kept, stopped through `stop` on drop),
/// and the agent with its cloud client online.
pub struct Rig<S> {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub stats: S,
    pub stop: CancellationToken,
    pub agent: Agent,
    pub cloud: Cloud,
}

impl<S> Rig<S> {
    /// Start the agent `spec` describes in `dir` with `env`, and its cloud client.
    pub async fn start(
        broker: Broker, dir: tempfile::TempDir, spec: &AgentSpec, env: &[(&str, &str)], stats: S,
        stop: CancellationToken,
    ) -> Self {
        let (cloud, agent) = Cloud::with_agent(spec, dir.path(), env).await;
        Rig { broker, dir, stats, stop, agent, cloud }
    }
}

impl<S> Rig<S> {
    /// Send `cmd` to an agent started with a crash point: it aborts at `point`.
    pub async fn crash_at(&mut self, cmd: Value, point: &str) {
        self.cloud.send(cmd).await;
        assert_aborts_at(&mut self.agent, point, Duration::from_secs(20));
    }

    /// `cmd` is a payment whose provider answer carries a full card number: it succeeds,
    /// its device answer shows the card only as `mask`, and once the agent has stopped,
    /// none of `pans` is in a message or a file.
    pub async fn assert_card_number_masked(&mut self, cmd: Value, mask: &str, pans: &[&str]) {
        let res = self.cloud.ask(cmd).await;
        assert_eq!(res["state"], "succeeded", "{res}");
        assert!(res["device"].to_string().contains(mask), "{res}");
        assert!(self.agent.sigterm().success());
        assert_card_number_nowhere(&self.cloud, self.dir.path(), pans);
    }
}

impl<S> Drop for Rig<S> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An IP terminal simulator on loopback that approves every payment (after `delay_ms`, its
/// draws from `seed`), running until `stop`: its address and stats.
pub async fn approving_ip_sim(
    seed: Option<u64>, delay_ms: u64, stop: &CancellationToken,
) -> (std::net::SocketAddr, posbridge::sim::ip::SimStats) {
    let sim = posbridge::sim::ip::IpSim::loopback(posbridge::sim::ip::SimOptions::approving(
        seed, delay_ms,
    ))
    .await
    .expect("sim");
    let (addr, stats) = (sim.local_addr(), sim.stats());
    sim.spawn(stop.clone());
    (addr, stats)
}

/// A broker, a temp dir, and agent `agent_id` started there with its cloud client online;
/// its one terminal, `ip-1`, is at a port nothing answers on.
pub async fn agent_with_a_silent_terminal(
    agent_id: &str,
) -> (Broker, tempfile::TempDir, Cloud, Agent) {
    let broker = embedded();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec =
        AgentSpec::new(agent_id, broker.port()).ip("ip-1", "127.0.0.1:9".parse().expect("addr"));
    let (cloud, agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    (broker, dir, cloud, agent)
}

/// Stop the agent, damage its store under `dir` as a power cut on an SD card may (sled's
/// headers garbled), and start it again: its first online status whose `store` object
/// `reports` accepts.
pub async fn restart_on_a_damaged_store(
    agent: &mut Agent, cloud: &Cloud, dir: &Path, reports: impl Fn(&Value) -> bool,
) -> Value {
    assert!(agent.sigterm().success());
    garble_sled_headers(dir);
    agent.restart(&[]);
    cloud
        .wait("status", Duration::from_secs(20), |v| v["state"] == "online" && reports(&v["store"]))
        .await
}

/// `posbridge <args> --config <config>`, to run.
pub fn posbridge_with(args: &[&str], config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    cmd
}

/// A command's stdout and stderr as one text.
pub fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A Token register simulator on loopback (no TLS) drawing from `seed`, not yet running.
pub async fn token_sim(seed: u64) -> posbridge::sim::token::TokenSim {
    posbridge::sim::token::TokenSim::loopback(
        posbridge::sim::token::SimOptions { seed: Some(seed), ..Default::default() },
        None,
    )
    .await
    .expect("token simulator")
}

/// A provider's cloud mock (Paywall, Kuveyt) on loopback with its default options, running
/// until `stop`: its base URL in test mode, and its stats.
pub async fn cloud_mock<P: posbridge::sim::cloud::Provider>(
    stop: &CancellationToken,
) -> (String, posbridge::sim::cloud::MockStats<P>)
where
    P::Options: Default,
{
    let mock = posbridge::sim::CloudMock::<P>::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Default::default(),
    )
    .await
    .expect("cloud mock");
    let (url, stats) = (mock.base_url("test"), mock.stats());
    mock.spawn(stop.clone());
    (url, stats)
}

pub fn pay(id: &str, terminal: &str, amount: i64) -> Value {
    serde_json::json!({"v":1,"id":id,"op":"payment","terminal":terminal,"amount":amount,"currency":"AZN"})
}

/// None of the card numbers `pans` is in a message the cloud saw or in a file under `dir`
/// (the agent's store and log).
pub fn assert_card_number_nowhere(cloud: &Cloud, dir: &Path, pans: &[&str]) {
    for pan in pans {
        let published = cloud.published_containing(pan);
        assert!(published.is_none(), "{published:?}");
        let file = file_containing(dir, pan.as_bytes());
        assert!(file.is_none(), "{file:?} holds the card number");
    }
}

/// The agent aborts (exits non-zero) at the crash point `point`, within `within`.
pub fn assert_aborts_at(agent: &mut Agent, point: &str, within: Duration) {
    let st = agent
        .wait_exit(within)
        .unwrap_or_else(|| panic!("agent did not abort at {point}\n{}", agent.log()));
    assert!(!st.success(), "{point}: aborted");
}

/// `res` ended `state` with the error `code`: its error message.
pub fn error_message<'a>(res: &'a Value, state: &str, code: &str) -> &'a str {
    assert_eq!(res["state"], state, "{res}");
    assert_eq!(res["error"]["code"], code, "{res}");
    res["error"]["message"].as_str().unwrap_or("")
}

/// `res` is `unknown` and asks for reconciliation.
pub fn assert_unknown(res: &Value) {
    assert_eq!(res["state"], "unknown", "{res}");
    assert_eq!(res["needs_reconciliation"], true, "{res}");
}

/// `res` is `unknown`, asks for reconciliation, and its error message names `why`.
pub fn assert_unknown_because(res: &Value, why: &str) {
    assert_unknown(res);
    let message = res["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(why), "{res}");
}

/// `status` of `target` (as command `id`): the target was reconciled as succeeded. The
/// status result.
pub async fn status_reconciled(cloud: &Cloud, id: &str, target: &str) -> Value {
    let st = cloud.ask(serde_json::json!({"v":1,"id":id,"op":"status","target":target})).await;
    assert_eq!(st["target"]["reconciled"]["state"], "succeeded", "{st}");
    st
}

/// Damage a stopped agent's store the way a power cut on an SD card can: garble the
/// headers of sled's config and data files under `dir/store/sled`.
pub fn garble_sled_headers(dir: &Path) {
    let sled_dir = dir.join("store").join("sled");
    for name in ["conf", "db"] {
        let p = sled_dir.join(name);
        if let Ok(mut bytes) = std::fs::read(&p) {
            for b in bytes.iter_mut().take(64) {
                *b ^= 0x5A;
            }
            std::fs::write(&p, bytes).expect("write");
        }
    }
}

/// The first file under `dir` (recursively) whose bytes contain `needle`.
pub fn file_containing(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|e| {
        let p = e.path();
        if p.is_dir() {
            file_containing(&p, needle)
        } else {
            std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                .then_some(p)
        }
    })
}

/// A hand-written config file `dir/name`.
pub fn write_config(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write config");
    p
}

/// `posbridge run --config cfg` from a hand-written config, unsigned commands allowed,
/// stderr into `log`.
pub fn run_agent(cfg: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(cfg)
        .env("POSBRIDGE__SECURITY__ALLOW_UNSIGNED", "true")
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("agent")
}

/// The text of the log at `path` once `done` holds for it (polled every 50 ms, for 15 s at
/// the most; `what` names what was awaited).
pub async fn wait_log(path: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            if done(&log) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"))
}

/// Credential files as an operator writes them: for each `(key, value)`, `value` and a
/// newline in `dir/<key without _file>`; returns the `key = "<path>"` lines for the
/// terminal's table.
pub fn write_key_files(dir: &Path, keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(key, value)| {
            let path = dir.join(key.trim_end_matches("_file"));
            std::fs::write(&path, format!("{value}\n")).expect("key");
            format!("{key} = \"{}\"\n", path.display())
        })
        .collect()
}

/// `posbridge secret set <terminal> <name> --config <config>` with `value` typed on stdin.
pub fn secret_set(config: &Path, terminal: &str, name: &str, value: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["secret", "set", terminal, name, "--config"]).arg(config);
    output_with_stdin(&mut cmd, value.as_bytes())
}

/// Run `cmd` with `input` on its stdin (a program that exits without reading it is fine);
/// its stdout and stderr captured.
pub fn output_with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().expect("wait")
}

/// A new cloud signing key whose public half is written to `dir/<kid>.pub`, and the
/// `[security]` table that names it as `kid`.
pub fn cloud_key(dir: &Path, kid: &str) -> (p256::ecdsa::SigningKey, String) {
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let sk = p256::ecdsa::SigningKey::generate();
    let pub_file = dir.join(format!("{kid}.pub"));
    std::fs::write(&pub_file, sk.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem"))
        .expect("write pub");
    let security = format!(
        "[security]\ncommand_keys = [{{ kid = \"{kid}\", public_key_file = \"{}\" }}]\n",
        pub_file.display()
    );
    (sk, security)
}

/// Run `posbridge fleet` with `args` (its `--json` report into a temporary file, `--settle`
/// as given), require exit 0, and check what every fleet run must show: `sent` payments,
/// each with its one result, executed once by the terminals, none lost. Returns the
/// report and the command's output text.
pub async fn fleet_run(args: &[String], sent: u64) -> (Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("fleet.json");
    let out = tokio::process::Command::new(agent_bin())
        .args(args)
        .args(["--json".to_string(), report.display().to_string()])
        .output()
        .await
        .expect("run posbridge fleet");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
    assert_eq!(r["sent"], sent, "{r}");
    assert_eq!(
        (r["lost"].as_u64(), r["double"].as_u64(), r["phantom"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );
    // One result per payment, and the terminals ran each exactly once.
    assert_eq!((&r["results"], &r["executions"]), (&r["sent"], &r["sent"]), "{r}");
    (r, text)
}
