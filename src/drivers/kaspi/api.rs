//! Kaspi Smart POS API v2 wire types and pure conversions (`kaspi.md`): the response
//! envelope, status data, cheque fields, tokens, amounts. No I/O.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::api::PaymentInfo;

/// `statusCode` values the seed names (`kaspi.md`: Response envelope).
pub mod code {
    /// Success.
    pub const OK: i64 = 0;
    /// `actualize` could not reach Kaspi.
    pub const NO_INTERNET: i64 = 100;
    /// Unknown `processId`, or older than 24 h.
    pub const PROCESS_NOT_FOUND: i64 = 101;
    /// The transaction's pay method cannot be actualized.
    pub const UNSUPPORTED_METHOD: i64 = 102;
    /// Already final (fail or success): nothing to actualize.
    pub const UNABLE_TO_ACTUALIZE: i64 = 103;
    /// No transaction for the `processId`.
    pub const TRANSACTION_NOT_FOUND: i64 = 104;
    /// A service error; `data.message` says more.
    pub const SERVICE_ERROR: i64 = 105;
    /// Kaspi has blocked payments on this register.
    pub const PAYMENTS_BLOCKED: i64 = 106;
    /// Another operation is still running on the terminal.
    pub const LAST_OPERATION_RUNNING: i64 = 107;
    /// The transaction could not be started.
    pub const START_FAILED: i64 = 108;
    /// Any other error.
    pub const GENERIC: i64 = 999;
}

/// How much of an odd body an error message quotes.
const QUOTE: usize = 120;

/// What the terminal answered, when it was not a usable success.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ApiError {
    /// HTTP 401: missing/bad token or the session must be renewed.
    #[error("HTTP 401 from the terminal: {0}")]
    Unauthorized(String),
    /// HTTP 403: the token is past its `expirationDate`.
    #[error("HTTP 403 from the terminal: the access token has expired")]
    Forbidden,
    /// A well-formed error envelope (`statusCode` ≠ 0).
    #[error("terminal error {code} (HTTP {http}): {text}{}", message.as_deref().map(|m| format!(" — {m}")).unwrap_or_default())]
    Device {
        http: u16,
        code: i64,
        text: String,
        /// `data.message` (105 and friends).
        message: Option<String>,
    },
    /// Not the envelope the seed documents.
    #[error("unexpected answer from the terminal (HTTP {http}): {detail}")]
    BadBody { http: u16, detail: String },
}

impl ApiError {
    pub fn device_code(&self) -> Option<i64> {
        match self {
            ApiError::Device { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Unauthorized(_) | ApiError::Forbidden)
    }
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(QUOTE).collect();
    if text.chars().count() > QUOTE {
        s.push('…');
    }
    format!("{s:?}")
}

/// Unwrap the v2 envelope: `Ok(data)` for `statusCode: 0`, else the error it names.
pub fn parse_envelope(http: u16, body: &[u8]) -> Result<Value, ApiError> {
    if http == 403 {
        return Err(ApiError::Forbidden);
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let obj = parsed.as_ref().and_then(Value::as_object);
    if http == 401 {
        let text = obj
            .and_then(|o| o.get("errorText"))
            .and_then(Value::as_str)
            .unwrap_or("Authorization failed");
        return Err(ApiError::Unauthorized(text.to_string()));
    }
    let Some(obj) = obj else {
        let detail = if body.is_empty() {
            "empty body".to_string()
        } else {
            format!("not a JSON object: {}", quote(body))
        };
        return Err(ApiError::BadBody { http, detail });
    };
    let Some(status_code) = obj.get("statusCode").and_then(as_i64) else {
        return Err(ApiError::BadBody {
            http,
            detail: format!("no numeric statusCode: {}", quote(body)),
        });
    };
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    if status_code != code::OK {
        let text = obj.get("errorText").and_then(Value::as_str).unwrap_or("").to_string();
        let message = data.get("message").and_then(Value::as_str).map(str::to_string);
        return Err(ApiError::Device { http, code: status_code, text, message });
    }
    if !(200..300).contains(&http) {
        return Err(ApiError::BadBody {
            http,
            detail: format!("statusCode 0 with HTTP {http}: {}", quote(body)),
        });
    }
    if !data.is_object() {
        return Err(ApiError::BadBody {
            http,
            detail: format!("statusCode 0 without a data object: {}", quote(body)),
        });
    }
    Ok(data)
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Ids arrive as strings in the seed; accept numbers too.
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a non-empty id, got {other}"))),
    }
}

fn opt_id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn parse_data<T: for<'de> Deserialize<'de>>(what: &str, data: &Value) -> Result<T, ApiError> {
    T::deserialize(data)
        .map_err(|e| ApiError::BadBody { http: 200, detail: format!("{what}: {e}") })
}

/// `/v2/payment` and `/v2/refund` answer: the process to poll.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Started {
    #[serde(rename = "processId", deserialize_with = "id_string")]
    pub process_id: String,
}

impl Started {
    pub fn parse(data: &Value) -> Result<Started, ApiError> {
        parse_data("payment answer", data)
    }
}

/// `status` of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessStatus {
    Wait,
    Success,
    Fail,
    Unknown,
}

/// `/v2/status` and `/v2/actualize` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusData {
    #[serde(rename = "processId", default, deserialize_with = "opt_id_string")]
    pub process_id: Option<String>,
    pub status: ProcessStatus,
    #[serde(rename = "subStatus", default)]
    pub sub_status: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(rename = "transactionId", default, deserialize_with = "opt_id_string")]
    pub transaction_id: Option<String>,
    #[serde(rename = "chequeInfo", default)]
    pub cheque_info: Option<Map<String, Value>>,
    #[serde(rename = "addInfo", default)]
    pub add_info: Option<Map<String, Value>>,
    /// The whole `data` object, kept for the result's `device`.
    #[serde(skip)]
    pub raw: Value,
}

impl StatusData {
    pub fn parse(data: &Value) -> Result<StatusData, ApiError> {
        let mut s: StatusData = parse_data("status answer", data)?;
        s.raw = data.clone();
        Ok(s)
    }

    fn cheque(&self, key: &str) -> Option<String> {
        self.cheque_info.as_ref().and_then(|c| c.get(key)).and_then(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }

    /// `qr` or `card` as the cheque says.
    pub fn method(&self) -> Option<String> {
        self.cheque("method").map(|m| m.to_ascii_lowercase())
    }

    /// The id a refund needs: `orderNumber` for QR, `rrn` for card (`kaspi.md`: /v2/refund),
    /// falling back to `transactionId`.
    pub fn refund_id(&self) -> Option<String> {
        let by_method = match self.method().as_deref() {
            Some("qr") => self.cheque("orderNumber"),
            Some("card") => self.cheque("rrn"),
            _ => None,
        };
        by_method.or_else(|| self.transaction_id.clone())
    }

    /// The result's `payment` for a `success`.
    pub fn payment_info(&self) -> PaymentInfo {
        let mut receipt = Map::new();
        if let Some(c) = &self.cheque_info {
            for (k, v) in c {
                receipt.insert(snake_case(k), v.clone());
            }
            if let Some(t) = c.get("amount").and_then(Value::as_str).and_then(cheque_amount) {
                receipt.insert("amount_tenge".into(), t.into());
            }
        }
        if let Some(a) = &self.add_info {
            let add: Map<String, Value> =
                a.iter().map(|(k, v)| (snake_case(k), v.clone())).collect();
            receipt.insert("add_info".into(), Value::Object(add));
        }
        PaymentInfo {
            method: self.method(),
            transaction_id: self.refund_id(),
            card_mask: self.cheque("cardMask"),
            auth_code: self.cheque("authorizationCode"),
            receipt: (!receipt.is_empty()).then_some(Value::Object(receipt)),
        }
    }
}

/// `storeName` → `store_name`, `LoanTerm` → `loan_term`.
pub fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, ch) in key.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The terminal's identity (`/v2/deviceinfo`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceInfo {
    #[serde(rename = "posNum", default, deserialize_with = "opt_id_string")]
    pub pos_num: Option<String>,
    #[serde(rename = "serialNum", default, deserialize_with = "opt_id_string")]
    pub serial_num: Option<String>,
    #[serde(rename = "terminalId", default, deserialize_with = "opt_id_string")]
    pub terminal_id: Option<String>,
}

impl DeviceInfo {
    pub fn parse(data: &Value) -> Result<DeviceInfo, ApiError> {
        parse_data("deviceinfo answer", data)
    }

    pub fn identity(&self) -> Value {
        serde_json::json!({
            "serial": self.serial_num,
            "terminal_id": self.terminal_id,
            "pos_num": self.pos_num,
        })
    }
}

/// `/v2/register` and `/v2/revoke` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenAnswer {
    #[serde(rename = "accessToken")]
    pub access_token: String,
    #[serde(rename = "refreshToken")]
    pub refresh_token: String,
    #[serde(rename = "expirationDate")]
    pub expiration_date: String,
}

impl TokenAnswer {
    pub fn parse(data: &Value) -> Result<TokenAnswer, ApiError> {
        let t: TokenAnswer = parse_data("token answer", data)?;
        if t.access_token.is_empty() || t.refresh_token.is_empty() {
            return Err(ApiError::BadBody {
                http: 200,
                detail: "token answer: empty accessToken or refreshToken".into(),
            });
        }
        Ok(t)
    }
}

/// The `expirationDate` format (`kaspi.md`: `MMM d, yyyy HH:mm:ss`).
pub const EXPIRATION_FORMAT: &str = "%b %-d, %Y %H:%M:%S";

/// `"Mar 7, 2023 15:02:56"` in the terminal's local time. The seed does not name the
/// zone; the terminal and the agent share the shop's clock zone, so it is read as the
/// agent's local time.
pub fn parse_expiration(s: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), "%b %d, %Y %H:%M:%S").ok()?;
    Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&Utc))
}

pub fn format_expiration(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format(EXPIRATION_FORMAT).to_string()
}

/// Why an amount cannot go to a Kaspi terminal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmountError {
    #[error("amount must be greater than 0 (got {0})")]
    NotPositive(i64),
    #[error("Kaspi terminals take whole tenge only: {0} tiyn is not a multiple of 100")]
    NotWholeTenge(i64),
}

/// Minor units (tiyn) → whole tenge (`kaspi.md`: amounts are whole tenge).
pub fn tenge_from_minor(minor: i64) -> Result<i64, AmountError> {
    if minor <= 0 {
        return Err(AmountError::NotPositive(minor));
    }
    if minor % 100 != 0 {
        return Err(AmountError::NotWholeTenge(minor));
    }
    Ok(minor / 100)
}

/// `"1 500 ₸"`, `"- 1 ₸"`, `"1 500 T"` → tenge, signed. Lenient: digits and a sign.
pub fn cheque_amount(s: &str) -> Option<i64> {
    let s = s.trim();
    let negative = s.starts_with('-') || s.starts_with('−');
    let mut digits = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else if ch == '.' || ch == ',' {
            // Tiyn never appear on Kaspi cheques; stop at a decimal mark.
            break;
        }
    }
    let v: i64 = digits.parse().ok()?;
    Some(if negative { -v } else { v })
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
