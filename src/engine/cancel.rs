//! `cancel` (`mqtt-api.md`: cancel): a command still queued is taken off its terminal's
//! queue and ends `cancelled`, the device untouched; a running one is cancelled only by a
//! device that can (the driver says), and then ends with its own outcome from its worker;
//! anything else is `not_cancellable`.

use std::sync::Arc;

use super::settle::Outcome;
use super::{lock, queries, After, Inner};
use crate::api::ErrorCode;
use crate::store::{CmdState, CommandRecord, StoreError};

pub(super) fn answer(inner: &Arc<Inner>, mut rec: CommandRecord) -> Result<Vec<After>, StoreError> {
    let target = rec.cmd.target().map(|t| t.to_string()).unwrap_or_default();
    let Some(mut t) = inner.store.get(&target)? else {
        inner.finalize(&mut rec, queries::not_found(&target), &[])?;
        return Ok(vec![]);
    };
    if dequeue(inner, &t) {
        let o = Outcome::cancelled(format!("cancelled while queued by command {}", rec.cmd.id));
        inner.finalize(&mut t, o, &[])?;
        let summary = t.summary();
        inner.finalize_with(&mut rec, Outcome::succeeded(None, None), &[&t], |res| {
            res.target = Some(summary)
        })?;
        return Ok(vec![]);
    }
    if !t.state.is_final() && queries::device_of(inner, &t).is_some_and(|d| d.can_cancel(&t)) {
        rec.state = CmdState::Running;
        rec.started_at = Some(inner.cfg.clock.now());
        inner.store.write(&[&rec], &[])?;
        return Ok(vec![After::CancelRunning(rec.cmd.id.to_string())]);
    }
    let why = if t.state.is_final() {
        format!("{target:?} already ended {}", t.state.as_str())
    } else {
        format!("{target:?} is already running on the terminal, which cannot cancel it; it goes on to its real outcome")
    };
    inner.finalize(&mut rec, Outcome::failed(ErrorCode::NotCancellable, why), &[])?;
    Ok(vec![])
}

/// Remove a queued command from its terminal's queue; false if it was not queued (already
/// running or finished). Queue membership, not the stored state, decides: the worker pops
/// under the same lock.
fn dequeue(inner: &Inner, t: &CommandRecord) -> bool {
    let Some(term) = t.cmd.terminal.as_ref().and_then(|tid| inner.terminals.get(tid.as_str()))
    else {
        return false;
    };
    let mut q = lock(&term.queue);
    let before = q.len();
    q.retain(|id| *id != *t.cmd.id);
    before != q.len()
}

/// `cancel` of a running command on a device that can cancel: ask it, answer with what
/// it said. The target ends with its own result from its worker.
pub(super) async fn run_cancel(inner: &Inner, cancel_id: &str) -> Result<(), StoreError> {
    let Some(mut rec) = inner.store.get(cancel_id)? else {
        return Ok(());
    };
    let target_id = rec.cmd.target().map(|t| t.to_string()).unwrap_or_default();
    let target = inner.store.get(&target_id)?;
    let outcome = match (&target, target.as_ref().and_then(|t| queries::device_of(inner, t))) {
        (Some(t), Some(d)) if !t.state.is_final() => match d.cancel_running(t).await {
            Ok(()) => Outcome::succeeded(None, None),
            Err(e) => Outcome::failed(ErrorCode::NotCancellable, "").with_error(e),
        },
        (Some(t), _) => Outcome::failed(
            ErrorCode::NotCancellable,
            format!("{target_id:?} already ended {}", t.state.as_str()),
        ),
        (None, _) => queries::not_found(&target_id),
    };
    inner.finish(&mut rec, outcome).await
}
