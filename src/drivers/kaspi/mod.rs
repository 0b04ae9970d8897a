//! Driver for Kaspi Smart POS (`kaspi.md`, LAN API v2 over HTTP/HTTPS, port 8080).
//!
//! Layers: `api` (wire types, pure) → `process` (one payment's state machine, pure) →
//! `client` (HTTP, tokens) → this driver (journal, outcomes). The terminal keeps a
//! process by `processId` for 24 h, so the `processId` is journalled durably before
//! polling starts and a restart polls the same process instead of paying again.

pub mod api;
pub mod client;
pub mod journal;
pub mod process;
pub mod register;
pub mod tls;

use crate::drivers::http::Transport;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::time::Instant;

use self::api::{
    cheque_amount, code, tenge_from_minor, ApiError, DeviceInfo, ProcessStatus, Started, StatusData,
};
use self::client::{CallError, KaspiClient};
use self::process::{Answer, Ask, End, Process, Step, Timing};
use super::{Caps, Driver, DriverEnv, Fact, Health, NotSentWhy, OpContext, Refusal};
use crate::api::{Command, ErrorCode, Op, Rejection};
use crate::config::KaspiTerminal;
use crate::store::CommandRecord;

/// Query parameters of one GET.
type Query = Vec<(&'static str, String)>;

/// What this terminal kind runs; anything else is refused at admission.
const CAPS: Caps = Caps { kind: "kaspi", ops: &[Op::Payment, Op::Refund, Op::DeviceInfo] };

pub struct KaspiDriver {
    id: String,
    client: Result<KaspiClient, String>,
    timing: Timing,
    /// Last `/v2/actualize` per processId, for `status` queries (kaspi.md: ≥ 10 s apart).
    actualized: Mutex<HashMap<String, Instant>>,
}

impl KaspiDriver {
    pub fn new(id: &str, cfg: &KaspiTerminal, env: &DriverEnv) -> KaspiDriver {
        if cfg.actualize_interval < Duration::from_secs(10) {
            tracing::warn!(terminal = id, interval = ?cfg.actualize_interval, "actualize_interval is below the 10 s the Kaspi documentation allows (tests and simulators only)");
        }
        if cfg.protected && cfg.url.starts_with("http://") {
            tracing::warn!(terminal = id, "protected = true over http://: the access token travels in clear, and a terminal with protection on refuses plain HTTP; use https://");
        }
        let client = KaspiClient::new(id, cfg, env.secrets.clone()).map_err(|e| {
            let msg = format!("terminal {id}: {e}");
            tracing::error!("{msg}");
            msg
        });
        KaspiDriver {
            id: id.to_string(),
            client,
            timing: Timing {
                poll: cfg.poll_interval,
                actualize_every: cfg.actualize_interval,
                actualize_window: cfg.actualize_window,
                deadline: cfg.payment_timeout,
            },
            actualized: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self) -> Result<&KaspiClient, Fact> {
        self.client.as_ref().map_err(|e| Fact::not_sent(NotSentWhy::Unreachable, e.clone()))
    }

    /// The route and query of a money op, from a validated command.
    fn request_for(cmd: &Command) -> Result<(&'static str, Query), String> {
        let tenge = tenge_from_minor(cmd.amount().unwrap_or(0)).map_err(|e| e.to_string())?;
        let own = cmd.extra.get("own_receipt").and_then(Value::as_bool).unwrap_or(false);
        match cmd.op() {
            Op::Payment => {
                Ok(("payment", vec![("amount", tenge.to_string()), ("owncheque", own.to_string())]))
            }
            Op::Refund => {
                let refund = cmd.refund().ok_or("a refund without its fields")?;
                let method = refund
                    .method
                    .clone()
                    .ok_or("refund without a method (the original payment has none)")?;
                let txn = refund
                    .transaction_id
                    .clone()
                    .ok_or("refund without a transaction id (the original payment has none)")?;
                Ok((
                    "refund",
                    vec![
                        ("method", method),
                        ("amount", tenge.to_string()),
                        ("transactionId", txn),
                        ("owncheque", own.to_string()),
                    ],
                ))
            }
            _ => Err(format!("{} is not a money op", cmd.op().as_str())),
        }
    }

    /// A failed start call: what it says about whether a process exists.
    fn start_failure(e: CallError) -> Fact {
        match e {
            // The terminal answered 401/403 (after a renewal attempt): nothing started.
            CallError::Auth(m) => Fact::refused(Refusal::Unauthorized, m, None),
            CallError::Transport(Transport::NotSent(message)) => {
                Fact::not_sent(NotSentWhy::Unreachable, message)
            }
            CallError::Transport(Transport::MaybeSent(message)) => Fact::CannotAsk {
                why: format!("the terminal's answer to the start request was lost, so its processId is unknown and the operation may be running on the terminal: {message}"),
            },
            CallError::Api(e) => match e.device_code() {
                // kaspi.md error table: these refuse to start a transaction.
                Some(c @ (code::PAYMENTS_BLOCKED | code::LAST_OPERATION_RUNNING | code::START_FAILED)) => {
                    Fact::refused(Refusal::DeviceError, e.to_string(), None)
                        .with_device_code(c.into())
                }
                Some(code::GENERIC) if matches!(&e, ApiError::Device { http: 400 | 404, .. }) => {
                    Fact::refused(Refusal::BadRequest, e.to_string(), None)
                        .with_device_code(code::GENERIC.into())
                }
                // 500 "Internal Error", an odd body: the terminal may have started it, and
                // without a processId it cannot be asked.
                _ => Fact::CannotAsk {
                    why: format!("the terminal answered the start request unexpectedly, so the operation may be running on it: {e}"),
                },
            },
        }
    }

    /// A final `/status` answer → the fact it states, checked against the request: a
    /// receipt for another amount is not this operation's (kaspi.md: the authoritative
    /// amount is the one requested).
    fn final_fact(cmd: &Command, d: StatusData) -> Fact {
        match d.status {
            ProcessStatus::Success => {
                let shown = d
                    .cheque_info
                    .as_ref()
                    .and_then(|c| c.get("amount"))
                    .and_then(Value::as_str)
                    .map(|a| (a.to_string(), cheque_amount(a)));
                let want = cmd.amount().and_then(|a| tenge_from_minor(a).ok());
                if let (Some((text, got)), Some(want)) = (shown, want) {
                    if got.map(i64::abs) != Some(want) {
                        tracing::warn!(receipt_amount = %text, requested_tenge = want, answer = %crate::api::pan::mask_str(&d.raw.to_string()), "receipt amount differs from the request");
                        return Fact::unreadable(
                            format!(
                                "the terminal's receipt shows {text:?}, not the requested {want} ₸"
                            ),
                            d.raw,
                        );
                    }
                }
                Fact::approved(Some(d.payment_info()), Some(d.raw))
            }
            ProcessStatus::Fail => {
                let sub = d.sub_status.clone().unwrap_or_default();
                let refusal = if sub == "ProcessCancelled" {
                    Refusal::CancelledByCustomer
                } else {
                    Refusal::Declined
                };
                let message = d
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("the terminal reports fail ({sub})"));
                Fact::refused(refusal, message, Some(d.raw)).with_device_code(Value::String(sub))
            }
            ProcessStatus::Wait | ProcessStatus::Unknown => Fact::Pending {
                why: format!("the terminal reports {:?}", d.status),
                device: Some(d.raw),
                device_code: None,
            },
        }
    }

    fn end_fact(cmd: &Command, process_id: &str, end: End) -> Fact {
        match end {
            End::Final(d) => Self::final_fact(cmd, d),
            End::Unknown { reason, last, device_code } => Fact::Pending {
                why: reason,
                device: Some(json!({
                    "processId": process_id,
                    "last": last.map(|d| d.raw),
                })),
                device_code: device_code.map(Value::from),
            },
        }
    }

    async fn look(&self, client: &KaspiClient, ask: Ask, process_id: &str) -> Answer {
        let route = match ask {
            Ask::Status => "status",
            Ask::Actualize => "actualize",
        };
        let answer = client.call(route, &[("processId", process_id.to_string())]).await;
        if ask == Ask::Actualize {
            // After the answer: the terminal saw the call before this instant.
            if let Ok(mut m) = self.actualized.lock() {
                m.insert(process_id.to_string(), Instant::now());
            }
        }
        match answer {
            Ok(data) => match StatusData::parse(&data) {
                Ok(d) => Answer::Data(d),
                Err(e) => Answer::Error(e),
            },
            Err(CallError::Api(e)) => Answer::Error(e),
            Err(CallError::Transport(t)) => Answer::Transport(t.message().to_string()),
            // Renewal already failed: the machine ends `unknown`, keeping the processId.
            Err(CallError::Auth(m)) => Answer::Error(ApiError::Unauthorized(m)),
        }
    }

    /// Poll a started process to its end.
    async fn poll(&self, ctx: &OpContext, client: &KaspiClient, process_id: &str) -> End {
        let (mut machine, mut step) = Process::new(self.timing, Instant::now());
        loop {
            match step {
                Step::Done(end) => return end,
                Step::Ask { ask, at } => {
                    tokio::time::sleep_until(at).await;
                    let answer = self.look(client, ask, process_id).await;
                    if let Answer::Data(d) = &answer {
                        if let Some(sub) = machine.sub_status_change(d) {
                            ctx.progress(
                                &sub,
                                Some(json!({ "process_id": process_id, "status": d.status })),
                            );
                        }
                    }
                    step = machine.on_answer(ask, Instant::now(), answer);
                }
            }
        }
    }

    async fn run_money(&self, ctx: &mut OpContext) -> Fact {
        let client = match self.client() {
            Ok(c) => c,
            Err(f) => return f,
        };
        let (route, params) = match Self::request_for(ctx.cmd()) {
            Ok(r) => r,
            Err(m) => return Fact::not_sent(NotSentWhy::BadRequest, m),
        };
        // Durable before the terminal can move money (mqtt-api.md: Durability promise 2).
        let journalled = journal::Sending {
            route: route.to_string(),
            params: params.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect(),
        };
        if let Err(e) = ctx.sending_step(&journalled).await {
            return Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}"));
        }
        ctx.progress("Sending", Some(json!({ "route": route })));
        let started = client
            .call(route, &params)
            .await
            .and_then(|d| Started::parse(&d).map_err(CallError::Api));
        let process_id = match started {
            Ok(s) => s.process_id,
            Err(e) => return Self::start_failure(e),
        };
        // Durable before polling: a restart polls this process, never starts another.
        if let Err(e) = ctx.journal_step(&journal::Process { process_id: process_id.clone() }).await
        {
            tracing::error!(error = %e, process_id, "journal write of the processId failed; polling anyway");
        }
        let end = self.poll(ctx, client, &process_id).await;
        Self::end_fact(ctx.cmd(), &process_id, end)
    }

    async fn device_info(&self) -> Fact {
        let client = match self.client() {
            Ok(c) => c,
            Err(f) => return f,
        };
        match client.call("deviceinfo", &[]).await {
            Ok(data) => Fact::approved(None, Some(data)),
            Err(CallError::Auth(m)) => Fact::refused(Refusal::Unauthorized, m, None),
            Err(CallError::Transport(Transport::NotSent(message))) => {
                Fact::not_sent(NotSentWhy::Unreachable, message)
            }
            Err(CallError::Transport(t)) => Fact::lost(t.message()),
            Err(CallError::Api(e)) => Fact::refused(Refusal::DeviceError, e.to_string(), None),
        }
    }
}

fn process_id_of(rec: &CommandRecord) -> Option<String> {
    rec.last::<journal::Process>().map(|p| p.process_id)
}

fn reject(code: ErrorCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(code, msg)
}

#[async_trait]
impl Driver for KaspiDriver {
    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    /// kaspi.md: whole tenge only, KZT only — refused before the terminal is touched.
    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        if !cmd.op().moves_money() {
            return Ok(());
        }
        if let Some(c) = cmd.currency() {
            if !c.eq_ignore_ascii_case("KZT") {
                return Err(reject(
                    ErrorCode::BadRequest,
                    format!("field currency: Kaspi terminals take KZT only, not {c:?}"),
                ));
            }
        } else if cmd.op() == Op::Payment {
            return Err(reject(ErrorCode::BadRequest, "field currency: KZT required"));
        }
        if let Err(e) = tenge_from_minor(cmd.amount().unwrap_or(0)) {
            return Err(reject(ErrorCode::InvalidAmount, format!("field amount: {e}")));
        }
        if let Some(refund) = cmd.refund().filter(|r| r.original.is_none()) {
            match refund.method.as_deref() {
                Some("qr" | "card") => {}
                other => {
                    return Err(reject(
                        ErrorCode::BadRequest,
                        format!(
                            "field method: Kaspi refunds need \"qr\" or \"card\", got {other:?}"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        match ctx.cmd().op() {
            Op::DeviceInfo => self.device_info().await,
            Op::Payment | Op::Refund => self.run_money(ctx).await,
            op => Fact::unsupported(self.kind(), op),
        }
    }

    /// The terminal keeps a process by `processId` for 24 h (kaspi.md): follow the
    /// journalled one to its end. Without a `processId` there is nothing to ask by.
    async fn ask(&self, ctx: &mut OpContext, _left: Duration) -> Fact {
        let Some(pid) = process_id_of(&ctx.record) else {
            return Fact::CannotAsk {
                why: "the request was sent to the Kaspi terminal but its processId was never recorded; whether it ran cannot be known — check the terminal's history".into(),
            };
        };
        let Ok(client) = self.client.as_ref() else {
            return Fact::CannotAsk {
                why: format!(
                    "process {pid} may be running, and the terminal's client cannot be built"
                ),
            };
        };
        tracing::info!(terminal = %self.id, process_id = %pid, "polling the journalled Kaspi process (no new payment)");
        let end = self.poll(ctx, client, &pid).await;
        Self::end_fact(ctx.cmd(), &pid, end)
    }

    /// `status` of an `unknown` command: ask the journalled process again, actualizing it
    /// when the terminal still says `unknown` (at most once per `actualize_interval`).
    async fn query(&self, record: &CommandRecord) -> Option<Fact> {
        let pid = process_id_of(record)?;
        let client = self.client.as_ref().ok()?;
        let d = match self.look(client, Ask::Status, &pid).await {
            Answer::Data(d) => d,
            _ => return None,
        };
        if d.status != ProcessStatus::Unknown {
            return Some(Self::final_fact(&record.cmd, d));
        }
        let recent = self
            .actualized
            .lock()
            .ok()
            .and_then(|m| m.get(&pid).copied())
            .is_some_and(|t| t.elapsed() < self.timing.actualize_every);
        if recent {
            return None;
        }
        match self.look(client, Ask::Actualize, &pid).await {
            Answer::Data(d) => Some(Self::final_fact(&record.cmd, d)),
            _ => None,
        }
    }

    async fn health(&self) -> Health {
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                return Health {
                    state: crate::api::TerminalState::Error,
                    identity: Value::Null,
                    error: Some(e.clone()),
                }
            }
        };
        match client.call("deviceinfo", &[]).await {
            Ok(data) => match DeviceInfo::parse(&data) {
                Ok(info) => Health {
                    state: crate::api::TerminalState::Connected,
                    identity: info.identity(),
                    error: None,
                },
                Err(e) => Health {
                    state: crate::api::TerminalState::Error,
                    identity: Value::Null,
                    error: Some(e.to_string()),
                },
            },
            Err(CallError::Transport(t)) => Health {
                state: crate::api::TerminalState::Disconnected,
                identity: Value::Null,
                error: Some(format!("{} ({})", t.message(), client.base())),
            },
            Err(e) => Health {
                state: crate::api::TerminalState::Error,
                identity: Value::Null,
                error: Some(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests;
