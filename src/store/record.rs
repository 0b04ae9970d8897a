//! What the store keeps per command.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Command, FinalState, ResultMsg};

/// Lifecycle of a stored command: `queued` → `running` → one final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdState {
    Queued,
    /// On the wire (`list`, `status`) this is `in_progress`, the word `evt` uses.
    #[serde(rename = "in_progress", alias = "running")]
    Running,
    Succeeded,
    Failed,
    Unknown,
    Rejected,
    Expired,
    Cancelled,
}

impl CmdState {
    pub fn is_final(self) -> bool {
        !matches!(self, CmdState::Queued | CmdState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CmdState::Queued => "queued",
            CmdState::Running => "in_progress",
            CmdState::Succeeded => "succeeded",
            CmdState::Failed => "failed",
            CmdState::Unknown => "unknown",
            CmdState::Rejected => "rejected",
            CmdState::Expired => "expired",
            CmdState::Cancelled => "cancelled",
        }
    }
}

impl From<FinalState> for CmdState {
    fn from(s: FinalState) -> Self {
        match s {
            FinalState::Succeeded => CmdState::Succeeded,
            FinalState::Failed => CmdState::Failed,
            FinalState::Unknown => CmdState::Unknown,
            FinalState::Rejected => CmdState::Rejected,
            FinalState::Expired => CmdState::Expired,
            FinalState::Cancelled => CmdState::Cancelled,
        }
    }
}

/// One durable step of a device operation (`mqtt-api.md`: Durability promise 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub step: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
    /// This step was made durable right before a request that may move money left the
    /// agent: from here on the request may have reached the device, and a resume asks
    /// the device instead of sending again (`engine::settle`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sends: bool,
}

/// Steps that versions before the `sends` marker journalled right before a money request.
const LEGACY_SENDING_STEPS: &[&str] =
    &["ip_sending", "kaspi_sending", "paywall_sale_sending", "token_basket", "kuveyt_creating"];

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Arrival order: the store's sequence number (`Store::next_seq`, shared with the
    /// outbox), monotonic across restarts.
    pub seq: u64,
    pub cmd: Command,
    pub state: CmdState,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<JournalEntry>,
    pub result: Option<ResultMsg>,
    /// Payments: ids of refunds accepted against this payment (over-refund check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refunds: Vec<String>,
    /// Signature of the envelope that carried this command (signed mode): a later command
    /// with the same id but another signature is refused as a replay or forgery.
    pub sig: Option<String>,
    /// A later `status` query learned the real outcome of an `unknown` command.
    pub reconciled: Option<ResultMsg>,
}

/// A journal step as a type: its name, and its data as a struct that is written and read
/// back whole (each driver declares its steps in its `journal.rs`). The stored form stays
/// `{step, data}`.
pub trait Step: Serialize + serde::de::DeserializeOwned {
    const NAME: &'static str;
}

impl CommandRecord {
    /// A command as intake stores it: `Queued`, nothing journalled, no result yet.
    pub fn new(
        seq: u64, cmd: Command, received_at: DateTime<Utc>, expires_at: DateTime<Utc>,
    ) -> Self {
        CommandRecord {
            seq,
            cmd,
            state: CmdState::Queued,
            received_at,
            expires_at,
            started_at: None,
            journal: vec![],
            result: None,
            refunds: vec![],
            sig: None,
            reconciled: None,
        }
    }

    pub fn last_step(&self, step: &str) -> Option<&JournalEntry> {
        self.journal.iter().rev().find(|j| j.step == step)
    }

    /// The data of the last `S` step, if there is one that reads as `S`.
    pub fn last<S: Step>(&self) -> Option<S> {
        self.last_step(S::NAME).and_then(|j| serde_json::from_value(j.data.clone()).ok())
    }

    /// Whether a request that can move money may have left the agent for the device.
    pub fn maybe_sent(&self) -> bool {
        self.journal.iter().any(|j| j.sends || LEGACY_SENDING_STEPS.contains(&j.step.as_str()))
    }

    /// The summary used in `list` items and `status` answers.
    pub fn summary(&self) -> Value {
        let mut v = serde_json::json!({
            "id": self.cmd.id,
            "op": self.cmd.op(),
            "state": self.state.as_str(),
            "received_at": crate::api::ts(self.received_at),
        });
        let obj = v.as_object_mut();
        if let Some(o) = obj {
            if let Some(t) = &self.cmd.terminal {
                o.insert("terminal".into(), Value::String(t.to_string()));
            }
            if let Some(a) = self.cmd.amount() {
                o.insert("amount".into(), a.into());
            }
            if let Some(c) = self.cmd.currency() {
                o.insert("currency".into(), Value::String(c.to_string()));
            }
            if let Some(r) = &self.result {
                if let Some(f) = &r.finished_at {
                    o.insert("finished_at".into(), Value::String(f.clone()));
                }
                if r.needs_reconciliation {
                    o.insert("needs_reconciliation".into(), Value::Bool(true));
                }
                if let Ok(rv) = serde_json::to_value(r) {
                    o.insert("result".into(), rv);
                }
            }
            if let Some(r) = &self.reconciled {
                if let Ok(rv) = serde_json::to_value(r) {
                    o.insert("reconciled".into(), rv);
                }
            }
        }
        v
    }
}

/// A message waiting in the outbox for the broker's acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutMsg {
    /// Topic below `{root}` (`result`).
    pub topic: String,
    pub payload: String,
}

impl OutMsg {
    pub fn result(r: &ResultMsg) -> Self {
        OutMsg {
            topic: "result".into(),
            // Bounded here, once: nothing larger ever enters the outbox.
            payload: String::from_utf8_lossy(&r.to_bounded_bytes()).into_owned(),
        }
    }
}
