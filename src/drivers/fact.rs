//! What a driver may report: facts about the device, never contract outcomes.
//!
//! A driver says what happened on the wire — the request never left, the device answered
//! definitely, the request may have arrived but no usable answer came, the answer cannot
//! be read or is not this request's, the device says it is still working or has no
//! record. The engine alone turns facts into `succeeded` / `failed` / `unknown`, error
//! codes and `needs_reconciliation` (`engine::settle`), the same way live and at resume.
//! There is no way to write "failed" here without a definite device verdict: the only
//! fact the engine maps to `failed` after a request may have left is [`Answer::Refused`].

use serde_json::Value;

use crate::api::PaymentInfo;

/// Why a request provably never reached the device. Money cannot have moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSentWhy {
    /// No link: not connected, connection refused, TLS or handshake failed, terminal
    /// disabled or unusable in this configuration.
    Unreachable,
    /// The command cannot be expressed for this device (checked before any request).
    BadRequest,
    /// This device cannot run the op.
    Unsupported,
    /// The journal step that must precede the request could not be made durable.
    Store,
}

/// A definite verdict from the device that money did not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Declined,
    CancelledByCustomer,
    /// The device itself gave up waiting (no card presented, QR not scanned).
    Timeout,
    DeviceError,
    /// The device refused our credentials.
    Unauthorized,
    /// The device rejected a parameter.
    BadRequest,
}

/// A definite answer from the device, checked against the request it answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Approved { payment: Option<Box<PaymentInfo>>, device: Option<Value> },
    Refused { refusal: Refusal, message: String, device_code: Option<Value>, device: Option<Value> },
}

/// What one attempt (the first request, or asking again) learned.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// The request provably never left (only meaningful from the first attempt: when
    /// asking again, "could not ask" says nothing about the first request).
    NotSent { why: NotSentWhy, message: String },
    /// The device answered, and the answer is this request's.
    Answer(Answer),
    /// The request may have reached the device; no answer came (connection lost, timeout,
    /// 5xx, an HTML error page).
    Lost { why: String, device: Option<Value> },
    /// An answer came but cannot be read, or does not belong to this request (another
    /// reference, another amount, a cut-short body). Kept raw for the operator.
    Unreadable { why: String, raw: Value },
    /// The device knows the operation and says it is still running (or "unknown" for now),
    /// with the device's own code when it gave one.
    Pending { why: String, device: Option<Value>, device_code: Option<Value> },
    /// The device says it has no record of the request. `guarantee` cites the protocol
    /// line that makes this mean "never received"; without one it proves nothing (the
    /// device may not have processed the request yet, or its listing may lag).
    Absent { why: String, guarantee: Option<&'static str> },
    /// The request may have reached the device and the device offers no way to ask
    /// about it (e.g. Kaspi before its `processId` arrived).
    CannotAsk { why: String },
}

impl Fact {
    pub fn approved(payment: Option<PaymentInfo>, device: Option<Value>) -> Fact {
        Fact::Answer(Answer::Approved { payment: payment.map(Box::new), device })
    }

    pub fn refused(refusal: Refusal, message: impl Into<String>, device: Option<Value>) -> Fact {
        Fact::Answer(Answer::Refused {
            refusal,
            message: message.into(),
            device_code: None,
            device,
        })
    }

    pub fn not_sent(why: NotSentWhy, message: impl Into<String>) -> Fact {
        Fact::NotSent { why, message: message.into() }
    }

    /// An op the driver does not run (the engine refuses those at admission; this is
    /// the driver's own guard).
    pub fn unsupported(kind: &str, op: crate::api::Op) -> Fact {
        Fact::not_sent(
            NotSentWhy::Unsupported,
            format!("{kind} terminals cannot run {}", op.as_str()),
        )
    }

    pub fn lost(why: impl Into<String>) -> Fact {
        Fact::Lost { why: why.into(), device: None }
    }

    pub fn unreadable(why: impl Into<String>, raw: Value) -> Fact {
        Fact::Unreadable { why: why.into(), raw }
    }

    pub fn pending(why: impl Into<String>) -> Fact {
        Fact::Pending { why: why.into(), device: None, device_code: None }
    }

    /// The device's own code on a refusal (ignored on other facts).
    pub fn with_device_code(mut self, code: Value) -> Fact {
        if let Fact::Answer(Answer::Refused { device_code, .. }) = &mut self {
            *device_code = Some(code);
        }
        self
    }

    /// Mask every card number in what the device said (`api::pan`): the engine does this
    /// to every fact before it logs, stores or publishes anything of it.
    pub fn mask_card_numbers(&mut self) {
        use crate::api::pan::{mask_str, mask_value};
        let text = |s: &mut String| {
            if let std::borrow::Cow::Owned(m) = mask_str(s) {
                *s = m;
            }
        };
        let opt = |v: &mut Option<Value>| {
            if let Some(v) = v {
                mask_value(v);
            }
        };
        match self {
            Fact::NotSent { message, .. } => text(message),
            Fact::Answer(Answer::Approved { payment, device }) => {
                opt(device);
                if let Some(p) = payment {
                    // transaction_id and auth_code are the device's references (a refund
                    // needs the former intact); see `api::pan::is_reference_key`.
                    for f in [&mut p.method, &mut p.card_mask].into_iter().flatten() {
                        text(f);
                    }
                    opt(&mut p.receipt);
                }
            }
            Fact::Answer(Answer::Refused { message, device_code, device, .. }) => {
                text(message);
                opt(device_code);
                opt(device);
            }
            Fact::Lost { why, device } => {
                text(why);
                opt(device);
            }
            Fact::Unreadable { why, raw } => {
                text(why);
                mask_value(raw);
            }
            Fact::Pending { why, device, device_code } => {
                text(why);
                opt(device);
                opt(device_code);
            }
            Fact::Absent { why, .. } | Fact::CannotAsk { why } => text(why),
        }
    }

    /// A definite answer from the device (approved or refused).
    pub fn is_answer(&self) -> bool {
        matches!(self, Fact::Answer(_))
    }

    /// One line for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Fact::NotSent { message, .. } => format!("not sent: {message}"),
            Fact::Answer(Answer::Approved { .. }) => "approved".into(),
            Fact::Answer(Answer::Refused { message, .. }) => format!("refused: {message}"),
            Fact::Lost { why, .. } => format!("no answer: {why}"),
            Fact::Unreadable { why, .. } => format!("unusable answer: {why}"),
            Fact::Pending { why, .. } => format!("still running: {why}"),
            Fact::Absent { why, .. } => format!("no record: {why}"),
            Fact::CannotAsk { why } => format!("cannot be asked: {why}"),
        }
    }
}
