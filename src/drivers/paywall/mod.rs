//! Driver `paywall`: Paywall PhysicalAPI (`paywall.md`, seed 002). The agent asks the
//! Paywall cloud to push a sale to a registered terminal and waits for the synchronous
//! answer.
//!
//! Never two sales: the `MerchantUniqueCode` is a UUID v5 of the request, journalled
//! durably before the request; after a lost answer or a crash the engine has the driver
//! ask Paywall about that code (`list`, then `inquiry` by PaymentRequestId) instead of
//! selling again. "No such sale" after a sale may have been sent proves nothing (the
//! listing may lag, the list route is not in the seed): only a row with exactly this
//! MerchantUniqueCode in a final state settles it.

pub mod api;
mod client;
pub mod journal;

use client::{Found, Link};

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use self::api::{Envelope, PaymentRef, PaymentView, Status};
use super::cloud::{self, Reply};
use super::http::Transport;
use super::{Caps, Driver, DriverEnv, Fact, Health, NotSentWhy, OpContext, Refusal};
use crate::api::{Command, ErrorBody, ErrorCode, Op, PaymentInfo, Rejection};
use crate::config::{PaywallTerminal, ProviderMode};
use crate::store::CommandRecord;

/// Short calls (list, inquiry, cancel).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What this terminal kind runs; anything else is refused at admission.
const CAPS: Caps = Caps { kind: "paywall", ops: &[Op::Payment, Op::DeviceInfo] };

pub struct PaywallDriver {
    mode: ProviderMode,
    agent_id: String,
    base: String,
    terminal_guid: String,
    currency_ids: BTreeMap<String, u32>,
    op_timeout: Duration,
    recovery_window: Duration,
    /// Everything needed to call Paywall, or why this terminal cannot be used.
    link: Result<Link, String>,
}

impl PaywallDriver {
    pub fn new(cfg: &PaywallTerminal, env: &DriverEnv) -> PaywallDriver {
        let access = cloud::AccessConfig {
            kind: CAPS.kind,
            id: &cfg.id,
            mode: cfg.mode,
            test_url: cfg.test_url.as_deref(),
            live_url: cfg.live_url.as_deref(),
            credentials: [
                ("api_key", cfg.api_key_file.as_deref()),
                ("client_key", cfg.client_key_file.as_deref()),
            ],
            ca_file: cfg.ca_file.as_deref(),
            connect_timeout: CONNECT_TIMEOUT,
        };
        let base = access.base();
        let link = cloud::Access::open(&access, &env.secrets).map(|a| Link {
            client: a.client,
            api_key: a.key,
            client_key: a.secret,
            base: a.base,
        });
        let mut currency_ids = cfg.currency_ids.clone();
        if currency_ids.is_empty() {
            currency_ids.insert("TRY".into(), 1);
        }
        PaywallDriver {
            mode: cfg.mode,
            agent_id: env.agent_id.clone(),
            base,
            terminal_guid: cfg.terminal_guid.clone().unwrap_or_default(),
            currency_ids,
            op_timeout: cfg.op_timeout,
            recovery_window: cfg.recovery_window,
            link,
        }
    }

    fn link(&self) -> Result<&Link, Fact> {
        self.link.as_ref().map_err(|e| Fact::not_sent(NotSentWhy::Unreachable, e.clone()))
    }

    fn muc_of(&self, record: &CommandRecord) -> String {
        // The journalled code wins: it is the one Paywall saw, whatever the agent id is now.
        record.last::<journal::Sending>().map(|s| s.merchant_unique_code).unwrap_or_else(|| {
            api::merchant_unique_code(&self.agent_id, &record.cmd.id).to_string()
        })
    }

    /// What asking about `muc` tells of the sale.
    async fn ask_about(&self, link: &Link, muc: &str) -> Fact {
        match link.lookup(muc).await {
            Ok(Found::Sale(view, raw)) => judge(view, raw),
            Ok(Found::Absent) => Fact::Absent {
                why: format!("Paywall lists no sale with MerchantUniqueCode {muc}"),
                guarantee: None,
            },
            Err(e) => Fact::lost(format!("asking Paywall about MerchantUniqueCode {muc}: {e}")),
        }
    }

    async fn sale(&self, ctx: &mut OpContext) -> Fact {
        let link = match self.link() {
            Ok(l) => l,
            Err(f) => return f,
        };
        let muc = api::merchant_unique_code(&self.agent_id, &ctx.cmd().id);
        let body = match api::sale_request(ctx.cmd(), &self.terminal_guid, muc, &self.currency_ids)
            .and_then(|r| {
                serde_json::to_string(&r).map_err(|e| api::FieldError {
                    field: "products".into(),
                    message: e.to_string(),
                })
            }) {
            Ok(b) => b,
            Err(e) => return Fact::not_sent(NotSentWhy::BadRequest, e.to_string()),
        };
        let muc = muc.to_string();
        // Durable before Paywall can move money (mqtt-api.md: Durability promise 2): after
        // a crash from here on, resume asks about this code instead of selling again.
        if let Err(e) = ctx
            .sending_step(&journal::Sending {
                merchant_unique_code: muc.clone(),
                terminal_guid: self.terminal_guid.clone(),
                mode: cloud::mode_name(self.mode).to_string(),
            })
            .await
        {
            return Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}"));
        }
        ctx.progress("WaitTerminal", Some(json!({ "merchant_unique_code": muc })));
        match link.post("/api/payment/sync/sale", body, self.op_timeout).await {
            Ok(reply) => sale_answer(&reply),
            Err(Transport::NotSent(e)) => Fact::not_sent(
                NotSentWhy::Unreachable,
                format!("could not reach Paywall at {}: {e}", cloud::redact_url(&self.base)),
            ),
            Err(Transport::MaybeSent(e)) => Fact::lost(format!("the sale's answer: {e}")),
        }
    }

    async fn probe(&self) -> Result<Value, String> {
        let link = self.link.as_ref().map_err(Clone::clone)?;
        // An authenticated, harmless call: list by the nil code. Proves address and keys.
        let reply = cloud::send(
            link.request(reqwest::Method::GET, "/api/payment/list")
                .query(&[("MerchantUniqueCode", uuid::Uuid::nil().to_string())])
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        let env = Envelope::parse(&reply.body)?;
        if reply.status == 401 || reply.status == 403 {
            return Err(format!("Paywall refused the credentials: {}", env.describe()));
        }
        if reply.status >= 300 {
            return Err(format!("Paywall answered HTTP {}: {}", reply.status, env.describe()));
        }
        Ok(json!({
            "mode": cloud::mode_name(self.mode),
            "url": cloud::redact_url(&self.base),
            "terminal_guid": self.terminal_guid,
        }))
    }
}

#[async_trait]
impl Driver for PaywallDriver {
    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        cloud::validate(&self.link, cmd, |c| {
            let muc = api::merchant_unique_code(&self.agent_id, &c.id);
            api::sale_request(c, &self.terminal_guid, muc, &self.currency_ids)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        match ctx.cmd().op() {
            Op::Payment => self.sale(ctx).await,
            Op::DeviceInfo => match self.probe().await {
                Ok(identity) => Fact::approved(None, Some(identity)),
                Err(e) => Fact::lost(e),
            },
            op => Fact::unsupported(self.kind(), op),
        }
    }

    async fn ask(&self, ctx: &mut OpContext, _left: Duration) -> Fact {
        let link =
            match self.link() {
                Ok(l) => l,
                Err(_) => return Fact::CannotAsk {
                    why:
                        "the terminal is unusable in this configuration, so Paywall cannot be asked"
                            .into(),
                },
            };
        let muc = self.muc_of(&ctx.record);
        self.ask_about(link, &muc).await
    }

    fn recovery_window(&self) -> Duration {
        self.recovery_window
    }

    async fn query(&self, record: &CommandRecord) -> Option<Fact> {
        if record.cmd.op() != Op::Payment {
            return None;
        }
        let link = self.link.as_ref().ok()?;
        Some(self.ask_about(link, &self.muc_of(record)).await)
    }

    async fn health(&self) -> Health {
        match self.probe().await {
            Ok(identity) => {
                Health { state: crate::api::TerminalState::Connected, identity, error: None }
            }
            Err(e) => Health {
                state: if self.link.is_err() {
                    crate::api::TerminalState::Error
                } else {
                    crate::api::TerminalState::Disconnected
                },
                identity: json!({ "mode": cloud::mode_name(self.mode) }),
                error: Some(e),
            },
        }
    }

    fn can_cancel(&self, record: &CommandRecord) -> bool {
        record.cmd.op() == Op::Payment && self.link.is_ok()
    }

    /// `sale/rollback` while the device has not received the sale, else `sync/cancel`
    /// (`paywall.md`: Related routes). The running sale then ends with its own answer.
    async fn cancel_running(&self, record: &CommandRecord) -> Result<(), ErrorBody> {
        let link = self
            .link
            .as_ref()
            .map_err(|e| ErrorBody::new(ErrorCode::DeviceUnavailable, e.clone()))?;
        let not = |m: String| ErrorBody::new(ErrorCode::NotCancellable, m);
        if record.last_step(<journal::Sending as crate::drivers::Step>::NAME).is_none() {
            return Err(not("the sale has not been sent to Paywall yet; try again".into()));
        }
        let muc = self.muc_of(record);
        let p = match link.lookup(&muc).await {
            Ok(Found::Sale(p, _))
                if !Status::from_code(p.paymentstatus.unwrap_or(-1)).is_final() =>
            {
                p
            }
            Ok(Found::Sale(..)) => {
                return Err(not("the sale already ended on the terminal".into()))
            }
            Ok(Found::Absent) => {
                return Err(not(format!("Paywall has no sale with MerchantUniqueCode {muc} yet")))
            }
            Err(e) => return Err(not(format!("cannot ask Paywall about the sale: {e}"))),
        };
        let Some(id) = p.paymentrequestid.clone() else {
            return Err(not("Paywall did not give the sale's PaymentRequestId".into()));
        };
        let body =
            serde_json::to_string(&PaymentRef { payment_request_id: id }).unwrap_or_default();
        let routes: &[&str] = if Status::from_code(p.paymentstatus.unwrap_or(-1)) == Status::Waiting
        {
            &["/api/payment/sync/sale/rollback", "/api/payment/sync/cancel"]
        } else {
            &["/api/payment/sync/cancel"]
        };
        let mut last = String::new();
        for route in routes {
            match link.post(route, body.clone(), CALL_TIMEOUT).await {
                Ok(reply) => match Envelope::parse(&reply.body) {
                    Ok(env) if reply.status < 300 && env.ok() => return Ok(()),
                    Ok(env) => last = format!("{route}: {}", env.describe()),
                    Err(e) => last = format!("{route}: {e}"),
                },
                Err(e) => last = format!("{route}: {e}"),
            }
        }
        Err(not(format!("Paywall refused the cancel: {last}")))
    }

    fn mode(&self) -> Option<&'static str> {
        Some(cloud::mode_name(self.mode))
    }
}

/// A sale row (list or inquiry) → the fact its PaymentStatus states.
fn judge(p: PaymentView, raw: Value) -> Fact {
    match Status::from_code(p.paymentstatus.unwrap_or(-1)) {
        Status::Succeeded => Fact::approved(
            Some(PaymentInfo {
                method: Some("card".into()),
                transaction_id: p.paymentrequestid.clone(),
                ..Default::default()
            }),
            Some(raw),
        ),
        Status::Cancelled => {
            Fact::refused(Refusal::CancelledByCustomer, "the sale was cancelled", Some(raw))
        }
        Status::Failed => {
            Fact::refused(Refusal::Declined, "the sale failed on the terminal", Some(raw))
        }
        _ => Fact::Pending {
            why: format!("the sale is still running (PaymentStatus {:?})", p.paymentstatus),
            device: Some(raw),
            device_code: None,
        },
    }
}

/// The sync sale's own answer → the fact it states. A server error or an unreadable body
/// says nothing about whether the sale went through.
fn sale_answer(reply: &Reply) -> Fact {
    if reply.status >= 500 {
        return Fact::lost(format!("Paywall answered HTTP {}", reply.status));
    }
    let env = match Envelope::parse(&reply.body) {
        Ok(env) => env,
        Err(e) => {
            return Fact::unreadable(format!("HTTP {}: {e}", reply.status), reply.body.clone())
        }
    };
    let raw = reply.body.clone();
    let p = env.payment().unwrap_or_default();
    if reply.status < 300 && env.ok() {
        let payment = PaymentInfo {
            method: Some("card".into()),
            transaction_id: p.paymentrequestid.clone(),
            ..Default::default()
        };
        return Fact::approved(Some(payment), Some(raw));
    }
    if !env.refused() {
        return Fact::unreadable(format!("HTTP {} without a definite outcome", reply.status), raw);
    }
    let cm = env.clientmessage.clone().unwrap_or_default();
    let lower = cm.to_ascii_lowercase();
    let status = Status::from_code(p.paymentstatus.unwrap_or(-1));
    let refusal = if reply.status == 401
        || reply.status == 403
        || lower.contains("auth")
        || lower.contains("apikey")
    {
        Refusal::Unauthorized
    } else if lower.contains("cancel") || status == Status::Cancelled {
        Refusal::CancelledByCustomer
    } else if lower.contains("declin") || lower.contains("insufficient") || status == Status::Failed
    {
        Refusal::Declined
    } else if reply.status == 400 || lower.contains("valid") {
        Refusal::BadRequest
    } else {
        Refusal::DeviceError
    };
    let device_code = json!({ "error_code": env.errorcode, "client_message": env.clientmessage });
    Fact::refused(refusal, format!("Paywall: {}", env.describe()), Some(raw))
        .with_device_code(device_code)
}
