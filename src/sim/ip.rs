//! Simulator of a generic IP payment terminal (`posbridge sim ip`), speaking protocol v1
//! exactly as `ip-terminal.md` describes: ping, pay, refund, status; every `ref` is one
//! operation that runs at most once, whatever the client repeats.
//!
//! Answer faults, for rehearsing "the money moved, the answer did not arrive intact": a
//! new pay/refund always executes (it counts in [`SimStats::executions`]) and its real
//! answer is what the books keep, so `status` by `ref` and a repeated pay/refund with the
//! same `ref` answer truthfully; only the first answer on the wire is spoiled:
//! - lost: the connection closes without an answer ([`SimControl::lose_next_answer`],
//!   [`SimOptions::lose_rate`], `--lose-rate`; [`SimControl::set_drop_response_once`]
//!   is the older pay-only knob);
//! - garbled: the first half of the answer's JSON, then `\n`
//!   ([`SimControl::garble_next_answer`], [`SimOptions::garble_rate`], `--garble-rate`);
//! - foreign: a well-formed answer whose `ref` is `other-<ref>`
//!   ([`SimControl::foreign_next_answer`]).
//!
//! The rates are drawn from their own generator (seeded from `seed`), so the pay outcomes
//! of a seed are the same whatever the rates; one draw per new pay/refund decides: below
//! `lose_rate` lost, below `lose_rate + garble_rate` garbled, else answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::handles::{SimControl, SimEvent, SimStats};
use super::faults::{self, AnswerFault};
use super::listen;

use crate::drivers::ip::proto::{
    decode_request, encode_response, read_line_bounded, ErrorCode, LineRead, Request, Response,
    MAX_LINE, PROTOCOL_VERSION,
};

/// Mixed into the seed for the answer-fault generator (any constant would do).
const FAULT_SEED_MIX: u64 = 0x5eed_fa17_0000_0001;

/// The payment failures the simulator draws from (`ip-terminal.md`), with the text a
/// terminal would show.
const FAILURES: [(ErrorCode, &str); 5] = [
    (ErrorCode::Declined, "declined by issuer"),
    (ErrorCode::InsufficientFunds, "insufficient funds"),
    (ErrorCode::CardExpired, "card expired"),
    (ErrorCode::CommunicationError, "host unreachable"),
    (ErrorCode::Timeout, "no card presented"),
];

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Probability in [0, 1] that a payment fails with one of the simulated errors.
    pub fail_rate: f64,
    /// Probability in [0, 1] that a new pay/refund executes and then its connection
    /// closes without an answer.
    pub lose_rate: f64,
    /// Probability in [0, 1] that a new pay/refund executes and then is answered with
    /// its JSON cut short (the first half of the line, then `\n`).
    pub garble_rate: f64,
    /// Seed for a deterministic sequence of outcomes; OS entropy when `None`.
    pub seed: Option<u64>,
    /// Simulated customer time for each pay/refund.
    pub delay_ms: u64,
    pub terminal_id: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fail_rate: 0.1,
            lose_rate: 0.0,
            garble_rate: 0.0,
            seed: None,
            delay_ms: 0,
            terminal_id: "IPT-0001".into(),
        }
    }
}

impl SimOptions {
    /// A terminal that approves every payment after `delay_ms`; `seed` fixes its draws.
    pub fn approving(seed: Option<u64>, delay_ms: u64) -> Self {
        SimOptions { fail_rate: 0.0, seed, delay_ms, ..Default::default() }
    }
}

pub struct IpSim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    terminal_id: String,
    delay: Duration,
    drop_response_once: AtomicBool,
    requests: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Close each connection after its answer (a terminal that does not keep them).
    close_after_answer: AtomicBool,
    total_executions: AtomicU64,
    /// What happens, as it happens ([`SimStats::events`]).
    events: tokio::sync::broadcast::Sender<SimEvent>,
    state: Mutex<State>,
}

struct State {
    rng: StdRng,
    fail_rate: f64,
    /// Draws the answer faults, apart from `rng` so the pay outcomes of a seed stay put.
    fault_rng: StdRng,
    lose_rate: f64,
    garble_rate: f64,
    /// Set by a `SimControl` knob: spoils the answer of the next new pay/refund.
    next_fault: Option<AnswerFault>,
    /// Text in every approved payment's `message` (a terminal firmware with verbose
    /// answers: tests of the agent's size limits and card-number masking).
    message: Option<String>,
    /// Numbers transaction ids; makes them unique whatever the rng draws.
    counter: u64,
    /// Every pay/refund the terminal accepted, by client ref.
    ops: HashMap<String, Op>,
    /// Successful payments by transaction id.
    payments: HashMap<String, Payment>,
}

struct Op {
    /// The request that created the ref: a repeat must match it to be "the same operation".
    req: Request,
    /// `None` while the operation runs.
    done: Option<Response>,
    /// Times it was carried out: the proof of "never a second charge".
    runs: u32,
}

struct Payment {
    refundable: i64,
    card_mask: String,
}

/// What goes back for one request line.
#[derive(Debug)]
enum Reply {
    Answer(Response),
    /// The connection closes without an answer (the lost-answer fault).
    Lost,
    /// These bytes go out as they are (the garbled-answer fault).
    Raw(Vec<u8>),
}

/// How a pay/refund is answered, decided under the state lock.
enum Plan {
    /// From the books (a repeat, `in_progress`, a rejection): nothing executes.
    Answer(Response),
    /// A new operation: its answer is decided now and given after the customer time,
    /// spoiled by `fault` if any.
    Execute { response: Response, fault: Option<AnswerFault> },
}

impl IpSim {
    pub async fn bind(addr: SocketAddr, opts: SimOptions) -> std::io::Result<IpSim> {
        faults::check_rates(&[
            ("fail_rate", opts.fail_rate),
            ("lose_rate", opts.lose_rate),
            ("garble_rate", opts.garble_rate),
        ])
        .map_err(|msg| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))?;
        let (listener, addr) = listen::bind(addr).await?;
        let state = State {
            rng: faults::seeded(opts.seed, 0),
            fail_rate: opts.fail_rate,
            fault_rng: faults::seeded(opts.seed, FAULT_SEED_MIX),
            lose_rate: opts.lose_rate,
            garble_rate: opts.garble_rate,
            next_fault: None,
            message: None,
            counter: 0,
            ops: HashMap::new(),
            payments: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            terminal_id: opts.terminal_id,
            delay: Duration::from_millis(opts.delay_ms),
            drop_response_once: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            close_after_answer: AtomicBool::new(false),
            total_executions: AtomicU64::new(0),
            events: tokio::sync::broadcast::channel(1024).0,
            state: Mutex::new(state),
        });
        Ok(IpSim { listener, addr, shared })
    }

    /// Bound to a free port on 127.0.0.1.
    pub async fn loopback(opts: SimOptions) -> std::io::Result<IpSim> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> SimStats {
        SimStats { shared: Arc::clone(&self.shared) }
    }

    pub fn control(&self) -> SimControl {
        SimControl { shared: Arc::clone(&self.shared) }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Serves until `shutdown` is cancelled, then waits for the connections to finish
    /// the request they are on (an operation is never cut off mid-execution).
    pub async fn run(self, shutdown: CancellationToken) {
        let terminal = &self.shared.terminal_id;
        tracing::info!(addr = %self.addr, terminal, "ip terminal simulator listening");
        let stop = shutdown.clone();
        listen::accept_loop(self.listener, shutdown, None, |stream, peer| {
            let shared = Arc::clone(&self.shared);
            let shutdown = stop.clone();
            async move {
                tracing::debug!(%peer, "connection opened");
                serve(&shared, stream, &shutdown).await;
                tracing::debug!(%peer, "connection closed");
            }
        })
        .await;
    }
}

async fn serve(shared: &Shared, stream: TcpStream, shutdown: &CancellationToken) {
    // Answers are single small writes: without nodelay each waits for a delayed ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _ = shared.events.send(SimEvent::Connected);
    let mut stream = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = read_line_bounded(&mut stream, &mut buf, MAX_LINE) => r,
        };
        let (reply, keep_open) = match read {
            Ok(LineRead::Eof) => return,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed");
                return;
            }
            Ok(LineRead::TooLong) => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    op = "invalid",
                    outcome = "bad_request",
                    "line longer than {MAX_LINE} bytes; closing"
                );
                let msg = format!("line longer than {MAX_LINE} bytes");
                (Reply::Answer(error(None, ErrorCode::BadRequest, msg)), false)
            }
            Ok(LineRead::Line) => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                (shared.handle_line(&buf).await, true)
            }
        };
        let bytes = match reply {
            Reply::Answer(resp) => encode_response(&resp),
            Reply::Raw(bytes) => bytes,
            Reply::Lost => return,
        };
        if let Err(e) = stream.write_all(&bytes).await {
            tracing::debug!(error = %e, "writing the answer failed");
            return;
        }
        if !keep_open || shared.close_after_answer.load(Ordering::Relaxed) {
            return;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a panicked holder leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle_line(&self, line: &[u8]) -> Reply {
        let req = match decode_request(line) {
            Ok(req) => req,
            Err(e) => {
                tracing::info!(op = "invalid", outcome = "bad_request", error = %e, "unparsable");
                return Reply::Answer(error(None, ErrorCode::BadRequest, e.to_string()));
            }
        };
        if let Err(msg) = validate(&req) {
            let r#ref = req.reference().filter(|r| !r.is_empty()).map(str::to_owned);
            tracing::info!(op = req.op_name(), outcome = "bad_request", msg, "invalid");
            return Reply::Answer(error(r#ref, ErrorCode::BadRequest, msg));
        }
        match &req {
            Request::Ping => {
                tracing::info!(op = "ping", outcome = "ok", "ping");
                Reply::Answer(Response {
                    ok: true,
                    terminal_id: Some(self.terminal_id.clone()),
                    version: Some(PROTOCOL_VERSION.into()),
                    ..Response::default()
                })
            }
            Request::Status { r#ref } => {
                let resp = self.status(r#ref);
                tracing::info!(op = "status", "ref" = %r#ref, outcome = outcome(&resp), "status");
                Reply::Answer(resp)
            }
            Request::Pay { r#ref, amount, .. } | Request::Refund { r#ref, amount, .. } => {
                let (r#ref, amount) = (r#ref.clone(), *amount);
                self.operate(req, r#ref, amount).await
            }
        }
    }

    fn status(&self, r#ref: &str) -> Response {
        match self.lock().ops.get(r#ref) {
            None => error(None, ErrorCode::NotFound, "no operation with this ref"),
            Some(op) => op.done.clone().unwrap_or_else(|| in_progress(r#ref)),
        }
    }

    /// Runs a validated pay or refund.
    async fn operate(&self, req: Request, r#ref: String, amount: i64) -> Reply {
        let (op, paid) = match req {
            Request::Pay { .. } => ("pay", Some(amount)),
            _ => ("refund", None),
        };
        let (response, fault) = match self.begin(req, &r#ref) {
            Plan::Execute { response, fault } => (response, fault),
            Plan::Answer(resp) => {
                let outcome = outcome(&resp);
                tracing::info!(op, "ref" = %r#ref, amount, outcome, "answered from the books");
                return Reply::Answer(resp);
            }
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.finish(&r#ref, &response, paid.filter(|_| response.ok));
        let txn = response.transaction_id.as_deref().unwrap_or("");
        let outcome = outcome(&response);
        let spoiled = fault.map(|f| format!("{f:?}"));
        tracing::info!(op, "ref" = %r#ref, amount, outcome, txn, fault = spoiled, "executed");
        match fault {
            None => Reply::Answer(response),
            Some(AnswerFault::Lose) => Reply::Lost,
            Some(AnswerFault::Garble) => Reply::Raw(garbled(&response)),
            Some(AnswerFault::Foreign) => {
                Reply::Answer(Response { r#ref: Some(format!("other-{}", r#ref)), ..response })
            }
        }
    }

    /// Books a new pay/refund, or answers a repeat, all under one lock so two
    /// connections racing with one ref cannot both start it.
    fn begin(&self, req: Request, r#ref: &str) -> Plan {
        let mut state = self.lock();
        if let Some(op) = state.ops.get(r#ref) {
            return Plan::Answer(match &op.done {
                _ if op.req != req => {
                    let msg = "ref already used for a different operation";
                    error(Some(r#ref.to_owned()), ErrorCode::BadRequest, msg)
                }
                None => in_progress(r#ref),
                Some(resp) => resp.clone(),
            });
        }
        let mut plan = match &req {
            Request::Refund { transaction_id, amount, .. } => {
                state.plan_refund(r#ref, transaction_id, *amount)
            }
            _ => Plan::Execute {
                response: state.draw_payment(r#ref),
                fault: self
                    .drop_response_once
                    .swap(false, Ordering::SeqCst)
                    .then_some(AnswerFault::Lose),
            },
        };
        if let Plan::Execute { fault: f @ None, .. } = &mut plan {
            *f = state.take_fault();
        }
        // A rejected refund is booked too: a repeat gets the same answer.
        let done = match &plan {
            Plan::Answer(resp) => Some(resp.clone()),
            Plan::Execute { .. } => None,
        };
        state.ops.insert(r#ref.to_owned(), Op { req, done, runs: 0 });
        plan
    }

    /// Books the executed operation; `paid` is the amount of a successful payment.
    fn finish(&self, r#ref: &str, response: &Response, paid: Option<i64>) {
        let mut state = self.lock();
        if let (Some(refundable), Some(txn), Some(mask)) =
            (paid, &response.transaction_id, &response.card_mask)
        {
            let card_mask = mask.clone();
            let payment = Payment { refundable, card_mask };
            state.payments.insert(txn.clone(), payment);
        }
        if let Some(op) = state.ops.get_mut(r#ref) {
            op.done = Some(response.clone());
            op.runs += 1;
        }
        self.total_executions.fetch_add(1, Ordering::Relaxed);
        drop(state);
        let approved = response.ok;
        let _ = self.events.send(SimEvent::Executed { r#ref: r#ref.to_owned(), approved });
    }
}

impl State {
    /// A refund runs only against a payment this terminal made, up to what is left of it.
    fn plan_refund(&mut self, r#ref: &str, txn: &str, amount: i64) -> Plan {
        let reject = |code, msg: String| Plan::Answer(error(Some(r#ref.to_owned()), code, msg));
        let Some(payment) = self.payments.get_mut(txn) else {
            return reject(ErrorCode::NotFound, format!("unknown transaction id {txn}"));
        };
        if amount > payment.refundable {
            let msg = format!("only {} left to refund", payment.refundable);
            return reject(ErrorCode::InvalidRefund, msg);
        }
        // Reserved now so a concurrent refund cannot overdraw the payment.
        payment.refundable -= amount;
        let card_mask = payment.card_mask.clone();
        self.counter += 1;
        // Refunds draw nothing from the rng: the pay outcomes of a seed stay the same
        // whatever refunds run in between.
        let response = Response {
            ok: true,
            r#ref: Some(r#ref.to_owned()),
            transaction_id: Some(format!("R{:012}", self.counter)),
            approval_code: Some(format!("{:06}", self.counter % 1_000_000)),
            card_mask: Some(card_mask),
            ..Response::default()
        };
        Plan::Execute { response, fault: None }
    }

    /// The spoiling of the next executed answer: the knob if set, else one draw
    /// against the rates (no draw while both are 0).
    fn take_fault(&mut self) -> Option<AnswerFault> {
        if let Some(f) = self.next_fault.take() {
            return Some(f);
        }
        faults::draw_fault(&mut self.fault_rng, self.lose_rate, self.garble_rate)
    }

    /// The outcome of a new payment, drawn in the order payments arrive so a seed gives
    /// the same sequence every run.
    fn draw_payment(&mut self, r#ref: &str) -> Response {
        self.counter += 1;
        if self.rng.random::<f64>() < self.fail_rate {
            let (code, msg) = FAILURES[self.rng.random_range(0..FAILURES.len())];
            return error(Some(r#ref.to_owned()), code, msg);
        }
        let mut draw = |below: u32| self.rng.random_range(0..below);
        let (txn, approval, last4) = (draw(1_000_000), draw(1_000_000), draw(10_000));
        Response {
            ok: true,
            r#ref: Some(r#ref.to_owned()),
            transaction_id: Some(format!("T{:06}{txn:06}", self.counter)),
            approval_code: Some(format!("{approval:06}")),
            card_mask: Some(format!("4169********{last4:04}")),
            message: self.message.clone(),
            ..Response::default()
        }
    }
}

fn validate(req: &Request) -> Result<(), &'static str> {
    let iso_code = |c: &str| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase());
    match req {
        _ if req.reference() == Some("") => Err("ref must not be empty"),
        Request::Pay { amount, .. } | Request::Refund { amount, .. } if *amount <= 0 => {
            Err("amount must be positive (minor units)")
        }
        Request::Pay { currency, .. } if !iso_code(currency) => {
            Err("currency must be a 3-letter ISO 4217 code")
        }
        Request::Refund { transaction_id, .. } if transaction_id.is_empty() => {
            Err("transaction_id must not be empty")
        }
        _ => Ok(()),
    }
}

fn error(r#ref: Option<String>, code: ErrorCode, message: impl Into<String>) -> Response {
    Response {
        ok: false,
        r#ref,
        error: Some(code.as_str().into()),
        message: Some(message.into()),
        ..Response::default()
    }
}

/// The first half of the answer's JSON (cut on a character boundary), then `\n`.
fn garbled(resp: &Response) -> Vec<u8> {
    let line = encode_response(resp);
    let json = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
    let mut out = crate::sim::first_half(&json).as_bytes().to_vec();
    out.push(b'\n');
    out
}

fn in_progress(r#ref: &str) -> Response {
    Response {
        ok: false,
        r#ref: Some(r#ref.to_owned()),
        error: Some(ErrorCode::InProgress.as_str().into()),
        ..Response::default()
    }
}

fn outcome(resp: &Response) -> &str {
    if resp.ok {
        "ok"
    } else {
        resp.error.as_deref().unwrap_or("error")
    }
}

mod handles;
#[cfg(test)]
mod tests;
