//! Whether a command is meant for this agent (`mqtt-api.md`: Signed commands): a command
//! naming another agent is refused, and a signed one must name this agent and carry a
//! deadline at most `security.max_command_age` ahead ([`super::deadline`]), so a captured
//! envelope can neither run in another shop nor be replayed later. The signature itself is
//! checked before parsing, in `api::signature`.

use chrono::Utc;

use super::{deadline, Inner};

impl Inner {
    /// Why `cmd` may not run here, if it may not.
    pub(super) fn misdirected(
        &self, cmd: &crate::api::Command, signed: bool, now: chrono::DateTime<Utc>,
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
        deadline::signed_problem(cmd.expires_at, now, self.cfg.max_command_age)
    }
}
