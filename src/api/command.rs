//! Commands on `{root}/cmd`: parsing and validation that names the offending field.
//!
//! Parsing goes through `serde_json::Value` first so that a command with one bad field
//! still yields its `id` — the rejection can then be tied to the request instead of
//! being answered with `"id": null`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ErrorCode;
use super::{is_valid_name, is_valid_request_id, API_VERSION, RAW_ECHO_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Payment,
    Refund,
    Cancel,
    Status,
    List,
    DeviceInfo,
    FiscalInfo,
    Ping,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "payment" => Op::Payment,
            "refund" => Op::Refund,
            "cancel" => Op::Cancel,
            "status" => Op::Status,
            "list" => Op::List,
            "device_info" => Op::DeviceInfo,
            "fiscal_info" => Op::FiscalInfo,
            "ping" => Op::Ping,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Payment => "payment",
            Op::Refund => "refund",
            Op::Cancel => "cancel",
            Op::Status => "status",
            Op::List => "list",
            Op::DeviceInfo => "device_info",
            Op::FiscalInfo => "fiscal_info",
            Op::Ping => "ping",
        }
    }

    /// Ops that run on a terminal's queue and touch its device.
    pub fn is_device_op(self) -> bool {
        matches!(
            self,
            Op::Payment | Op::Refund | Op::DeviceInfo | Op::FiscalInfo
        )
    }

    /// Ops that move money: their device steps are journalled before and after.
    pub fn moves_money(self) -> bool {
        matches!(self, Op::Payment | Op::Refund)
    }

    /// Ops the engine answers itself; they never go to a terminal's worker.
    pub fn answered_by_engine(self) -> bool {
        matches!(self, Op::Ping | Op::List | Op::Status | Op::Cancel)
    }
}

/// A validated command. Driver-specific payload fields (`basket`, `own_receipt`, `products`,
/// …) are kept in `extra` for the driver to validate and map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `list` filter: a state name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `list`: the `next` of a previous page, to continue after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The agent this command is meant for (required in signed commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// Why a command was refused before reaching any device.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The command's `id` when it had a usable one, else `None` (`"id": null`).
    pub id: Option<String>,
    pub op: Option<Op>,
    pub terminal: Option<String>,
    pub code: ErrorCode,
    pub message: String,
    /// First bytes of the payload when it could not be parsed at all.
    pub raw: Option<String>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            id: None,
            op: None,
            terminal: None,
            code,
            message: message.into(),
            raw: None,
        }
    }

    fn bad_payload(message: impl Into<String>, payload: &[u8]) -> Self {
        let mut r = Rejection::new(ErrorCode::BadRequest, message);
        r.raw = Some(raw_echo(payload));
        r
    }

    pub fn for_command(mut self, cmd: &Command) -> Self {
        self.id = Some(cmd.id.clone());
        self.op = Some(cmd.op);
        self.terminal = cmd.terminal.clone();
        self
    }
}

/// First `RAW_ECHO_BYTES` bytes of a payload as text (invalid UTF-8 replaced); JSON
/// serialisation escapes it on the way out.
pub fn raw_echo(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(RAW_ECHO_BYTES)];
    // Stored and published: never with a card number in it (mqtt-api.md 10).
    super::pan::mask_str(&String::from_utf8_lossy(cut)).into_owned()
}

/// Top-level fields a command may carry besides the common ones; anything else is a
/// `bad_request` naming the field, so a typo (`"ammount"`) never passes silently.
const DRIVER_FIELDS: &[&str] = &[
    "basket",
    "own_receipt",
    "display_code",
    "products",
    "customer",
    "methods",
    "skip_print_customer",
    "skip_print_merchant",
    "skip_payment_option_screen",
    "receipt",
    "description",
];

const COMMON_FIELDS: &[&str] = &[
    "v",
    "agent",
    "id",
    "op",
    "terminal",
    "expires_at",
    "amount",
    "currency",
    "original",
    "transaction_id",
    "method",
    "target",
    "state",
    "since",
    "limit",
    "cursor",
];

/// Parse and validate one payload from `{root}/cmd`.
pub fn parse_command(payload: &[u8], max_bytes: usize) -> Result<Command, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::bad_payload(
            format!(
                "payload is {} bytes, larger than commands.max_bytes ({max_bytes}); not parsed",
                payload.len()
            ),
            payload,
        ));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::bad_payload(format!("payload is not valid JSON: {e}"), payload))?;
    if let Some(key) = super::strict_json::duplicate_key(payload) {
        return Err(Rejection::bad_payload(
            format!("payload has the key {key} twice in one object (not accepted: readers disagree on which one counts)"),
            payload,
        ));
    }
    let Value::Object(mut obj) = value else {
        return Err(Rejection::bad_payload(
            "payload is not a JSON object",
            payload,
        ));
    };

    let id = match obj.get("id") {
        Some(Value::String(s)) if is_valid_request_id(s) => s.clone(),
        Some(Value::String(_)) => {
            return Err(Rejection::bad_payload(
                "field id: must be 1-64 characters of [A-Za-z0-9._:-]",
                payload,
            ))
        }
        Some(_) => {
            return Err(Rejection::bad_payload(
                "field id: expected a string",
                payload,
            ))
        }
        None => return Err(Rejection::bad_payload("field id: missing", payload)),
    };
    let fail = |msg: String| {
        let mut r = Rejection::new(ErrorCode::BadRequest, msg);
        r.id = Some(id.clone());
        r
    };

    match obj.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(API_VERSION as u64) => {}
        Some(other) => {
            return Err(fail(format!(
                "field v: unsupported API version {other}, expected {API_VERSION}"
            )))
        }
        None => return Err(fail(format!("field v: missing (expected {API_VERSION})"))),
    }
    let op = match obj.get("op") {
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| {
            fail(format!(
                "field op: unknown op {s:?} (payment, refund, cancel, status, list, device_info, fiscal_info, ping)"
            ))
        })?,
        Some(_) => return Err(fail("field op: expected a string".into())),
        None => return Err(fail("field op: missing".into())),
    };
    let fail = |msg: String| {
        let mut r = fail(msg);
        r.op = Some(op);
        r
    };

    for key in obj.keys() {
        if !COMMON_FIELDS.contains(&key.as_str()) && !DRIVER_FIELDS.contains(&key.as_str()) {
            return Err(fail(format!("field {key}: unknown field")));
        }
    }

    let terminal = opt_string(&obj, "terminal").map_err(&fail)?;
    if let Some(t) = &terminal {
        if !is_valid_name(t) {
            return Err(fail(
                "field terminal: must be 1-64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
    }
    let expires_at = opt_time(&obj, "expires_at").map_err(&fail)?;
    let amount = opt_amount(&obj, "amount").map_err(&fail)?;
    let currency = opt_string(&obj, "currency").map_err(&fail)?;
    if let Some(c) = &currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(fail(format!(
                "field currency: {c:?} is not an ISO 4217 code (3 capital letters)"
            )));
        }
    }
    let original = opt_request_id(&obj, "original").map_err(&fail)?;
    let transaction_id = opt_string(&obj, "transaction_id").map_err(&fail)?;
    let method = opt_string(&obj, "method").map_err(&fail)?;
    let target = opt_request_id(&obj, "target").map_err(&fail)?;
    let state = opt_string(&obj, "state").map_err(&fail)?;
    let since = opt_time(&obj, "since").map_err(&fail)?;
    let cursor = opt_string(&obj, "cursor").map_err(&fail)?;
    let agent = opt_string(&obj, "agent").map_err(&fail)?;
    if agent.as_deref().is_some_and(|a| !super::is_valid_name(a)) {
        return Err(fail(
            "field agent: must be an agent_id, 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if cursor.as_deref().is_some_and(|c| c.parse::<u64>().is_err()) {
        return Err(fail(
            "field cursor: not a value this agent gave as `next`".into(),
        ));
    }
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(l) if (1..=500).contains(&l) => Some(l as u32),
            _ => {
                return Err(fail(
                    "field limit: expected an integer from 1 to 500".into(),
                ))
            }
        },
        Some(_) => {
            return Err(fail(
                "field limit: expected an integer from 1 to 500".into(),
            ))
        }
    };

    // Per-op requirements (mqtt-api.md: Per op).
    let need = |present: bool, field: &str| {
        if present {
            Ok(())
        } else {
            Err(fail(format!(
                "field {field}: required for op {}",
                op.as_str()
            )))
        }
    };
    match op {
        Op::Payment => {
            need(terminal.is_some(), "terminal")?;
            need(amount.is_some(), "amount")?;
            need(currency.is_some(), "currency")?;
        }
        Op::Refund => {
            need(terminal.is_some(), "terminal")?;
            need(amount.is_some(), "amount")?;
            match (&original, &transaction_id, &method) {
                (Some(_), None, _) => {}
                (None, Some(_), Some(_)) => {}
                (Some(_), Some(_), _) => {
                    return Err(fail(
                        "field original: give either original or transaction_id + method, not both"
                            .into(),
                    ))
                }
                (None, Some(_), None) => need(false, "method")?,
                (None, None, _) => {
                    return Err(fail(
                        "field original: refund needs original, or transaction_id + method".into(),
                    ))
                }
            }
        }
        Op::Cancel | Op::Status => need(target.is_some(), "target")?,
        Op::DeviceInfo | Op::FiscalInfo => need(terminal.is_some(), "terminal")?,
        Op::List | Op::Ping => {}
    }
    if let Some(s) = &state {
        if op == Op::List && !LIST_STATES.contains(&s.as_str()) {
            return Err(fail(format!(
                "field state: unknown state {s:?} ({})",
                LIST_STATES.join(", ")
            )));
        }
    }

    let mut extra = Map::new();
    for key in DRIVER_FIELDS {
        if let Some(v) = obj.remove(*key) {
            extra.insert((*key).to_string(), v);
        }
    }
    Ok(Command {
        id,
        op,
        terminal,
        expires_at,
        amount,
        currency,
        original,
        transaction_id,
        method,
        target,
        state,
        since,
        limit,
        cursor,
        agent,
        extra,
    })
}

/// States a `list` may filter on: the running ones and the final ones.
pub const LIST_STATES: &[&str] = &[
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "unknown",
    "rejected",
    "expired",
    "cancelled",
];

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(format!("field {key}: must be 1-256 characters")),
        Some(_) => Err(format!("field {key}: expected a string")),
    }
}

fn opt_request_id(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    let s = opt_string(obj, key)?;
    match s {
        Some(s) if !is_valid_request_id(&s) => Err(format!(
            "field {key}: must be a request id (1-64 characters of [A-Za-z0-9._:-])"
        )),
        other => Ok(other),
    }
}

fn opt_time(obj: &Map<String, Value>, key: &str) -> Result<Option<DateTime<Utc>>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| format!("field {key}: not an RFC 3339 time ({e})")),
        Some(_) => Err(format!("field {key}: expected an RFC 3339 string")),
    }
}

fn opt_amount(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(a) if a > 0 => Ok(Some(a)),
            Some(_) => Err(format!(
                "field {key}: must be a positive integer (minor units)"
            )),
            None => Err(format!(
                "field {key}: expected an integer in minor units, got {n}"
            )),
        },
        Some(_) => Err(format!("field {key}: expected an integer in minor units")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, Rejection> {
        parse_command(s.as_bytes(), 65536)
    }

    #[test]
    fn payment_parses() {
        let c = parse(r#"{"v":1,"id":"pos-1","op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN","expires_at":"2026-11-22T13:05:00Z","own_receipt":true}"#).expect("valid");
        assert_eq!(c.op, Op::Payment);
        assert_eq!(c.amount, Some(1500));
        assert_eq!(c.extra.get("own_receipt"), Some(&Value::Bool(true)));
        assert!(c.expires_at.is_some());
    }

    #[test]
    fn invalid_json_has_null_id_and_raw() {
        let r = parse("{not json").expect_err("invalid");
        assert_eq!(r.id, None);
        assert_eq!(r.code, ErrorCode::BadRequest);
        assert_eq!(r.raw.as_deref(), Some("{not json"));
    }

    #[test]
    fn oversize_is_rejected_unparsed() {
        let big = format!(
            r#"{{"v":1,"id":"x","op":"ping","pad":"{}"}}"#,
            "a".repeat(2000)
        );
        let r = parse_command(big.as_bytes(), 1024).expect_err("too big");
        assert_eq!(r.id, None);
        assert!(r.message.contains("max_bytes"));
        assert_eq!(r.raw.map(|s| s.len()), Some(RAW_ECHO_BYTES));
    }

    #[test]
    fn wrong_type_names_the_field_and_keeps_id() {
        let r = parse(
            r#"{"v":1,"id":"a1","op":"payment","terminal":"t","amount":"12","currency":"KZT"}"#,
        )
        .expect_err("bad amount");
        assert_eq!(r.id.as_deref(), Some("a1"));
        assert!(r.message.starts_with("field amount"), "{}", r.message);
        let r = parse(
            r#"{"v":1,"id":"a1","op":"payment","terminal":"t","amount":12.5,"currency":"KZT"}"#,
        )
        .expect_err("fractional amount");
        assert!(r.message.starts_with("field amount"), "{}", r.message);
    }

    #[test]
    fn unknown_field_and_op_are_named() {
        let r = parse(r#"{"v":1,"id":"a1","op":"ping","ammount":1}"#).expect_err("typo");
        assert!(r.message.contains("ammount"));
        let r = parse(r#"{"v":1,"id":"a1","op":"charge"}"#).expect_err("op");
        assert!(r.message.starts_with("field op"));
    }

    #[test]
    fn per_op_requirements() {
        assert!(
            parse(r#"{"v":1,"id":"a","op":"payment","terminal":"t","amount":1}"#)
                .expect_err("currency")
                .message
                .contains("currency")
        );
        assert!(parse(r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1}"#).is_err());
        assert!(parse(
            r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1,"original":"p1"}"#
        )
        .is_ok());
        assert!(parse(
            r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1,"transaction_id":"x"}"#
        )
        .expect_err("method")
        .message
        .contains("method"));
        assert!(parse(r#"{"v":1,"id":"a","op":"cancel"}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"list","limit":501}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"list","state":"bogus"}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"ping"}"#).is_ok());
    }

    #[test]
    fn version_and_id_rules() {
        assert!(parse(r#"{"id":"a","op":"ping"}"#).is_err());
        assert!(parse(r#"{"v":2,"id":"a","op":"ping"}"#).is_err());
        let r = parse(r#"{"v":1,"id":"has space","op":"ping"}"#).expect_err("id");
        assert_eq!(r.id, None);
        let r = parse(r#"{"v":1,"id":7,"op":"ping"}"#).expect_err("id type");
        assert_eq!(r.id, None);
        assert!(parse(r#"[1,2]"#).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: never a panic, and an error always carries a bad_request-class code
        /// and a message.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match parse_command(&bytes, 1024) {
                Ok(c) => prop_assert!(crate::api::is_valid_request_id(&c.id)),
                Err(r) => {
                    prop_assert!(!r.message.is_empty());
                    prop_assert!(r.raw.as_ref().is_none_or(|s| s.len() <= RAW_ECHO_BYTES * 3));
                }
            }
        }

        /// Well-formed payments parse back to what was sent.
        #[test]
        fn valid_payments_round_trip(
            id in "[A-Za-z0-9._:-]{1,64}",
            term in "[A-Za-z0-9_-]{1,64}",
            amount in 1i64..=i64::MAX,
            cur in "[A-Z]{3}",
        ) {
            let v = serde_json::json!({"v":1,"id":id,"op":"payment","terminal":term,"amount":amount,"currency":cur});
            let c = parse_command(v.to_string().as_bytes(), 65536).expect("valid");
            prop_assert_eq!(c.id, id);
            prop_assert_eq!(c.amount, Some(amount));
            prop_assert_eq!(c.terminal, Some(term));
        }

        /// Mutating one field of a valid command to a value of the wrong type is refused
        /// with that field named.
        #[test]
        fn wrong_types_name_the_field(field in prop::sample::select(vec!["amount", "currency", "terminal", "expires_at", "op"])) {
            let mut v = serde_json::json!({"v":1,"id":"p","op":"payment","terminal":"t","amount":5,"currency":"KZT"});
            v[field] = serde_json::json!([1]);
            let r = parse_command(v.to_string().as_bytes(), 65536).expect_err("wrong type");
            let prefix = format!("field {field}");
            prop_assert!(r.message.starts_with(&prefix), "{}", r.message);
        }
    }
}
