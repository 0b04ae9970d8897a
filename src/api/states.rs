//! The contract's state words that are not final states (`mqtt-api.md`: Terminal state,
//! Progress): what `{root}/terminals/{id}` and `{root}/evt` say, as types.

use serde::{Deserialize, Serialize};

/// A terminal's state on `{root}/terminals/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalState {
    /// Reachable and ready (Token: handshake and fiscal info done).
    Connected,
    /// Not reachable.
    Disconnected,
    /// Running a command.
    Busy,
    /// Reachable but unusable (credentials refused, a lost outcome), or disabled.
    Error,
}

impl TerminalState {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalState::Connected => "connected",
            TerminalState::Disconnected => "disconnected",
            TerminalState::Busy => "busy",
            TerminalState::Error => "error",
        }
    }
}

impl std::fmt::Display for TerminalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command's progress on `{root}/evt` (before its result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Accepted,
    Queued,
    InProgress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_contracts() {
        for (s, w) in [
            (TerminalState::Connected, "connected"),
            (TerminalState::Disconnected, "disconnected"),
            (TerminalState::Busy, "busy"),
            (TerminalState::Error, "error"),
        ] {
            assert_eq!(serde_json::to_value(s).expect("json"), w);
            assert_eq!(s.as_str(), w);
        }
        assert_eq!(serde_json::to_value(Progress::InProgress).expect("json"), "in_progress");
    }
}
