use super::*;
use crate::api::{parse_command, FinalState, ResultMsg};

fn record(store: &Store, id: &str) -> CommandRecord {
    let cmd = parse_command(
        format!(r#"{{"v":1,"id":"{id}","op":"payment","terminal":"ip-1","amount":100,"currency":"AZN"}}"#)
            .as_bytes(),
        65536,
    )
    .expect("valid");
    let now = chrono::Utc::now();
    CommandRecord::new(store.next_seq().expect("seq"), cmd, now, now)
}

/// Bytes of whole records in the write-ahead logs under `sled_dir`.
fn logged_bytes(sled_dir: &std::path::Path) -> usize {
    wal::list(sled_dir)
        .expect("list")
        .iter()
        .map(|(g, p)| std::fs::read(p).map(|b| wal::records_len(&b, *g)).unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn records_and_outbox_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let (store, report) = Store::open(&path).expect("open");
        assert!(report.moved_aside.is_none());
        let mut a = record(&store, "a");
        let b = record(&store, "b");
        a.state = CmdState::Succeeded;
        let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
        store.write(&[&a, &b], &[OutMsg::result(&res)]).expect("write");
        store.commit().await.expect("commit");
    }
    let (store, _) = Store::open(&path).expect("reopen");
    assert_eq!(store.get("a").expect("get").map(|r| r.state), Some(CmdState::Succeeded));
    let unfinished = store.unfinished().expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].cmd.id, "b");
    let out = store.outbox_from(0, 10).expect("outbox");
    assert_eq!(out.len(), 1);
    store.outbox_remove(out[0].0).expect("remove");
    assert_eq!(store.outbox_len(), 0);
    let ids: Vec<String> = store.recent().map(|r| r.expect("rec").cmd.id.to_string()).collect();
    assert_eq!(ids, vec!["b".to_string(), "a".to_string()]);
}

#[tokio::test]
async fn damaged_store_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let (store, _) = Store::open(&path).expect("open");
        let r = record(&store, "a");
        store.write(&[&r], &[]).expect("write");
        store.commit().await.expect("commit");
    }
    // Garble the data file and the config header.
    for name in ["conf", "db"] {
        let p = path.join("sled").join(name);
        let mut bytes = std::fs::read(&p).expect("read");
        for b in bytes.iter_mut().take(64) {
            *b ^= 0xA5;
        }
        std::fs::write(&p, bytes).expect("write");
    }
    let (store, report) = Store::open(&path).expect("open after damage");
    let aside = report.moved_aside.clone().expect("moved aside");
    assert!(std::path::Path::new(&aside).join("db").exists(), "damaged copy kept");
    // The id is salvaged, never forgotten: `unknown`, not resumed, its result queued.
    let a = store.get("a").expect("get").expect("salvaged");
    assert_eq!(a.state, CmdState::Unknown);
    assert!(a.result.as_ref().is_some_and(|r| r.needs_reconciliation));
    assert!(store.unfinished().expect("list").is_empty(), "nothing resumes");
    assert_eq!(store.outbox_len(), 1);
    assert_eq!(report.salvaged, Some(1));
    let hold = report.money_blocked.expect("money held");
    assert_eq!(hold.salvaged_unknown, 1);
    // The hold survives a restart until lifted.
    drop(store);
    let (store, report) = Store::open(&path).expect("reopen");
    assert!(report.moved_aside.is_none());
    assert!(report.money_blocked.is_some(), "still held");
    assert!(store.lift_money_hold().await.expect("lift").is_some());
    drop(store);
    let (_store, report) = Store::open(&path).expect("reopen");
    assert!(report.money_blocked.is_none(), "lifted durably");
}

#[tokio::test]
async fn concurrent_commits_all_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = record(&s, &format!("c{i}"));
            s.write(&[&r], &[]).expect("write");
            s.commit().await.expect("commit");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(store.unfinished().expect("list").len(), 50);
}

/// Fill a store with committed records, close it, damage it with `damage`, reopen.
async fn damaged(damage: impl FnOnce(&std::path::Path)) -> (tempfile::TempDir, OpenReport, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let (store, _) = Store::open(&path).expect("open");
        for i in 0..2000 {
            let r = record(&store, &format!("r{i}"));
            store.write(&[&r], &[]).expect("write");
        }
        // Into sled itself: the damage below is to sled's files, not to the log.
        store.checkpoint().await.expect("checkpoint");
    }
    damage(&path.join("sled"));
    let (store, report) = Store::open(&path).expect("reopen after damage");
    (dir, report, store)
}

/// The store was moved aside and the report says committed data was lost.
fn assert_lost_committed_data(report: &OpenReport) {
    assert!(report.moved_aside.is_some(), "{report:?}");
    assert!(
        report.error.as_deref().is_some_and(|e| e.contains("lost committed data")),
        "{report:?}"
    );
}

#[tokio::test]
async fn truncated_data_file_is_detected_not_silently_shortened() {
    let (_d, report, store) = damaged(|sled| {
        let f = std::fs::OpenOptions::new().write(true).open(sled.join("db")).expect("open");
        let len = f.metadata().expect("meta").len();
        f.set_len(len / 2).expect("truncate");
    })
    .await;
    assert_lost_committed_data(&report);
    // Half the data file is gone: what is left of it is salvaged as `unknown` (nothing
    // resumes), the rest cannot be proven, so money waits for an operator.
    assert!(store.unfinished().expect("list").is_empty(), "nothing resumes");
    assert!(report.money_blocked.is_some());
    let salvaged = report.salvaged.unwrap_or(0);
    assert!(salvaged > 0 && salvaged <= 2000, "{salvaged}");
}

#[tokio::test]
async fn missing_data_file_is_detected() {
    let (_d, report, _s) = damaged(|sled| std::fs::remove_file(sled.join("db")).expect("rm")).await;
    assert!(report.moved_aside.is_some(), "{report:?}");
}

#[tokio::test]
async fn garbled_data_file_is_detected_even_when_sled_panics() {
    let (_d, report, _s) = damaged(|sled| {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(sled.join("db")).expect("open");
        let len = f.metadata().expect("meta").len();
        f.seek(SeekFrom::Start(len / 4)).expect("seek");
        f.write_all(&[0xFF; 4096]).expect("garble");
    })
    .await;
    match report.moved_aside {
        Some(aside) => {
            assert!(std::path::Path::new(&aside).join("db").exists(), "damaged copy kept");
            assert!(
                std::path::Path::new(&format!("{aside}.mark")).exists(),
                "its watermark kept beside it"
            );
        }
        // The garbled bytes fell on space sled no longer uses: then nothing may be missing.
        None => assert_eq!(_s.unfinished().expect("list").len(), 2000, "silent loss"),
    }
}

#[tokio::test]
async fn healthy_reopen_passes_the_watermark() {
    let (_d, report, store) = damaged(|_| {}).await;
    assert!(report.moved_aside.is_none(), "{report:?}");
    assert_eq!(store.unfinished().expect("list").len(), 2000);
}

#[tokio::test]
async fn prune_deletes_old_finished_records_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = record(&store, &format!("p{i}"));
        r.received_at = old - chrono::Duration::hours(1);
        if i != 2 {
            let mut res = ResultMsg::new(Some(r.cmd.id.to_string()), FinalState::Succeeded);
            res.finished_at = Some(crate::api::ts(old));
            r.state = CmdState::Succeeded;
            r.result = Some(res);
        }
        if i == 1 {
            // A (signed) command whose deadline is still ahead: its id is kept.
            r.expires_at = chrono::Utc::now() + chrono::Duration::days(1);
        }
        store.write(&[&r], &[]).expect("write");
        ids.push(r.cmd.id.to_string());
    }
    store.commit().await.expect("commit");
    let n = store.prune(chrono::Utc::now() - chrono::Duration::days(30), 100).expect("prune");
    // p0, p3 go; p1's deadline is ahead; p2 is unfinished; p4 is the newest and keeps
    // the watermark valid.
    assert_eq!(n, 2);
    assert!(store.get("p0").expect("get").is_none());
    assert!(store.get("p1").expect("get").is_some());
    assert!(store.get("p2").expect("get").is_some());
    assert!(store.get("p4").expect("get").is_some());
    let left: Vec<String> = store.recent().map(|r| r.expect("rec").cmd.id.to_string()).collect();
    assert_eq!(left, vec!["p4".to_string(), "p2".to_string(), "p1".to_string()]);
}

/// A prune pass stops at the first record that arrived after its cut (none after it can
/// have finished before it), except at one stamped ahead of now: it keeps more, never less.
#[tokio::test]
async fn prune_reads_up_to_the_first_record_that_arrived_after_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(40);
    let arrivals = [
        old,                               // f0: pruned
        now + chrono::Duration::days(365), // f1: stamped ahead (a clock that ran ahead): read past
        old,                               // f2: pruned
        now - chrono::Duration::hours(1),  // f3: after the cut: the pass stops here
        old,                               // f4: a clock stepped back: kept until a later pass
        old,                               // f5: the newest, kept
    ];
    for (i, at) in arrivals.iter().enumerate() {
        let mut r = record(&store, &format!("f{i}"));
        r.received_at = *at;
        let mut res = ResultMsg::new(Some(r.cmd.id.to_string()), FinalState::Succeeded);
        res.finished_at = Some(crate::api::ts(old));
        r.state = CmdState::Succeeded;
        r.result = Some(res);
        store.write(&[&r], &[]).expect("write");
    }
    store.commit().await.expect("commit");
    let n = store.prune(now - chrono::Duration::days(30), 100).expect("prune");
    assert_eq!(n, 3);
    for gone in ["f0", "f1", "f2"] {
        assert!(store.get(gone).expect("get").is_none(), "{gone} pruned");
    }
    for kept in ["f3", "f4", "f5"] {
        assert!(store.get(kept).expect("get").is_some(), "{kept} kept");
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readdir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// A store as a power cut leaves it: sled's files as of its last checkpoint, and the
/// write-ahead log (and watermark) as of the last commit. `after` runs between the
/// checkpoint and the commit. Returns (dir, path of the cut copy).
async fn power_cut(
    with_log: bool, after: impl FnOnce(&Store),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let cut = dir.path().join("cut");
    let (store, _) = Store::open(&live).expect("open");
    let r = record(&store, "before");
    store.write(&[&r], &[]).expect("write");
    store.checkpoint().await.expect("checkpoint");
    copy_dir(&live.join("sled"), &cut.join("sled"));
    after(&store);
    store.commit().await.expect("commit");
    for (_, log) in wal::list(&live.join("sled")).expect("list") {
        let to = cut.join("sled").join(log.file_name().expect("name"));
        if with_log {
            std::fs::copy(&log, to).expect("copy log");
        } else {
            let _ = std::fs::remove_file(to);
        }
    }
    std::fs::copy(live.join("sled.mark"), cut.join("sled.mark")).expect("copy mark");
    drop(store);
    (dir, cut)
}

/// One record, "after", written between the checkpoint and the commit of [`power_cut`].
fn write_after(store: &Store) {
    let r = record(store, "after");
    store.write(&[&r], &[]).expect("write");
}

#[tokio::test]
async fn committed_changes_sled_never_wrote_are_replayed_from_the_log() {
    let (_d, cut) = power_cut(true, |store| {
        let mut before = store.get("before").expect("get").expect("there");
        before.state = CmdState::Succeeded;
        let after = record(store, "after");
        let res = ResultMsg::new(Some("before".into()), FinalState::Succeeded);
        store.write(&[&before, &after], &[OutMsg::result(&res)]).expect("write");
    })
    .await;
    let (store, report) = Store::open(&cut).expect("open the cut copy");
    assert!(report.moved_aside.is_none(), "{report:?}");
    assert!(report.replayed_commits >= 1, "{report:?}");
    assert_eq!(store.get("before").expect("get").map(|r| r.state), Some(CmdState::Succeeded));
    assert!(store.get("after").expect("get").is_some());
    assert_eq!(store.outbox_from(0, 10).expect("outbox").len(), 1);
    // The replay was checkpointed: a second open has nothing left to replay.
    drop(store);
    let (store, report) = Store::open(&cut).expect("reopen");
    assert_eq!(report.replayed_commits, 0);
    assert!(store.get("after").expect("get").is_some());
}

#[tokio::test]
async fn a_lost_log_is_detected_not_silently_ignored() {
    let (_d, cut) = power_cut(false, write_after).await;
    let (_store, report) = Store::open(&cut).expect("open");
    assert_lost_committed_data(&report);
}

#[tokio::test]
async fn a_torn_log_tail_is_dropped_and_the_rest_kept() {
    let (_d, cut) = power_cut(true, write_after).await;
    // A commit that was being written when the power went: half a record.
    let (g, log) = wal::list(&cut.join("sled")).expect("list").pop().expect("a log");
    let mut bytes = std::fs::read(&log).expect("read");
    let end = wal::records_len(&bytes, g);
    let half = [200, 0, 0, 0, 1, 2, 3, 4, 0x01, 0, 0];
    // Written where the next record goes, inside the space allocated ahead.
    bytes.resize(bytes.len().max(end + half.len()), 0);
    bytes[end..end + half.len()].copy_from_slice(&half);
    std::fs::write(&log, bytes).expect("write");
    let (store, report) = Store::open(&cut).expect("open");
    assert!(report.moved_aside.is_none(), "{report:?}");
    assert!(store.get("after").expect("get").is_some());
}

#[tokio::test]
async fn a_commit_is_one_log_write_and_sled_waits_for_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let sled_dir = dir.path().join("s").join("sled");
    let log_len = || logged_bytes(&sled_dir);
    assert_eq!(log_len(), 0);
    let r = record(&store, "x");
    store.write(&[&r], &[]).expect("write");
    assert_eq!(log_len(), 0, "nothing reaches the log before the commit");
    store.commit().await.expect("commit");
    assert!(log_len() > 0, "the commit wrote the log");
    store.checkpoint().await.expect("checkpoint");
    assert_eq!(log_len(), 0, "the checkpoint dropped the log");
    assert_eq!(wal::list(&sled_dir).expect("list").len(), 1, "one fresh log");
    // Written over the spare a new store prepared at open, which the old log replaced.
    let (held, _) = wal::spare(&sled_dir).expect("spare").expect("a spare");
    assert!(held < wal::list(&sled_dir).expect("list")[0].0);
}

/// `held_bytes` (what the engine's checkpoint schedule reads) counts the changes not yet
/// in sled, each key once at its newest value, and drops to 0 at a checkpoint.
#[tokio::test]
async fn held_bytes_count_the_changes_a_checkpoint_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    store.checkpoint().await.expect("checkpoint");
    assert_eq!(store.held_bytes(), 0);
    let r = record(&store, "x");
    store.write(&[&r], &[]).expect("write");
    let one = store.held_bytes();
    assert!(one > 0, "a change is held until the checkpoint");
    store.write(&[&r], &[]).expect("write again");
    assert_eq!(store.held_bytes(), one, "a key rewritten counts once");
    let r2 = record(&store, "y");
    store.write(&[&r2], &[]).expect("write");
    assert!(store.held_bytes() > one);
    store.commit().await.expect("commit");
    assert!(store.held_bytes() > one, "a commit only writes the log");
    store.checkpoint().await.expect("checkpoint");
    assert_eq!(store.held_bytes(), 0, "the checkpoint put them into sled");
}

/// Sequence numbers order records (recency) and the outbox (the pump reads forward from a
/// cursor): after a crash they must continue above everything committed, including what
/// only the log had — sled's own id generator only knows what sled persisted.
#[tokio::test]
async fn sequence_numbers_continue_above_replayed_records_after_a_crash() {
    let (_d, cut) = power_cut(true, |store| {
        for i in 0..50 {
            let r = record(store, &format!("after-{i}"));
            let res = ResultMsg::new(Some(r.cmd.id.to_string()), FinalState::Succeeded);
            store.write(&[&r], &[OutMsg::result(&res)]).expect("write");
        }
    })
    .await;
    let (store, report) = Store::open(&cut).expect("open");
    assert!(report.moved_aside.is_none(), "{report:?}");
    let last_record = store.get("after-49").expect("get").expect("replayed").seq;
    let last_outbox = store
        .outbox_from(0, 1000)
        .expect("outbox")
        .last()
        .map(|(s, _)| *s)
        .expect("outbox entries");
    let next = store.next_seq().expect("seq");
    assert!(
        next > last_record && next > last_outbox,
        "next {next} must be above {last_record} and {last_outbox}"
    );
}

/// What sled holds for `k` (not what the store reads: that includes the changes not yet
/// in sled).
fn in_sled(store: &Store, k: &[u8]) -> Option<Vec<u8>> {
    store.db.get(k).expect("sled get").map(|v| v.to_vec())
}

/// Changes reach sled only at a checkpoint, and then only each key's newest version;
/// readers see every change at once all the same, and the log replays them after a
/// crash before that checkpoint.
#[tokio::test]
async fn changes_reach_sled_at_the_checkpoint_newest_version_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let (store, _) = Store::open(&path).expect("open");
    let mut a = record(&store, "a");
    store.write(&[&a], &[]).expect("write");
    a.state = CmdState::Running;
    store.write(&[&a], &[]).expect("write");
    store.commit().await.expect("commit");
    a.state = CmdState::Succeeded;
    let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
    store.write(&[&a], &[OutMsg::result(&res)]).expect("write");
    store.commit().await.expect("commit");
    let k = key(CMD, b"a");
    assert_eq!(in_sled(&store, &k), None, "not in sled before the checkpoint");
    assert_eq!(store.get("a").expect("get").map(|r| r.state), Some(CmdState::Succeeded));
    assert_eq!(store.outbox_from(0, 10).expect("outbox").len(), 1, "its result is read");
    assert_eq!(store.recent().count(), 1, "and its recency entry");
    store.checkpoint().await.expect("checkpoint");
    let v = in_sled(&store, &k).expect("in sled after the checkpoint");
    let r: CommandRecord = serde_json::from_slice(&v).expect("record");
    assert_eq!(r.state, CmdState::Succeeded, "the newest version");
    assert!(lock_pending(&store.pending).dirty.is_empty(), "nothing held in memory after it");
    assert_eq!(store.db.scan_prefix(OUTBOX).count(), 1, "the unacknowledged result too");
}

/// An acknowledged result is no longer read at once. Acknowledged before the next
/// checkpoint it never reaches sled; after it, it is deleted from sled at the next one.
#[tokio::test]
async fn an_acknowledged_result_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let ended = |store: &Store, id: &str| {
        let mut r = record(store, id);
        r.state = CmdState::Succeeded;
        let res = ResultMsg::new(Some(id.into()), FinalState::Succeeded);
        store.write(&[&r], &[OutMsg::result(&res)]).expect("write");
    };
    {
        let (store, _) = Store::open(&path).expect("open");
        ended(&store, "a");
        store.commit().await.expect("commit");
        let out = store.outbox_from(0, 10).expect("outbox");
        assert_eq!(out.len(), 1);
        store.outbox_remove(out[0].0).expect("remove");
        assert!(store.outbox_from(0, 10).expect("outbox").is_empty(), "not read again");
        assert_eq!(store.outbox_len(), 0);
        store.checkpoint().await.expect("checkpoint");
        assert_eq!(store.db.scan_prefix(OUTBOX).count(), 0, "never reached sled");
        ended(&store, "b");
        store.checkpoint().await.expect("checkpoint");
        assert_eq!(store.db.scan_prefix(OUTBOX).count(), 1, "b's result in sled");
        let out = store.outbox_from(0, 10).expect("outbox");
        assert_eq!(out.len(), 1);
        store.outbox_remove(out[0].0).expect("remove");
        assert_eq!(store.outbox_len(), 0);
        store.checkpoint().await.expect("checkpoint");
        assert_eq!(store.db.scan_prefix(OUTBOX).count(), 0, "deleted at the checkpoint");
    }
    let (store, _) = Store::open(&path).expect("reopen");
    assert_eq!(store.outbox_len(), 0, "the deletes were made durable");
    for id in ["a", "b"] {
        assert_eq!(store.get(id).expect("get").map(|r| r.state), Some(CmdState::Succeeded));
    }
}

/// sled writes its memory to disk on its own, so a crash during a checkpoint can leave
/// it holding part of the checkpoint's changes: here the acknowledged result's delete
/// but not the record it ended. The logs before the checkpoint are still there, and
/// their replay in order makes the record ended again.
#[tokio::test]
async fn a_crash_mid_checkpoint_is_replayed_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let cut = dir.path().join("cut");
    let (store, _) = Store::open(&live).expect("open");
    let mut a = record(&store, "a");
    store.write(&[&a], &[]).expect("write");
    let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
    store.write(&[&record(&store, "b")], &[OutMsg::result(&res)]).expect("write");
    store.checkpoint().await.expect("checkpoint");
    a.state = CmdState::Succeeded;
    store.write(&[&a], &[OutMsg::result(&res)]).expect("write");
    store.commit().await.expect("commit");
    let out = store.outbox_from(0, 10).expect("outbox");
    assert_eq!(out.len(), 2);
    for (seq, _) in &out {
        store.outbox_remove(*seq).expect("remove");
    }
    store.commit().await.expect("commit");
    copy_dir(&live.join("sled"), &cut.join("sled"));
    std::fs::copy(live.join("sled.mark"), cut.join("sled.mark")).expect("copy mark");
    drop(store);
    {
        // Part of the checkpoint that was running: the deletes, not the ended record.
        let db = sled::open(cut.join("sled")).expect("sled");
        for (seq, _) in &out {
            db.remove(seq_key(OUTBOX, *seq)).expect("remove");
        }
        db.flush().expect("flush");
    }
    let (store, report) = Store::open(&cut).expect("open the cut copy");
    assert!(report.moved_aside.is_none(), "{report:?}");
    assert_eq!(store.get("a").expect("get").map(|r| r.state), Some(CmdState::Succeeded));
    assert_eq!(store.outbox_len(), 0);
}

/// Intake's shared sync (`engine::intake`): a commit by anyone else that takes the
/// changes covers them, and without one `durable_soon` commits on its own.
#[tokio::test]
async fn durable_soon_is_met_by_another_commit_or_commits_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let sled_dir = dir.path().join("s").join("sled");
    let log_len = || logged_bytes(&sled_dir);
    // Nobody else commits: it commits on its own once the wait is over.
    store.write(&[&record(&store, "a")], &[]).expect("write");
    let at = store.log_position();
    store.durable_soon(at, std::time::Duration::from_millis(1)).await.expect("durable");
    let after_own = log_len();
    assert!(after_own > 0, "committed on its own");
    // Another commit took the change: no commit of its own, however long it may wait.
    store.write(&[&record(&store, "b")], &[]).expect("write");
    let at = store.log_position();
    store.commit().await.expect("another caller's commit");
    let covered = log_len();
    assert!(covered > after_own);
    let wait = store.durable_soon(at, std::time::Duration::from_secs(3600));
    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .expect("answered by the commit that covered it, not by its own wait")
        .expect("durable");
    assert_eq!(log_len(), covered, "no second commit");
}

/// A record written again after the write that ended it: the later write is what is
/// read, and what sled and a reopened store keep.
#[tokio::test]
async fn a_later_write_wins_over_the_ended_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let (store, _) = Store::open(&path).expect("open");
    let mut a = record(&store, "a");
    a.state = CmdState::Succeeded;
    let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
    store.write(&[&a], &[OutMsg::result(&res)]).expect("write");
    a.refunds.push("r-1".into());
    store.write(&[&a], &[]).expect("later write");
    let refunds = |store: &Store| store.get("a").expect("get").map(|r| r.refunds);
    assert_eq!(refunds(&store), Some(vec!["r-1".to_string()]));
    store.commit().await.expect("commit");
    store.checkpoint().await.expect("checkpoint");
    assert_eq!(refunds(&store), Some(vec!["r-1".to_string()]), "kept after the checkpoint");
    drop(store);
    let (store, _) = Store::open(&path).expect("reopen");
    assert_eq!(refunds(&store), Some(vec!["r-1".to_string()]), "and after a reopen");
}

/// Frames a later write in the same commit makes obsolete are not written: a record
/// written three times before a commit costs the log one frame, and so does a record
/// written, then ended with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_writes_each_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logged = |name: &str, steps: &dyn Fn(&Store, &mut CommandRecord)| {
        let path = dir.path().join(name);
        let (store, _) = Store::open(&path).expect("open");
        let mut r = record(&store, "a");
        steps(&store, &mut r);
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(store.commit())).expect("commit");
        logged_bytes(&path.join("sled"))
    };
    let once = logged("once", &|store, r| {
        r.state = CmdState::Running;
        store.write(&[r], &[]).expect("write");
    });
    let thrice = logged("thrice", &|store, r| {
        store.write(&[r], &[]).expect("write");
        r.state = CmdState::Running;
        store.write(&[r], &[]).expect("write");
        store.write(&[r], &[]).expect("write");
    });
    assert_eq!(thrice, once, "one frame for the record");
    let ended_only = logged("ended-only", &|store, r| {
        r.state = CmdState::Succeeded;
        let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
        store.write(&[r], &[OutMsg::result(&res)]).expect("write");
    });
    let noted_then_ended = logged("noted", &|store, r| {
        r.state = CmdState::Running;
        store.write(&[r], &[]).expect("write");
        r.state = CmdState::Succeeded;
        let res = ResultMsg::new(Some("a".into()), FinalState::Succeeded);
        store.write(&[r], &[OutMsg::result(&res)]).expect("write");
    });
    assert_eq!(noted_then_ended, ended_only, "the ended write replaces the earlier frame");
    // Another record's frame between them is kept.
    let other_between = logged("other", &|store, r| {
        store.write(&[r], &[]).expect("write");
        let b = record(store, "b");
        store.write(&[&b], &[]).expect("write");
        r.state = CmdState::Running;
        store.write(&[r], &[]).expect("write");
    });
    assert!(other_between > once, "b's frame stays");
}

/// Reads merge sled's entries with the changes not yet in sled, in order both ways,
/// more of them than a scan takes from memory at a time, with deletes of either kind.
#[tokio::test]
async fn scans_merge_sled_with_the_changes_not_yet_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("s")).expect("open");
    let res = ResultMsg::new(Some("x".into()), FinalState::Succeeded);
    let mut seqs = Vec::new();
    for i in 0..300 {
        let r = record(&store, &format!("r{i:03}"));
        store.write(&[&r], &[OutMsg::result(&res)]).expect("write");
        if i == 149 {
            // The first half into sled, the rest held in memory.
            store.checkpoint().await.expect("checkpoint");
        }
    }
    store.commit().await.expect("commit");
    for (seq, _) in store.outbox_from(0, 1000).expect("outbox") {
        seqs.push(seq);
    }
    assert_eq!(seqs.len(), 300);
    assert_eq!(store.db.scan_prefix(OUTBOX).count(), 150, "half of them in sled");
    // Every third acknowledged: in sled and in memory alike.
    let kept: Vec<u64> =
        seqs.iter().copied().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, s)| s).collect();
    for (i, seq) in seqs.iter().enumerate() {
        if i % 3 == 0 {
            store.outbox_remove(*seq).expect("remove");
        }
    }
    let all: Vec<u64> =
        store.outbox_from(0, 1000).expect("outbox").into_iter().map(|(s, _)| s).collect();
    assert_eq!(all, kept, "in order, without the acknowledged");
    assert_eq!(store.outbox_len(), kept.len());
    // Windows, as the pump reads them.
    let mut from = 0;
    let mut windowed = Vec::new();
    loop {
        let w = store.outbox_from(from, 7).expect("outbox");
        let Some((last, _)) = w.last() else { break };
        from = last + 1;
        windowed.extend(w.iter().map(|(s, _)| *s));
    }
    assert_eq!(windowed, kept);
    // Backwards (newest first), across both halves.
    let ids: Vec<String> = store.recent().map(|r| r.expect("record").cmd.id.to_string()).collect();
    let expected: Vec<String> = (0..300).rev().map(|i| format!("r{i:03}")).collect();
    assert_eq!(ids, expected);
}

/// Real ENOSPC at a checkpoint (sled cannot grow): the store fails, and from then on it is
/// not even read. sled, after a failed write, may retry it inside a read (a node split)
/// up to a million times: the agent's stop once hung for minutes in `outbox_len`.
#[cfg(feature = "testkit")]
#[tokio::test]
async fn after_a_full_disk_fails_the_store_nothing_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_fs) = crate::testkit::Tmpfs::mount(&dir.path().join("fs"), "4m") else {
        return;
    };
    let (store, _) = Store::open(&dir.path().join("fs").join("store")).expect("open");
    let r = record(&store, "before");
    store.write(&[&r], &[]).expect("write");
    store.commit().await.expect("commit");
    store.checkpoint().await.expect("checkpoint with space left");
    // Fill the disk to its last byte.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.path().join("fs").join("filler")).expect("filler");
        for size in [64 * 1024, 4096, 1] {
            while f.write_all(&vec![0u8; size]).is_ok() {}
        }
    }
    // Commits still land in the log's space written ahead; sled has to grow.
    for n in 0..500 {
        let r = record(&store, &format!("r-{n}"));
        let res = ResultMsg::new(Some(r.cmd.id.to_string()), FinalState::Succeeded);
        store.write(&[&r], &[OutMsg::result(&res)]).expect("write");
    }
    store.commit().await.expect("commit into the space written ahead");
    let e = store.checkpoint().await.expect_err("sled cannot grow");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(store.failure().is_some());
    // Neither a change held in memory nor one in sled is read any more.
    for id in ["r-1", "before"] {
        let e = store.get(id).expect_err("refused after the failure");
        assert!(e.to_string().contains("No space left"), "{e}");
    }
    assert!(store.recent().next().is_some_and(|r| r.is_err()), "a scan reports the failure");
    assert_eq!(store.recent().count(), 1, "once, then nothing");
    assert!(store.unfinished().is_err());
    assert!(store.outbox_from(0, 10).is_err());
    assert_eq!(store.outbox_len(), 0);
}

/// A checkpoint that puts a flood's changes into sled runs on a thread of its own: a
/// commit the sync thread makes meanwhile is answered at once, not after sled's flush.
/// (Both once ran on the sync thread, and commits handed to it waited for the whole
/// checkpoint: an intake stall after every 2 MiB of commands.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_does_not_wait_for_a_running_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (store, _) = Store::open(&path).expect("open");
    let sled_dir = path.join("sled");
    let generations = || -> Vec<u64> {
        wal::list(&sled_dir).expect("list").into_iter().map(|(g, _)| g).collect()
    };
    // A flood's changes, held for sled (written, not yet committed: no checkpoint yet).
    for i in 0..30_000 {
        let r = record(&store, &format!("flood-{i}"));
        store.write(&[&r], &[]).expect("write");
    }
    let before = generations();
    let oldest = *before.iter().min().expect("a log");
    let ck = {
        let s = store.clone();
        tokio::spawn(async move { s.checkpoint().await })
    };
    // The checkpoint has committed and moved to a fresh log generation: it is now putting
    // the changes into sled.
    let newest = *before.iter().max().expect("a log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !generations().iter().any(|g| *g > newest) {
        assert!(std::time::Instant::now() < deadline, "the checkpoint never began");
        tokio::task::yield_now().await;
    }
    let r = record(&store, "during");
    store.write(&[&r], &[]).expect("write");
    store.syncer.commit_on_sync_thread().await.expect("commit");
    assert!(
        generations().contains(&oldest),
        "the commit was answered only after the checkpoint had retired the old log"
    );
    ck.await.expect("join").expect("checkpoint");
    assert!(!generations().contains(&oldest), "the checkpoint retires the old log");
    assert!(store.get("during").expect("get").is_some());
    assert!(store.get("flood-29999").expect("get").is_some());
}

/// A finished payment's record with a journal: long enough to reach sled deflated.
fn finished(store: &Store, id: &str) -> CommandRecord {
    let mut r = record(store, id);
    r.state = CmdState::Succeeded;
    r.journal = (0..4)
        .map(|i| JournalEntry {
            step: format!("step-{i}"),
            at: chrono::Utc::now(),
            data: serde_json::json!({ "ref": id, "answer": "approved" }),
            sends: i == 1,
        })
        .collect();
    r.result = Some(ResultMsg::new(Some(id.into()), FinalState::Succeeded));
    r
}

/// A finished record reaches sled deflated and reads back whole: by id, in `recent`, in
/// `unfinished`'s scan, across a reopen. A record sled holds plain (as a store written
/// before keeps them) reads as it is; a deflated one that is damaged is an error naming it.
#[tokio::test]
async fn finished_records_are_kept_deflated_in_sled_and_read_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let (store, _) = Store::open(&path).expect("open");
    let a = finished(&store, "a-1");
    let plain = serde_json::to_vec(&a).expect("json");
    assert!(plain.len() >= packed::MIN_PACKED, "{}", plain.len());
    let b = record(&store, "b-1");
    store.write(&[&a, &b], &[]).expect("write");
    store.checkpoint().await.expect("checkpoint");
    let v = in_sled(&store, &key(CMD, b"a-1")).expect("in sled");
    assert_eq!(v[0], 0, "deflated");
    assert!(v.len() < plain.len() * 3 / 4, "{} of {}", v.len(), plain.len());
    let short = in_sled(&store, &key(CMD, b"b-1")).expect("in sled");
    assert!(serde_json::from_slice::<CommandRecord>(&short).is_ok(), "a short record stays plain");
    assert_eq!(store.get("a-1").expect("get"), Some(a.clone()));
    let ids: Vec<String> = store.recent().map(|r| r.expect("rec").cmd.id.to_string()).collect();
    assert_eq!(ids, ["b-1", "a-1"]);
    assert_eq!(store.unfinished().expect("scan").len(), 1, "b-1 only");
    // A plain record of the same size, as an earlier version put it into sled.
    let old = finished(&store, "old-1");
    store.db.insert(key(CMD, b"old-1"), serde_json::to_vec(&old).expect("json")).expect("put");
    assert_eq!(store.get("old-1").expect("get"), Some(old));
    drop(store);
    // `doctor`'s look decodes them too (once sled's threads have let go of the store).
    let t0 = std::time::Instant::now();
    let seen = loop {
        match Store::inspect(&path) {
            Err(StoreError::InUse { .. }) if t0.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => break other.expect("inspect").expect("a store"),
        }
    };
    assert_eq!((seen.records, seen.corrupt, seen.unfinished), (3, 0, 1), "{seen:?}");
    let (store, report) = Store::open(&path).expect("reopen");
    assert_eq!(report.corrupt_records, 0, "{report:?}");
    assert_eq!(store.get("a-1").expect("get"), Some(a));
    let mut damaged = v.clone();
    let n = damaged.len();
    damaged[n - 12..].fill(0xA5);
    store.db.insert(key(CMD, b"a-1"), damaged).expect("put");
    let e = store.get("a-1").expect_err("damage is an error, not a record");
    assert!(e.to_string().contains("a-1"), "{e}");
    // The others are still read, and a scan goes on past it.
    let listed: Vec<bool> = store.recent().map(|r| r.is_ok()).collect();
    assert_eq!(listed, [true, false], "b-1 listed, a-1 reported");
    assert!(store.get("old-1").expect("get").is_some());
    assert_eq!(store.unfinished().expect("scan").len(), 1);
}

/// A store whose data file is cut short after its finished records reached sled deflated:
/// the salvage inflates the records it finds whole and keeps their outcomes, so the ids
/// of what is left are remembered as they ended, not only as `unknown`.
#[tokio::test]
async fn deflated_records_are_salvaged_with_their_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let n = 400;
    {
        let (store, _) = Store::open(&path).expect("open");
        for i in 0..n {
            let r = finished(&store, &format!("f{i}"));
            store.write(&[&r], &[]).expect("write");
        }
        store.checkpoint().await.expect("checkpoint");
        let k = key(CMD, b"f7");
        assert_eq!(in_sled(&store, &k).map(|v| v[0]), Some(0), "deflated in sled");
    }
    let db = path.join("sled").join("db");
    let f = std::fs::OpenOptions::new().write(true).open(&db).expect("open");
    let len = f.metadata().expect("meta").len();
    f.set_len(len * 3 / 4).expect("truncate");
    drop(f);
    let (store, report) = Store::open(&path).expect("reopen after damage");
    assert!(report.moved_aside.is_some(), "{report:?}");
    let mut kept = 0;
    for i in 0..n {
        if let Some(r) = store.get(&format!("f{i}")).expect("get") {
            assert!(r.state.is_final(), "never resumed: {r:?}");
            kept += usize::from(r.state == CmdState::Succeeded);
        }
    }
    assert!(kept > 0, "records found whole keep their outcome");
    assert!(store.unfinished().expect("scan").is_empty(), "nothing resumes");
}
