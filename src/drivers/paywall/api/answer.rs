//! Paywall's answers, parsed whatever the key casing (keys arrive lower-cased by
//! `cloud::classify`): the [`Envelope`] every PhysicalAPI route replies with, the
//! payments in its `result` ([`PaymentView`]), and what a `PaymentStatus` value means
//! ([`Status`]).

use serde::Deserialize;
use serde_json::Value;

/// The envelope every PhysicalAPI route answers with, from lower-cased keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub errorcode: Option<i64>,
    #[serde(default)]
    pub succeeded: Option<bool>,
    #[serde(default)]
    pub failed: Option<bool>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub clientmessage: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
}

/// One payment as `sync/sale`, `inquiry` and `list` describe it (lower-cased keys).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PaymentView {
    #[serde(default)]
    pub paymentrequestid: Option<String>,
    #[serde(default)]
    pub paymentrequestactivityid: Option<String>,
    #[serde(default)]
    pub paymentstatus: Option<i64>,
    #[serde(default)]
    pub merchantuniquecode: Option<String>,
}

impl Envelope {
    /// Parse a reply body (keys already lower-cased by `cloud::classify`).
    pub fn parse(body: &Value) -> Result<Envelope, String> {
        serde_json::from_value(body.clone())
            .map_err(|e| format!("answer does not have Paywall's shape: {e}"))
    }

    pub fn ok(&self) -> bool {
        self.succeeded == Some(true)
            && self.failed != Some(true)
            && self.errorcode.unwrap_or(0) == 0
    }

    /// A definite "no": Failed, or Succeeded=false with an error code.
    pub fn refused(&self) -> bool {
        self.failed == Some(true)
            || (self.succeeded == Some(false) && self.errorcode.is_some_and(|c| c != 0))
    }

    /// `result` as one payment (sale, cancel, inquiry).
    pub fn payment(&self) -> Option<PaymentView> {
        self.result.as_ref().and_then(|r| serde_json::from_value(r.clone()).ok())
    }

    /// `result` as a list of payments (`list`), or one payment wrapped.
    pub fn payments(&self) -> Vec<PaymentView> {
        match &self.result {
            Some(Value::Array(a)) => {
                a.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
            }
            Some(Value::Object(m)) => match m.get("items").or_else(|| m.get("payments")) {
                Some(Value::Array(a)) => {
                    a.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
                }
                _ => self.payment().into_iter().collect(),
            },
            _ => vec![],
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(c) = self.errorcode {
            parts.push(format!("ErrorCode {c}"));
        }
        if let Some(c) = &self.clientmessage {
            parts.push(c.clone());
        }
        if let Some(m) = &self.message {
            parts.push(m.clone());
        }
        if parts.is_empty() {
            "no error detail".into()
        } else {
            parts.join(": ")
        }
    }
}

/// What a `PaymentStatus` value means. Paywall does not publish the values, so they are a
/// table here (verified only against `posbridge sim paywall`; README "Terminal: paywall").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not yet received by the device: `sale/rollback` still possible.
    Waiting,
    /// On the device, the customer is paying.
    OnDevice,
    Succeeded,
    Cancelled,
    Failed,
    /// A value not in the table: treated as still running, never guessed final.
    Other(i64),
}

pub const STATUS_WAITING: i64 = 1;
pub const STATUS_ON_DEVICE: i64 = 2;
pub const STATUS_SUCCEEDED: i64 = 3;
pub const STATUS_CANCELLED: i64 = 4;
pub const STATUS_FAILED: i64 = 5;

impl Status {
    pub fn from_code(c: i64) -> Status {
        match c {
            STATUS_WAITING => Status::Waiting,
            STATUS_ON_DEVICE => Status::OnDevice,
            STATUS_SUCCEEDED => Status::Succeeded,
            STATUS_CANCELLED => Status::Cancelled,
            STATUS_FAILED => Status::Failed,
            other => Status::Other(other),
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Cancelled | Status::Failed)
    }
}
