//! The contract's error words: the `error` object of a result and its codes. Used by the
//! command parser (refusals) and by results; depends on neither.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error codes of the contract (`mqtt-api.md`: Error codes). The engine's settle policy
/// (`engine::settle`) picks the code of every device outcome from the driver's `Fact`;
/// the parser and the engine's admission pick the codes of refusals.
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
    /// The store was found damaged at start: money commands wait for an operator.
    StoreDamaged,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    pub device_code: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into(), device_code: None }
    }
}
