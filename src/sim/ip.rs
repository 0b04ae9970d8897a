//! Simulator of a generic IP payment terminal (`posbridge sim ip`), speaking protocol v1
//! exactly as `ip-terminal.md` describes: ping, pay, refund, status; every `ref` is one
//! operation that runs at most once, whatever the client repeats.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drivers::ip::proto::{
    decode_request, encode_response, read_line_bounded, ErrorCode, LineRead, Request, Response,
    MAX_LINE, PROTOCOL_VERSION,
};

/// Connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

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
            seed: None,
            delay_ms: 0,
            terminal_id: "IPT-0001".into(),
        }
    }
}

pub struct IpSim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Read-only counters, for tests and logs. Cheap to clone.
#[derive(Clone)]
pub struct SimStats {
    shared: Arc<Shared>,
}

/// Fault knobs, settable while the simulator runs. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

struct Shared {
    terminal_id: String,
    delay: Duration,
    drop_response_once: AtomicBool,
    requests: AtomicU64,
    total_executions: AtomicU64,
    state: Mutex<State>,
}

struct State {
    rng: StdRng,
    fail_rate: f64,
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

/// The answer to one request line; `None` closes the connection without one (the
/// lost-response fault).
type Reply = Option<Response>;

/// How a pay/refund is answered, decided under the state lock.
enum Plan {
    /// From the books (a repeat, `in_progress`, a rejection): nothing executes.
    Answer(Response),
    /// A new operation: its answer is decided now and given after the customer time,
    /// or never if `hang`.
    Execute { response: Response, hang: bool },
}

impl IpSim {
    pub async fn bind(addr: SocketAddr, opts: SimOptions) -> std::io::Result<IpSim> {
        if !(0.0..=1.0).contains(&opts.fail_rate) {
            let msg = format!("fail_rate must be within [0, 1], got {}", opts.fail_rate);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let rng = match opts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let state = State {
            rng,
            fail_rate: opts.fail_rate,
            counter: 0,
            ops: HashMap::new(),
            payments: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            terminal_id: opts.terminal_id,
            delay: Duration::from_millis(opts.delay_ms),
            drop_response_once: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            total_executions: AtomicU64::new(0),
            state: Mutex::new(state),
        });
        Ok(IpSim {
            listener,
            addr,
            shared,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn control(&self) -> SimControl {
        SimControl {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Serves until `shutdown` is cancelled, then waits for the connections to finish
    /// the request they are on (an operation is never cut off mid-execution).
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tracker = TaskTracker::new();
        let terminal = &self.shared.terminal_id;
        tracing::info!(addr = %self.addr, terminal, "ip terminal simulator listening");
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = Arc::clone(&limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let shared = Arc::clone(&self.shared);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tracing::debug!(%peer, "connection opened");
                serve(&shared, stream, &shutdown).await;
                tracing::debug!(%peer, "connection closed");
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

impl SimStats {
    /// How many times the terminal ran the operation for `ref` to an outcome (a charge,
    /// a refund, or a decline the customer saw). Never more than 1 by design.
    pub fn executions(&self, r#ref: &str) -> u32 {
        self.shared.lock().ops.get(r#ref).map_or(0, |op| op.runs)
    }

    pub fn total_executions(&self) -> u64 {
        self.shared.total_executions.load(Ordering::Relaxed)
    }

    /// Request lines received, valid or not.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl SimControl {
    /// The next new pay executes, then its connection closes without an answer.
    pub fn set_drop_response_once(&self, on: bool) {
        self.shared.drop_response_once.store(on, Ordering::SeqCst);
    }

    /// Clamped to [0, 1]; NaN never fails (no draw is below NaN).
    pub fn set_fail_rate(&self, rate: f64) {
        self.shared.lock().fail_rate = rate.clamp(0.0, 1.0);
    }
}

async fn serve(shared: &Shared, stream: TcpStream, shutdown: &CancellationToken) {
    // Answers are single small writes: without nodelay each waits for a delayed ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
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
                (Some(error(None, ErrorCode::BadRequest, msg)), false)
            }
            Ok(LineRead::Line) => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                (shared.handle_line(&buf).await, true)
            }
        };
        let Some(resp) = reply else { return };
        if let Err(e) = stream.write_all(&encode_response(&resp)).await {
            tracing::debug!(error = %e, "writing the answer failed");
            return;
        }
        if !keep_open {
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
                return Some(error(None, ErrorCode::BadRequest, e.to_string()));
            }
        };
        if let Err(msg) = validate(&req) {
            let r#ref = req.reference().filter(|r| !r.is_empty()).map(str::to_owned);
            tracing::info!(op = req.op_name(), outcome = "bad_request", msg, "invalid");
            return Some(error(r#ref, ErrorCode::BadRequest, msg));
        }
        match &req {
            Request::Ping => {
                tracing::info!(op = "ping", outcome = "ok", "ping");
                Some(Response {
                    ok: true,
                    terminal_id: Some(self.terminal_id.clone()),
                    version: Some(PROTOCOL_VERSION.into()),
                    ..Response::default()
                })
            }
            Request::Status { r#ref } => {
                let resp = self.status(r#ref);
                tracing::info!(op = "status", "ref" = %r#ref, outcome = outcome(&resp), "status");
                Some(resp)
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
        let (response, hang) = match self.begin(req, &r#ref) {
            Plan::Execute { response, hang } => (response, hang),
            Plan::Answer(resp) => {
                let outcome = outcome(&resp);
                tracing::info!(op, "ref" = %r#ref, amount, outcome, "answered from the books");
                return Some(resp);
            }
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.finish(&r#ref, &response, paid.filter(|_| response.ok));
        let txn = response.transaction_id.as_deref().unwrap_or("");
        let outcome = outcome(&response);
        tracing::info!(op, "ref" = %r#ref, amount, outcome, txn, dropped = hang, "executed");
        (!hang).then_some(response)
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
        let plan = match &req {
            Request::Refund {
                transaction_id,
                amount,
                ..
            } => state.plan_refund(r#ref, transaction_id, *amount),
            _ => Plan::Execute {
                response: state.draw_payment(r#ref),
                hang: self.drop_response_once.swap(false, Ordering::SeqCst),
            },
        };
        // A rejected refund is booked too: a repeat gets the same answer.
        let done = match &plan {
            Plan::Answer(resp) => Some(resp.clone()),
            Plan::Execute { .. } => None,
        };
        state
            .ops
            .insert(r#ref.to_owned(), Op { req, done, runs: 0 });
        plan
    }

    /// Books the executed operation; `paid` is the amount of a successful payment.
    fn finish(&self, r#ref: &str, response: &Response, paid: Option<i64>) {
        let mut state = self.lock();
        if let (Some(refundable), Some(txn), Some(mask)) =
            (paid, &response.transaction_id, &response.card_mask)
        {
            let card_mask = mask.clone();
            let payment = Payment {
                refundable,
                card_mask,
            };
            state.payments.insert(txn.clone(), payment);
        }
        if let Some(op) = state.ops.get_mut(r#ref) {
            op.done = Some(response.clone());
            op.runs += 1;
        }
        self.total_executions.fetch_add(1, Ordering::Relaxed);
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
        Plan::Execute {
            response,
            hang: false,
        }
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

#[cfg(test)]
mod tests;
