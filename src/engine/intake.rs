//! Command intake and durable-before-PUBACK (`mqtt-api.md`: Durability promise 1): a
//! batch of commands is validated and written, made durable with one sync (group commit),
//! and only then acknowledged to the broker, in arrival order; a failed sync acknowledges
//! nothing. Each payload is routed here: signature ([`crate::api::signature`]), parse,
//! duplicate id ([`super::dedup`]), binding to this agent ([`super::authorize`]), deadline
//! ([`super::deadline`]), then the engine's own ops ([`super::queries`]) or a device op's
//! admission ([`super::admit`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::settle::Outcome;
use super::{deadline, queries, After, Engine, Inner};
use crate::api::{parse_command, ErrorCode, FinalState, ResultMsg};
use crate::store::{CommandRecord, OutMsg, StoreError};

pub type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One command as received from the broker, with the means to acknowledge it.
pub struct Incoming {
    pub payload: Vec<u8>,
    /// Sends the PUBACK. Called only after the command is durable.
    pub ack: Box<dyn FnOnce() -> AckFuture + Send>,
    /// Its place in the bounded intake queue, given back when this is dropped.
    pub slot: Option<crate::bus::gate::Slot>,
    /// When it came off the connection ([`crate::stages::now`]; 0 when not recording).
    pub received: u64,
}

/// Most commands written under one sync.
const MAX_BATCH: usize = 256;

/// How long a batch that started a command waits for the worker's first commit to cover
/// it before committing on its own (the worker's usually comes within ~50 µs).
const SHARED_SYNC_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

impl Engine {
    /// Run the intake loop until the channel closes or shutdown is requested.
    pub async fn run_intake(
        &self, mut rx: mpsc::UnboundedReceiver<Incoming>,
        gate: std::sync::Arc<crate::bus::gate::Gate>,
    ) {
        let mut beat = tokio::time::interval(crate::systemd::BEAT_INTERVAL);
        loop {
            self.inner.beat.bump();
            let first = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = beat.tick() => continue,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.intake_batch(batch).await {
                // Nothing was acknowledged. A broker redelivers unacknowledged commands only
                // on a new connection: reconnect, or the agent would sit deaf once the
                // broker's inflight window fills. (A store that cannot sync stops the
                // agent instead: `agent::run`.)
                if self.inner.store.failure().is_some() {
                    // The agent is stopping on it; keep the connection for the `degraded`
                    // status. The restart's new connection brings the commands again.
                    tracing::error!(error = %e, "intake batch failed on a failed store; commands left unacknowledged");
                } else {
                    tracing::error!(error = %e, "intake batch failed; commands left unacknowledged; reconnecting so the broker delivers them again");
                    gate.force_reconnect();
                }
            }
        }
    }

    pub(crate) async fn intake_batch(&self, batch: Vec<Incoming>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut acks = Vec::with_capacity(batch.len());
        // Each command's place in the intake queue, given back once its PUBACK is asked
        // for (or the batch failed): the connection waits for an empty queue before it
        // reconnects after a flood (`bus::gate`).
        let mut slots = Vec::with_capacity(batch.len());
        let mut after: Vec<After> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for m in batch {
            inner.stats.commands_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            slots.push(m.slot);
            after.extend(inner.accept(&m.payload, m.received, &mut ids)?);
            acks.push(m.ack);
        }
        // A command for an idle terminal starts at once, and its worker commits its first
        // journal step before touching the device: that one sync can cover this batch too
        // (one sync less per payment, `docs/performance.md`). The progress events go
        // first, so that `accepted` and `queued` precede the worker's `in_progress`. If no
        // commit covers the batch soon (a driver that talks to its device before its
        // first step), the batch commits on its own.
        let merge = after.iter().any(|a| matches!(a, After::Start(_)));
        if merge {
            let at = inner.store.log_position();
            after.retain(|a| match a {
                After::Evt(e) => {
                    inner.evt(e.clone());
                    false
                }
                After::Start(t) => {
                    inner.wake(t);
                    false
                }
                _ => true,
            });
            inner.store.durable_soon(at, SHARED_SYNC_WAIT).await?;
        } else {
            inner.store.commit().await?;
        }
        crate::faults::hit("intake:stored");
        let durable = crate::stages::now();
        for ack in acks {
            ack().await;
        }
        drop(slots);
        let acked = crate::stages::now();
        for id in &ids {
            crate::stages::mark_at(id, "durable", durable);
            crate::stages::mark_at(id, "puback", acked);
        }
        inner.outbox_notify.notify_one();
        for a in after {
            match a {
                After::Evt(e) => inner.evt(e),
                After::Wake(t) | After::Start(t) => inner.wake(&t),
                After::Query(id) => {
                    spawn_answer(inner, id, "status", |i, id| Box::pin(queries::run_query(i, id)))
                }
                After::List(id) => {
                    spawn_answer(inner, id, "list", |i, id| Box::pin(queries::run_list(i, id)))
                }
                After::CancelRunning(id) => spawn_answer(inner, id, "cancel", |i, id| {
                    Box::pin(super::cancel::run_cancel(i, id))
                }),
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Wake terminal `tid`'s worker: it has a command queued.
    fn wake(&self, tid: &str) {
        if let Some(t) = self.terminals.get(tid) {
            t.wake.notify_one();
        }
    }

    /// Validate one payload and write what it leads to (record and/or outbox result).
    /// `ids` collects the ids of new commands (for the stage timestamps).
    fn accept(
        self: &Arc<Self>, payload: &[u8], received: u64, ids: &mut Vec<String>,
    ) -> Result<Vec<After>, StoreError> {
        if payload.len() > self.cfg.max_bytes * 2 + 1024 {
            // Far too big even for an envelope: refuse before decoding anything.
            return self.refuse(parse_command(payload, self.cfg.max_bytes).err());
        }
        let mut sig = None;
        let opened;
        let payload = if self.cfg.command_keys.is_empty() {
            payload
        } else {
            match crate::api::signature::open(payload, &self.cfg.command_keys) {
                Ok(o) => {
                    sig = Some(o.sig);
                    opened = o.command;
                    &opened[..]
                }
                Err(rej) => return self.refuse(Some(rej)),
            }
        };
        let cmd = match parse_command(payload, self.cfg.max_bytes) {
            Ok(c) => c,
            Err(rej) => {
                if let Some(id) = &rej.id {
                    if let Some(rec) = self.store.get(id)? {
                        return self.duplicate(&rec);
                    }
                }
                return self.refuse(Some(rej));
            }
        };
        let span = tracing::info_span!("command", id = %cmd.id, op = cmd.op().as_str(), terminal = ?cmd.terminal);
        let _g = span.enter();
        if let Some(rec) = self.store.get(&cmd.id)? {
            if let Err(rej) = self.same_signature(&rec, &sig, payload) {
                return self.refuse(Some(rej));
            }
            tracing::info!("duplicate id: answering from the store");
            return self.duplicate(&rec);
        }
        let now = self.cfg.clock.now();
        let misdirected = self.misdirected(&cmd, sig.is_some(), now);
        let expires_at = deadline::of(cmd.expires_at, now, self.cfg.default_ttl);
        let mut rec = CommandRecord::new(self.store.next_seq()?, cmd, now, expires_at);
        rec.sig = sig;
        tracing::info!("command received");
        if crate::stages::enabled() {
            crate::stages::mark_at(&rec.cmd.id, "received", received);
            ids.push(rec.cmd.id.to_string());
        }
        if let Some(why) = misdirected {
            return self.reject(&mut rec, ErrorCode::Unauthorized, why);
        }
        match rec.cmd.op() {
            op if op.answered_by_engine() => queries::answer(self, rec),
            _ => self.accept_device_op(&mut rec),
        }
    }

    /// A payload refused before it became a command: result with `"id": null`.
    pub(super) fn refuse(
        &self, rej: Option<crate::api::Rejection>,
    ) -> Result<Vec<After>, StoreError> {
        if let Some(rej) = rej {
            tracing::warn!(code = ?rej.code, error = %rej.message, "payload refused");
            self.stats.count(FinalState::Rejected);
            self.store.write(&[], &[OutMsg::result(&ResultMsg::rejected(&rej))])?;
        }
        Ok(vec![])
    }

    pub(super) fn reject(
        &self, rec: &mut CommandRecord, code: ErrorCode, msg: String,
    ) -> Result<Vec<After>, StoreError> {
        tracing::warn!(code = ?code, error = %msg, "command rejected");
        let o = if code == ErrorCode::Expired {
            Outcome::expired(msg)
        } else {
            Outcome::rejected(code, msg)
        };
        self.finalize(rec, o, &[])?;
        Ok(vec![])
    }
}

/// An engine op answered off the intake path (it asks a device, or scans the store).
type Answer = for<'a> fn(
    &'a Arc<Inner>,
    &'a str,
) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Run `answer` for command `id` as a tracked task; a store failure is logged (the command
/// stays `running` and the next start runs it again).
fn spawn_answer(inner: &Arc<Inner>, id: String, what: &'static str, answer: Answer) {
    let inner = inner.clone();
    let tasks = inner.tasks.clone();
    tasks.spawn(async move {
        if let Err(e) = answer(&inner, &id).await {
            tracing::error!(id = %id, error = %e, "{what} failed");
        }
    });
}
