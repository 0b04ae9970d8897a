//! The handles on a running IP terminal simulator: [`SimStats`] (what it executed) and
//! [`SimControl`] (the fault knobs and the payment message, settable while it runs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{AnswerFault, Shared};

/// What the simulator did, as it happens ([`SimStats::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// A connection was accepted.
    Connected,
    /// The terminal ran the operation for `ref` to an outcome (`approved` or declined).
    Executed { r#ref: String, approved: bool },
}

/// Read-only counters and the event stream, for tests and logs. Cheap to clone.
#[derive(Clone)]
pub struct SimStats {
    pub(super) shared: Arc<Shared>,
}

/// Fault knobs, settable while the simulator runs. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    pub(super) shared: Arc<Shared>,
}

impl SimStats {
    /// How many times the terminal ran the operation for `ref` to an outcome (a charge,
    /// a refund, or a decline the customer saw). Never more than 1 by design.
    pub fn executions(&self, r#ref: &str) -> u32 {
        self.shared.lock().ops.get(r#ref).map_or(0, |op| op.runs)
    }

    /// Every event from now on. A receiver that falls more than 1 024 events behind
    /// loses the oldest ([`tokio::sync::broadcast`]); the counters stay exact.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SimEvent> {
        self.shared.events.subscribe()
    }

    /// Wait until the terminal has run the operation for `ref` (already, or by its event);
    /// `false` when it has not within `within`.
    pub async fn executed(&self, r#ref: &str, within: Duration) -> bool {
        let mut rx = self.events();
        let done = async {
            while self.executions(r#ref) == 0 {
                match rx.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::time::timeout(within, done).await.is_ok()
    }

    pub fn total_executions(&self) -> u64 {
        self.shared.total_executions.load(Ordering::Relaxed)
    }

    /// Request lines received, valid or not.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl SimControl {
    /// Close every connection after its answer (a terminal that does not keep them): a
    /// client's kept connection is then found closed at its next request.
    pub fn set_close_after_answer(&self, on: bool) {
        self.shared.close_after_answer.store(on, Ordering::Relaxed);
    }

    /// The next new pay executes, then its connection closes without an answer.
    pub fn set_drop_response_once(&self, on: bool) {
        self.shared.drop_response_once.store(on, Ordering::SeqCst);
    }

    /// The next new pay or refund executes, then its connection closes without an
    /// answer. Replaces a garble/foreign knob not used yet.
    pub fn lose_next_answer(&self) {
        self.shared.lock().next_fault = Some(AnswerFault::Lose);
    }

    /// The next new pay or refund executes, then is answered with the first half of its
    /// JSON line and `\n`. Replaces a lose/foreign knob not used yet.
    pub fn garble_next_answer(&self) {
        self.shared.lock().next_fault = Some(AnswerFault::Garble);
    }

    /// The next new pay or refund executes, then is answered with a well-formed answer
    /// for `other-<ref>`. Replaces a lose/garble knob not used yet.
    pub fn foreign_next_answer(&self) {
        self.shared.lock().next_fault = Some(AnswerFault::Foreign);
    }

    /// Approved payments answer with `message` holding this many bytes of text (within
    /// the protocol's 64 KiB line).
    pub fn set_message_padding(&self, bytes: usize) {
        self.set_message((bytes > 0).then(|| "R".repeat(bytes.min(60 * 1024))));
    }

    /// Approved payments answer with this `message` (`None`: none).
    pub fn set_message(&self, text: Option<String>) {
        self.shared.lock().message = text;
    }

    /// Clamped to [0, 1]; NaN never fails (no draw is below NaN).
    pub fn set_fail_rate(&self, rate: f64) {
        self.shared.lock().fail_rate = rate.clamp(0.0, 1.0);
    }

    /// Clamped to [0, 1]; NaN loses nothing.
    pub fn set_lose_rate(&self, rate: f64) {
        self.shared.lock().lose_rate = rate.clamp(0.0, 1.0);
    }

    /// Clamped to [0, 1]; NaN garbles nothing.
    pub fn set_garble_rate(&self, rate: f64) {
        self.shared.lock().garble_rate = rate.clamp(0.0, 1.0);
    }
}
