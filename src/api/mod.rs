//! The MQTT contract (`mqtt-api.md`): message types, topics and validation. No I/O.

pub mod command;
pub mod error;
pub mod ids;
pub mod pan;
pub mod result;
pub mod signature;
pub mod states;
pub mod strict_json;
pub mod topics;

pub use command::{parse_command, Body, Command, ListQuery, Op, Refund, Rejection};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{Currency, Money, RequestId, TerminalId};
pub use result::{Evt, FinalState, PaymentInfo, ResultMsg};
pub use states::{Progress, TerminalState};
pub use topics::Topics;

/// The contract version every payload carries as `"v"`.
pub const API_VERSION: u8 = 1;

/// How many bytes of a bad payload are echoed back in `raw`.
pub const RAW_ECHO_BYTES: usize = 256;

/// `[A-Za-z0-9._:-]{1,64}` — request ids (`mqtt-api.md`: Commands).
pub fn is_valid_request_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `[A-Za-z0-9_-]{1,64}` — agent and terminal ids.
pub fn is_valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// RFC 3339 with millisecond precision, UTC (`Z`).
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
