//! Refund admission: a refund names a payment this agent ran (by `original`, or by
//! `transaction_id` + `method` when `security.allow_unreferenced_refunds` is on), on the
//! same terminal, succeeded, and never refunded beyond what was paid — counting refunds
//! still queued, running or `unknown` (`mqtt-api.md`: refund).

use super::Inner;
use crate::api::{Command, ErrorCode, Op};
use crate::store::{CmdState, CommandRecord, StoreError};

/// Records looked at to find the payment an unreferenced refund names.
const MAX_REFUND_SCAN: usize = 10_000;

impl Inner {
    /// The succeeded payment on the same terminal whose transaction id a refund names
    /// (looked for among the newest [`MAX_REFUND_SCAN`] records).
    pub(super) fn payment_by_transaction(
        &self, cmd: &crate::api::Command,
    ) -> Result<Option<String>, StoreError> {
        let Some(tx) = cmd.refund().and_then(|r| r.transaction_id.as_deref()) else {
            return Ok(None);
        };
        for r in self.store.recent().take(MAX_REFUND_SCAN) {
            let r = r?;
            let paid_by = r
                .result
                .as_ref()
                .and_then(|res| res.payment.as_ref())
                .and_then(|p| p.transaction_id.as_deref());
            if r.cmd.op() == Op::Payment
                && r.state == CmdState::Succeeded
                && r.cmd.terminal == cmd.terminal
                && paid_by == Some(tx)
            {
                return Ok(Some(r.cmd.id.to_string()));
            }
        }
        Ok(None)
    }

    /// Refund by `original`: the payment must be ours, on the same terminal, succeeded, and
    /// not over-refunded (counting refunds still running or unknown).
    pub(super) fn check_refund(
        &self, cmd: &mut Command, orig_id: &str,
    ) -> Result<Result<CommandRecord, (ErrorCode, String)>, StoreError> {
        let Some(orig) = self.store.get(orig_id)? else {
            return Ok(Err((
                ErrorCode::NotFound,
                format!("original payment {orig_id:?} is not known to this agent"),
            )));
        };
        if orig.cmd.op() != Op::Payment {
            return Ok(Err((
                ErrorCode::BadRequest,
                format!(
                    "field original: {orig_id:?} is a {}, not a payment",
                    orig.cmd.op().as_str()
                ),
            )));
        }
        if orig.cmd.terminal != cmd.terminal {
            return Ok(Err((
                ErrorCode::BadRequest,
                format!("field original: {orig_id:?} ran on another terminal"),
            )));
        }
        if orig.state != CmdState::Succeeded {
            return Ok(Err((
                ErrorCode::BadRequest,
                format!(
                    "field original: payment {orig_id:?} is {}, not succeeded",
                    orig.state.as_str()
                ),
            )));
        }
        let paid = orig.cmd.amount().unwrap_or(0);
        let mut committed = 0i64;
        for rid in &orig.refunds {
            if let Some(r) = self.store.get(rid)? {
                if matches!(
                    r.state,
                    CmdState::Queued | CmdState::Running | CmdState::Succeeded | CmdState::Unknown
                ) {
                    committed += r.cmd.amount().unwrap_or(0);
                }
            }
        }
        let amount = cmd.amount().unwrap_or(0);
        if amount > paid - committed {
            return Ok(Err((
                ErrorCode::InvalidAmount,
                format!(
                    "refund of {amount} exceeds what is left of payment {orig_id:?} ({} of {paid})",
                    paid - committed
                ),
            )));
        }
        let pay = orig.result.as_ref().and_then(|r| r.payment.clone()).unwrap_or_default();
        let currency = orig.cmd.currency().cloned();
        if let Some(r) = cmd.refund_mut() {
            r.transaction_id = pay.transaction_id;
            r.method = pay.method;
            if r.currency.is_none() {
                r.currency = currency;
            }
        }
        Ok(Ok(orig))
    }
}
