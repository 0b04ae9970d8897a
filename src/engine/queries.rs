//! Ops the engine answers itself: `ping`, `list` and `status` (`cancel`: [`super::cancel`]).

use std::sync::Arc;

use serde_json::{json, Value};

use super::settle::{self, Outcome};
use super::After;
use super::Inner;
use crate::api::{ErrorCode, FinalState, Op};
use crate::store::{CmdState, CommandRecord, StoreError};

/// A field the answer carries besides the common ones.
enum Answer {
    None,
    Agent(Value),
    Target(Value),
}

pub(super) fn answer(inner: &Arc<Inner>, mut rec: CommandRecord) -> Result<Vec<After>, StoreError> {
    let (outcome, answer) = match rec.cmd.op() {
        Op::Ping => {
            let uptime = (inner.cfg.clock.now() - inner.started_at).num_seconds();
            let agent = json!({ "version": inner.cfg.version, "uptime_s": uptime, "started_at": crate::api::ts(inner.started_at) });
            (Outcome::succeeded(None, None), Answer::Agent(agent))
        }
        Op::List => {
            // Scanned off the intake path (a big store must not stall the intake past the
            // watchdog), at most LIST_CONCURRENCY at a time.
            rec.state = CmdState::Running;
            rec.started_at = Some(inner.cfg.clock.now());
            inner.store.write(&[&rec], &[])?;
            return Ok(vec![After::List(rec.cmd.id.to_string())]);
        }
        Op::Status => {
            let target = rec.cmd.target().map(|t| t.to_string()).unwrap_or_default();
            match inner.store.get(&target)? {
                None => (not_found(&target), Answer::None),
                Some(t)
                    if t.state == CmdState::Unknown
                        && t.reconciled.is_none()
                        && device_of(inner, &t).is_some() =>
                {
                    // Ask the device again (mqtt-api.md: status of an unknown outcome).
                    rec.state = CmdState::Running;
                    rec.started_at = Some(inner.cfg.clock.now());
                    inner.store.write(&[&rec], &[])?;
                    return Ok(vec![After::Query(rec.cmd.id.to_string())]);
                }
                Some(t) => (Outcome::succeeded(None, None), Answer::Target(t.summary())),
            }
        }
        Op::Cancel => return super::cancel::answer(inner, rec),
        _ => (Outcome::rejected(ErrorCode::UnsupportedOp, "not an engine op"), Answer::None),
    };
    inner.finalize_with(&mut rec, outcome, &[], |res| match answer {
        Answer::None => {}
        Answer::Agent(v) => res.agent = Some(v),
        Answer::Target(v) => res.target = Some(v),
    })?;
    Ok(vec![])
}

pub(super) fn not_found(target: &str) -> Outcome {
    Outcome::rejected(ErrorCode::NotFound, format!("no command {target:?} is known to this agent"))
}

/// Records one `list` page may look at; past this the page ends with `next` even if it
/// holds fewer items than asked (a bounded scan: the intake must not stall on a big store).
const MAX_SCAN: usize = 5_000;

/// Bytes of items one page may carry, below the result limit with room for the envelope.
const PAGE_BYTES: usize = crate::api::result::MAX_RESULT_BYTES - 16 * 1024;

/// One page of recent commands, newest first, and the cursor of the next page. Items are
/// summaries without raw device bodies (`status` gives one command whole).
fn list(inner: &Inner, rec: &CommandRecord) -> Result<(Vec<Value>, Option<String>), StoreError> {
    let query = match &rec.cmd.body {
        crate::api::Body::List(q) => q.clone(),
        _ => Default::default(),
    };
    let limit = query.limit.unwrap_or(50) as usize;
    // The cursor is the `seq` of the first record not yet returned.
    let below: Option<u64> = query.cursor;
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut scanned = 0usize;
    for r in inner.store.recent() {
        let r = r?;
        if below.is_some_and(|b| r.seq > b) {
            continue;
        }
        if r.cmd.id == rec.cmd.id {
            // The list command itself (recorded before its scan) is not an item.
            continue;
        }
        if items.len() >= limit {
            return Ok((items, Some(r.seq.to_string())));
        }
        scanned += 1;
        if scanned > MAX_SCAN {
            return Ok((items, Some(r.seq.to_string())));
        }
        if let Some(since) = query.since {
            if r.received_at < since {
                // Newest first: everything after this is older still.
                break;
            }
        }
        if rec.cmd.terminal.as_ref().is_some_and(|t| r.cmd.terminal.as_ref() != Some(t)) {
            continue;
        }
        if query.state.as_ref().is_some_and(|s| r.state.as_str() != s) {
            continue;
        }
        let mut item = r.summary();
        crate::api::result::strip_device_bodies(&mut item);
        let size = serde_json::to_vec(&item).map(|v| v.len()).unwrap_or(0);
        if bytes + size > PAGE_BYTES && !items.is_empty() {
            return Ok((items, Some(r.seq.to_string())));
        }
        bytes += size;
        items.push(item);
    }
    Ok((items, None))
}

pub(super) fn device_of(inner: &Inner, rec: &CommandRecord) -> Option<crate::drivers::DynDriver> {
    rec.cmd
        .terminal
        .as_ref()
        .and_then(|t| inner.terminals.get(t.as_str()))
        .map(|t| t.driver.clone())
}

/// `list` scans at once at most.
const LIST_CONCURRENCY: usize = 2;
static LIST_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LIST_CONCURRENCY);

/// Answer a `list` command: scan (on a blocking thread), then finalize and publish.
pub(super) async fn run_list(inner: &Arc<Inner>, list_id: &str) -> Result<(), StoreError> {
    let _permit = LIST_PERMITS.acquire().await;
    let Some(mut rec) = inner.store.get(list_id)? else {
        return Ok(());
    };
    let scan = {
        let (inner, rec) = (inner.clone(), rec.clone());
        tokio::task::spawn_blocking(move || list(&inner, &rec))
            .await
            .map_err(|e| StoreError::Sync(format!("list scan: {e}")))??
    };
    let (items, next) = scan;
    inner
        .finish_with(&mut rec, Outcome::succeeded(None, None), |res| {
            res.items = Some(items);
            res.next = next;
        })
        .await
}

/// `status` of an `unknown` command: ask the device, then answer with what it said.
pub(super) async fn run_query(inner: &Inner, status_id: &str) -> Result<(), StoreError> {
    let Some(mut rec) = inner.store.get(status_id)? else {
        return Ok(());
    };
    let target_id = rec.cmd.target().map(|t| t.to_string()).unwrap_or_default();
    let Some(mut target) = inner.store.get(&target_id)? else {
        return inner
            .finish(
                &mut rec,
                Outcome::rejected(ErrorCode::NotFound, format!("no command {target_id:?}")),
            )
            .await;
    };
    let learned = match device_of(inner, &target) {
        Some(d) => d.query(&target).await,
        None => None,
    };
    let learned = learned.map(|mut f| {
        f.mask_card_numbers();
        f
    });
    // Only a definite answer reconciles; anything else leaves the target `unknown`.
    if let Some(crate::drivers::Fact::Answer(a)) = learned {
        let o = settle::answered(a);
        // The target keeps its one published `unknown` result; what the device says now is
        // recorded beside it and answered here.
        let mut r = crate::api::ResultMsg::new(Some(target_id.clone()), o.state);
        r.payment = o.payment;
        r.device = o.device;
        r.error = o.error;
        r.needs_reconciliation = o.state == FinalState::Unknown;
        r.finished_at = Some(crate::api::ts(inner.cfg.clock.now()));
        target.reconciled = Some(r);
        inner.store.write(&[&target], &[])?;
    }
    let summary = target.summary();
    inner
        .finish_with(&mut rec, Outcome::succeeded(None, None), |res| res.target = Some(summary))
        .await
}
