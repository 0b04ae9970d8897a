//! Terminal drivers: one module per kind behind one small trait.
//!
//! A driver starts an operation, reports progress, and says what the device said as a
//! [`Fact`]; when asked, it asks the device again about an operation by the operation's
//! own key. It never decides `succeeded`/`failed`: the engine does (`engine::settle`),
//! and a driver has no way to build a contract outcome.

pub mod cloud;
pub mod fact;
pub mod http;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
pub mod paywall;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

pub use self::fact::{Answer, Fact, NotSentWhy, Refusal};
use crate::api::{Command, ErrorBody, ErrorCode, Evt, Op, Rejection};
pub use crate::store::Step;
use crate::store::{CommandRecord, JournalEntry, Store, StoreError};

/// Identity and reachability of a terminal, published retained on `terminals/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub state: crate::api::TerminalState,
    pub identity: Value,
    pub error: Option<String>,
}

/// What a running operation may do besides talking to its device.
pub struct OpContext {
    pub record: CommandRecord,
    store: Store,
    evt: mpsc::UnboundedSender<Evt>,
}

impl OpContext {
    pub fn new(record: CommandRecord, store: Store, evt: mpsc::UnboundedSender<Evt>) -> Self {
        OpContext { record, store, evt }
    }

    pub fn cmd(&self) -> &Command {
        &self.record.cmd
    }

    /// Append a step to the command's journal and make it durable before returning.
    /// Drivers call this before and after every device step that can move money.
    pub async fn journal(&mut self, step: &str, data: Value) -> Result<(), StoreError> {
        self.write_step(step, data, false)?;
        self.store.commit().await?;
        crate::faults::hit(&format!("journal:{step}:after"));
        Ok(())
    }

    /// Journal, durably, that a request which can move money is about to leave the agent.
    /// From here on the engine treats the operation as possibly delivered: a crash, a lost
    /// or an unreadable answer make it ask the device again, never send anew blindly.
    /// Err: nothing was sent (the driver reports [`NotSentWhy::Store`]).
    /// [`OpContext::sending`] of a typed step.
    pub async fn sending_step<S: Step>(&mut self, s: &S) -> Result<(), StoreError> {
        self.sending(S::NAME, step_data(s)).await
    }

    /// [`OpContext::journal`] of a typed step.
    pub async fn journal_step<S: Step>(&mut self, s: &S) -> Result<(), StoreError> {
        self.journal(S::NAME, step_data(s)).await
    }

    pub async fn sending(&mut self, step: &str, data: Value) -> Result<(), StoreError> {
        self.write_step(step, data, true)?;
        self.store.commit().await?;
        crate::faults::hit(&format!("journal:{step}:after"));
        Ok(())
    }

    /// Journal a step *without* waiting for it to be durable: the next commit covers it
    /// (the next [`OpContext::journal`], or the engine's commit of the final result, which
    /// follows as soon as the driver returns). Only for a step after which nothing leaves
    /// the agent before that commit, and whose loss in a crash the resume handles by
    /// asking the device again (an answer the device keeps by reference). Saves one sync
    /// per operation: the answer and the result become durable together.
    pub fn note(&mut self, step: &str, data: Value) -> Result<(), StoreError> {
        self.write_step(step, data, false)?;
        crate::faults::hit(&format!("journal:{step}:after"));
        Ok(())
    }

    /// Append the step to the record and write it (not yet durable).
    fn write_step(&mut self, step: &str, mut data: Value, sends: bool) -> Result<(), StoreError> {
        // Journals hold device answers too: never a card number (mqtt-api.md 10).
        crate::api::pan::mask_value(&mut data);
        self.record.journal.push(JournalEntry {
            step: step.to_string(),
            at: chrono::Utc::now(),
            data,
            sends,
        });
        crate::faults::hit(&format!("journal:{step}:before"));
        self.store.write(&[&self.record], &[])
    }

    /// Progress on `evt` (`in_progress` with a device sub-state). May be lost.
    pub fn progress(&self, sub_state: &str, detail: Option<Value>) {
        let mut e = Evt::new(&self.record.cmd.id, crate::api::Progress::InProgress);
        e.sub_state = Some(sub_state.to_string());
        e.detail = detail;
        let _ = self.evt.send(e);
    }
}

/// What a driver is: its `kind` word (as in the config and on `terminals/…`) and the
/// ops it runs; anything else is refused before it is queued.
pub struct Caps {
    pub kind: &'static str,
    pub ops: &'static [Op],
}

#[async_trait]
pub trait Driver: Send + Sync {
    fn caps(&self) -> &'static Caps;

    fn kind(&self) -> &'static str {
        self.caps().kind
    }

    fn supports(&self, op: Op) -> bool {
        self.caps().ops.contains(&op)
    }

    /// Checks only this device can make (amount granularity, basket rules), before the
    /// command is queued. The default accepts everything.
    fn validate(&self, _cmd: &Command) -> Result<(), Rejection> {
        Ok(())
    }

    /// Run a device op (`payment`, `refund`, `device_info`, …) from the start and report
    /// what the device said. Journal with [`OpContext::sending`] right before a request
    /// that can move money leaves.
    async fn execute(&self, ctx: &mut OpContext) -> Fact;

    /// A money op may have reached the device (its answer was lost or unusable, or the
    /// agent restarted after [`OpContext::sending`]): ask the device about it by the
    /// operation's own key (IP: the same request with the same `ref`; Kaspi: its
    /// `processId`; Paywall: its MerchantUniqueCode; Token: wait for its sale result).
    /// Never starts a second operation. `left` is what remains of the recovery window.
    /// The engine calls it until a definite answer or the window closes.
    async fn ask(&self, _ctx: &mut OpContext, _left: Duration) -> Fact {
        Fact::CannotAsk {
            why: format!("a {} terminal cannot be asked about an operation", self.kind()),
        }
    }

    /// How long the engine keeps asking after a possibly delivered request before it
    /// says `unknown`. Zero: ask once.
    fn recovery_window(&self) -> Duration {
        Duration::ZERO
    }

    /// `status` of an `unknown` command: look the operation up without ever starting one.
    /// Only a definite [`Fact::Answer`] reconciles; `None` when the device cannot say.
    async fn query(&self, _record: &CommandRecord) -> Option<Fact> {
        None
    }

    /// Probe reachability and identity for the retained terminal state.
    async fn health(&self) -> Health;

    /// Resolves when the terminal's state may have changed without an operation (a USB
    /// device plugged in or out): the worker then probes `health()` at once instead of
    /// waiting for the next interval. The default never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }

    /// Whether this running op can be cancelled on the device (e.g. Paywall
    /// `sync/cancel`). When false, `cancel` of a running op answers `not_cancellable`.
    fn can_cancel(&self, _record: &CommandRecord) -> bool {
        false
    }

    /// Ask the device to cancel a running op. `Ok` means the device took the cancel; the
    /// op itself still ends with its own result.
    async fn cancel_running(&self, _record: &CommandRecord) -> Result<(), ErrorBody> {
        Err(ErrorBody::new(
            ErrorCode::NotCancellable,
            "this terminal cannot cancel a running operation",
        ))
    }

    /// `test` or `live` for cloud-backed terminals: carried on every result so a test
    /// payment is never mistaken for a real one.
    fn mode(&self) -> Option<&'static str> {
        None
    }
}

/// What drivers get from the agent besides their own configuration.
#[derive(Clone)]
pub struct DriverEnv {
    pub store: Store,
    pub secrets: crate::secrets::Secrets,
    pub agent_id: String,
}

pub type DynDriver = Arc<dyn Driver>;

/// A typed step's data as stored (a struct of strings and JSON values always serialises).
fn step_data<S: Step>(s: &S) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// For driver tests: the context of `command` (its JSON) as a worker starts it — running,
/// a minute before its deadline — over `store`.
#[cfg(test)]
pub(crate) fn test_context(store: &Store, command: &str) -> OpContext {
    let cmd = crate::api::parse_command(command.as_bytes(), 65536).expect("a valid command");
    let now = chrono::Utc::now();
    let mut rec = CommandRecord::new(
        store.next_seq().expect("seq"),
        cmd,
        now,
        now + chrono::Duration::seconds(60),
    );
    rec.state = crate::store::CmdState::Running;
    rec.started_at = Some(now);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    OpContext::new(rec, store.clone(), tx)
}
