//! The settle policy against the scripted fake driver (`engine_tests::Fake`): every fact,
//! live and at resume, to its contract outcome; and the rule that nothing but a definite
//! device answer (or a first request that provably never left) ends `failed`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::api::parse_command;
use crate::drivers::{NotSentWhy, OpContext, Refusal};
use crate::engine::engine_tests::Fake;
use crate::store::{CmdState, CommandRecord, Store};

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(&dir.path().join("store")).expect("open");
    Rig { _dir: dir, store }
}

fn ctx(rig: &Rig, op: &str, sent_before: bool, expired: bool) -> OpContext {
    let cmd = parse_command(
        format!(r#"{{"v":1,"id":"c-1","op":"{op}","terminal":"t","amount":500,"currency":"AZN"}}"#)
            .as_bytes(),
        65536,
    )
    .expect("valid");
    let now = chrono::Utc::now();
    let expires_at = if expired {
        now - chrono::Duration::seconds(5)
    } else {
        now + chrono::Duration::seconds(60)
    };
    let seq = rig.store.next_seq().expect("seq");
    let mut rec = CommandRecord {
        state: CmdState::Running,
        started_at: Some(now),
        ..CommandRecord::new(seq, cmd, now, expires_at)
    };
    if sent_before {
        rec.journal.push(crate::store::JournalEntry {
            step: "fake_sending".into(),
            at: now,
            data: json!({}),
            sends: true,
        });
    }
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    OpContext::new(rec, rig.store.clone(), tx)
}

const WINDOW: Duration = Duration::from_secs(3);

async fn settle(fake: &Fake, ctx: &mut OpContext, entry: Entry) -> Outcome {
    run(fake, ctx, entry, &CancellationToken::new(), &crate::engine::clock::SystemClock)
        .await
        .expect("not shut down")
}

fn code(o: &Outcome) -> Option<ErrorCode> {
    o.error.as_ref().map(|e| e.code)
}

fn absent() -> Fact {
    Fact::Absent { why: "no record".into(), guarantee: None }
}

fn absent_guaranteed() -> Fact {
    Fact::Absent { why: "no record".into(), guarantee: Some("test protocol §1") }
}

#[tokio::test(start_paused = true)]
async fn live_facts_map_to_outcomes() {
    use ErrorCode as E;
    use FinalState as S;
    use NotSentWhy as N;
    let rig = rig();
    let declined = Fact::refused(Refusal::Declined, "no", None);
    let raw = json!({"cut": "{\"ok\":tr"});
    let cancelled = Fact::refused(Refusal::CancelledByCustomer, "x", None);
    let unreachable = Fact::not_sent(N::Unreachable, "refused");
    let unreadable = Fact::unreadable("cut short", raw.clone());
    let wait = Fact::pending("wait");
    let cannot_ask = Fact::CannotAsk { why: "no key".into() };
    let lost = Fact::lost("reset");
    // (first fact, scripted asks, state, code, asks made; u32::MAX: kept asking)
    type Row = (Fact, Vec<Fact>, FinalState, Option<ErrorCode>, u32);
    // One row a line, so that the table reads as one.
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        (Fact::approved(None, None), vec![], S::Succeeded, None, 0),
        (declined.clone(), vec![], S::Failed, Some(E::Declined), 0),
        (cancelled, vec![], S::Failed, Some(E::CancelledByCustomer), 0),
        (unreachable.clone(), vec![], S::Failed, Some(E::DeviceUnavailable), 0),
        (Fact::not_sent(N::BadRequest, "bad"), vec![], S::Rejected, Some(E::BadRequest), 0),
        (Fact::not_sent(N::Unsupported, "no"), vec![], S::Rejected, Some(E::UnsupportedOp), 0),
        (Fact::not_sent(N::Store, "disk"), vec![], S::Failed, Some(E::Internal), 0),
        // Lost, then the device answers when asked again.
        (lost.clone(), vec![Fact::approved(None, None)], S::Succeeded, None, 1),
        (lost.clone(), vec![declined.clone()], S::Failed, Some(E::Declined), 1),
        // Lost for good: unknown, never failed.
        (lost.clone(), vec![], S::Unknown, Some(E::Timeout), u32::MAX),
        // Unreadable answer: unknown with the raw answer kept.
        (unreadable, vec![], S::Unknown, Some(E::Timeout), u32::MAX),
        // Still running twice, then a verdict.
        (wait.clone(), vec![wait, declined.clone()], S::Failed, Some(E::Declined), 2),
        // "No record" proves nothing after a maybe-sent request.
        (absent(), vec![absent(), absent()], S::Unknown, Some(E::Timeout), u32::MAX),
        // …unless the protocol guarantees it.
        (absent_guaranteed(), vec![], S::Failed, Some(E::DeviceUnavailable), 0),
        // Cannot be asked: unknown at once.
        (cannot_ask, vec![], S::Unknown, Some(E::DeviceUnavailable), 0),
        // Asking again could not even connect: still says nothing about the first request.
        (lost, vec![unreachable; 50], S::Unknown, Some(E::Timeout), u32::MAX),
    ];
    for (i, (first, asks, state, want_code, want_asks)) in table.into_iter().enumerate() {
        let fake = Fake::new(first.clone(), asks, WINDOW);
        let mut c = ctx(&rig, "payment", false, false);
        let o = settle(&fake, &mut c, Entry::Live).await;
        assert_eq!(o.state, state, "row {i}: {first:?} → {o:?}");
        if state != FinalState::Succeeded {
            assert_eq!(code(&o), want_code, "row {i}: {first:?} → {o:?}");
        }
        let asked = fake.asked.load(Ordering::SeqCst);
        if want_asks == u32::MAX {
            assert!(asked >= 2, "row {i}: kept asking within the window ({asked})");
        } else {
            assert_eq!(asked, want_asks, "row {i}: asks");
        }
        assert_eq!(fake.executed.load(Ordering::SeqCst), 1, "row {i}: executed once");
        if matches!(first, Fact::Unreadable { .. }) {
            // The last fact was Lost (the script ran out); the first answer is in the
            // journal only as a reason. Asked again with an unreadable last answer:
            let fake =
                Fake::new(first.clone(), vec![Fact::unreadable("again", raw.clone()); 100], WINDOW);
            let mut c = ctx(&rig, "payment", false, false);
            let o = settle(&fake, &mut c, Entry::Live).await;
            assert_eq!(o.state, FinalState::Unknown);
            assert_eq!(code(&o), Some(ErrorCode::DeviceError));
            assert_eq!(o.device, Some(raw.clone()), "the raw answer is kept");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn window_zero_live_says_unknown_without_asking() {
    let rig = rig();
    for first in [Fact::lost("reset"), Fact::pending("unknown"), Fact::unreadable("x", json!(1))] {
        let fake = Fake::new(first.clone(), vec![Fact::approved(None, None)], Duration::ZERO);
        let mut c = ctx(&rig, "payment", false, false);
        let o = settle(&fake, &mut c, Entry::Live).await;
        assert_eq!(o.state, FinalState::Unknown, "{first:?}");
        assert_eq!(fake.asked.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn resume_asks_and_never_resends_a_maybe_sent_request() {
    let rig = rig();
    // (asks, window, state)
    let table: Vec<(Vec<Fact>, Duration, FinalState)> = vec![
        (vec![Fact::approved(None, None)], WINDOW, FinalState::Succeeded),
        (vec![Fact::approved(None, None)], Duration::ZERO, FinalState::Succeeded),
        (vec![Fact::refused(Refusal::Declined, "no", None)], WINDOW, FinalState::Failed),
        (vec![], WINDOW, FinalState::Unknown),
        (vec![Fact::not_sent(NotSentWhy::Unreachable, "down"); 100], WINDOW, FinalState::Unknown),
        (vec![absent(); 100], WINDOW, FinalState::Unknown),
        (vec![Fact::CannotAsk { why: "no pid".into() }], WINDOW, FinalState::Unknown),
        (vec![Fact::lost("x")], Duration::ZERO, FinalState::Unknown),
    ];
    for (i, (asks, window, state)) in table.into_iter().enumerate() {
        let fake = Fake::new(Fact::approved(None, None), asks, window);
        let mut c = ctx(&rig, "payment", true, false);
        let o = settle(&fake, &mut c, Entry::Resume).await;
        assert_eq!(o.state, state, "row {i}: {o:?}");
        assert_eq!(fake.executed.load(Ordering::SeqCst), 0, "row {i}: never sent again");
        assert!(fake.asked.load(Ordering::SeqCst) >= 1, "row {i}: asked");
    }
}

/// A payment resumed (journalled as maybe sent or not) against a fake that would approve
/// it and answers asks from `asks`: in time, it runs once and succeeds; past its deadline,
/// it expires with the device untouched. The expired outcome.
async fn runs_in_time_else_expires(rig: &Rig, asks: Vec<Fact>, sent_before: bool) -> Outcome {
    let fake = Fake::new(Fact::approved(None, None), asks.clone(), WINDOW);
    let mut c = ctx(rig, "payment", sent_before, false);
    let o = settle(&fake, &mut c, Entry::Resume).await;
    assert_eq!(o.state, FinalState::Succeeded);
    assert_eq!(fake.executed.load(Ordering::SeqCst), 1);

    let fake = Fake::new(Fact::approved(None, None), asks, WINDOW);
    let mut c = ctx(rig, "payment", sent_before, true);
    let o = settle(&fake, &mut c, Entry::Resume).await;
    assert_eq!(o.state, FinalState::Expired);
    assert_eq!(fake.executed.load(Ordering::SeqCst), 0, "device untouched");
    o
}

#[tokio::test(start_paused = true)]
async fn resume_before_anything_left_runs_in_time_or_expires() {
    let expired = runs_in_time_else_expires(&rig(), vec![], false).await;
    assert_eq!(code(&expired), Some(ErrorCode::Expired));
}

#[tokio::test(start_paused = true)]
async fn guaranteed_absence_at_resume_runs_again_in_time_else_expires() {
    runs_in_time_else_expires(&rig(), vec![absent_guaranteed()], true).await;
}

#[tokio::test(start_paused = true)]
async fn ops_that_move_no_money_fail_plainly() {
    let rig = rig();
    for (first, want) in [
        (Fact::lost("reset"), ErrorCode::DeviceUnavailable),
        (Fact::unreadable("x", json!(1)), ErrorCode::DeviceError),
        (Fact::pending("x"), ErrorCode::DeviceUnavailable),
    ] {
        let fake = Fake::new(first, vec![], WINDOW);
        let mut c = ctx(&rig, "device_info", false, false);
        let o = settle(&fake, &mut c, Entry::Live).await;
        assert_eq!(o.state, FinalState::Failed);
        assert_eq!(code(&o), Some(want));
        assert_eq!(fake.asked.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_asking_leaves_the_command_running() {
    let rig = rig();
    let fake = Fake::new(Fact::lost("reset"), vec![], Duration::from_secs(600));
    let mut c = ctx(&rig, "payment", false, false);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stopper.cancel();
    });
    assert!(run(&fake, &mut c, Entry::Live, &stop, &crate::engine::clock::SystemClock)
        .await
        .is_none());
    assert!(c.record.maybe_sent(), "the resume will ask, not resend");
}

/// Every sequence of non-definite facts — whatever the first attempt and every ask say,
/// short of a device verdict or a guaranteed absence — ends `unknown`, never `failed`.
#[tokio::test(start_paused = true)]
async fn no_failed_without_a_device_verdict() {
    let rig = rig();
    let vague = [
        Fact::lost("a"),
        Fact::unreadable("b", json!("x")),
        Fact::pending("c"),
        absent(),
        Fact::not_sent(NotSentWhy::Unreachable, "d"),
        Fact::CannotAsk { why: "e".into() },
    ];
    for first in &vague[..4] {
        for a in &vague {
            for b in &vague {
                for entry in [Entry::Live, Entry::Resume] {
                    let fake = Fake::new(first.clone(), vec![a.clone(), b.clone()], WINDOW);
                    let mut c = ctx(&rig, "payment", entry == Entry::Resume, false);
                    let o = settle(&fake, &mut c, entry).await;
                    assert_eq!(
                        o.state,
                        FinalState::Unknown,
                        "{entry:?}: {first:?} then {a:?}, {b:?} → {o:?}"
                    );
                }
            }
        }
    }
}
