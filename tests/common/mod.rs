//! Black-box test harness: the library's test kit (`posbridge::testkit`: brokers, the
//! agent as a child process, its typed config, the cloud POS client) plus what only the
//! tests need. Everything on loopback.
#![allow(dead_code)]

pub mod tls;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub use posbridge::testkit::*;

/// The agent binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_posbridge");

pub fn embedded() -> Broker {
    Broker::embedded()
}

pub fn pay(id: &str, terminal: &str, amount: i64) -> Value {
    serde_json::json!({"v":1,"id":id,"op":"payment","terminal":terminal,"amount":amount,"currency":"AZN"})
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
