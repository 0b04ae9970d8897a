//! Terminal drivers: one module per kind behind one small trait.
//!
//! A driver starts an operation, reports progress, gives a final outcome and says how to
//! resume from the journal after a crash. It never decides `succeeded`/`failed` by guess:
//! when the device's answer cannot be learned, the outcome is `unknown`.

pub mod cloud;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
pub mod paywall;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::{Command, ErrorBody, ErrorCode, Evt, FinalState, Op, PaymentInfo, Rejection};
use crate::store::{CommandRecord, JournalEntry, Store, StoreError};

/// The final outcome of one device operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: FinalState,
    pub payment: Option<PaymentInfo>,
    pub device: Option<Value>,
    pub error: Option<ErrorBody>,
}

impl Outcome {
    pub fn succeeded(payment: Option<PaymentInfo>, device: Option<Value>) -> Self {
        Outcome {
            state: FinalState::Succeeded,
            payment,
            device,
            error: None,
        }
    }

    pub fn failed(code: ErrorCode, message: impl Into<String>, device: Option<Value>) -> Self {
        Outcome {
            state: FinalState::Failed,
            payment: None,
            device,
            error: Some(ErrorBody::new(code, message)),
        }
    }

    /// Nobody can know: the engine adds `needs_reconciliation: true`.
    pub fn unknown(code: ErrorCode, message: impl Into<String>) -> Self {
        Outcome {
            state: FinalState::Unknown,
            payment: None,
            device: None,
            error: Some(ErrorBody::new(code, message)),
        }
    }

    pub fn with_device_code(mut self, code: Value) -> Self {
        if let Some(e) = &mut self.error {
            e.device_code = Some(code);
        }
        self
    }
}

/// Identity and reachability of a terminal, published retained on `terminals/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `connected`, `disconnected`, `error`.
    pub state: &'static str,
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
        self.write_step(step, data)?;
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
        self.write_step(step, data)?;
        crate::faults::hit(&format!("journal:{step}:after"));
        Ok(())
    }

    /// Append the step to the record and write it (not yet durable).
    fn write_step(&mut self, step: &str, data: Value) -> Result<(), StoreError> {
        self.record.journal.push(JournalEntry {
            step: step.to_string(),
            at: chrono::Utc::now(),
            data,
        });
        crate::faults::hit(&format!("journal:{step}:before"));
        self.store.write(&[&self.record], &[])
    }

    /// Progress on `evt` (`in_progress` with a device sub-state). May be lost.
    pub fn progress(&self, sub_state: &str, detail: Option<Value>) {
        let mut e = Evt::new(&self.record.cmd.id, "in_progress");
        e.sub_state = Some(sub_state.to_string());
        e.detail = detail;
        let _ = self.evt.send(e);
    }
}

#[async_trait]
pub trait Driver: Send + Sync {
    fn kind(&self) -> &'static str;

    fn supports(&self, op: Op) -> bool;

    /// Checks only this device can make (amount granularity, basket rules), before the
    /// command is queued. The default accepts everything.
    fn validate(&self, _cmd: &Command) -> Result<(), Rejection> {
        Ok(())
    }

    /// Run a device op (`payment`, `refund`, `device_info`, …) from the start.
    async fn execute(&self, ctx: &mut OpContext) -> Outcome;

    /// The process died while this op was running: recover its outcome from the journal
    /// and the device, or say `unknown`.
    async fn resume(&self, ctx: &mut OpContext) -> Outcome;

    /// Ask the device again about a command whose outcome was `unknown` (`status` op).
    /// `None` when the device cannot say.
    async fn query(&self, _record: &CommandRecord) -> Option<Outcome> {
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
