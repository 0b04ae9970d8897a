//! The simulated terminal's protected API: `accesstoken` checks (401/403), register
//! with the cashier's approval, revoke (renewal), and the token knobs.

use std::collections::HashMap;

use chrono::Utc;
use serde_json::{json, Value};

use super::{digits, param, Reply, Terminal};
use crate::drivers::kaspi::api::{code, format_expiration};

#[derive(Debug, Clone)]
pub(super) struct Client {
    pub(super) access: String,
    refresh: String,
    expires: chrono::DateTime<Utc>,
    /// Knob: answer 401 "Session expires…" until the next revoke.
    session_expired: bool,
}

impl Terminal {
    /// The current (access, refresh) pair of a register name, for tests.
    pub fn tokens_of(&self, name: &str) -> Option<(String, String)> {
        self.clients.get(name).map(|c| (c.access.clone(), c.refresh.clone()))
    }

    /// Check the `accesstoken` header of a protected route.
    pub fn authorize(&mut self, token: Option<&str>) -> Result<(), Reply> {
        if !self.settings.protected {
            return Ok(());
        }
        let found = token.and_then(|t| self.clients.values().find(|c| c.access == t).cloned());
        let refuse = match found {
            None => Some(Reply::err(401, code::GENERIC, "Authorization failed")),
            Some(c) if c.session_expired => {
                Some(Reply::err(401, code::GENERIC, "Session expires and need to be updated"))
            }
            Some(c) if Utc::now() >= c.expires => {
                Some(Reply { http: 403, body: "Forbidden: token expired".into() })
            }
            Some(_) => None,
        };
        match refuse {
            Some(r) => {
                self.counts.auth_refused += 1;
                Err(r)
            }
            None => Ok(()),
        }
    }

    fn issue(&mut self, name: &str) -> Value {
        let access = digits(&mut self.rng, 32);
        let refresh = digits(&mut self.rng, 32);
        let lifetime = chrono::Duration::from_std(self.settings.token_lifetime).unwrap_or_default();
        let expires = Utc::now() + lifetime;
        self.clients.insert(
            name.to_string(),
            Client {
                access: access.clone(),
                refresh: refresh.clone(),
                expires,
                session_expired: false,
            },
        );
        json!({ "accessToken": access, "expirationDate": format_expiration(expires), "refreshToken": refresh })
    }

    /// `/v2/register`, first half: refuse at once, or wait for the cashier.
    pub fn begin_register(&mut self, params: &HashMap<String, String>) -> Result<String, Reply> {
        if !self.settings.protected {
            return Err(Reply::invalid_url());
        }
        self.counts.registers += 1;
        let name = param(params, "name")?.to_string();
        if self.register_pending {
            return Err(Reply::service("Register Error. Last register request not completed"));
        }
        self.register_pending = true;
        Ok(name)
    }

    /// `/v2/register`, second half: the cashier pressed Allow (or Deny).
    pub fn finish_register(&mut self, name: &str, allowed: bool) -> Reply {
        self.register_pending = false;
        if !allowed {
            return Reply::service("Register Error. Access denied by the cashier");
        }
        let pair = self.issue(name);
        Reply::ok(pair)
    }

    pub fn cancel_register(&mut self) {
        self.register_pending = false;
    }

    pub fn revoke(&mut self, token: Option<&str>, params: &HashMap<String, String>) -> Reply {
        if !self.settings.protected {
            return Reply::invalid_url();
        }
        self.counts.revokes += 1;
        let name = match param(params, "name") {
            Ok(n) => n.to_string(),
            Err(r) => return r,
        };
        let refresh = match param(params, "refreshToken") {
            Ok(r) => r.to_string(),
            Err(r) => return r,
        };
        let Some(client) = self.clients.get(&name).cloned() else {
            return Reply::service("Revoke Error. Unknown register name");
        };
        // The current (possibly expired) token must come along (kaspi.md: /v2/revoke).
        if token != Some(client.access.as_str()) {
            self.counts.auth_refused += 1;
            return Reply::err(401, code::GENERIC, "Authorization failed");
        }
        if self.refresh_broken || refresh != client.refresh {
            return Reply::service("Revoke Error. Wrong refresh token");
        }
        Reply::ok(self.issue(&name))
    }

    // ---- knobs

    pub fn expire_tokens(&mut self) {
        let past = Utc::now() - chrono::Duration::seconds(1);
        for c in self.clients.values_mut() {
            c.expires = past;
        }
    }

    pub fn require_renewal(&mut self) {
        for c in self.clients.values_mut() {
            c.session_expired = true;
        }
    }
}
