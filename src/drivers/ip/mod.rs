//! Driver for the generic IP terminal (`ip-terminal.md`, protocol v1: one JSON line per
//! request over TCP).
//!
//! The command `id` is the terminal's `ref`: the terminal treats a repeated `ref` as the
//! same operation, so asking again after a lost answer or a crash can never charge twice.

pub mod journal;
#[cfg(test)]
mod pool_tests;
pub mod proto;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use self::proto::{IpClient, ProtoError, Request, Response};
use super::{Caps, Driver, Fact, Health, NotSentWhy, OpContext, Refusal};
use crate::api::{Body, Op, PaymentInfo};
use crate::store::CommandRecord;

/// What this terminal kind runs; anything else is refused at admission.
const CAPS: Caps = Caps { kind: "ip", ops: &[Op::Payment, Op::Refund, Op::DeviceInfo] };

#[derive(Debug, Clone)]
pub struct IpDriver {
    addr: String,
    connect_timeout: Duration,
    /// How long the terminal may take to answer a pay (customer time included).
    op_timeout: Duration,
    /// How long to keep asking (the same request, same `ref`) after a lost answer before
    /// the engine says `unknown`; the terminal's own op timeout is added.
    recovery_window: Duration,
    /// The connection of the last answered pay/refund, kept for the next one.
    pool: std::sync::Arc<tokio::sync::Mutex<Option<IpClient>>>,
}

impl IpDriver {
    pub fn new(addr: impl Into<String>, connect_timeout: Duration, op_timeout: Duration) -> Self {
        IpDriver {
            addr: addr.into(),
            connect_timeout,
            op_timeout,
            recovery_window: Duration::from_secs(30),
            pool: Default::default(),
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
        let r#ref = cmd.id.to_string();
        match &cmd.body {
            Body::Payment(m) => {
                Some(Request::Pay { r#ref, amount: m.minor, currency: m.currency.to_string() })
            }
            Body::Refund(r) => Some(Request::Refund {
                r#ref,
                transaction_id: r.transaction_id.clone()?,
                amount: r.amount,
            }),
            _ => None,
        }
    }

    async fn status(&self, r#ref: &str) -> Result<Response, ProtoError> {
        let mut c = self.connect().await?;
        c.call(&Request::Status { r#ref: r#ref.to_string() }, self.connect_timeout).await
    }

    /// Send one pay/refund and say what came back. The connection of the last answered
    /// request is reused (`ip-terminal.md`: a client may reuse it): one connect less per
    /// payment. A reused connection that fails (the terminal closed it while idle) costs one
    /// resend of the same request — same `ref`, which the terminal answers from its books —
    /// on a fresh connection, never a second charge; once a request may have left, no
    /// later failure can make it "not sent".
    async fn send(&self, req: &Request, first: bool) -> Fact {
        let r#ref = req.reference().unwrap_or_default().to_string();
        let mut may_have_left = !first;
        let pooled = self.pool.lock().await.take();
        if let Some(mut c) = pooled {
            match c.call(req, self.op_timeout).await {
                Ok(resp) => {
                    *self.pool.lock().await = Some(c);
                    return answer_fact(&r#ref, resp);
                }
                // Slow, not stale: the terminal has the request.
                Err(e @ ProtoError::Timeout(_)) => return self.failed(&r#ref, e, true),
                Err(e) => {
                    tracing::debug!(r#ref, error = %e, "kept connection failed; sending the same ref on a fresh one");
                    may_have_left |= e.maybe_delivered();
                }
            }
        }
        let mut client = match self.connect().await {
            Ok(c) => c,
            // "Cannot connect now" says nothing about a request that may have left before.
            Err(e) if may_have_left => return Fact::lost(self.unreachable_message(&e)),
            Err(e) => return Fact::not_sent(NotSentWhy::Unreachable, self.unreachable_message(&e)),
        };
        match client.call(req, self.op_timeout).await {
            Ok(resp) => {
                *self.pool.lock().await = Some(client);
                answer_fact(&r#ref, resp)
            }
            Err(e) => self.failed(&r#ref, e, may_have_left),
        }
    }

    /// A call that got no answer: what it proves.
    fn failed(&self, r#ref: &str, e: ProtoError, may_have_left: bool) -> Fact {
        match e {
            e if !may_have_left && !e.maybe_delivered() => {
                Fact::not_sent(NotSentWhy::Unreachable, self.unreachable_message(&e))
            }
            ProtoError::BadResponse(m) => {
                tracing::warn!(r#ref, answer = %crate::api::pan::mask_str(&m), "unreadable answer from the terminal");
                Fact::unreadable(format!("malformed answer: {m}"), Value::String(m))
            }
            e => {
                tracing::warn!(r#ref, error = %e, "answer lost");
                Fact::lost(e.to_string())
            }
        }
    }

    /// Send the op, durably journalled before it leaves.
    async fn run(&self, ctx: &mut OpContext, req: Request) -> Fact {
        let r#ref = ctx.cmd().id.clone();
        // Durable before the device can move money (mqtt-api.md: Durability promise 2).
        if let Err(e) = ctx
            .sending_step(&journal::Sending { r#ref: r#ref.to_string(), addr: self.addr.clone() })
            .await
        {
            return Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}"));
        }
        ctx.progress("WaitTerminal", None);
        self.send(&req, true).await
    }
}

/// A terminal's answer to the request with `ref` → the fact it states. An answer for
/// another ref is not this request's (`ip-terminal.md`: every answer echoes `ref`).
fn answer_fact(r#ref: &str, resp: Response) -> Fact {
    let raw = serde_json::to_value(&resp).unwrap_or(Value::Null);
    if resp.is_in_progress() {
        return Fact::Pending {
            why: "the terminal is still running the operation".into(),
            device: Some(raw),
            device_code: None,
        };
    }
    if resp.is_not_found() {
        // Not proof: the request may not have been processed yet.
        return Fact::Absent {
            why: format!("the terminal has no operation with ref {ref:?}"),
            guarantee: None,
        };
    }
    if resp.r#ref.as_deref() != Some(r#ref) {
        tracing::warn!(want = r#ref, answer = %crate::api::pan::mask_str(&raw.to_string()), "answer for another ref");
        return Fact::unreadable(
            format!("the answer carries ref {:?}, not this request's {ref:?}", resp.r#ref),
            raw,
        );
    }
    if resp.ok {
        let payment = PaymentInfo {
            method: Some("card".into()),
            transaction_id: resp.transaction_id.clone(),
            card_mask: resp.card_mask.clone(),
            auth_code: resp.approval_code.clone(),
            receipt: None,
        };
        return Fact::approved(Some(payment), Some(raw));
    }
    let code = resp.error.clone().unwrap_or_default();
    let message = resp.message.clone().unwrap_or_else(|| format!("terminal error {code}"));
    let refusal = match code.as_str() {
        "declined" | "insufficient_funds" | "card_expired" => Refusal::Declined,
        "timeout" => Refusal::Timeout,
        "cancelled" => Refusal::CancelledByCustomer,
        "bad_request" => Refusal::BadRequest,
        _ => Refusal::DeviceError,
    };
    Fact::refused(refusal, message, Some(raw)).with_device_code(Value::String(code))
}

#[async_trait]
impl Driver for IpDriver {
    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        match ctx.cmd().op() {
            Op::DeviceInfo => {
                let mut c = match self.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        return Fact::not_sent(
                            NotSentWhy::Unreachable,
                            self.unreachable_message(&e),
                        )
                    }
                };
                match c.call(&Request::Ping, self.connect_timeout).await {
                    Ok(resp) => Fact::approved(None, serde_json::to_value(&resp).ok()),
                    Err(e) => Fact::lost(e.to_string()),
                }
            }
            _ => match Self::request_for(ctx.cmd()) {
                Some(req) => self.run(ctx, req).await,
                None => Fact::unsupported(self.kind(), ctx.cmd().op()),
            },
        }
    }

    /// `ip-terminal.md`: a repeated pay/refund with a `ref` the terminal has seen is the
    /// same operation — it answers the stored response or `in_progress`, never charges
    /// again. So asking is sending the same request again, which also settles a request
    /// that never arrived (one `status` saying `not_found` could be a race).
    async fn ask(&self, ctx: &mut OpContext, _left: Duration) -> Fact {
        match Self::request_for(ctx.cmd()) {
            Some(req) => self.send(&req, false).await,
            None => Fact::CannotAsk { why: "not a pay or refund".into() },
        }
    }

    fn recovery_window(&self) -> Duration {
        self.recovery_window + self.op_timeout
    }

    async fn query(&self, record: &CommandRecord) -> Option<Fact> {
        match self.status(&record.cmd.id).await {
            Ok(resp) => Some(answer_fact(&record.cmd.id, resp)),
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
                state: crate::api::TerminalState::Connected,
                identity: json!({ "terminal_id": resp.terminal_id, "version": resp.version }),
                error: None,
            },
            Ok(resp) => Health {
                state: crate::api::TerminalState::Error,
                identity: Value::Null,
                error: Some(format!("ping answered {:?}", resp.error)),
            },
            Err(e) => Health {
                state: crate::api::TerminalState::Disconnected,
                identity: Value::Null,
                error: Some(self.unreachable_message(&e)),
            },
        }
    }
}
