//! Salvage command ids from a store that failed its checks at open (`mqtt-api.md`:
//! Durability promise 7): a command id, once seen, is never executed again — not after a
//! store repair either.
//!
//! The damaged copy cannot be trusted to open, so its files (sled's data file, blobs and
//! snapshots, the write-ahead logs) are read as bytes and searched for what the store
//! writes: whole command records (JSON objects starting `{"seq":`, and the records sled
//! holds deflated, `packed.rs`) and, as a fallback, the `"cmd":{"id":…,"op":…` of a
//! record (a deflated one names it in clear, so even a damaged one gives its id) or the
//! `\"id\":…,\"op\":…` of a result in the outbox. sled keeps older versions of a record
//! beside newer ones, so a record is taken as final only when every final version found
//! agrees; anything else becomes `unknown`
//! with `needs_reconciliation` — never resumed, never executed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::record::{CmdState, CommandRecord, JournalEntry};
use crate::api::{
    is_valid_request_id, Command, ErrorBody, ErrorCode, FinalState, Op, RequestId, ResultMsg,
};

/// Files larger than this are not read (reported as not searched).
const MAX_FILE: u64 = 256 * 1024 * 1024;
/// At most this much is read in all.
const MAX_TOTAL: u64 = 1024 * 1024 * 1024;

/// What was found in a damaged copy.
#[derive(Debug, Default)]
pub struct Salvage {
    /// One record per id, ready for the fresh store: final when the copy shows it final
    /// consistently, else `unknown` (with a result saying why).
    pub records: Vec<CommandRecord>,
    /// Ids whose record was rebuilt as `unknown`.
    pub unknown: Vec<String>,
    /// Files read, and files left out (too large, unreadable).
    pub files_read: usize,
    pub files_skipped: Vec<String>,
}

#[derive(Default)]
struct Found {
    /// Whole records found (all versions).
    versions: Vec<CommandRecord>,
    /// The op, when only the id was found.
    op: Option<Op>,
}

/// Search every file under `dir` (the damaged copy) for command ids.
pub fn salvage(dir: &Path, moved_aside: &str) -> Salvage {
    let mut out = Salvage::default();
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut total = 0u64;
    for path in files(dir) {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len > MAX_FILE || total + len > MAX_TOTAL {
            out.files_skipped.push(path.display().to_string());
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            out.files_skipped.push(path.display().to_string());
            continue;
        };
        total += len;
        out.files_read += 1;
        scan(&bytes, &mut found);
    }
    let now = chrono::Utc::now();
    for (id, f) in found {
        let finals: Vec<&CommandRecord> =
            f.versions.iter().filter(|r| r.state.is_final() && r.result.is_some()).collect();
        let agreed = finals.first().filter(|first| finals.iter().all(|r| r.state == first.state));
        if let Some(r) = agreed {
            let mut r = (*r).clone();
            r.journal.push(salvaged_step(moved_aside, true));
            out.records.push(r);
            continue;
        }
        // Running, queued, or versions that disagree: the outcome is not known.
        let base = f.versions.into_iter().max_by_key(|r| r.journal.len());
        let cmd = match (&base, RequestId::parse(&id)) {
            (Some(r), _) => r.cmd.clone(),
            (None, Some(rid)) => Command::salvaged(rid, f.op.unwrap_or(Op::Payment)),
            // The scan only takes ids of the request-id form: not reached.
            (None, None) => continue,
        };
        let mut res = ResultMsg::new(Some(id.clone()), FinalState::Unknown);
        res.op = Some(cmd.op());
        res.terminal = cmd.terminal.as_ref().map(|t| t.to_string());
        res.amount = cmd.amount();
        res.currency = cmd.currency().map(|c| c.to_string());
        res.needs_reconciliation = true;
        res.started_at = base.as_ref().and_then(|r| r.started_at).map(crate::api::ts);
        res.finished_at = Some(crate::api::ts(now));
        res.error = Some(ErrorBody::new(
            ErrorCode::Internal,
            format!("the agent's store was found damaged and moved aside to {moved_aside}; this command was salvaged from the damaged copy and its outcome is not known — reconcile it on the terminal; it is never executed again"),
        ));
        let mut journal = base.as_ref().map(|r| r.journal.clone()).unwrap_or_default();
        journal.push(salvaged_step(moved_aside, false));
        out.unknown.push(id.clone());
        out.records.push(CommandRecord {
            seq: 0,
            received_at: base.as_ref().map_or(now, |r| r.received_at),
            expires_at: base.as_ref().map_or(now, |r| r.expires_at),
            started_at: base.as_ref().and_then(|r| r.started_at),
            refunds: base.as_ref().map(|r| r.refunds.clone()).unwrap_or_default(),
            sig: base.as_ref().and_then(|r| r.sig.clone()),
            cmd,
            state: CmdState::Unknown,
            journal,
            result: Some(res),
            reconciled: None,
        });
    }
    out
}

fn salvaged_step(from: &str, kept: bool) -> JournalEntry {
    JournalEntry {
        step: "salvaged".into(),
        at: chrono::Utc::now(),
        data: json!({ "from": from, "outcome_kept": kept }),
        sends: false,
    }
}

/// Every regular file under `dir`, recursively (sled keeps blobs in a subdirectory).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Find records and ids in one file's bytes.
fn scan(bytes: &[u8], found: &mut BTreeMap<String, Found>) {
    const RECORD: &[u8] = b"{\"seq\":";
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], RECORD) {
        let start = at + i;
        let mut it =
            serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<CommandRecord>();
        if let Some(Ok(r)) = it.next() {
            if is_valid_request_id(&r.cmd.id) {
                found.entry(r.cmd.id.to_string()).or_default().versions.push(r);
            }
        }
        at = start + RECORD.len();
    }
    // Records sled held deflated (`packed.rs`); one whose deflated part is damaged still
    // names its id in its head, which the patterns below find.
    for (at, id, _) in super::packed::find_packed(bytes) {
        let json = super::packed::inflate(&bytes[at..]);
        let r = json.ok().and_then(|j| serde_json::from_slice::<CommandRecord>(&j).ok());
        if let Some(r) = r.filter(|r| r.cmd.id.as_str() == id && is_valid_request_id(id)) {
            found.entry(id.to_string()).or_default().versions.push(r);
        }
    }
    let text = String::from_utf8_lossy(bytes);
    for re in patterns() {
        for c in re.captures_iter(&text) {
            let (Some(id), Some(op)) = (c.get(1), c.get(2)) else {
                continue;
            };
            let op: Option<Op> = serde_json::from_value(json!(op.as_str())).ok();
            let e = found.entry(id.as_str().to_string()).or_default();
            if e.op.is_none() {
                e.op = op;
            }
        }
    }
}

fn patterns() -> &'static [regex_lite::Regex; 2] {
    static P: std::sync::OnceLock<[regex_lite::Regex; 2]> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        // Ids are 1–64 of [A-Za-z0-9._:-] (mqtt-api.md), so a quote ends them exactly.
        let re = |s: &str| regex_lite::Regex::new(s).expect("a constant pattern");
        [
            re(r#""cmd":\{"id":"([A-Za-z0-9._:-]{1,64})","op":"([a-z_]{1,16})""#),
            re(r#"\\"id\\":\\"([A-Za-z0-9._:-]{1,64})\\",\\"op\\":\\"([a-z_]{1,16})\\""#),
        ]
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: CmdState) -> CommandRecord {
        let cmd = crate::api::parse_command(
            format!(r#"{{"v":1,"id":"{id}","op":"payment","terminal":"k","amount":100,"currency":"KZT"}}"#)
                .as_bytes(),
            65536,
        )
        .expect("cmd");
        let now = chrono::Utc::now();
        CommandRecord {
            seq: 7,
            cmd,
            state,
            received_at: now,
            expires_at: now,
            started_at: None,
            journal: vec![],
            result: state
                .is_final()
                .then(|| ResultMsg::new(Some(id.into()), FinalState::Succeeded)),
            refunds: vec![],
            sig: None,
            reconciled: None,
        }
    }

    #[test]
    fn finds_records_and_bare_ids_in_garbage() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = vec![0xFFu8; 100];
        bytes.extend(serde_json::to_vec(&rec("done-1", CmdState::Succeeded)).expect("json"));
        bytes.extend([0u8, 1, 2, 3]);
        // An older version of a record that later finished, and a running one.
        bytes.extend(serde_json::to_vec(&rec("done-1", CmdState::Running)).expect("json"));
        bytes.extend(serde_json::to_vec(&rec("run-1", CmdState::Running)).expect("json"));
        // A record cut in half: only its id survives.
        let half = serde_json::to_vec(&rec("cut-1", CmdState::Running)).expect("json");
        bytes.extend(&half[..half.len() / 2]);
        // An outbox entry's escaped result.
        bytes.extend(br#"{"topic":"result","payload":"{\"v\":1,\"id\":\"out-1\",\"op\":\"refund\",\"state\":\"failed\"}"}"#);
        std::fs::write(dir.path().join("db"), &bytes).expect("write");
        std::fs::create_dir(dir.path().join("blobs")).expect("dir");
        std::fs::write(
            dir.path().join("blobs").join("1"),
            serde_json::to_vec(&rec("blob-1", CmdState::Queued)).expect("json"),
        )
        .expect("write");
        let s = salvage(dir.path(), "/x/sled.damaged");
        let by: BTreeMap<&str, &CommandRecord> =
            s.records.iter().map(|r| (r.cmd.id.as_str(), r)).collect();
        assert_eq!(by.len(), 5, "{:?}", by.keys());
        assert_eq!(by["done-1"].state, CmdState::Succeeded, "final kept");
        for id in ["run-1", "cut-1", "out-1", "blob-1"] {
            assert_eq!(by[id].state, CmdState::Unknown, "{id}");
            let res = by[id].result.as_ref().expect("result");
            assert!(res.needs_reconciliation);
            assert!(s.unknown.contains(&id.to_string()));
        }
        assert_eq!(by["out-1"].cmd.op(), Op::Refund);
        assert_eq!(s.files_read, 2);
    }

    #[test]
    fn finds_deflated_records_and_the_ids_of_damaged_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let pack = |r: &CommandRecord| {
            // Padded past the size records are deflated from.
            let mut r = r.clone();
            r.journal.push(salvaged_step(&"x".repeat(600), true));
            let json = serde_json::to_vec(&r).expect("json");
            let k = super::super::key(super::super::CMD, r.cmd.id.as_bytes());
            super::super::packed::pack(&k, &json).into_owned()
        };
        let mut bytes = vec![0x11u8; 64];
        let done = pack(&rec("done-2", CmdState::Succeeded));
        assert_eq!(done[0], 0, "deflated");
        assert!(find(&done, b"{\"seq\":").is_none(), "no plain record left in it");
        bytes.extend(done);
        let run = pack(&rec("run-2", CmdState::Running));
        assert_ne!(run[0], 0, "an unfinished record is kept plain");
        bytes.extend(run);
        let mut damaged = pack(&rec("bad-2", CmdState::Succeeded));
        let n = damaged.len();
        damaged[n - 40..].fill(0xA5);
        bytes.extend(damaged);
        std::fs::write(dir.path().join("db"), &bytes).expect("write");
        let s = salvage(dir.path(), "aside");
        let by: BTreeMap<&str, &CommandRecord> =
            s.records.iter().map(|r| (r.cmd.id.as_str(), r)).collect();
        assert_eq!(by.len(), 3, "{:?}", by.keys());
        assert_eq!(by["done-2"].state, CmdState::Succeeded, "a whole final record is kept");
        assert_eq!(by["run-2"].state, CmdState::Unknown, "running: unknown");
        assert!(by["run-2"].journal.iter().any(|j| j.step == "salvaged"));
        assert_eq!(by["bad-2"].state, CmdState::Unknown, "damaged: its id, as unknown");
        assert_eq!(by["bad-2"].cmd.op(), Op::Payment);
    }

    #[test]
    fn disagreeing_final_versions_are_unknown() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = serde_json::to_vec(&rec("x-1", CmdState::Succeeded)).expect("json");
        bytes.extend(serde_json::to_vec(&rec("x-1", CmdState::Failed)).expect("json"));
        std::fs::write(dir.path().join("db"), &bytes).expect("write");
        let s = salvage(dir.path(), "aside");
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.records[0].state, CmdState::Unknown);
    }
}
