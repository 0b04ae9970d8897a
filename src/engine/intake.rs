//! Command intake with group commit: a batch of commands is validated and written, made
//! durable with one sync, and only then acknowledged to the broker, in arrival order
//! (`mqtt-api.md`: Durability promise 1).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;

use super::settle::Outcome;
use super::{lock, queries, Engine, Inner};
use crate::api::{parse_command, Command, ErrorCode, Evt, FinalState, Op, ResultMsg};
use crate::store::{CmdState, CommandRecord, OutMsg, StoreError};

pub type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One command as received from the broker, with the means to acknowledge it.
pub struct Incoming {
    pub payload: Vec<u8>,
    /// Sends the PUBACK. Called only after the command is durable.
    pub ack: Box<dyn FnOnce() -> AckFuture + Send>,
    /// Its place in the bounded intake queue, given back when this is dropped.
    pub slot: Option<crate::bus::gate::Slot>,
}

/// Most commands written under one sync.
const MAX_BATCH: usize = 256;

/// Records looked at to find the payment an unreferenced refund names.
const MAX_REFUND_SCAN: usize = 10_000;

impl Engine {
    /// Run the intake loop until the channel closes or shutdown is requested.
    pub async fn run_intake(
        &self,
        mut rx: mpsc::UnboundedReceiver<Incoming>,
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
        let mut after: Vec<After> = Vec::new();
        for m in batch {
            inner
                .stats
                .commands_received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            after.extend(inner.accept(&m.payload)?);
            acks.push(m.ack);
        }
        inner.store.commit().await?;
        crate::faults::hit("intake:stored");
        for ack in acks {
            ack().await;
        }
        inner.outbox_notify.notify_one();
        for a in after {
            match a {
                After::Evt(e) => inner.evt(e),
                After::Wake(t) => {
                    if let Some(t) = inner.terminals.get(&t) {
                        t.wake.notify_one();
                    }
                }
                After::Query(id) => queries::spawn_query(inner.clone(), id),
                After::List(id) => queries::spawn_list(inner.clone(), id),
                After::CancelRunning(id) => queries::spawn_cancel(inner.clone(), id),
            }
        }
        Ok(())
    }
}

/// Work to do once the batch is durable and acknowledged.
pub(crate) enum After {
    Evt(Evt),
    Wake(String),
    Query(String),
    /// Answer a `list` off the intake path.
    List(String),
    /// Ask the device to cancel the running target of this `cancel` command.
    CancelRunning(String),
}

impl Inner {
    /// Validate one payload and write what it leads to (record and/or outbox result).
    fn accept(self: &Arc<Self>, payload: &[u8]) -> Result<Vec<After>, StoreError> {
        if payload.len() > self.cfg.max_bytes * 2 + 1024 {
            // Far too big even for an envelope: refuse before decoding anything.
            return self.refuse(parse_command(payload, self.cfg.max_bytes).err());
        }
        let mut sig = None;
        let opened;
        let payload = if self.cfg.command_keys.is_empty() {
            payload
        } else {
            match crate::api::envelope::open(payload, &self.cfg.command_keys) {
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
        let span = tracing::info_span!("command", id = %cmd.id, op = cmd.op.as_str(), terminal = ?cmd.terminal);
        let _g = span.enter();
        if let Some(rec) = self.store.get(&cmd.id)? {
            if sig.is_some() && rec.sig != sig {
                let mut rej = crate::api::Rejection::new(
                    ErrorCode::Unauthorized,
                    format!("id {:?} was already used by a different signed command (replay or forgery); not executed", cmd.id),
                );
                rej.raw = Some(crate::api::command::raw_echo(payload));
                return self.refuse(Some(rej));
            }
            tracing::info!("duplicate id: answering from the store");
            return self.duplicate(&rec);
        }
        let now = Utc::now();
        let misdirected = self.misdirected(&cmd, sig.is_some(), now);
        let expires_at = cmd.expires_at.unwrap_or_else(|| {
            now + chrono::Duration::from_std(self.cfg.default_ttl)
                .unwrap_or_else(|_| chrono::Duration::seconds(120))
        });
        let mut rec = CommandRecord {
            seq: self.store.next_seq()?,
            cmd,
            state: CmdState::Queued,
            received_at: now,
            expires_at,
            started_at: None,
            journal: vec![],
            result: None,
            refunds: vec![],
            sig,
            reconciled: None,
        };
        tracing::info!("command received");
        if let Some(why) = misdirected {
            return self.reject(&mut rec, ErrorCode::Unauthorized, why);
        }
        match rec.cmd.op {
            op if op.answered_by_engine() => queries::answer(self, rec),
            _ => self.accept_device_op(&mut rec),
        }
    }

    /// `mqtt-api.md`: Signed commands — a command for another agent is refused, and a
    /// signed one must name this agent and carry a near deadline, so a captured envelope
    /// can neither run in another shop nor be replayed later.
    fn misdirected(
        &self,
        cmd: &crate::api::Command,
        signed: bool,
        now: chrono::DateTime<Utc>,
    ) -> Option<String> {
        match cmd.agent.as_deref() {
            Some(a) if a != self.cfg.agent_id => {
                return Some(format!(
                    "field agent: this command is meant for agent {a:?}, not this one ({:?}); not executed",
                    self.cfg.agent_id
                ))
            }
            None if signed => {
                return Some(
                    "field agent: required in a signed command (the agent_id it is meant for)"
                        .into(),
                )
            }
            _ => {}
        }
        if !signed {
            return None;
        }
        let max = chrono::Duration::from_std(self.cfg.max_command_age)
            .unwrap_or_else(|_| chrono::Duration::minutes(15));
        match cmd.expires_at {
            None => Some("field expires_at: required in a signed command".into()),
            Some(e) if e > now + max => Some(format!(
                "field expires_at: more than security.max_command_age ({} s) ahead of receipt",
                max.num_seconds()
            )),
            Some(_) => None,
        }
    }

    /// A payload refused before it became a command: result with `"id": null`.
    fn refuse(&self, rej: Option<crate::api::Rejection>) -> Result<Vec<After>, StoreError> {
        if let Some(rej) = rej {
            tracing::warn!(code = ?rej.code, error = %rej.message, "payload refused");
            self.stats.count(FinalState::Rejected);
            self.store
                .write(&[], &[OutMsg::result(&ResultMsg::rejected(&rej))])?;
        }
        Ok(vec![])
    }

    fn reject(
        &self,
        rec: &mut CommandRecord,
        code: ErrorCode,
        msg: String,
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

    fn accept_device_op(&self, rec: &mut CommandRecord) -> Result<Vec<After>, StoreError> {
        let tid = rec.cmd.terminal.clone().unwrap_or_default();
        let Some(term) = self.terminals.get(&tid).cloned() else {
            return self.reject(
                rec,
                ErrorCode::UnknownTerminal,
                format!("terminal {tid:?} is not configured on this agent"),
            );
        };
        if !term.driver.supports(rec.cmd.op) {
            return self.reject(
                rec,
                ErrorCode::UnsupportedOp,
                format!(
                    "{} terminals do not support {}",
                    term.driver.kind(),
                    rec.cmd.op.as_str()
                ),
            );
        }
        if let Err(r) = term.driver.validate(&rec.cmd) {
            return self.reject(rec, r.code, r.message);
        }
        if rec.cmd.op.moves_money() {
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
        if rec.expires_at <= rec.received_at {
            return self.reject(rec, ErrorCode::Expired, "expires_at is already past".into());
        }
        let mut original = None;
        if rec.cmd.op == Op::Refund {
            let orig_id = match rec.cmd.original.clone() {
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
                o.refunds.push(rec.cmd.id.clone());
            }
            if let Some(o) = original.as_ref() {
                records.push(o);
            }
            self.store.write(&records, &[])?;
            // The worker's first step commits again before touching the device, so even a
            // worker woken early never runs ahead of this record's durability.
            q.push_back(rec.cmd.id.clone());
        }
        let queued = lock(&term.queue).len();
        let mut accepted = Evt::new(&rec.cmd.id, "accepted");
        accepted.detail = Some(serde_json::json!({ "terminal": tid, "queue_position": queued }));
        Ok(vec![
            After::Evt(accepted),
            After::Evt(Evt::new(&rec.cmd.id, "queued")),
            After::Wake(tid),
        ])
    }

    /// Refund by `original`: the payment must be ours, on the same terminal, succeeded, and
    /// not over-refunded (counting refunds still running or unknown).
    /// The succeeded payment on the same terminal whose transaction id a refund names
    /// (looked for among the newest [`MAX_REFUND_SCAN`] records).
    fn payment_by_transaction(
        &self,
        cmd: &crate::api::Command,
    ) -> Result<Option<String>, StoreError> {
        let Some(tx) = cmd.transaction_id.as_deref() else {
            return Ok(None);
        };
        for r in self.store.recent().take(MAX_REFUND_SCAN) {
            let r = r?;
            let paid_by = r
                .result
                .as_ref()
                .and_then(|res| res.payment.as_ref())
                .and_then(|p| p.transaction_id.as_deref());
            if r.cmd.op == Op::Payment
                && r.state == CmdState::Succeeded
                && r.cmd.terminal == cmd.terminal
                && paid_by == Some(tx)
            {
                return Ok(Some(r.cmd.id));
            }
        }
        Ok(None)
    }

    fn check_refund(
        &self,
        cmd: &mut Command,
        orig_id: &str,
    ) -> Result<Result<CommandRecord, (ErrorCode, String)>, StoreError> {
        let Some(orig) = self.store.get(orig_id)? else {
            return Ok(Err((
                ErrorCode::NotFound,
                format!("original payment {orig_id:?} is not known to this agent"),
            )));
        };
        if orig.cmd.op != Op::Payment {
            return Ok(Err((
                ErrorCode::BadRequest,
                format!(
                    "field original: {orig_id:?} is a {}, not a payment",
                    orig.cmd.op.as_str()
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
        let paid = orig.cmd.amount.unwrap_or(0);
        let mut committed = 0i64;
        for rid in &orig.refunds {
            if let Some(r) = self.store.get(rid)? {
                if matches!(
                    r.state,
                    CmdState::Queued | CmdState::Running | CmdState::Succeeded | CmdState::Unknown
                ) {
                    committed += r.cmd.amount.unwrap_or(0);
                }
            }
        }
        let amount = cmd.amount.unwrap_or(0);
        if amount > paid - committed {
            return Ok(Err((
                ErrorCode::InvalidAmount,
                format!(
                    "refund of {amount} exceeds what is left of payment {orig_id:?} ({} of {paid})",
                    paid - committed
                ),
            )));
        }
        let pay = orig
            .result
            .as_ref()
            .and_then(|r| r.payment.clone())
            .unwrap_or_default();
        cmd.transaction_id = pay.transaction_id;
        cmd.method = pay.method;
        if cmd.currency.is_none() {
            cmd.currency = orig.cmd.currency.clone();
        }
        Ok(Ok(orig))
    }

    /// A command id seen before: republish the final result, or report the current state.
    fn duplicate(&self, rec: &CommandRecord) -> Result<Vec<After>, StoreError> {
        match &rec.result {
            Some(res) if rec.state.is_final() => {
                self.store.write(&[], &[OutMsg::result(res)])?;
                Ok(vec![])
            }
            _ => {
                let state = if rec.state == CmdState::Running {
                    "in_progress"
                } else {
                    "queued"
                };
                let mut e = Evt::new(&rec.cmd.id, state);
                e.detail = Some(serde_json::json!({ "duplicate": true }));
                Ok(vec![After::Evt(e)])
            }
        }
    }
}
