//! One worker per terminal: resumes what was running at start, then runs the queue one
//! command at a time, and keeps the retained terminal state true while idle.

use std::sync::Arc;

use serde_json::json;

use super::settle::{self, Entry, Outcome};
use super::{lock, Inner, Terminal};
use crate::api::{ErrorCode, Evt, FinalState, TerminalState};
use crate::drivers::OpContext;
use crate::store::{CmdState, StoreError};

pub(super) async fn run(inner: Arc<Inner>, t: Arc<Terminal>) {
    let resume: Vec<String> = std::mem::take(&mut *lock(&t.resume));
    for id in resume {
        if let Err(e) = run_one(&inner, &t, &id, true).await {
            tracing::error!(terminal = %t.id, id = %id, error = %e, "resume failed; will retry at next start");
        }
    }
    probe(&inner, &t).await;
    loop {
        let next = lock(&t.queue).pop_front();
        let id = match next {
            Some(id) => id,
            None => {
                tokio::select! {
                    biased;
                    _ = inner.shutdown.cancelled() => return,
                    _ = t.wake.notified() => continue,
                    _ = t.driver.changed() => {
                        probe(&inner, &t).await;
                        continue;
                    }
                    _ = tokio::time::sleep(inner.cfg.health_interval) => {
                        probe(&inner, &t).await;
                        continue;
                    }
                }
            }
        };
        if inner.shutdown.is_cancelled() {
            // Not started: it stays queued in the store and runs after the restart.
            return;
        }
        *lock(&t.running) = Some(id.clone());
        if let Err(e) = run_one(&inner, &t, &id, false).await {
            // The command stays `running`/`queued` in the store; a restart resumes it.
            tracing::error!(terminal = %t.id, id = %id, error = %e, "store failure while running a command");
        }
        *lock(&t.running) = None;
    }
}

async fn probe(inner: &Inner, t: &Terminal) {
    let h = t.driver.health().await;
    inner.set_terminal_state(t, h.state, Some(h.identity), h.error);
}

async fn run_one(inner: &Inner, t: &Terminal, id: &str, resuming: bool) -> Result<(), StoreError> {
    let Some(rec) = inner.store.get(id)? else {
        return Ok(());
    };
    let span =
        tracing::info_span!("command", id = %id, op = rec.cmd.op().as_str(), terminal = %t.id);
    // Instrumented, not entered: a guard held across an await would leak the span into
    // whatever else runs on this thread.
    tracing::Instrument::instrument(run_record(inner, t, id, rec, resuming), span).await
}

async fn run_record(
    inner: &Inner, t: &Terminal, id: &str, mut rec: crate::store::CommandRecord, resuming: bool,
) -> Result<(), StoreError> {
    if resuming {
        tracing::warn!(
            steps = rec.journal.len(),
            "resuming a command that was running when the agent stopped"
        );
        inner.set_terminal_state(t, TerminalState::Busy, None, None);
        let ctx = OpContext::new(rec, inner.store.clone(), inner.evt_tx.clone());
        return settle_and_finish(inner, t, ctx, Entry::Resume).await.map(|_| ());
    }
    if rec.state != CmdState::Queued {
        return Ok(());
    }
    let now = inner.cfg.clock.now();
    if super::deadline::passed(&rec, now) {
        // mqtt-api.md: not started on the device by its deadline → expired, device untouched.
        let outcome =
            Outcome::expired("deadline passed while queued; the terminal was not touched");
        return inner.finish(&mut rec, outcome).await;
    }
    rec.state = CmdState::Running;
    rec.started_at = Some(now);
    crate::stages::mark(id, "worker");
    let mut ctx = OpContext::new(rec, inner.store.clone(), inner.evt_tx.clone());
    // Not synced on its own: every driver journals durably before its first device step,
    // and that commit covers this too. A crash before it leaves the command `queued` (the
    // device untouched), and it simply runs after the restart.
    ctx.note("started", json!({ "terminal": t.id }))?;
    inner.set_terminal_state(t, TerminalState::Busy, None, None);
    let mut e = Evt::new(id, crate::api::Progress::InProgress);
    e.sub_state = Some("started".into());
    inner.evt(e);
    if settle_and_finish(inner, t, ctx, Entry::Live).await? {
        crate::faults::hit("worker:finished");
    }
    Ok(())
}

/// Settle the op with the device, then finish the record with its outcome (`true`). A
/// stop while the device was being asked leaves it `running` (`false`): the next start
/// resumes it.
async fn settle_and_finish(
    inner: &Inner, t: &Terminal, mut ctx: OpContext, entry: Entry,
) -> Result<bool, StoreError> {
    let Some(outcome) =
        settle::run(t.driver.as_ref(), &mut ctx, entry, &inner.shutdown, inner.cfg.clock.as_ref())
            .await
    else {
        tracing::warn!("stopping while the device was being asked; resumed at next start");
        return Ok(false);
    };
    let mut rec = ctx.record;
    note_error(inner, t, &outcome);
    inner.finish(&mut rec, outcome).await?;
    Ok(true)
}

/// After an operation, the terminal's retained state follows what the device showed.
fn note_error(inner: &Inner, t: &Terminal, o: &Outcome) {
    match &o.error {
        Some(e) if e.code == ErrorCode::DeviceUnavailable => {
            inner.set_terminal_state(t, TerminalState::Disconnected, None, Some(e.message.clone()))
        }
        // A device that refuses our credentials needs a person (e.g. Kaspi re-registration).
        Some(e) if o.state == FinalState::Unknown || e.code == ErrorCode::Unauthorized => {
            inner.set_terminal_state(t, TerminalState::Error, None, Some(e.message.clone()))
        }
        _ => inner.set_terminal_state(t, TerminalState::Connected, None, None),
    }
}
