//! Results on `{root}/result` and progress on `{root}/evt`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::{Op, Rejection};
use super::error::ErrorBody;
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

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentInfo {
    pub method: Option<String>,
    pub transaction_id: Option<String>,
    pub card_mask: Option<String>,
    pub auth_code: Option<String>,
    pub receipt: Option<Value>,
}

/// One final outcome. Optional parts are omitted from the wire when absent.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub v: u8,
    #[serialize_always]
    pub id: Option<String>,
    pub op: Option<Op>,
    pub terminal: Option<String>,
    pub state: FinalState,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub mode: Option<String>,
    pub payment: Option<PaymentInfo>,
    pub device: Option<Value>,
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_reconciliation: bool,
    /// `status` answers: the target's stored record.
    pub target: Option<Value>,
    /// `list` answers.
    pub items: Option<Vec<Value>>,
    /// `list` answers with more to read: pass it back as `cursor`.
    pub next: Option<String>,
    /// A raw device body was left out to keep the result within [`MAX_RESULT_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub device_truncated: bool,
    /// Even without device bodies the result was too large: only the outcome's own
    /// fields are here; `status` with this id gives the stored record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// `ping` answers.
    pub agent: Option<Value>,
    /// First bytes of a payload that could not be parsed.
    pub raw: Option<String>,
    pub started_at: Option<String>,
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
            next: None,
            device_truncated: false,
            truncated: false,
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

    /// Serialised within [`MAX_RESULT_BYTES`] (`mqtt-api.md`: Durability promise 9): raw
    /// device bodies go first (the result's own, and those inside a `status` target or
    /// `list` items), marked `device_truncated`; if that is not enough, everything but the
    /// outcome's own fields, marked `truncated`.
    pub fn to_bounded_bytes(&self) -> Vec<u8> {
        let b = self.to_bytes();
        if b.len() <= MAX_RESULT_BYTES {
            return b;
        }
        let mut m = self.clone();
        if m.device.take().is_some() {
            m.device_truncated = true;
        }
        if let Some(t) = &mut m.target {
            m.device_truncated |= strip_device_bodies(t);
        }
        for i in m.items.iter_mut().flatten() {
            m.device_truncated |= strip_device_bodies(i);
        }
        let b = m.to_bytes();
        if b.len() <= MAX_RESULT_BYTES {
            return b;
        }
        m.outcome_only().to_bytes()
    }

    /// The outcome's own fields only (id, op, terminal, state, amount, error, payment
    /// without its receipt, timestamps), marked `truncated`.
    fn outcome_only(&self) -> ResultMsg {
        let mut m = ResultMsg::new(self.id.clone(), self.state);
        m.op = self.op;
        m.terminal = self.terminal.clone();
        m.amount = self.amount;
        m.currency = self.currency.clone();
        m.mode = self.mode.clone();
        m.needs_reconciliation = self.needs_reconciliation;
        m.payment = self.payment.clone().map(|mut p| {
            p.receipt = None;
            p
        });
        m.error = self.error.clone().map(|mut e| {
            if e.message.len() > 1024 {
                let mut cut = 1024;
                while !e.message.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.message.truncate(cut);
            }
            e.device_code = None;
            e
        });
        m.started_at = self.started_at.clone();
        m.finished_at = self.finished_at.clone();
        m.device_truncated = self.device.is_some() || self.device_truncated;
        m.truncated = true;
        m
    }
}

/// The largest result the agent publishes (`mqtt-api.md`: Durability promise 9).
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// A stored payload that is larger than [`MAX_RESULT_BYTES`] (written by an older version,
/// or not a result at all) → a small result for the same id that never blocks the outbox.
pub fn shrink_payload(payload: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<ResultMsg>(payload) {
        Ok(r) => r.to_bounded_bytes(),
        Err(_) => {
            // Not even readable as a result: keep what identifies it.
            let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            let mut m = ResultMsg::new(
                v.get("id").and_then(Value::as_str).map(str::to_string),
                serde_json::from_value(v.get("state").cloned().unwrap_or(Value::Null))
                    .unwrap_or(FinalState::Unknown),
            );
            m.truncated = true;
            m.needs_reconciliation = m.state == FinalState::Unknown;
            m.to_bytes()
        }
    }
}

/// Drop the raw device bodies from a record summary (`result.device`,
/// `reconciled.device`), marking each. True if anything was dropped.
pub fn strip_device_bodies(summary: &mut Value) -> bool {
    let mut dropped = false;
    for key in ["result", "reconciled"] {
        if let Some(Value::Object(r)) = summary.get_mut(key) {
            if r.remove("device").is_some() {
                r.insert("device_truncated".into(), Value::Bool(true));
                dropped = true;
            }
        }
    }
    dropped
}

/// Progress on `{root}/evt` (QoS 0, may be lost, never needed for correctness).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evt {
    pub v: u8,
    pub id: String,
    pub state: super::states::Progress,
    pub sub_state: Option<String>,
    pub detail: Option<Value>,
    pub ts: String,
}

impl Evt {
    pub fn new(id: &str, state: super::states::Progress) -> Self {
        Evt {
            v: API_VERSION,
            id: id.to_string(),
            state,
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
    use crate::api::ErrorCode;

    fn big_device() -> Value {
        serde_json::json!({ "blob": "x".repeat(MAX_RESULT_BYTES) })
    }

    #[test]
    fn results_are_bounded_device_first_then_all_but_the_outcome() {
        let mut m = ResultMsg::new(Some("x".into()), FinalState::Succeeded);
        m.payment = Some(PaymentInfo { transaction_id: Some("t-1".into()), ..Default::default() });
        m.device = Some(big_device());
        let v: Value = serde_json::from_slice(&m.to_bounded_bytes()).expect("json");
        assert!(v.get("device").is_none());
        assert_eq!(v["device_truncated"], true);
        assert_eq!(v["payment"]["transaction_id"], "t-1");
        assert!(v.get("truncated").is_none());

        // A list whose items carry device bodies: the bodies go, the items stay.
        let mut l = ResultMsg::new(Some("l".into()), FinalState::Succeeded);
        l.items = Some(vec![
            serde_json::json!({"id": "a", "result": {"state": "succeeded", "device": big_device()}}),
        ]);
        let v: Value = serde_json::from_slice(&l.to_bounded_bytes()).expect("json");
        assert_eq!(v["items"][0]["id"], "a");
        assert_eq!(v["items"][0]["result"]["device_truncated"], true);

        // Too large even without device bodies: the outcome's fields only.
        let mut l = ResultMsg::new(Some("l2".into()), FinalState::Succeeded);
        l.items = Some(vec![serde_json::json!({"note": "y".repeat(MAX_RESULT_BYTES)})]);
        let b = l.to_bounded_bytes();
        assert!(b.len() < 4096);
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["id"], "l2");
        assert_eq!(v["state"], "succeeded");
    }

    #[test]
    fn oversize_stored_payloads_shrink_to_a_small_result_for_the_same_id() {
        let mut m = ResultMsg::new(Some("old".into()), FinalState::Unknown);
        m.needs_reconciliation = true;
        m.device = Some(big_device());
        let b = shrink_payload(&m.to_bytes());
        assert!(b.len() <= MAX_RESULT_BYTES);
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["id"], "old");
        assert_eq!(v["needs_reconciliation"], true);
        let junk = format!("{{\"id\":\"j\",\"state\":\"failed\",\"x\":\"{}\"", "z".repeat(10));
        let v: Value = serde_json::from_slice(&shrink_payload(junk.as_bytes())).expect("json");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["state"], "unknown", "unreadable: not guessed");
    }

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
