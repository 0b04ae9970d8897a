//! Driver for Kaspi Smart POS (`kaspi.md`, LAN API v2 over HTTP/HTTPS, port 8080).
//!
//! Layers: `api` (wire types, pure) → `process` (one payment's state machine, pure) →
//! `client` (HTTP, tokens) → this driver (journal, outcomes). The terminal keeps a
//! process by `processId` for 24 h, so the `processId` is journalled durably before
//! polling starts and a restart polls the same process instead of paying again.

pub mod api;
pub mod client;
pub mod process;
pub mod register;
pub mod tls;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::time::Instant;

use self::api::{code, tenge_from_minor, ApiError, DeviceInfo, ProcessStatus, Started, StatusData};
use self::client::{CallError, KaspiClient};
use self::process::{Answer, Ask, End, Process, Step, Timing};
use super::{Driver, DriverEnv, Health, OpContext, Outcome};
use crate::api::{Command, ErrorCode, FinalState, Op, Rejection};
use crate::config::KaspiTerminal;
use crate::store::CommandRecord;

/// Journal steps (durable before/after the device step they name).
/// Before `/v2/payment` or `/v2/refund` is sent.
pub const STEP_SENDING: &str = "kaspi_sending";
/// The terminal's `processId`, before polling starts.
pub const STEP_PROCESS: &str = "kaspi_process";
/// The terminal's final answer.
pub const STEP_FINAL: &str = "kaspi_final";

/// Query parameters of one GET.
type Query = Vec<(&'static str, String)>;

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

    fn client(&self) -> Result<&KaspiClient, Box<Outcome>> {
        self.client.as_ref().map_err(|e| {
            Box::new(Outcome::failed(
                ErrorCode::DeviceUnavailable,
                e.clone(),
                None,
            ))
        })
    }

    /// The route and query of a money op, from a validated command.
    fn request_for(cmd: &Command) -> Result<(&'static str, Query), String> {
        let tenge = tenge_from_minor(cmd.amount.unwrap_or(0)).map_err(|e| e.to_string())?;
        let own = cmd
            .extra
            .get("own_receipt")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match cmd.op {
            Op::Payment => Ok((
                "payment",
                vec![
                    ("amount", tenge.to_string()),
                    ("owncheque", own.to_string()),
                ],
            )),
            Op::Refund => {
                let method = cmd
                    .method
                    .clone()
                    .ok_or("refund without a method (the original payment has none)")?;
                let txn = cmd
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
            _ => Err(format!("{} is not a money op", cmd.op.as_str())),
        }
    }

    /// Map a failed call that happened before any process existed.
    fn start_failure(e: CallError) -> Outcome {
        match e {
            CallError::Auth(m) => Outcome::failed(ErrorCode::Unauthorized, m, None),
            CallError::Transport { sent: false, message } => {
                Outcome::failed(ErrorCode::DeviceUnavailable, message, None)
            }
            CallError::Transport { sent: true, message } => Outcome::unknown(
                ErrorCode::DeviceUnavailable,
                format!("the terminal's answer to the start request was lost, so its processId is unknown and the operation may be running on the terminal: {message}"),
            ),
            CallError::Api(e) => match e.device_code() {
                // kaspi.md error table: these refuse to start a transaction.
                Some(c @ (code::PAYMENTS_BLOCKED | code::LAST_OPERATION_RUNNING | code::START_FAILED)) => {
                    Outcome::failed(ErrorCode::DeviceError, e.to_string(), None)
                        .with_device_code(c.into())
                }
                Some(code::GENERIC) if matches!(&e, ApiError::Device { http: 400 | 404, .. }) => {
                    Outcome::failed(ErrorCode::BadRequest, e.to_string(), None)
                        .with_device_code(code::GENERIC.into())
                }
                // 500 "Internal Error", an odd body: the terminal may have started it.
                _ => Outcome::unknown(
                    ErrorCode::DeviceError,
                    format!("the terminal answered the start request unexpectedly, so the operation may be running on it: {e}"),
                ),
            },
        }
    }

    fn final_outcome(process_id: &str, end: End) -> Outcome {
        match end {
            End::Final(d) => match d.status {
                ProcessStatus::Success => Outcome::succeeded(Some(d.payment_info()), Some(d.raw)),
                _ => {
                    let sub = d.sub_status.clone().unwrap_or_default();
                    let code = if sub == "ProcessCancelled" {
                        ErrorCode::CancelledByCustomer
                    } else {
                        ErrorCode::Declined
                    };
                    let message = d
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("the terminal reports fail ({sub})"));
                    Outcome::failed(code, message, Some(d.raw)).with_device_code(Value::String(sub))
                }
            },
            End::Unknown {
                reason,
                last,
                device_code,
            } => {
                let code = if device_code.is_some() {
                    ErrorCode::DeviceError
                } else {
                    ErrorCode::Timeout
                };
                let mut o = Outcome::unknown(code, reason);
                o.device = Some(json!({
                    "processId": process_id,
                    "last": last.map(|d| d.raw),
                }));
                match device_code {
                    Some(c) => o.with_device_code(c.into()),
                    None => o,
                }
            }
        }
    }

    async fn ask(&self, client: &KaspiClient, ask: Ask, process_id: &str) -> Answer {
        let route = match ask {
            Ask::Status => "status",
            Ask::Actualize => "actualize",
        };
        let answer = client
            .call(route, &[("processId", process_id.to_string())])
            .await;
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
            Err(CallError::Transport { message, .. }) => Answer::Transport(message),
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
                    let answer = self.ask(client, ask, process_id).await;
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

    async fn run_money(&self, ctx: &mut OpContext) -> Outcome {
        let client = match self.client() {
            Ok(c) => c,
            Err(o) => return *o,
        };
        let (route, params) = match Self::request_for(ctx.cmd()) {
            Ok(r) => r,
            Err(m) => return Outcome::failed(ErrorCode::BadRequest, m, None),
        };
        // Durable before the terminal can move money (mqtt-api.md: Durability promise 2).
        let journalled = json!({ "route": route, "params": params.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>() });
        if let Err(e) = ctx.journal(STEP_SENDING, journalled).await {
            return Outcome::failed(
                ErrorCode::Internal,
                format!("journal write failed: {e}"),
                None,
            );
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
        if let Err(e) = ctx
            .journal(STEP_PROCESS, json!({ "processId": process_id }))
            .await
        {
            tracing::error!(error = %e, process_id, "journal write of the processId failed; polling anyway");
        }
        self.follow(ctx, client, &process_id).await
    }

    async fn follow(&self, ctx: &mut OpContext, client: &KaspiClient, process_id: &str) -> Outcome {
        let end = self.poll(ctx, client, process_id).await;
        if let End::Final(d) = &end {
            if let Err(e) = ctx.journal(STEP_FINAL, d.raw.clone()).await {
                // Known but not durable: the terminal keeps it 24 h, a resume learns it again.
                tracing::error!(error = %e, "journal write after the final status failed");
            }
        }
        Self::final_outcome(process_id, end)
    }

    async fn device_info(&self) -> Outcome {
        let client = match self.client() {
            Ok(c) => c,
            Err(o) => return *o,
        };
        match client.call("deviceinfo", &[]).await {
            Ok(data) => Outcome::succeeded(None, Some(data)),
            Err(CallError::Auth(m)) => Outcome::failed(ErrorCode::Unauthorized, m, None),
            Err(CallError::Transport { message, .. }) => {
                Outcome::failed(ErrorCode::DeviceUnavailable, message, None)
            }
            Err(CallError::Api(e)) => Outcome::failed(ErrorCode::DeviceError, e.to_string(), None),
        }
    }
}

fn process_id_of(rec: &CommandRecord) -> Option<String> {
    rec.last_step(STEP_PROCESS)
        .and_then(|j| j.data.get("processId"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn reject(code: ErrorCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(code, msg)
}

#[async_trait]
impl Driver for KaspiDriver {
    fn kind(&self) -> &'static str {
        "kaspi"
    }

    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::Payment | Op::Refund | Op::DeviceInfo)
    }

    /// kaspi.md: whole tenge only, KZT only — refused before the terminal is touched.
    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        if !cmd.op.moves_money() {
            return Ok(());
        }
        if let Some(c) = &cmd.currency {
            if !c.eq_ignore_ascii_case("KZT") {
                return Err(reject(
                    ErrorCode::BadRequest,
                    format!("field currency: Kaspi terminals take KZT only, not {c:?}"),
                ));
            }
        } else if cmd.op == Op::Payment {
            return Err(reject(
                ErrorCode::BadRequest,
                "field currency: KZT required",
            ));
        }
        if let Err(e) = tenge_from_minor(cmd.amount.unwrap_or(0)) {
            return Err(reject(
                ErrorCode::InvalidAmount,
                format!("field amount: {e}"),
            ));
        }
        if cmd.op == Op::Refund && cmd.original.is_none() {
            match cmd.method.as_deref() {
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

    async fn execute(&self, ctx: &mut OpContext) -> Outcome {
        match ctx.cmd().op {
            Op::DeviceInfo => self.device_info().await,
            Op::Payment | Op::Refund => self.run_money(ctx).await,
            op => Outcome::failed(
                ErrorCode::UnsupportedOp,
                format!("kaspi terminals cannot run {}", op.as_str()),
                None,
            ),
        }
    }

    async fn resume(&self, ctx: &mut OpContext) -> Outcome {
        if !ctx.cmd().op.moves_money() {
            return self.execute(ctx).await;
        }
        if let Some(j) = ctx.record.last_step(STEP_FINAL) {
            if let Ok(d) = StatusData::parse(&j.data) {
                let pid = d.process_id.clone().unwrap_or_default();
                return Self::final_outcome(&pid, End::Final(d));
            }
        }
        if let Some(pid) = process_id_of(&ctx.record) {
            let client = match self.client() {
                Ok(c) => c,
                Err(_) => {
                    return Outcome::unknown(
                        ErrorCode::DeviceUnavailable,
                        format!("agent restarted while process {pid} ran, and the terminal's client cannot be built"),
                    )
                }
            };
            tracing::info!(terminal = %self.id, process_id = %pid, "resuming: polling the journalled Kaspi process (no new payment)");
            return self.follow(ctx, client, &pid).await;
        }
        if ctx.record.last_step(STEP_SENDING).is_some() {
            // The request may have reached the terminal, but its processId was never
            // recorded: there is no way to ask about it.
            return Outcome::unknown(
                ErrorCode::DeviceUnavailable,
                "the agent stopped after sending the request to the Kaspi terminal and before recording its processId; whether it ran cannot be known — check the terminal's history",
            );
        }
        if chrono::Utc::now() > ctx.record.expires_at {
            return Outcome {
                state: FinalState::Expired,
                ..Outcome::failed(
                    ErrorCode::Expired,
                    "deadline passed before the terminal was reached",
                    None,
                )
            };
        }
        self.execute(ctx).await
    }

    /// `status` of an `unknown` command: ask the journalled process again, actualizing it
    /// when the terminal still says `unknown` (at most once per `actualize_interval`).
    async fn query(&self, record: &CommandRecord) -> Option<Outcome> {
        let pid = process_id_of(record)?;
        let client = self.client.as_ref().ok()?;
        let end = |d: StatusData| Some(Self::final_outcome(&pid, End::Final(d)));
        let d = match self.ask(client, Ask::Status, &pid).await {
            Answer::Data(d) => d,
            _ => return None,
        };
        match d.status {
            ProcessStatus::Success | ProcessStatus::Fail => return end(d),
            ProcessStatus::Wait => return None,
            ProcessStatus::Unknown => {}
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
        match self.ask(client, Ask::Actualize, &pid).await {
            Answer::Data(d) if matches!(d.status, ProcessStatus::Success | ProcessStatus::Fail) => {
                end(d)
            }
            _ => None,
        }
    }

    async fn health(&self) -> Health {
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                return Health {
                    state: "error",
                    identity: Value::Null,
                    error: Some(e.clone()),
                }
            }
        };
        match client.call("deviceinfo", &[]).await {
            Ok(data) => match DeviceInfo::parse(&data) {
                Ok(info) => Health {
                    state: "connected",
                    identity: info.identity(),
                    error: None,
                },
                Err(e) => Health {
                    state: "error",
                    identity: Value::Null,
                    error: Some(e.to_string()),
                },
            },
            Err(CallError::Transport { message, .. }) => Health {
                state: "disconnected",
                identity: Value::Null,
                error: Some(format!("{} ({})", message, client.base())),
            },
            Err(e) => Health {
                state: "error",
                identity: Value::Null,
                error: Some(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests;
