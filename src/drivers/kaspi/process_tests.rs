use serde_json::json;

use super::*;

const T: Timing = Timing {
    poll: Duration::from_secs(1),
    actualize_every: Duration::from_secs(10),
    actualize_window: Duration::from_secs(60),
    deadline: Duration::from_secs(260),
};

fn data(status: &str, sub: &str) -> Answer {
    Answer::Data(
        StatusData::parse(&json!({"processId":"7","status":status,"subStatus":sub}))
            .expect("status"),
    )
}

fn device(code: i64) -> Answer {
    Answer::Error(ApiError::Device { http: 200, code, text: "x".into(), message: None })
}

fn at(step: &Step) -> (Ask, Instant) {
    match step {
        Step::Ask { ask, at } => (*ask, *at),
        Step::Done(e) => panic!("expected a question, got {e:?}"),
    }
}

/// A process started now (its first step, a status question now, dropped), and now.
fn started() -> (Process, Instant) {
    let t0 = Instant::now();
    (Process::new(T, t0).0, t0)
}

/// The status of the final answer `step` ends with.
fn final_status(step: &Step) -> ProcessStatus {
    match step {
        Step::Done(End::Final(d)) => d.status.clone(),
        other => panic!("expected a final status, got {other:?}"),
    }
}

#[test]
fn polls_every_second_until_success() {
    let t0 = Instant::now();
    let (mut p, first) = Process::new(T, t0);
    assert_eq!(at(&first), (Ask::Status, t0));
    let s = p.on_answer(Ask::Status, t0, data("wait", "WaitUser"));
    assert_eq!(at(&s), (Ask::Status, t0 + Duration::from_secs(1)));
    let t1 = t0 + Duration::from_secs(1);
    let s = p.on_answer(Ask::Status, t1, data("wait", "ProcessingCard"));
    assert_eq!(at(&s), (Ask::Status, t1 + Duration::from_secs(1)));
    let s = p.on_answer(Ask::Status, t1, data("success", "CardTransactionSuccess"));
    assert_eq!(final_status(&s), ProcessStatus::Success);
}

#[test]
fn fail_is_final() {
    let (mut p, t0) = started();
    let s = p.on_answer(Ask::Status, t0, data("fail", "QrTransactionFailure"));
    assert_eq!(final_status(&s), ProcessStatus::Fail);
}

#[test]
fn sub_status_changes_are_reported_once() {
    let (mut p, _) = started();
    let d = StatusData::parse(&json!({"status":"wait","subStatus":"WaitUser"})).expect("d");
    assert_eq!(p.sub_status_change(&d).as_deref(), Some("WaitUser"));
    assert_eq!(p.sub_status_change(&d), None);
    let d2 = StatusData::parse(&json!({"status":"wait","subStatus":"WaitForPinCode"})).expect("d");
    assert_eq!(p.sub_status_change(&d2).as_deref(), Some("WaitForPinCode"));
}

#[test]
fn deadline_ends_unknown_not_failed() {
    let (mut p, t0) = started();
    let late = t0 + Duration::from_secs(259);
    let s = p.on_answer(Ask::Status, late, data("wait", "WaitUser"));
    // Never asks past the deadline.
    assert_eq!(at(&s), (Ask::Status, t0 + T.deadline));
    let s = p.on_answer(Ask::Status, t0 + T.deadline, data("wait", "WaitUser"));
    match s {
        Step::Done(End::Unknown { reason, last, .. }) => {
            assert!(reason.contains("no final status"), "{reason}");
            assert!(last.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn transport_errors_retry_until_the_deadline() {
    let (mut p, t0) = started();
    let s = p.on_answer(Ask::Status, t0, Answer::Transport("reset".into()));
    assert_eq!(at(&s).0, Ask::Status);
    let s = p.on_answer(Ask::Status, t0, device(500));
    assert_eq!(at(&s).0, Ask::Status);
    let s = p.on_answer(Ask::Status, t0 + T.deadline, Answer::Transport("refused".into()));
    match s {
        Step::Done(End::Unknown { reason, .. }) => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_is_actualized_at_most_every_10s_within_the_window() {
    let (mut p, t0) = started();
    // First unknown: actualize at once.
    let s = p.on_answer(Ask::Status, t0, data("unknown", "ProcessCancelled"));
    assert_eq!(at(&s), (Ask::Actualize, t0));
    let mut asked_at = vec![t0];
    let mut now = t0;
    loop {
        // The answer comes back quickly: the next actualize still waits 10 s.
        now += Duration::from_millis(300);
        match p.on_answer(Ask::Actualize, now, data("unknown", "ProcessCancelled")) {
            Step::Ask { ask, at } => {
                assert_eq!(ask, Ask::Actualize);
                asked_at.push(at);
                now = at;
            }
            Step::Done(End::Unknown { reason, last, .. }) => {
                assert!(reason.contains("still reports the outcome as unknown"), "{reason}");
                assert!(last.is_some());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    for w in asked_at.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(10));
    }
    // Each gap is 10 s after the previous answer (300 ms): t0, 10.3, …, 51.5 — six calls
    // inside a 60 s window.
    assert_eq!(asked_at.len(), 6);
    assert!(*asked_at.last().expect("last") <= t0 + T.actualize_window);
}

#[test]
fn actualize_can_resolve_and_errors_keep_the_window() {
    let (mut p, t0) = started();
    p.on_answer(Ask::Status, t0, data("unknown", "ProcessCancelled"));
    // No internet on the terminal: try again later, not sooner than 10 s.
    let s = p.on_answer(Ask::Actualize, t0, device(code::NO_INTERNET));
    assert_eq!(at(&s), (Ask::Actualize, t0 + Duration::from_secs(10)));
    let s =
        p.on_answer(Ask::Actualize, t0 + Duration::from_secs(10), data("fail", "ProcessCancelled"));
    assert!(matches!(s, Step::Done(End::Final(_))));
}

#[test]
fn already_final_on_actualize_asks_status() {
    let (mut p, t0) = started();
    p.on_answer(Ask::Status, t0, data("unknown", "ProcessCancelled"));
    let s = p.on_answer(Ask::Actualize, t0, device(code::UNABLE_TO_ACTUALIZE));
    assert_eq!(at(&s), (Ask::Status, t0));
}

#[test]
fn process_not_found_and_unactualizable_end_unknown() {
    for (asked, c) in [
        (Ask::Status, code::PROCESS_NOT_FOUND),
        (Ask::Actualize, code::PROCESS_NOT_FOUND),
        (Ask::Actualize, code::UNSUPPORTED_METHOD),
        (Ask::Actualize, code::TRANSACTION_NOT_FOUND),
    ] {
        let t0 = Instant::now();
        let (mut p, _) = Process::new(T, t0);
        match p.on_answer(asked, t0, device(c)) {
            Step::Done(End::Unknown { device_code, .. }) => assert_eq!(device_code, Some(c)),
            other => panic!("{c}: {other:?}"),
        }
    }
    let (mut p, t0) = started();
    let s = p.on_answer(Ask::Status, t0, Answer::Error(ApiError::Forbidden));
    assert!(matches!(s, Step::Done(End::Unknown { .. })));
}
