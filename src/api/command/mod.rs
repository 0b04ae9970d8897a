//! Commands on `{root}/cmd` (`mqtt-api.md`: Commands). [`Command`] is what the agent works
//! with: the common header (id, deadline, the agent it is meant for, the terminal it
//! names, driver fields) and a [`Body`] per op carrying exactly that op's fields, so
//! nothing downstream re-checks what the parser required. [`Wire`] is the flat form it is
//! stored in (and came in); [`parse`] turns a payload into a command or a [`Rejection`].

mod parse;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use parse::{parse_command, LIST_STATES};

use super::error::ErrorCode;
use super::ids::{Currency, Money, RequestId, TerminalId};
use super::RAW_ECHO_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Payment,
    Refund,
    Cancel,
    Status,
    List,
    DeviceInfo,
    FiscalInfo,
    Ping,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "payment" => Op::Payment,
            "refund" => Op::Refund,
            "cancel" => Op::Cancel,
            "status" => Op::Status,
            "list" => Op::List,
            "device_info" => Op::DeviceInfo,
            "fiscal_info" => Op::FiscalInfo,
            "ping" => Op::Ping,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Payment => "payment",
            Op::Refund => "refund",
            Op::Cancel => "cancel",
            Op::Status => "status",
            Op::List => "list",
            Op::DeviceInfo => "device_info",
            Op::FiscalInfo => "fiscal_info",
            Op::Ping => "ping",
        }
    }

    /// Ops that run on a terminal's queue and touch its device.
    pub fn is_device_op(self) -> bool {
        matches!(self, Op::Payment | Op::Refund | Op::DeviceInfo | Op::FiscalInfo)
    }

    /// Ops that move money: their device steps are journalled before and after.
    pub fn moves_money(self) -> bool {
        matches!(self, Op::Payment | Op::Refund)
    }

    /// Ops the engine answers itself; they never go to a terminal's worker.
    pub fn answered_by_engine(self) -> bool {
        matches!(self, Op::Ping | Op::List | Op::Status | Op::Cancel)
    }
}

/// A validated command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct Command {
    pub id: RequestId,
    /// The terminal the command names: required by device ops (payment, refund,
    /// device_info, fiscal_info), a filter for `list`, echoed on the result otherwise.
    pub terminal: Option<TerminalId>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The agent this command is meant for (required in signed commands).
    pub agent: Option<String>,
    /// Driver fields (`basket`, `own_receipt`, `products`, …), validated by the driver.
    pub extra: Map<String, Value>,
    pub body: Body,
}

/// Each op with exactly its fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Payment(Money),
    Refund(Refund),
    Cancel {
        target: RequestId,
    },
    Status {
        target: RequestId,
    },
    List(ListQuery),
    DeviceInfo,
    FiscalInfo,
    Ping,
    /// Only the id and op are known: salvaged from a damaged store (`store::salvage`),
    /// never executed.
    Salvaged(Op),
}

/// A refund: of `original` (a payment this agent ran), or by `transaction_id` + `method`.
/// The engine fills in the transaction, method and currency from the original payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub amount: i64,
    pub currency: Option<Currency>,
    pub original: Option<RequestId>,
    pub transaction_id: Option<String>,
    pub method: Option<String>,
}

/// A `list`'s filters and page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    /// One of [`LIST_STATES`].
    pub state: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// The `seq` of the first record not yet returned (the `next` of a previous page).
    pub cursor: Option<u64>,
}

impl Command {
    pub fn op(&self) -> Op {
        match &self.body {
            Body::Payment(_) => Op::Payment,
            Body::Refund(_) => Op::Refund,
            Body::Cancel { .. } => Op::Cancel,
            Body::Status { .. } => Op::Status,
            Body::List(_) => Op::List,
            Body::DeviceInfo => Op::DeviceInfo,
            Body::FiscalInfo => Op::FiscalInfo,
            Body::Ping => Op::Ping,
            Body::Salvaged(op) => *op,
        }
    }

    /// The amount in minor units, for payments and refunds.
    pub fn amount(&self) -> Option<i64> {
        match &self.body {
            Body::Payment(m) => Some(m.minor),
            Body::Refund(r) => Some(r.amount),
            _ => None,
        }
    }

    /// The currency, for payments and refunds (a refund's once the engine knows it).
    pub fn currency(&self) -> Option<&Currency> {
        match &self.body {
            Body::Payment(m) => Some(&m.currency),
            Body::Refund(r) => r.currency.as_ref(),
            _ => None,
        }
    }

    /// The target of a `cancel` or `status`.
    pub fn target(&self) -> Option<&RequestId> {
        match &self.body {
            Body::Cancel { target } | Body::Status { target } => Some(target),
            _ => None,
        }
    }

    pub fn refund(&self) -> Option<&Refund> {
        match &self.body {
            Body::Refund(r) => Some(r),
            _ => None,
        }
    }

    pub fn refund_mut(&mut self) -> Option<&mut Refund> {
        match &mut self.body {
            Body::Refund(r) => Some(r),
            _ => None,
        }
    }

    /// Only the id and op: a command salvaged from a damaged store.
    pub fn salvaged(id: RequestId, op: Op) -> Command {
        Command {
            id,
            terminal: None,
            expires_at: None,
            agent: None,
            extra: Map::new(),
            body: Body::Salvaged(op),
        }
    }
}

/// A command as it is stored (and as it came, field for field): the flat form of
/// [`Command`], which is what the rest of the agent works with.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    pub id: String,
    pub op: Op,
    pub terminal: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub original: Option<String>,
    pub transaction_id: Option<String>,
    pub method: Option<String>,
    pub target: Option<String>,
    /// `list` filter: a state name.
    pub state: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// `list`: the `next` of a previous page, to continue after it.
    pub cursor: Option<String>,
    /// The agent this command is meant for (required in signed commands).
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl TryFrom<Wire> for Command {
    type Error = String;

    /// The typed form of a flat command. A stored command that lacks what its op needs
    /// can only be a salvaged one (id and op known): it becomes [`Body::Salvaged`].
    fn try_from(w: Wire) -> Result<Command, String> {
        let id = RequestId::try_from(w.id)?;
        let terminal = w.terminal.map(TerminalId::try_from).transpose()?;
        let currency = w.currency.map(Currency::try_from).transpose()?;
        let target = w.target.map(RequestId::try_from).transpose()?;
        let original = w.original.map(RequestId::try_from).transpose()?;
        let cursor =
            match w.cursor {
                Some(c) => Some(c.parse::<u64>().map_err(|_| {
                    "field cursor: not a value this agent gave as `next`".to_string()
                })?),
                None => None,
            };
        let body = match (w.op, w.amount, currency, target) {
            (Op::Payment, Some(minor), Some(currency), _) => {
                Body::Payment(Money { minor, currency })
            }
            (Op::Refund, Some(amount), currency, _)
                if original.is_some() || w.transaction_id.is_some() =>
            {
                Body::Refund(Refund {
                    amount,
                    currency,
                    original,
                    transaction_id: w.transaction_id,
                    method: w.method,
                })
            }
            (Op::Cancel, _, _, Some(target)) => Body::Cancel { target },
            (Op::Status, _, _, Some(target)) => Body::Status { target },
            (Op::List, ..) => {
                Body::List(ListQuery { state: w.state, since: w.since, limit: w.limit, cursor })
            }
            (Op::DeviceInfo, ..) => Body::DeviceInfo,
            (Op::FiscalInfo, ..) => Body::FiscalInfo,
            (Op::Ping, ..) => Body::Ping,
            (op, ..) => Body::Salvaged(op),
        };
        Ok(Command { id, terminal, expires_at: w.expires_at, agent: w.agent, extra: w.extra, body })
    }
}

impl From<Command> for Wire {
    fn from(c: Command) -> Wire {
        let op = c.op();
        let mut w = Wire {
            id: c.id.into(),
            op,
            terminal: c.terminal.map(String::from),
            expires_at: c.expires_at,
            agent: c.agent,
            extra: c.extra,
            amount: None,
            currency: None,
            original: None,
            transaction_id: None,
            method: None,
            target: None,
            state: None,
            since: None,
            limit: None,
            cursor: None,
        };
        match c.body {
            Body::Payment(m) => {
                w.amount = Some(m.minor);
                w.currency = Some(m.currency.into());
            }
            Body::Refund(r) => {
                w.amount = Some(r.amount);
                w.currency = r.currency.map(String::from);
                w.original = r.original.map(String::from);
                w.transaction_id = r.transaction_id;
                w.method = r.method;
            }
            Body::Cancel { target } | Body::Status { target } => w.target = Some(target.into()),
            Body::List(q) => {
                w.state = q.state;
                w.since = q.since;
                w.limit = q.limit;
                w.cursor = q.cursor.map(|c| c.to_string());
            }
            Body::DeviceInfo | Body::FiscalInfo | Body::Ping | Body::Salvaged(_) => {}
        }
        w
    }
}

/// Why a command was refused before reaching any device.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The command's `id` when it had a usable one, else `None` (`"id": null`).
    pub id: Option<String>,
    pub op: Option<Op>,
    pub terminal: Option<String>,
    pub code: ErrorCode,
    pub message: String,
    /// First bytes of the payload when it could not be parsed at all.
    pub raw: Option<String>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection { id: None, op: None, terminal: None, code, message: message.into(), raw: None }
    }

    fn bad_payload(message: impl Into<String>, payload: &[u8]) -> Self {
        let mut r = Rejection::new(ErrorCode::BadRequest, message);
        r.raw = Some(raw_echo(payload));
        r
    }

    pub fn for_command(mut self, cmd: &Command) -> Self {
        self.id = Some(cmd.id.to_string());
        self.op = Some(cmd.op());
        self.terminal = cmd.terminal.as_ref().map(|t| t.to_string());
        self
    }
}

/// First `RAW_ECHO_BYTES` bytes of a payload as text (invalid UTF-8 replaced); JSON
/// serialisation escapes it on the way out.
pub fn raw_echo(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(RAW_ECHO_BYTES)];
    // Stored and published: never with a card number in it (mqtt-api.md 10).
    super::pan::mask_str(&String::from_utf8_lossy(cut)).into_owned()
}
