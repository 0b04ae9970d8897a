//! The IP terminal protocol's wire: request and answer types, error codes, and a pure
//! line codec (one JSON object per line). No I/O.

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest line either side accepts, terminator excluded (`ip-terminal.md`: max 64 KiB per line).
pub const MAX_LINE: usize = 64 * 1024;

/// The `version` a v1 terminal reports on `ping`.
pub const PROTOCOL_VERSION: &str = "1";

/// How much of a bad line an error message quotes.
const QUOTE_PREFIX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Pay {
        #[serde(rename = "ref")]
        r#ref: String,
        /// Minor units.
        amount: i64,
        currency: String,
    },
    Refund {
        #[serde(rename = "ref")]
        r#ref: String,
        transaction_id: String,
        /// Minor units.
        amount: i64,
    },
    Status {
        #[serde(rename = "ref")]
        r#ref: String,
    },
}

impl Request {
    /// The client reference the request carries (`None` for `ping`).
    pub fn reference(&self) -> Option<&str> {
        match self {
            Request::Ping => None,
            Request::Pay { r#ref, .. }
            | Request::Refund { r#ref, .. }
            | Request::Status { r#ref } => Some(r#ref),
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Pay { .. } => "pay",
            Request::Refund { .. } => "refund",
            Request::Status { .. } => "status",
        }
    }
}

/// One answer line. Every field but `ok` may be missing; unknown fields are ignored so a
/// newer terminal firmware does not break the driver.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(rename = "ref", default)]
    pub r#ref: Option<String>,
    pub transaction_id: Option<String>,
    pub approval_code: Option<String>,
    pub card_mask: Option<String>,
    pub terminal_id: Option<String>,
    pub version: Option<String>,
    pub error: Option<String>,
    pub message: Option<String>,
}

impl Response {
    /// The wire error code, if it is one protocol v1 names.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_deref().and_then(ErrorCode::from_wire)
    }

    /// The operation for this ref is still running: ask again (`status`).
    pub fn is_in_progress(&self) -> bool {
        !self.ok && self.error_code() == Some(ErrorCode::InProgress)
    }

    /// The terminal never saw this ref.
    pub fn is_not_found(&self) -> bool {
        !self.ok && self.error_code() == Some(ErrorCode::NotFound)
    }
}

/// Error codes of protocol v1. `in_progress`, `not_found`, `bad_request` and
/// `invalid_refund` come from the terminal's bookkeeping; the rest are the payment
/// failures the simulator draws from (`ip-terminal.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InProgress,
    NotFound,
    BadRequest,
    InvalidRefund,
    Declined,
    InsufficientFunds,
    CardExpired,
    CommunicationError,
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InProgress,
        ErrorCode::NotFound,
        ErrorCode::BadRequest,
        ErrorCode::InvalidRefund,
        ErrorCode::Declined,
        ErrorCode::InsufficientFunds,
        ErrorCode::CardExpired,
        ErrorCode::CommunicationError,
        ErrorCode::Timeout,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InProgress => "in_progress",
            ErrorCode::NotFound => "not_found",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRefund => "invalid_refund",
            ErrorCode::Declined => "declined",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::CardExpired => "card_expired",
            ErrorCode::CommunicationError => "communication_error",
            ErrorCode::Timeout => "timeout",
        }
    }

    pub fn from_wire(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("could not connect to the terminal: {0}")]
    Connect(#[source] io::Error),
    #[error("connecting to the terminal timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection unusable after an earlier error; reconnect")]
    Broken,
    #[error("no response from the terminal within {0:?}")]
    Timeout(Duration),
    #[error("terminal closed the connection")]
    Closed,
    #[error("I/O error talking to the terminal: {0}")]
    Io(#[from] io::Error),
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("malformed message: {0}")]
    BadResponse(String),
}

impl ProtoError {
    /// Whether the terminal may have received the request. `false` means the device is
    /// untouched and the request failed cleanly; `true` means the outcome is unknown
    /// until a `status` says otherwise.
    pub fn maybe_delivered(&self) -> bool {
        !matches!(self, ProtoError::Connect(_) | ProtoError::ConnectTimeout(_) | ProtoError::Broken)
    }
}

/// One request as a `\n`-terminated line.
pub fn encode_line(req: &Request) -> Vec<u8> {
    to_line(req)
}

/// One response as a `\n`-terminated line (the simulator's side).
pub fn encode_response(resp: &Response) -> Vec<u8> {
    to_line(resp)
}

fn to_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Both wire types are structs/enums of strings, integers and booleans: serde_json
    // fails only on non-string map keys or failing Serialize impls, neither exists here.
    let mut line = serde_json::to_vec(value).expect("wire types always serialize to JSON");
    line.push(b'\n');
    line
}

/// Parses one response line (terminator optional).
pub fn decode_response(line: &[u8]) -> Result<Response, ProtoError> {
    decode(line)
}

/// Parses one request line (terminator optional; the simulator's side).
pub fn decode_request(line: &[u8]) -> Result<Request, ProtoError> {
    decode(line)
}

fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ProtoError> {
    let line = strip_terminator(line);
    if line.len() > MAX_LINE {
        return Err(ProtoError::LineTooLong);
    }
    serde_json::from_slice(line)
        .map_err(|e| ProtoError::BadResponse(format!("{e}; line starts \"{}\"", quote(line))))
}

fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A short, escaped prefix of a line, safe to log.
pub fn quote(line: &[u8]) -> String {
    let end = line.len().min(QUOTE_PREFIX);
    let mut out = line[..end].escape_ascii().to_string();
    if line.len() > end {
        out.push_str("...");
    }
    out
}
