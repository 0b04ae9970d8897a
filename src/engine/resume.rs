//! Resume after a crash or stop (`mqtt-api.md`: Durability promise 6). At start every
//! unfinished command goes back where it was: queued ones to their terminal's queue,
//! running ones to their terminal's worker to resume first, engine ops (a `status` that
//! was asking a device, a `list`, a `cancel`) simply run again, and a device op whose
//! terminal left the configuration ends `unknown` if its request may have left, else
//! `rejected`. [`first_step`] is the resume decision for a money op: a request that may
//! have reached the device is never sent blindly again — the device is asked
//! ([`super::settle`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::settle::Outcome;
use super::{lock, queries, Inner};
use crate::api::{ErrorCode, Op};
use crate::store::{CmdState, CommandRecord, StoreError};

/// Hand unfinished commands back to their terminals (before the workers start).
pub(super) fn hand_back(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let unfinished = inner.store.unfinished()?;
    let mut orphans = Vec::new();
    for rec in unfinished {
        // Even when they name a terminal (a `list` filtered by terminal).
        let term = rec
            .cmd
            .terminal
            .as_ref()
            .filter(|_| !rec.cmd.op().answered_by_engine())
            .and_then(|t| inner.terminals.get(t.as_str()));
        match (rec.state, term) {
            (CmdState::Queued, Some(t)) => lock(&t.queue).push_back(rec.cmd.id.to_string()),
            (CmdState::Running, Some(t)) => lock(&t.resume).push(rec.cmd.id.to_string()),
            _ => orphans.push(rec),
        }
    }
    for rec in orphans {
        // Engine-level ops (a `status` query that was asking a device) simply run again;
        // device ops whose terminal left the configuration cannot be resumed.
        orphan(inner, rec);
    }
    Ok(())
}

/// What a device op does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstStep {
    /// Send the request to the device.
    Execute,
    /// The request may have reached the device before the agent stopped: ask the device
    /// what became of it, by the operation's own key.
    Ask,
    /// Died before the device could have seen it, and too late to start now.
    Expire,
}

/// The resume decision: `resuming` is true for an op found running at start.
pub(crate) fn first_step(rec: &CommandRecord, resuming: bool, now: DateTime<Utc>) -> FirstStep {
    let money = rec.cmd.op().moves_money();
    if resuming && money && rec.maybe_sent() {
        FirstStep::Ask
    } else if resuming && money && super::deadline::passed(rec, now) {
        FirstStep::Expire
    } else {
        FirstStep::Execute
    }
}

/// Unfinished at start with no terminal to run on.
fn orphan(inner: &Arc<Inner>, rec: CommandRecord) {
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        let id = rec.cmd.id.to_string();
        let r = async {
            match rec.cmd.op() {
                Op::Status => queries::run_query(&inner2, &id).await,
                Op::List => queries::run_list(&inner2, &id).await,
                Op::Cancel => super::cancel::run_cancel(&inner2, &id).await,
                _ => {
                    let mut rec = rec;
                    let o = if rec.state == CmdState::Running
                        && rec.cmd.op().moves_money()
                        && rec.maybe_sent()
                    {
                        Outcome::unknown(
                            ErrorCode::UnknownTerminal,
                            "terminal no longer configured; the outcome cannot be learned",
                            None,
                        )
                    } else {
                        Outcome::rejected(
                            ErrorCode::UnknownTerminal,
                            "terminal no longer configured",
                        )
                    };
                    inner2.finish(&mut rec, o).await
                }
            }
        }
        .await;
        if let Err(e) = r {
            tracing::error!(id = %id, error = %e, "could not settle an orphaned command");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str, sent: bool, expired: bool) -> CommandRecord {
        let extra = if op == "refund" { r#","original":"p-1""# } else { r#","currency":"AZN""# };
        let cmd = crate::api::parse_command(
            format!(r#"{{"v":1,"id":"c-1","op":"{op}","terminal":"t","amount":500{extra}}}"#)
                .as_bytes(),
            65536,
        )
        .expect("valid");
        let now = Utc::now();
        let deadline = now + chrono::Duration::seconds(if expired { -5 } else { 60 });
        let mut rec = CommandRecord::new(1, cmd, now, deadline);
        rec.state = CmdState::Running;
        rec.started_at = Some(now);
        if sent {
            rec.journal.push(crate::store::JournalEntry {
                step: "x_sending".into(),
                at: now,
                data: serde_json::Value::Null,
                sends: true,
            });
        }
        rec
    }

    #[test]
    fn a_request_that_may_have_left_is_asked_never_resent() {
        let now = Utc::now();
        for op in ["payment", "refund"] {
            // (sent, past deadline, resuming) → the first step.
            let cases = [
                // Whatever the deadline says: the device may have the money.
                ((true, false, true), FirstStep::Ask),
                ((true, true, true), FirstStep::Ask),
                // Never reached the device: too late → expired; in time → sent now.
                ((false, true, true), FirstStep::Expire),
                ((false, false, true), FirstStep::Execute),
                // Live (from the queue): always sent; the worker checked the deadline.
                ((false, false, false), FirstStep::Execute),
            ];
            for ((sent, late, resuming), want) in cases {
                let got = first_step(&record(op, sent, late), resuming, now);
                assert_eq!(got, want, "{op} sent={sent} late={late} resuming={resuming}");
            }
        }
    }
}
