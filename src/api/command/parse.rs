//! Parsing and validation of one payload from `{root}/cmd`, naming the offending field.
//!
//! Parsing goes through `serde_json::Value` first (one pass that also refuses a key given
//! twice, [`crate::api::strict_json::parse`]) so that a command with one bad field
//! still yields its `id` — the rejection can then be tied to the request instead of
//! being answered with `"id": null`. The checks shared by every op run first, then the
//! op's own: what it requires, in [`per_op`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{Command, Op, Rejection, Wire};
use crate::api::error::ErrorCode;
use crate::api::strict_json::Strict;
use crate::api::{is_valid_name, is_valid_request_id, API_VERSION};

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
    let value = crate::api::strict_json::parse(payload).map_err(|e| match e {
        Strict::Invalid(e) => Rejection::bad_payload(format!("payload is not valid JSON: {e}"), payload),
        Strict::Duplicate(key) => Rejection::bad_payload(
            format!("payload has the key {key} twice in one object (not accepted: readers disagree on which one counts)"),
            payload,
        ),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Rejection::bad_payload("payload is not a JSON object", payload));
    };

    let id = match obj.get("id") {
        Some(Value::String(s)) if is_valid_request_id(s) => s.clone(),
        Some(Value::String(_)) => {
            return Err(Rejection::bad_payload(
                "field id: must be 1-64 characters of [A-Za-z0-9._:-]",
                payload,
            ))
        }
        Some(_) => return Err(Rejection::bad_payload("field id: expected a string", payload)),
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
            return Err(fail("field terminal: must be 1-64 characters of [A-Za-z0-9_-]".into()));
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
    if agent.as_deref().is_some_and(|a| !is_valid_name(a)) {
        return Err(fail(
            "field agent: must be an agent_id, 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    if cursor.as_deref().is_some_and(|c| c.parse::<u64>().is_err()) {
        return Err(fail("field cursor: not a value this agent gave as `next`".into()));
    }
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(l) if (1..=500).contains(&l) => Some(l as u32),
            _ => return Err(fail("field limit: expected an integer from 1 to 500".into())),
        },
        Some(_) => return Err(fail("field limit: expected an integer from 1 to 500".into())),
    };

    // Per-op requirements (mqtt-api.md: Per op).
    let need = |present: bool, field: &str| {
        if present {
            Ok(())
        } else {
            Err(fail(format!("field {field}: required for op {}", op.as_str())))
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
    let wire = Wire {
        id: id.clone(),
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
    };
    // Every requirement of the op was checked above, so the typed form always exists.
    Command::try_from(wire).map_err(fail)
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
        Some(s) if !is_valid_request_id(&s) => {
            Err(format!("field {key}: must be a request id (1-64 characters of [A-Za-z0-9._:-])"))
        }
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
            Some(_) => Err(format!("field {key}: must be a positive integer (minor units)")),
            None => Err(format!("field {key}: expected an integer in minor units, got {n}")),
        },
        Some(_) => Err(format!("field {key}: expected an integer in minor units")),
    }
}
