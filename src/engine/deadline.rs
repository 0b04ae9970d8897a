//! Deadlines (`mqtt-api.md`: Deadlines). Every command has one: its `expires_at`, or
//! `commands.default_ttl` after receipt. A device op not started on the device by then ends
//! `expired` with the device untouched — refused at intake when already past, expired in
//! the queue, or at resume when the agent died before the device could have seen it. Once
//! a request may have reached the device the deadline no longer decides anything: only
//! the device's answer does ([`super::settle`]). A signed command must carry its own
//! deadline, at most `security.max_command_age` ahead of receipt.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::CommandRecord;

/// The deadline of a command received at `received`.
pub(super) fn of(
    expires_at: Option<DateTime<Utc>>, received: DateTime<Utc>, default_ttl: Duration,
) -> DateTime<Utc> {
    expires_at.unwrap_or_else(|| {
        received + chrono::Duration::from_std(default_ttl).unwrap_or(chrono::Duration::seconds(120))
    })
}

/// Already past when it arrived: refused at intake.
pub(super) fn past_at_receipt(rec: &CommandRecord) -> bool {
    rec.expires_at <= rec.received_at
}

/// Past at `now`: a command not yet started on the device may no longer start.
pub(super) fn passed(rec: &CommandRecord, now: DateTime<Utc>) -> bool {
    now > rec.expires_at
}

/// Why a signed command's deadline is not acceptable, if it is not: missing, or more than
/// `max_age` ahead of receipt (a captured envelope must not stay usable for long).
pub(super) fn signed_problem(
    expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>, max_age: Duration,
) -> Option<String> {
    let max = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::minutes(15));
    match expires_at {
        None => Some("field expires_at: required in a signed command".into()),
        Some(e) if e > now + max => Some(format!(
            "field expires_at: more than security.max_command_age ({} s) ahead of receipt",
            max.num_seconds()
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ttl_applies_only_without_expires_at() {
        let t0 = Utc::now();
        let ttl = Duration::from_secs(120);
        assert_eq!(of(None, t0, ttl), t0 + chrono::Duration::seconds(120));
        let own = t0 + chrono::Duration::seconds(5);
        assert_eq!(of(Some(own), t0, ttl), own);
    }

    #[test]
    fn a_signed_deadline_is_required_and_near() {
        let t0 = Utc::now();
        let max = Duration::from_secs(900);
        assert!(signed_problem(None, t0, max).is_some());
        assert!(signed_problem(Some(t0 + chrono::Duration::minutes(14)), t0, max).is_none());
        let far = signed_problem(Some(t0 + chrono::Duration::minutes(16)), t0, max);
        assert!(far.is_some_and(|m| m.contains("max_command_age")));
    }
}
