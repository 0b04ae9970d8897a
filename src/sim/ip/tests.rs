//! The simulator over loopback (127.0.0.1:0 only), driven through the real client.

use std::collections::HashSet;

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::*;
use crate::drivers::ip::proto::{decode_response, encode_line, IpClient, ProtoError};

const T: Duration = Duration::from_secs(5);

struct Running {
    addr: String,
    stats: SimStats,
    control: SimControl,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn client(&self) -> IpClient {
        IpClient::connect(&self.addr, T).await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(T, self.task).await.unwrap().unwrap();
    }
}

async fn start(opts: SimOptions) -> Running {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let sim = IpSim::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await.unwrap();
    let (addr, stats, control) = (sim.local_addr().to_string(), sim.stats(), sim.control());
    let shutdown = CancellationToken::new();
    let task = sim.spawn(shutdown.clone());
    Running { addr, stats, control, shutdown, task }
}

/// A sim that approves every payment after the customer pays for `delay_ms`.
async fn start_paying_for(delay_ms: u64) -> Running {
    start(SimOptions { delay_ms, ..opts(0.0) }).await
}

/// `req` on a new connection that closes instead of answering.
async fn closed_call(sim: &Running, req: &Request) -> ProtoError {
    let err = sim.client().await.call(req, T).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed), "{err}");
    err
}

/// After a spoiled answer to the pay `r`: asked again, the books answer with `real`, the
/// pay ran once, and the next pay (`next`, same amount) is approved as usual.
async fn books_hold(
    sim: &Running, client: &mut IpClient, real: &Response, (r, amount): (&str, i64), next: &str,
) {
    assert_eq!(call(client, pay(r, amount)).await, *real);
    assert_eq!(sim.stats.executions(r), 1);
    assert!(call(client, pay(next, amount)).await.ok);
}

fn opts(fail_rate: f64) -> SimOptions {
    SimOptions { fail_rate, ..SimOptions::default() }
}

fn pay(r: &str, amount: i64) -> Request {
    Request::Pay { r#ref: r.into(), amount, currency: "AZN".into() }
}

fn refund(r: &str, txn: &str, amount: i64) -> Request {
    Request::Refund { r#ref: r.into(), transaction_id: txn.into(), amount }
}

fn status(r: &str) -> Request {
    Request::Status { r#ref: r.into() }
}

async fn call(client: &mut IpClient, req: Request) -> Response {
    client.call(&req, T).await.unwrap()
}

/// Sends raw bytes on a fresh connection and reads the first answer line, or everything
/// until the sim closes the connection.
async fn raw(addr: &str, bytes: &[u8], until_close: bool) -> (TcpStream, Vec<u8>) {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        if until_close {
            stream.read_to_end(&mut out).await
        } else {
            stream.read_until(b'\n', &mut out).await
        }
    };
    tokio::time::timeout(T, read).await.unwrap().unwrap();
    (stream.into_inner(), out)
}

#[tokio::test]
async fn ping_answers_terminal_id_and_version() {
    let sim = start(SimOptions { terminal_id: "IPT-0042".into(), ..opts(0.0) }).await;
    let resp = call(&mut sim.client().await, Request::Ping).await;
    assert!(resp.ok);
    assert_eq!(resp.terminal_id.as_deref(), Some("IPT-0042"));
    assert_eq!(resp.version.as_deref(), Some("1"));
    assert_eq!((sim.stats.requests(), sim.stats.total_executions()), (1, 0));
    sim.stop().await;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    assert!(IpSim::bind(loopback, opts(1.5)).await.is_err());
}

#[tokio::test]
async fn same_seed_gives_the_same_outcomes() {
    async fn outcomes(seed: u64) -> Vec<Response> {
        let sim = start(SimOptions { seed: Some(seed), ..opts(0.5) }).await;
        let mut client = sim.client().await;
        let mut out = Vec::new();
        for i in 0..24 {
            out.push(call(&mut client, pay(&format!("p{i}"), 100 + i)).await);
        }
        sim.stop().await;
        out
    }
    let first = outcomes(7).await;
    assert_eq!(first, outcomes(7).await);
    assert_ne!(first, outcomes(8).await);
    assert!(first.iter().any(|r| r.ok) && first.iter().any(|r| !r.ok));
}

#[tokio::test]
async fn fail_rate_zero_always_approves_with_unique_ids() {
    let sim = start(opts(0.0)).await;
    let mut client = sim.client().await;
    let mut ids = HashSet::new();
    for i in 0..50 {
        let resp = call(&mut client, pay(&format!("ok{i}"), 500)).await;
        assert!(resp.ok, "{resp:?}");
        assert_eq!(resp.r#ref, Some(format!("ok{i}")));
        let txn = resp.transaction_id.unwrap();
        assert!(txn.len() == 13 && txn.starts_with('T'), "{txn}");
        assert!(ids.insert(txn));
        let approval = resp.approval_code.unwrap();
        assert!(approval.len() == 6 && approval.bytes().all(|b| b.is_ascii_digit()));
        let mask = resp.card_mask.unwrap();
        assert!(mask.starts_with("4169********") && mask.len() == 16, "{mask}");
    }
    assert_eq!(sim.stats.total_executions(), 50);
    sim.stop().await;
}

#[tokio::test]
async fn fail_rate_one_always_fails_with_a_listed_code() {
    let sim = start(opts(1.0)).await;
    let mut client = sim.client().await;
    for i in 0..30 {
        let r = format!("f{i}");
        let resp = call(&mut client, pay(&r, 700)).await;
        assert!(!resp.ok && resp.transaction_id.is_none());
        assert!(FAILURES.iter().any(|(c, _)| Some(*c) == resp.error_code()), "{resp:?}");
        assert!(resp.message.is_some_and(|m| !m.is_empty()));
        assert_eq!(resp.r#ref.as_deref(), Some(r.as_str()));
        assert_eq!(sim.stats.executions(&r), 1);
    }
    sim.stop().await;
}

#[tokio::test]
async fn repeated_pay_is_answered_from_the_books() {
    let sim = start(opts(0.0)).await;
    let first = call(&mut sim.client().await, pay("dup", 900)).await;
    assert!(first.ok);
    // From another connection too: the ref, not the connection, names the operation.
    let mut other = sim.client().await;
    assert_eq!(call(&mut other, pay("dup", 900)).await, first);
    assert_eq!(call(&mut other, status("dup")).await, first);
    for changed in [pay("dup", 901), refund("dup", "T1", 1)] {
        let resp = call(&mut other, changed).await;
        assert_eq!(resp.error_code(), Some(ErrorCode::BadRequest));
    }
    assert_eq!(sim.stats.executions("dup"), 1);
    assert_eq!(sim.stats.total_executions(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn concurrent_pays_with_one_ref_execute_once() {
    let sim = start_paying_for(50).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = sim.client().await;
        tasks.push(tokio::spawn(async move { call(&mut client, pay("race", 10)).await }));
    }
    let mut approved = Vec::new();
    for task in tasks {
        let resp = task.await.unwrap();
        assert!(resp.ok || resp.is_in_progress(), "{resp:?}");
        approved.extend(resp.ok.then_some(resp));
    }
    assert!(approved.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(sim.stats.executions("race"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn status_and_repeats_say_in_progress_while_the_customer_pays() {
    let sim = start_paying_for(1000).await;
    let mut payer = sim.client().await;
    let paying = tokio::spawn(async move { call(&mut payer, pay("slow", 250)).await });
    let mut watcher = sim.client().await;
    // Ask until the sim has booked the pay; its answer is due only after delay_ms.
    let busy = tokio::time::timeout(T, async {
        loop {
            let resp = call(&mut watcher, status("slow")).await;
            if !resp.is_not_found() {
                break resp;
            }
        }
    })
    .await
    .unwrap();
    assert!(busy.is_in_progress(), "{busy:?}");
    assert_eq!(busy.r#ref.as_deref(), Some("slow"));
    assert!(call(&mut watcher, pay("slow", 250)).await.is_in_progress());
    let paid = paying.await.unwrap();
    assert!(paid.ok);
    assert_eq!(call(&mut watcher, status("slow")).await, paid);
    assert_eq!(sim.stats.executions("slow"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn status_of_an_unknown_ref_is_not_found() {
    let sim = start(opts(0.0)).await;
    let resp = call(&mut sim.client().await, status("never")).await;
    assert!(resp.is_not_found() && resp.r#ref.is_none(), "{resp:?}");
    assert_eq!(sim.stats.executions("never"), 0);
    sim.stop().await;
}

#[tokio::test]
async fn refunds_up_to_the_paid_amount_and_no_further() {
    let sim = start(opts(0.0)).await;
    let mut client = sim.client().await;
    let paid = call(&mut client, pay("sale", 1000)).await;
    let txn = paid.transaction_id.clone().unwrap();
    // Refunds never draw a random failure.
    sim.control.set_fail_rate(1.0);
    let part = call(&mut client, refund("back1", &txn, 400)).await;
    assert!(part.ok, "{part:?}");
    assert_ne!(part.transaction_id, paid.transaction_id);
    assert_eq!(part.card_mask, paid.card_mask);
    let too_much = call(&mut client, refund("back2", &txn, 601)).await;
    assert_eq!(too_much.error_code(), Some(ErrorCode::InvalidRefund));
    assert!(call(&mut client, refund("back3", &txn, 600)).await.ok);
    let empty = call(&mut client, refund("back4", &txn, 1)).await;
    assert_eq!(empty.error_code(), Some(ErrorCode::InvalidRefund));
    let unknown = call(&mut client, refund("back5", "T000000000000", 1)).await;
    assert_eq!(unknown.error_code(), Some(ErrorCode::NotFound));
    assert_eq!(call(&mut client, refund("back1", &txn, 400)).await, part);
    assert_eq!(call(&mut client, status("back2")).await, too_much);
    let runs =
        ["sale", "back1", "back2", "back3", "back4", "back5"].map(|r| sim.stats.executions(r));
    assert_eq!(runs, [1, 1, 0, 1, 0, 0]);
    sim.stop().await;
}

#[tokio::test]
async fn lost_response_is_recovered_by_status() {
    let sim = start(opts(0.0)).await;
    sim.control.set_drop_response_once(true);
    let err = closed_call(&sim, &pay("lost", 300)).await;
    assert!(err.maybe_delivered());
    let mut client = sim.client().await;
    let stored = call(&mut client, status("lost")).await;
    assert!(stored.ok && stored.transaction_id.is_some(), "{stored:?}");
    // Once only: the next pay is answered.
    books_hold(&sim, &mut client, &stored, ("lost", 300), "next").await;
    sim.stop().await;
}

#[tokio::test]
async fn invalid_lines_get_bad_request_and_the_connection_lives_on() {
    let sim = start(opts(0.0)).await;
    let (stream, line) = raw(&sim.addr, b"hello there\n", false).await;
    let resp = decode_response(&line).unwrap();
    assert_eq!(resp.error_code(), Some(ErrorCode::BadRequest));
    assert!(resp.message.is_some());
    let mut client = IpClient::from_stream(stream);
    assert!(call(&mut client, Request::Ping).await.ok);
    let invalid = [pay("", 5), pay("zero", 0), pay("neg", -5), refund("r", "", 5)];
    let lower = Request::Pay { r#ref: "cur".into(), amount: 5, currency: "azn".into() };
    for req in invalid.into_iter().chain([lower, status("")]) {
        let resp = call(&mut client, req.clone()).await;
        assert_eq!(resp.error_code(), Some(ErrorCode::BadRequest), "{req:?}");
    }
    assert_eq!(sim.stats.executions("zero"), 0);
    assert_eq!(sim.stats.requests(), 8);
    sim.stop().await;
}

#[tokio::test]
async fn over_long_line_is_refused_and_closed() {
    let sim = start(opts(0.0)).await;
    // Exactly one byte past the limit and no newline: the sim stops reading there.
    let (_, out) = raw(&sim.addr, &vec![b'{'; MAX_LINE + 1], true).await;
    let resp = decode_response(&out).unwrap();
    assert_eq!(resp.error_code(), Some(ErrorCode::BadRequest));
    assert!(out.ends_with(b"\n") && out.iter().filter(|&&b| b == b'\n').count() == 1);
    assert!(call(&mut sim.client().await, Request::Ping).await.ok);
    sim.stop().await;
}

#[tokio::test]
async fn lost_answer_of_a_pay_and_a_refund_executes_once_and_stays_in_the_books() {
    let sim = start(opts(0.0)).await;
    sim.control.lose_next_answer();
    closed_call(&sim, &pay("lose-pay", 800)).await;
    assert_eq!(sim.stats.executions("lose-pay"), 1);
    let mut client = sim.client().await;
    let paid = call(&mut client, status("lose-pay")).await;
    assert!(paid.ok && paid.r#ref.as_deref() == Some("lose-pay"), "{paid:?}");
    assert_eq!(call(&mut client, pay("lose-pay", 800)).await, paid);
    let txn = paid.transaction_id.clone().unwrap();

    // Refunds too (the older drop_response_once knob is pay-only).
    sim.control.lose_next_answer();
    closed_call(&sim, &refund("lose-back", &txn, 300)).await;
    let back = call(&mut client, status("lose-back")).await;
    assert!(back.ok && back.transaction_id.is_some(), "{back:?}");
    assert_eq!(call(&mut client, refund("lose-back", &txn, 300)).await, back);
    // The refund really ran: only 500 of the 800 are left.
    let over = call(&mut client, refund("lose-back2", &txn, 501)).await;
    assert_eq!(over.error_code(), Some(ErrorCode::InvalidRefund), "{over:?}");
    assert_eq!(["lose-pay", "lose-back"].map(|r| sim.stats.executions(r)), [1, 1]);
    // Once only.
    assert!(call(&mut client, pay("lose-next", 100)).await.ok);
    assert_eq!(sim.stats.total_executions(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn garbled_answer_is_the_first_half_of_the_real_line() {
    let sim = start(opts(0.0)).await;
    sim.control.garble_next_answer();
    let line = encode_line(&pay("garble", 450));
    let (stream, got) = raw(&sim.addr, &line, false).await;
    assert!(got.ends_with(b"\n"), "{got:?}");
    assert!(decode_response(&got).is_err(), "{got:?}");
    assert_eq!(sim.stats.executions("garble"), 1);
    // The connection lives on, and the books hold the real answer.
    let mut client = IpClient::from_stream(stream);
    let real = call(&mut client, status("garble")).await;
    assert!(real.ok && real.r#ref.as_deref() == Some("garble"), "{real:?}");
    let full = encode_response(&real);
    let json = &full[..full.len() - 1];
    assert_eq!(&got[..got.len() - 1], &json[..json.len() / 2]);
    books_hold(&sim, &mut client, &real, ("garble", 450), "after").await;
    sim.stop().await;
}

#[tokio::test]
async fn foreign_answer_names_another_ref() {
    let sim = start(opts(0.0)).await;
    sim.control.foreign_next_answer();
    let mut client = sim.client().await;
    let foreign = call(&mut client, pay("mine", 990)).await;
    assert_eq!(foreign.r#ref.as_deref(), Some("other-mine"), "{foreign:?}");
    assert_eq!(sim.stats.executions("mine"), 1);
    let real = call(&mut client, status("mine")).await;
    assert!(real.ok && real.r#ref.as_deref() == Some("mine"), "{real:?}");
    assert_eq!(real.transaction_id, foreign.transaction_id);
    assert_eq!(call(&mut client, pay("mine", 990)).await, real);
    assert!(call(&mut client, status("other-mine")).await.is_not_found());
    assert_eq!(sim.stats.executions("mine"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn lose_and_garble_rates_spoil_new_operations_only() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    for bad in [
        SimOptions { lose_rate: 1.5, ..opts(0.0) },
        SimOptions { garble_rate: -0.1, ..opts(0.0) },
        SimOptions { lose_rate: f64::NAN, ..opts(0.0) },
    ] {
        assert!(IpSim::bind(loopback, bad).await.is_err());
    }
    let sim = start(SimOptions { lose_rate: 1.0, ..opts(0.0) }).await;
    for i in 0..3 {
        let r = format!("rl{i}");
        let err = sim.client().await.call(&pay(&r, 100), T).await.unwrap_err();
        assert!(matches!(err, ProtoError::Closed), "{err}");
        // Repeats and status are answered from the books, never spoiled.
        let mut client = sim.client().await;
        let real = call(&mut client, pay(&r, 100)).await;
        assert!(real.ok, "{real:?}");
        assert_eq!(call(&mut client, status(&r)).await, real);
        assert_eq!(sim.stats.executions(&r), 1);
    }
    sim.control.set_lose_rate(0.0);
    sim.control.set_garble_rate(1.0);
    let (_, got) = raw(&sim.addr, &encode_line(&pay("rg", 100)), false).await;
    assert!(decode_response(&got).is_err(), "{got:?}");
    assert!(call(&mut sim.client().await, status("rg")).await.ok);
    sim.control.set_garble_rate(0.0);
    assert!(call(&mut sim.client().await, pay("clean", 100)).await.ok);
    assert_eq!(sim.stats.total_executions(), 5);
    sim.stop().await;
}

#[tokio::test]
async fn fault_rates_leave_the_seeded_outcomes_alone() {
    async fn outcomes(garble_rate: f64) -> Vec<Response> {
        let sim = start(SimOptions { seed: Some(11), garble_rate, ..opts(0.5) }).await;
        let mut client = sim.client().await;
        let mut out = Vec::new();
        for i in 0..12 {
            let r = format!("s{i}");
            let (_, _line) = raw(&sim.addr, &encode_line(&pay(&r, 100)), false).await;
            out.push(call(&mut client, status(&r)).await);
        }
        sim.stop().await;
        out
    }
    assert_eq!(outcomes(0.0).await, outcomes(0.5).await);
}

#[tokio::test]
async fn the_event_stream_tells_connections_and_executions_as_they_happen() {
    let sim = start_paying_for(50).await;
    let mut events = sim.stats.events();
    let waiting = {
        let stats = sim.stats.clone();
        tokio::spawn(async move { stats.executed("ev-1", T).await })
    };
    let mut client = sim.client().await;
    assert_eq!(events.recv().await.unwrap(), SimEvent::Connected);
    assert!(call(&mut client, pay("ev-1", 500)).await.ok);
    let executed = SimEvent::Executed { r#ref: "ev-1".into(), approved: true };
    assert_eq!(events.recv().await.unwrap(), executed);
    assert!(waiting.await.unwrap(), "executed() woke on the event");
    // Asked again by the same ref: answered from the books, not executed again.
    assert!(call(&mut client, pay("ev-1", 500)).await.ok);
    assert!(sim.stats.executed("ev-1", T).await, "already executed: at once");
    assert!(!sim.stats.executed("never", Duration::from_millis(50)).await);
    assert!(events.try_recv().is_err(), "no second execution event");
    sim.stop().await;
}
