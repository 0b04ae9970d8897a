//! Results on `{root}/result` and progress on `{root}/evt`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::{Op, Rejection};
use super::API_VERSION;

/// Final states (`mqtt-api.md`: Results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    Succeeded,
    Failed,
    Unknown,
    Rejected,
    Expired,
    Cancelled,
}

impl FinalState {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalState::Succeeded => "succeeded",
            FinalState::Failed => "failed",
            FinalState::Unknown => "unknown",
            FinalState::Rejected => "rejected",
            FinalState::Expired => "expired",
            FinalState::Cancelled => "cancelled",
        }
    }
}

/// Error codes of the contract. Each layer's errors are mapped to these once, at the
/// engine edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    UnknownTerminal,
    UnsupportedOp,
    InvalidAmount,
    Busy,
    Expired,
    NotFound,
    NotCancellable,
    DeviceUnavailable,
    DeviceError,
    Declined,
    CancelledByCustomer,
    Timeout,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_code: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            device_code: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_mask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Value>,
}

/// One final outcome. Optional parts are omitted from the wire when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub v: u8,
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    pub state: FinalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
    /// `status` answers: the target's stored record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Value>,
    /// `list` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// `ping` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Value>,
    /// First bytes of a payload that could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl ResultMsg {
    pub fn new(id: Option<String>, state: FinalState) -> Self {
        ResultMsg {
            v: API_VERSION,
            id,
            op: None,
            terminal: None,
            state,
            amount: None,
            currency: None,
            mode: None,
            payment: None,
            device: None,
            error: None,
            needs_reconciliation: false,
            target: None,
            items: None,
            agent: None,
            raw: None,
            started_at: None,
            finished_at: None,
        }
    }

    pub fn rejected(r: &Rejection) -> Self {
        let mut m = ResultMsg::new(r.id.clone(), FinalState::Rejected);
        m.op = r.op;
        m.terminal = r.terminal.clone();
        m.error = Some(ErrorBody::new(r.code, r.message.clone()));
        m.raw = r.raw.clone();
        m.finished_at = Some(super::ts(chrono::Utc::now()));
        m
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these plain types cannot fail; fall back to a minimal message anyway.
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"v":1,"state":"unknown"}"#.to_vec())
    }
}

/// Progress on `{root}/evt` (QoS 0, may be lost, never needed for correctness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evt {
    pub v: u8,
    pub id: String,
    /// `accepted`, `queued`, `in_progress`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    pub ts: String,
}

impl Evt {
    pub fn new(id: &str, state: &str) -> Self {
        Evt {
            v: API_VERSION,
            id: id.to_string(),
            state: state.to_string(),
            sub_state: None,
            detail: None,
            ts: super::ts(chrono::Utc::now()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_invalid_json_serialises_null_id() {
        let mut r = Rejection::new(ErrorCode::BadRequest, "payload is not valid JSON");
        r.raw = Some("{\"a".into());
        let v: Value = serde_json::from_slice(&ResultMsg::rejected(&r).to_bytes()).expect("json");
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["state"], "rejected");
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["raw"], "{\"a");
        assert_eq!(v["v"], 1);
        assert!(v.get("needs_reconciliation").is_none());
    }

    #[test]
    fn unknown_carries_needs_reconciliation() {
        let mut m = ResultMsg::new(Some("x".into()), FinalState::Unknown);
        m.needs_reconciliation = true;
        let v: Value = serde_json::from_slice(&m.to_bytes()).expect("json");
        assert_eq!(v["needs_reconciliation"], true);
        assert_eq!(v["state"], "unknown");
    }
}
