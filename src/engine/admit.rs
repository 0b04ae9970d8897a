//! Admission of a device op (payment, refund, device_info, fiscal_info): the terminal
//! exists and supports the op, the driver accepts the fields, no money hold is on, the
//! deadline has not passed, the refund is covered, the terminal's queue has room. Then the
//! record is written and queued; a sync makes it durable before the PUBACK (the intake's,
//! or, when the terminal was idle, the one of the worker's first journal step).

use super::{deadline, lock, After, Inner};
use crate::api::{ErrorCode, Evt, Op};
use crate::store::{CommandRecord, StoreError};

impl Inner {
    pub(super) fn accept_device_op(
        &self, rec: &mut CommandRecord,
    ) -> Result<Vec<After>, StoreError> {
        let tid = rec.cmd.terminal.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let Some(term) = self.terminals.get(&tid).cloned() else {
            return self.reject(
                rec,
                ErrorCode::UnknownTerminal,
                format!("terminal {tid:?} is not configured on this agent"),
            );
        };
        if !term.driver.supports(rec.cmd.op()) {
            return self.reject(
                rec,
                ErrorCode::UnsupportedOp,
                format!(
                    "{} terminals do not support {}",
                    term.driver.kind(),
                    rec.cmd.op().as_str()
                ),
            );
        }
        if let Err(r) = term.driver.validate(&rec.cmd) {
            return self.reject(rec, r.code, r.message);
        }
        if rec.cmd.op().moves_money() {
            if let Some(hold) = self.store.money_hold()? {
                // mqtt-api.md: Durability promise 7 — ids the damaged store held may not
                // all have been salvaged; a resent one must not run as new.
                return self.reject(
                    rec,
                    ErrorCode::StoreDamaged,
                    format!("the agent's store was found damaged at {} (moved aside to {}); money commands are refused until an operator reconciles the salvaged commands and runs `posbridge store acknowledge`", hold.since, hold.moved_aside),
                );
            }
        }
        if deadline::past_at_receipt(rec) {
            return self.reject(rec, ErrorCode::Expired, "expires_at is already past".into());
        }
        let mut original = None;
        if rec.cmd.op() == Op::Refund {
            let orig_id = match rec.cmd.refund().and_then(|r| r.original.as_ref()).map(|o| o.to_string()) {
                Some(o) => Some(o),
                None if !self.cfg.allow_unreferenced_refunds => {
                    return self.reject(
                        rec,
                        ErrorCode::Unauthorized,
                        "field original: required — a refund must name the payment this agent ran (security.allow_unreferenced_refunds is off)".into(),
                    )
                }
                // Still this agent's own payment? Then the over-refund check applies.
                None => self.payment_by_transaction(&rec.cmd)?,
            };
            if let Some(orig_id) = orig_id {
                match self.check_refund(&mut rec.cmd, &orig_id)? {
                    Ok(o) => original = Some(o),
                    Err((code, msg)) => return self.reject(rec, code, msg),
                }
            }
        }
        let (starts_now, position);
        {
            let mut q = lock(&term.queue);
            if q.len() >= self.cfg.queue_depth {
                drop(q);
                return self.reject(
                    rec,
                    ErrorCode::Busy,
                    format!(
                        "terminal {tid} already has {} commands queued (commands.queue_depth)",
                        self.cfg.queue_depth
                    ),
                );
            }
            let mut records: Vec<&CommandRecord> = vec![rec];
            if let Some(o) = original.as_mut() {
                o.refunds.push(rec.cmd.id.to_string());
            }
            if let Some(o) = original.as_ref() {
                records.push(o);
            }
            self.store.write(&records, &[])?;
            // The worker's first step commits again before touching the device, so even a
            // worker woken early never runs ahead of this record's durability.
            starts_now = q.is_empty() && lock(&term.running).is_none();
            q.push_back(rec.cmd.id.to_string());
            position = q.len();
        }
        // One progress event for the state the command enters: `accepted` when it starts
        // at once (the worker's `in_progress` follows), `queued` when it waits behind
        // others. Both say it is stored and acknowledged, and where it stands.
        // `position` was read under the lock that queued it: its place just after it joined.
        let detail = serde_json::json!({ "terminal": tid, "queue_position": position });
        let (state, go) = if starts_now {
            (crate::api::Progress::Accepted, After::Start(tid))
        } else {
            (crate::api::Progress::Queued, After::Wake(tid))
        };
        let mut evt = Evt::new(&rec.cmd.id, state);
        evt.detail = Some(detail);
        Ok(vec![After::Evt(evt), go])
    }
}
