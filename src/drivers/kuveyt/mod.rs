//! Driver `kuveyt`: pay-by-link (`kuveyt.md`, seed 004). Create a payment link, publish
//! `payment_url` on `evt` for the cloud POS to show as a QR code, then verify at a bounded
//! interval until the customer paid, gave up, or the command's deadline passed
//! (`unknown` + `needs_reconciliation`: the customer may still pay; `status` verifies
//! again).
//!
//! Never two payments: the order id is derived from the request and journalled before
//! the create request; the provider answers a repeated order id with the same payment.

pub mod journal;
pub mod provider;

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Map, Value};

use self::provider::{
    CreateRequest, Created, CustomerInfo, KuveytApi, LinkStatus, PayByLink, ProviderError,
};
use super::cloud::{self, money};
use super::http::Transport;
use super::{Caps, Driver, DriverEnv, Fact, Health, NotSentWhy, OpContext, Refusal};
use crate::api::{Command, Op, PaymentInfo, Rejection};
use crate::config::{KuveytTerminal, ProviderMode};
use crate::store::CommandRecord;

const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Customer fields a `kuveyt` payment may carry, with their longest accepted length.
const CUSTOMER_FIELDS: &[(&str, usize)] =
    &[("email", 254), ("name", 100), ("first_name", 50), ("last_name", 50), ("phone", 20)];
const DESCRIPTION_MAX: usize = 255;

/// What this terminal kind runs; anything else is refused at admission.
const CAPS: Caps = Caps { kind: "kuveyt", ops: &[Op::Payment, Op::DeviceInfo] };

pub struct KuveytDriver {
    mode: ProviderMode,
    agent_id: String,
    poll_interval: Duration,
    return_url: Option<String>,
    cancel_url: Option<String>,
    provider: Result<Box<dyn PayByLink>, String>,
}

impl KuveytDriver {
    pub fn new(cfg: &KuveytTerminal, env: &DriverEnv) -> KuveytDriver {
        let access = cloud::Access::open(
            &cloud::AccessConfig {
                kind: CAPS.kind,
                id: &cfg.id,
                mode: cfg.mode,
                test_url: cfg.test_url.as_deref(),
                live_url: cfg.live_url.as_deref(),
                credentials: [
                    ("api_key", cfg.api_key_file.as_deref()),
                    ("api_secret", cfg.api_secret_file.as_deref()),
                ],
                ca_file: cfg.ca_file.as_deref(),
                connect_timeout: CONNECT_TIMEOUT,
            },
            &env.secrets,
        );
        let provider = access.map(|a| -> Box<dyn PayByLink> {
            Box::new(KuveytApi {
                base: a.base,
                client: a.client,
                api_key: a.key,
                api_secret: a.secret,
                call_timeout: CALL_TIMEOUT,
            })
        });
        KuveytDriver {
            mode: cfg.mode,
            agent_id: env.agent_id.clone(),
            poll_interval: cfg.poll_interval,
            return_url: cfg.return_url.clone(),
            cancel_url: cfg.cancel_url.clone(),
            provider,
        }
    }

    /// The provider's order id for a request; journalled before the create request.
    pub fn order_id(agent_id: &str, request_id: &str) -> String {
        format!("{agent_id}/{request_id}")
    }

    fn provider(&self) -> Result<&dyn PayByLink, Fact> {
        self.provider.as_deref().map_err(|e| Fact::not_sent(NotSentWhy::Unreachable, e.clone()))
    }

    /// Build the create request from a command, or name the broken rule.
    pub fn create_request(
        cmd: &Command, order_id: String, return_url: Option<String>, cancel_url: Option<String>,
    ) -> Result<CreateRequest, String> {
        let crate::api::Body::Payment(money) = &cmd.body else {
            return Err(format!("op {}: kuveyt terminals take payments only", cmd.op().as_str()));
        };
        let amount = money.minor;
        let currency = money.currency.to_string();
        let exp = money::exponent(&currency).ok_or_else(|| {
            format!("field currency: {currency:?}: posbridge does not know its minor unit")
        })?;
        for key in cmd.extra.keys() {
            if key != "customer" && key != "description" {
                return Err(format!("field {key}: not used by kuveyt terminals"));
            }
        }
        let mut customer = CustomerInfo { email: None, name: None, phone: None };
        match cmd.extra.get("customer") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                let get = |k: &str| text_field(m, k);
                for k in m.keys() {
                    if !CUSTOMER_FIELDS.iter().any(|(f, _)| f == k) {
                        return Err(format!("field customer.{k}: not used by kuveyt terminals"));
                    }
                }
                customer.email = get("email")?;
                customer.phone = get("phone")?;
                customer.name = match get("name")? {
                    Some(n) => Some(n),
                    None => {
                        let parts: Vec<String> =
                            [get("first_name")?, get("last_name")?].into_iter().flatten().collect();
                        (!parts.is_empty()).then(|| parts.join(" "))
                    }
                };
            }
            Some(_) => return Err("field customer: expected an object".into()),
        }
        let description = match cmd.extra.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= DESCRIPTION_MAX => Some(s.clone()),
            Some(Value::String(_)) => {
                return Err(format!("field description: longer than {DESCRIPTION_MAX} characters"))
            }
            Some(_) => return Err("field description: expected a string".into()),
        };
        Ok(CreateRequest {
            order_id,
            amount: money::format_minor(amount, exp),
            currency,
            customer,
            return_url,
            cancel_url,
            description,
        })
    }

    fn deadline(record: &CommandRecord) -> chrono::DateTime<Utc> {
        record.expires_at
    }

    /// Create the link; a lost answer is retried with the same order id (idempotent) until
    /// the deadline.
    async fn create(&self, ctx: &mut OpContext, p: &dyn PayByLink) -> Result<Created, Fact> {
        let creating = ctx.record.last::<journal::Creating>();
        let order_id = match &creating {
            Some(c) => c.order_id.clone(),
            None => Self::order_id(&self.agent_id, &ctx.cmd().id),
        };
        let req = Self::create_request(
            ctx.cmd(),
            order_id.clone(),
            self.return_url.clone(),
            self.cancel_url.clone(),
        )
        .map_err(|e| Fact::not_sent(NotSentWhy::BadRequest, e))?;
        // An earlier create (before a restart) may have reached the provider.
        let mut maybe_sent = creating.is_some();
        if !maybe_sent {
            // Durable before the provider can create anything.
            ctx.sending_step(&journal::Creating {
                order_id: order_id.clone(),
                mode: cloud::mode_name(self.mode).to_string(),
            })
            .await
            .map_err(|e| Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}")))?;
        }
        loop {
            match p.create(&req).await {
                Ok((created, raw)) => {
                    if let Err(e) = ctx
                        .journal_step(&journal::CreatedStep {
                            created: created.clone(),
                            answer: raw.clone(),
                        })
                        .await
                    {
                        tracing::error!(error = %e, "journal write after create failed");
                    }
                    return Ok(created);
                }
                Err(ProviderError::Refused { http, message, unauthorized, .. }) => {
                    let refusal = if unauthorized {
                        Refusal::Unauthorized
                    } else if http == 400 {
                        Refusal::BadRequest
                    } else {
                        Refusal::DeviceError
                    };
                    return Err(Fact::refused(
                        refusal,
                        format!("the provider refused the payment (HTTP {http}): {message}"),
                        None,
                    ));
                }
                Err(ProviderError::Call(Transport::NotSent(e))) if !maybe_sent => {
                    return Err(Fact::not_sent(
                        NotSentWhy::Unreachable,
                        format!("could not reach the payment provider: {e}"),
                    ));
                }
                Err(e) => {
                    maybe_sent |= !matches!(e, ProviderError::Call(Transport::NotSent(_)));
                    tracing::warn!(error = %e, order_id = %order_id, "create gave no usable answer; retrying with the same order id");
                    if Utc::now()
                        + chrono::Duration::from_std(self.poll_interval).unwrap_or_default()
                        > Self::deadline(&ctx.record)
                    {
                        return Err(Fact::lost(format!(
                            "the payment link for order {order_id} may exist but its answer was lost until the deadline: {e}"
                        )));
                    }
                    tokio::time::sleep(self.poll_interval).await;
                }
            }
        }
    }

    /// Verify until final or the deadline; the last verify happens at the deadline.
    async fn wait_paid(&self, ctx: &mut OpContext, p: &dyn PayByLink, created: &Created) -> Fact {
        ctx.progress(
            "WaitCustomer",
            Some(json!({ "payment_url": created.payment_url, "transaction_id": created.transaction_id })),
        );
        let mut last_err: Option<String>;
        loop {
            let now = Utc::now();
            let deadline = Self::deadline(&ctx.record);
            let wait = (deadline - now).to_std().unwrap_or_default().min(self.poll_interval);
            let at_deadline = now >= deadline;
            if !at_deadline {
                tokio::time::sleep(wait).await;
            }
            match p.verify(&created.transaction_id).await {
                Ok((st, raw)) => {
                    if let Some(f) = fact_of(&st, created, raw) {
                        return f;
                    }
                    last_err = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "verify failed");
                    last_err = Some(e.to_string());
                }
            }
            if at_deadline {
                let why = match last_err {
                    Some(e) => format!("the last verify failed: {e}"),
                    None => "the payment is still pending".to_string(),
                };
                return Fact::pending(format!(
                    "deadline passed without a final answer for transaction {} ({why}); the customer may still pay — send `status` later",
                    created.transaction_id
                ));
            }
        }
    }

    fn created_of(record: &CommandRecord) -> Option<Created> {
        record.last::<journal::CreatedStep>().map(|s| s.created)
    }
}

fn text_field(m: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    let max = CUSTOMER_FIELDS.iter().find(|(f, _)| *f == key).map_or(100, |f| f.1);
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(format!("field customer.{key}: longer than {max} characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field customer.{key}: expected a string")),
    }
}

fn fact_of(st: &LinkStatus, created: &Created, raw: Value) -> Option<Fact> {
    match st {
        LinkStatus::Pending => None,
        LinkStatus::Completed { .. } => Some(Fact::approved(
            Some(PaymentInfo {
                method: Some("pay_by_link".into()),
                transaction_id: Some(created.transaction_id.clone()),
                ..Default::default()
            }),
            Some(raw),
        )),
        LinkStatus::Cancelled => Some(Fact::refused(
            Refusal::CancelledByCustomer,
            "the customer cancelled the payment",
            Some(raw),
        )),
        LinkStatus::Failed { status } => Some(
            Fact::refused(Refusal::Declined, format!("the payment ended {status}"), Some(raw))
                .with_device_code(Value::String(status.clone())),
        ),
    }
}

#[async_trait]
impl Driver for KuveytDriver {
    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        cloud::validate(&self.provider, cmd, |c| {
            Self::create_request(c, String::new(), None, None).map(|_| ())
        })
    }

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        let p = match self.provider() {
            Ok(p) => p,
            Err(f) => return f,
        };
        match ctx.cmd().op() {
            Op::Payment => match self.create(ctx, p).await {
                Ok(created) => self.wait_paid(ctx, p, &created).await,
                Err(f) => f,
            },
            Op::DeviceInfo => match p.probe().await {
                Ok(_) => Fact::approved(None, Some(json!({ "mode": cloud::mode_name(self.mode) }))),
                Err(e) => Fact::lost(e),
            },
            op => Fact::unsupported(self.kind(), op),
        }
    }

    /// Verify by the journalled transaction (until the command's deadline: the customer
    /// may still be paying); without one, create again with the same order id, which the
    /// provider answers with the same payment (kuveyt.md §3).
    async fn ask(&self, ctx: &mut OpContext, _left: Duration) -> Fact {
        let Ok(p) = self.provider() else {
            return Fact::CannotAsk {
                why: "the terminal is unusable in this configuration, so the provider cannot be asked".into(),
            };
        };
        if let Some(created) = Self::created_of(&ctx.record) {
            return self.wait_paid(ctx, p, &created).await;
        }
        if Utc::now() > ctx.record.expires_at {
            // The create may have reached the provider, but its URL was never published
            // (that happens after `created` is journalled). Not guessed: reconcile.
            return Fact::CannotAsk {
                why: "the agent stopped during the create request and the deadline has passed; the link was never shown, but the provider may hold it".into(),
            };
        }
        match self.create(ctx, p).await {
            Ok(created) => self.wait_paid(ctx, p, &created).await,
            Err(f) => f,
        }
    }

    async fn query(&self, record: &CommandRecord) -> Option<Fact> {
        let p = self.provider.as_deref().ok()?;
        let created = Self::created_of(record)?;
        let (st, raw) = p.verify(&created.transaction_id).await.ok()?;
        fact_of(&st, &created, raw)
    }

    async fn health(&self) -> Health {
        let mode = json!({ "mode": cloud::mode_name(self.mode) });
        match &self.provider {
            Err(e) => Health {
                state: crate::api::TerminalState::Error,
                identity: mode,
                error: Some(e.clone()),
            },
            Ok(p) => match p.probe().await {
                Ok(_) => Health {
                    state: crate::api::TerminalState::Connected,
                    identity: mode,
                    error: None,
                },
                Err(e) => Health {
                    state: crate::api::TerminalState::Disconnected,
                    identity: mode,
                    error: Some(e),
                },
            },
        }
    }

    fn mode(&self) -> Option<&'static str> {
        Some(cloud::mode_name(self.mode))
    }
}

#[cfg(test)]
mod fake_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_command;

    fn cmd(extra: &str) -> Command {
        let s = format!(
            r#"{{"v":1,"id":"k-1","op":"payment","terminal":"kuveyt-1","amount":15000,"currency":"TRY"{extra}}}"#
        );
        parse_command(s.as_bytes(), 65536).expect("command")
    }

    #[test]
    fn create_request_is_exact_and_strict() {
        let r = KuveytDriver::create_request(
            &cmd(r#","customer":{"first_name":"Ahmet","last_name":"Yılmaz","email":"a@example.com"}"#),
            KuveytDriver::order_id("shop-1", "k-1"),
            None,
            None,
        )
        .expect("valid");
        assert_eq!(r.amount, "150.00");
        assert_eq!(r.order_id, "shop-1/k-1");
        assert_eq!(r.customer.name.as_deref(), Some("Ahmet Yılmaz"));
        let e = KuveytDriver::create_request(&cmd(r#","products":[]"#), String::new(), None, None)
            .expect_err("products");
        assert!(e.starts_with("field products"), "{e}");
        let e = KuveytDriver::create_request(
            &cmd(r#","customer":{"phone":"123456789012345678901"}"#),
            String::new(),
            None,
            None,
        )
        .expect_err("phone");
        assert!(e.starts_with("field customer.phone"), "{e}");
        let e = KuveytDriver::create_request(
            &cmd(r#","customer":{"age":3}"#),
            String::new(),
            None,
            None,
        )
        .expect_err("age");
        assert!(e.starts_with("field customer.age"), "{e}");
        let mut c = cmd("");
        c.body = crate::api::Body::Payment(crate::api::Money {
            minor: 15000,
            currency: crate::api::Currency::parse("XXX").expect("a currency code"),
        });
        assert!(KuveytDriver::create_request(&c, String::new(), None, None)
            .expect_err("cur")
            .starts_with("field currency"));
    }
}
