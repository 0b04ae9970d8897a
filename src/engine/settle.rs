//! The settle policy: the one place where what a device said becomes a contract outcome.
//!
//! Drivers report [`Fact`]s. This module alone builds [`Outcome`]s, the same way for a
//! live operation and for one resumed after a crash (`mqtt-api.md`: Durability promise 6):
//! - a definite device answer → `succeeded`, or `failed` with the device's reason;
//! - a request that provably never left → `failed`/`device_unavailable` (or `rejected`
//!   for a request the device could never take) — money cannot have moved;
//! - anything else after a request may have left (lost, late, unreadable or foreign
//!   answer, "still running", "no record" without a protocol guarantee) → ask the device
//!   again by the operation's own key ([`Driver::ask`]) until it answers definitely or
//!   the terminal's recovery window closes, then `unknown` + `needs_reconciliation`.
//!
//! `failed` therefore needs [`Answer::Refused`] or [`Fact::NotSent`] from the first
//! attempt: "could not ask again" never proves that the first request did not arrive.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resume::FirstStep;
use crate::api::{ErrorBody, ErrorCode, FinalState, PaymentInfo};
use crate::drivers::{Answer, Driver, Fact, NotSentWhy, OpContext, Refusal};

/// A contract outcome. Only the engine builds one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(super) state: FinalState,
    pub(super) payment: Option<PaymentInfo>,
    pub(super) device: Option<Value>,
    pub(super) error: Option<ErrorBody>,
}

impl Outcome {
    pub(super) fn succeeded(payment: Option<PaymentInfo>, device: Option<Value>) -> Self {
        Outcome { state: FinalState::Succeeded, payment, device, error: None }
    }

    fn ended(state: FinalState, code: ErrorCode, message: String, device: Option<Value>) -> Self {
        Outcome { state, payment: None, device, error: Some(ErrorBody::new(code, message)) }
    }

    pub(super) fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Outcome::ended(FinalState::Failed, code, message.into(), None)
    }

    pub(super) fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        Outcome::ended(FinalState::Rejected, code, message.into(), None)
    }

    pub(super) fn expired(message: impl Into<String>) -> Self {
        Outcome::ended(FinalState::Expired, ErrorCode::Expired, message.into(), None)
    }

    pub(super) fn cancelled(message: impl Into<String>) -> Self {
        Outcome::ended(FinalState::Cancelled, ErrorCode::CancelledByCustomer, message.into(), None)
    }

    /// Nobody can know; the result carries `needs_reconciliation: true`.
    pub(super) fn unknown(
        code: ErrorCode, message: impl Into<String>, device: Option<Value>,
    ) -> Self {
        Outcome::ended(FinalState::Unknown, code, message.into(), device)
    }

    pub(super) fn with_error(mut self, e: ErrorBody) -> Self {
        self.error = Some(e);
        self
    }

    #[cfg(all(test, feature = "sims"))]
    pub(crate) fn state(&self) -> FinalState {
        self.state
    }

    #[cfg(all(test, feature = "sims"))]
    pub(crate) fn error(&self) -> Option<&ErrorBody> {
        self.error.as_ref()
    }
}

/// How the operation is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Taken from the queue now.
    Live,
    /// Found running at start: the agent stopped while it ran.
    Resume,
}

/// Pause between two asks: doubles from the first to the last.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Run one device op to its contract outcome. `None`: shutdown came while the device was
/// being asked again; the command stays `running` and the next start resumes it.
pub(crate) async fn run(
    driver: &dyn Driver, ctx: &mut OpContext, entry: Entry, shutdown: &CancellationToken,
    clock: &dyn super::clock::Clock,
) -> Option<Outcome> {
    let money = ctx.cmd().op().moves_money();
    let resuming = entry == Entry::Resume;
    let mut fact = match super::resume::first_step(&ctx.record, resuming, clock.now()) {
        // The request may have reached the device: never send it blindly again.
        FirstStep::Ask => None,
        FirstStep::Expire => {
            return Some(Outcome::expired("deadline passed before the terminal was reached"))
        }
        FirstStep::Execute => {
            crate::stages::mark(&ctx.cmd().id, "device_call");
            let f = driver.execute(ctx).await;
            crate::stages::mark(&ctx.cmd().id, "device_answer");
            Some(f)
        }
    };
    let window = driver.recovery_window();
    let deadline = Instant::now() + window;
    let mut delay = FIRST_DELAY;
    // What went wrong first (the reason to ask), and what the last ask said.
    let mut first_why: Option<String> = None;
    let mut attempts = 0u32;
    loop {
        let asked = fact.is_none();
        let mut f = match fact.take() {
            Some(f) => f,
            None => {
                attempts += 1;
                driver.ask(ctx, deadline.saturating_duration_since(Instant::now())).await
            }
        };
        // Before anything of it is logged, stored or published (mqtt-api.md 10).
        f.mask_card_numbers();
        match f {
            Fact::Answer(a) => {
                let _ = ctx.note("answer", json!({ "answer": answer_kind(&a), "asks": attempts }));
                return Some(answered(a));
            }
            Fact::NotSent { why, message } if !asked => return Some(not_sent(why, message)),
            Fact::Absent { why, guarantee: Some(g) } => {
                // The protocol guarantees the device never received it.
                let msg = format!("{why} ({g}): the request never reached the device");
                if !resuming {
                    return Some(Outcome::failed(ErrorCode::DeviceUnavailable, msg));
                }
                if super::deadline::passed(&ctx.record, clock.now()) {
                    return Some(Outcome::expired(msg));
                }
                fact = Some(driver.execute(ctx).await);
                continue;
            }
            other if !money => return Some(no_money_moved(other)),
            other => {
                let why = other.describe();
                tracing::warn!(asks = attempts, fact = %why, raw = ?raw_of(&other), "no definite answer from the device");
                let first = first_why.get_or_insert_with(|| why.clone()).clone();
                let out_of_time = if asked {
                    Instant::now() >= deadline
                } else {
                    // The first attempt's own trouble: ask at least once when there is a
                    // window, and always once at resume (that is how a resume learns).
                    window.is_zero() && !resuming
                };
                if matches!(other, Fact::CannotAsk { .. }) || out_of_time {
                    return Some(unknown_from(other, &first, attempts));
                }
                if asked {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay.min(left)) => {}
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
                ctx.progress("Reconciling", Some(json!({ "why": why })));
            }
        }
    }
}

/// A definite device answer → its outcome.
pub(super) fn answered(a: Answer) -> Outcome {
    match a {
        Answer::Approved { payment, device } => Outcome::succeeded(payment.map(|p| *p), device),
        Answer::Refused { refusal, message, device_code, device } => {
            let code = match refusal {
                Refusal::Declined => ErrorCode::Declined,
                Refusal::CancelledByCustomer => ErrorCode::CancelledByCustomer,
                Refusal::Timeout => ErrorCode::Timeout,
                Refusal::DeviceError => ErrorCode::DeviceError,
                Refusal::Unauthorized => ErrorCode::Unauthorized,
                Refusal::BadRequest => ErrorCode::BadRequest,
            };
            let mut o = Outcome::ended(FinalState::Failed, code, message, device);
            if let Some(e) = &mut o.error {
                e.device_code = device_code;
            }
            o
        }
    }
}

fn answer_kind(a: &Answer) -> &'static str {
    match a {
        Answer::Approved { .. } => "approved",
        Answer::Refused { .. } => "refused",
    }
}

/// The request provably never left: money cannot have moved.
fn not_sent(why: NotSentWhy, message: String) -> Outcome {
    match why {
        NotSentWhy::Unreachable => Outcome::failed(ErrorCode::DeviceUnavailable, message),
        NotSentWhy::BadRequest => Outcome::rejected(ErrorCode::BadRequest, message),
        NotSentWhy::Unsupported => Outcome::rejected(ErrorCode::UnsupportedOp, message),
        NotSentWhy::Store => Outcome::failed(ErrorCode::Internal, message),
    }
}

/// Ops that move no money (`device_info`, `fiscal_info`): no answer is simply a failure.
fn no_money_moved(f: Fact) -> Outcome {
    let code = match f {
        Fact::Unreadable { .. } => ErrorCode::DeviceError,
        _ => ErrorCode::DeviceUnavailable,
    };
    let raw = raw_of(&f).cloned();
    let mut o = Outcome::failed(code, f.describe());
    o.device = raw;
    o
}

fn raw_of(f: &Fact) -> Option<&Value> {
    match f {
        Fact::Unreadable { raw, .. } => Some(raw),
        Fact::Lost { device, .. } | Fact::Pending { device, .. } => device.as_ref(),
        _ => None,
    }
}

/// The window closed (or the device cannot be asked): `unknown`, keeping the device's
/// last words for the operator.
fn unknown_from(last: Fact, first: &str, asks: u32) -> Outcome {
    let code = match &last {
        Fact::Unreadable { .. } => ErrorCode::DeviceError,
        Fact::CannotAsk { .. } => ErrorCode::DeviceUnavailable,
        _ => ErrorCode::Timeout,
    };
    let last_why = last.describe();
    let message = if asks == 0 || last_why == first {
        format!("the outcome cannot be learned from the device ({first}); reconcile it on the terminal or ask again with `status`")
    } else {
        format!("the outcome cannot be learned from the device ({first}; asked again {asks}×, last: {last_why}); reconcile it on the terminal or ask again with `status`")
    };
    let device = raw_of(&last).cloned();
    let mut o = Outcome::unknown(code, message, device);
    if let (Fact::Pending { device_code: Some(c), .. }, Some(e)) = (&last, &mut o.error) {
        e.device_code = Some(c.clone());
    }
    o
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
