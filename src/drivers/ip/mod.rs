//! Driver for the generic IP terminal (`ip-terminal.md`, protocol v1: one JSON line per
//! request over TCP).
//!
//! The command `id` is the terminal's `ref`: the terminal treats a repeated `ref` as the
//! same operation, so asking again after a lost answer or a crash can never charge twice.

pub mod proto;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use self::proto::{IpClient, ProtoError, Request, Response};
use super::{Driver, Health, OpContext, Outcome};
use crate::api::{ErrorCode, FinalState, Op, PaymentInfo};
use crate::store::CommandRecord;

/// Journal steps (durable before/after the device step they name).
const STEP_SENDING: &str = "ip_sending";
const STEP_ANSWERED: &str = "ip_answered";

#[derive(Debug, Clone)]
pub struct IpDriver {
    addr: String,
    connect_timeout: Duration,
    /// How long the terminal may take to answer a pay (customer time included).
    op_timeout: Duration,
    /// How long to keep asking `status` after a lost answer before saying `unknown`.
    recovery_window: Duration,
}

impl IpDriver {
    pub fn new(addr: impl Into<String>, connect_timeout: Duration, op_timeout: Duration) -> Self {
        IpDriver {
            addr: addr.into(),
            connect_timeout,
            op_timeout,
            recovery_window: Duration::from_secs(30),
        }
    }

    pub fn with_recovery_window(mut self, d: Duration) -> Self {
        self.recovery_window = d;
        self
    }

    async fn connect(&self) -> Result<IpClient, ProtoError> {
        IpClient::connect(&self.addr, self.connect_timeout).await
    }

    fn unreachable_message(&self, e: &ProtoError) -> String {
        format!(
            "{e} (terminal {}: is it on, are the IP and port right, does a firewall block it?)",
            self.addr
        )
    }

    fn request_for(cmd: &crate::api::Command) -> Option<Request> {
        let r#ref = cmd.id.clone();
        match cmd.op {
            Op::Payment => Some(Request::Pay {
                r#ref,
                amount: cmd.amount?,
                currency: cmd.currency.clone().unwrap_or_default(),
            }),
            Op::Refund => Some(Request::Refund {
                r#ref,
                transaction_id: cmd.transaction_id.clone()?,
                amount: cmd.amount?,
            }),
            _ => None,
        }
    }

    /// Ask `status` by ref until the terminal gives a final answer, says it never saw the
    /// ref (`Ok(None)`), or the recovery window closes (`Err`).
    async fn recover(&self, r#ref: &str) -> Result<Option<Response>, String> {
        let deadline = tokio::time::Instant::now() + self.recovery_window + self.op_timeout;
        let mut last_err = String::from("no answer");
        let mut delay = Duration::from_millis(100);
        while tokio::time::Instant::now() < deadline {
            match self.status(r#ref).await {
                Ok(resp) if resp.is_not_found() => return Ok(None),
                Ok(resp) if resp.is_in_progress() => {}
                Ok(resp) => return Ok(Some(resp)),
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err(last_err)
    }

    async fn status(&self, r#ref: &str) -> Result<Response, ProtoError> {
        let mut c = self.connect().await?;
        c.call(
            &Request::Status {
                r#ref: r#ref.to_string(),
            },
            self.connect_timeout,
        )
        .await
    }

    /// Map a final terminal answer to an outcome.
    fn outcome(resp: &Response) -> Outcome {
        let raw = serde_json::to_value(resp).unwrap_or(Value::Null);
        if resp.ok {
            let payment = PaymentInfo {
                method: Some("card".into()),
                transaction_id: resp.transaction_id.clone(),
                card_mask: resp.card_mask.clone(),
                auth_code: resp.approval_code.clone(),
                receipt: None,
            };
            return Outcome::succeeded(Some(payment), Some(raw));
        }
        let code = resp.error.clone().unwrap_or_default();
        let message = resp
            .message
            .clone()
            .unwrap_or_else(|| format!("terminal error {code}"));
        let mapped = match code.as_str() {
            "declined" | "insufficient_funds" | "card_expired" => ErrorCode::Declined,
            "timeout" => ErrorCode::Timeout,
            "cancelled" => ErrorCode::CancelledByCustomer,
            _ => ErrorCode::DeviceError,
        };
        Outcome::failed(mapped, message, Some(raw)).with_device_code(Value::String(code))
    }

    /// Send the op (journalled before and after) and learn its outcome.
    async fn run(&self, ctx: &mut OpContext, req: Request) -> Outcome {
        let r#ref = ctx.cmd().id.clone();
        // Durable before the device can move money (mqtt-api.md: Durability promise 2).
        if let Err(e) = ctx
            .journal(STEP_SENDING, json!({ "ref": r#ref, "addr": self.addr }))
            .await
        {
            return Outcome::failed(
                ErrorCode::Internal,
                format!("journal write failed: {e}"),
                None,
            );
        }
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                return Outcome::failed(
                    ErrorCode::DeviceUnavailable,
                    self.unreachable_message(&e),
                    None,
                )
            }
        };
        ctx.progress("WaitTerminal", None);
        let answer = match client.call(&req, self.op_timeout).await {
            Ok(resp) if resp.is_in_progress() => None,
            Ok(resp) => Some(resp),
            Err(e) if !e.maybe_delivered() => {
                return Outcome::failed(
                    ErrorCode::DeviceUnavailable,
                    self.unreachable_message(&e),
                    None,
                )
            }
            Err(e) => {
                tracing::warn!(r#ref, error = %e, "answer lost; asking the terminal by ref");
                None
            }
        };
        let answer = match answer {
            Some(a) => a,
            None => match self.recover(&r#ref).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return Outcome::failed(
                        ErrorCode::DeviceUnavailable,
                        "the terminal never received the request",
                        None,
                    )
                }
                Err(e) => {
                    return Outcome::unknown(
                        ErrorCode::Timeout,
                        format!("the terminal's answer was lost and status by ref gave none: {e}"),
                    )
                }
            },
        };
        self.finish(ctx, &answer).await
    }

    async fn finish(&self, ctx: &mut OpContext, answer: &Response) -> Outcome {
        let raw = serde_json::to_value(answer).unwrap_or(Value::Null);
        // Durable with the result (one commit): the terminal keeps its answer by ref, so a
        // crash before that commit resumes by asking it again.
        if let Err(e) = ctx.note(STEP_ANSWERED, raw) {
            // The answer is known but not durable; report it anyway — the terminal keeps it
            // by ref, so a resume would learn the same answer.
            tracing::error!(error = %e, "journal write after device answer failed");
        }
        Self::outcome(answer)
    }
}

#[async_trait]
impl Driver for IpDriver {
    fn kind(&self) -> &'static str {
        "ip"
    }

    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::Payment | Op::Refund | Op::DeviceInfo)
    }

    async fn execute(&self, ctx: &mut OpContext) -> Outcome {
        match ctx.cmd().op {
            Op::DeviceInfo => match self.connect().await {
                Ok(mut c) => match c.call(&Request::Ping, self.connect_timeout).await {
                    Ok(resp) => Outcome::succeeded(None, serde_json::to_value(&resp).ok()),
                    Err(e) => Outcome::failed(ErrorCode::DeviceUnavailable, e.to_string(), None),
                },
                Err(e) => Outcome::failed(
                    ErrorCode::DeviceUnavailable,
                    self.unreachable_message(&e),
                    None,
                ),
            },
            _ => match Self::request_for(ctx.cmd()) {
                Some(req) => self.run(ctx, req).await,
                None => Outcome::failed(
                    ErrorCode::UnsupportedOp,
                    format!("ip terminal cannot run {}", ctx.cmd().op.as_str()),
                    None,
                ),
            },
        }
    }

    async fn resume(&self, ctx: &mut OpContext) -> Outcome {
        if !ctx.cmd().op.moves_money() {
            return self.execute(ctx).await;
        }
        if let Some(answered) = ctx.record.last_step(STEP_ANSWERED) {
            if let Ok(resp) = serde_json::from_value::<Response>(answered.data.clone()) {
                return Self::outcome(&resp);
            }
        }
        if ctx.record.last_step(STEP_SENDING).is_none() {
            // Died before the device could have seen it: run it now if still in time.
            if chrono::Utc::now() > ctx.record.expires_at {
                return expired();
            }
            return self.execute(ctx).await;
        }
        let r#ref = ctx.cmd().id.clone();
        match self.recover(&r#ref).await {
            Ok(Some(answer)) => self.finish(ctx, &answer).await,
            Ok(None) if chrono::Utc::now() <= ctx.record.expires_at => {
                // The terminal never saw it; the same ref makes a retry safe.
                self.execute(ctx).await
            }
            Ok(None) => expired(),
            Err(e) => Outcome::unknown(
                ErrorCode::DeviceUnavailable,
                format!(
                    "agent restarted during the operation and the terminal could not be asked: {e}"
                ),
            ),
        }
    }

    async fn query(&self, record: &CommandRecord) -> Option<Outcome> {
        match self.status(&record.cmd.id).await {
            Ok(resp) if resp.is_in_progress() || resp.is_not_found() => None,
            Ok(resp) => Some(Self::outcome(&resp)),
            Err(_) => None,
        }
    }

    async fn health(&self) -> Health {
        let probe = async {
            let mut c = self.connect().await?;
            c.call(&Request::Ping, self.connect_timeout).await
        };
        match probe.await {
            Ok(resp) if resp.ok => Health {
                state: "connected",
                identity: json!({ "terminal_id": resp.terminal_id, "version": resp.version }),
                error: None,
            },
            Ok(resp) => Health {
                state: "error",
                identity: Value::Null,
                error: Some(format!("ping answered {:?}", resp.error)),
            },
            Err(e) => Health {
                state: "disconnected",
                identity: Value::Null,
                error: Some(self.unreachable_message(&e)),
            },
        }
    }
}

fn expired() -> Outcome {
    Outcome {
        state: FinalState::Expired,
        payment: None,
        device: None,
        error: Some(crate::api::ErrorBody::new(
            ErrorCode::Expired,
            "deadline passed before the terminal was reached",
        )),
    }
}
