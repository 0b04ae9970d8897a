//! Black-box test harness: the library's test kit (`posbridge::testkit`: brokers, the
//! agent as a child process, its typed config, the cloud POS client) plus what only the
//! tests need. Everything on loopback.
#![allow(dead_code)]

use std::path::Path;

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
