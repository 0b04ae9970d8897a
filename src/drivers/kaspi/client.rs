//! HTTP edge of the Kaspi driver: one GET per call, the `accesstoken` header on the
//! protected API, token renewal (`/v2/revoke`) before expiry and once after 401/403, and
//! registration (`/v2/register`). Tokens live encrypted at rest (crate::secrets); a new
//! pair is made durable before it is used.

use crate::drivers::http::Transport;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use super::api::{parse_envelope, parse_expiration, ApiError, TokenAnswer};
use super::tls::{self, Endpoint};
use crate::config::KaspiTerminal;
use crate::secrets::Secrets;

/// The secret slot holding the token pair (JSON), under the terminal's id.
pub const TOKENS_SECRET: &str = "kaspi_tokens";

/// kaspi.md: token lifetime 24 h.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Largest body read from the terminal; its answers are a few hundred bytes.
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The terminal answered, with an error or an odd body.
    Api(ApiError),
    /// The request failed on the way (the shared verdict: never left, or may have).
    Transport(Transport),
    /// No usable token: a person must re-register the terminal.
    Auth(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => write!(f, "{e}"),
            CallError::Transport(t) => f.write_str(t.message()),
            CallError::Auth(m) => f.write_str(m),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// As the terminal wrote it.
    pub expiration_date: String,
    pub expires_at: DateTime<Utc>,
    pub obtained_at: DateTime<Utc>,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl TokenPair {
    /// `expirationDate` is in the terminal's local time; when it cannot be read, or reads
    /// as already past or beyond a day (a clock-zone mismatch), assume the 24 h lifetime.
    pub fn from_answer(a: TokenAnswer, now: DateTime<Utc>) -> TokenPair {
        let lifetime = chrono::Duration::from_std(TOKEN_LIFETIME).unwrap_or_default();
        let expires_at = match parse_expiration(&a.expiration_date) {
            Some(t) if t > now && t <= now + lifetime + chrono::Duration::hours(1) => t,
            _ => now + lifetime,
        };
        TokenPair {
            access_token: a.access_token,
            refresh_token: a.refresh_token,
            expiration_date: a.expiration_date,
            expires_at,
            obtained_at: now,
        }
    }
}

pub struct KaspiClient {
    terminal: String,
    endpoint: Endpoint,
    protected: bool,
    register_name: String,
    renew_before: Duration,
    register_timeout: Duration,
    secrets: Secrets,
    tokens: Mutex<Option<TokenPair>>,
}

fn reregister_hint(terminal: &str) -> String {
    format!("stop the agent and re-register: `posbridge kaspi register {terminal} --config <config file>`, then press \"Allow\" on the terminal")
}

impl KaspiClient {
    pub fn new(terminal: &str, cfg: &KaspiTerminal, secrets: Secrets) -> Result<Self, String> {
        Ok(KaspiClient {
            terminal: terminal.to_string(),
            endpoint: tls::build(terminal, cfg)?,
            protected: cfg.protected,
            register_name: cfg.register_name.clone(),
            renew_before: cfg.renew_before,
            register_timeout: cfg.register_timeout,
            secrets,
            tokens: Mutex::new(None),
        })
    }

    pub fn base(&self) -> &str {
        &self.endpoint.base
    }

    /// One GET, no token logic.
    async fn get(
        &self, route: &str, params: &[(&str, String)], token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        let url = format!("{}/{route}", self.endpoint.base);
        let mut req = self.endpoint.http.get(&url).query(params);
        if let Some(t) = token {
            req = req.header("accesstoken", crate::drivers::cloud::secret_header(t));
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        // without_url: the query of /v2/revoke carries the refresh token.
        let transport = |e: reqwest::Error| {
            let connect = e.is_connect();
            let hint = if connect {
                "could not connect: is the terminal on, is the url right, does a firewall block port 8080?"
            } else {
                "the request may have reached the terminal"
            };
            CallError::Transport(Transport::of(e).map_message(|m| format!("{route}: {m} ({hint})")))
        };
        let mut resp = req.send().await.map_err(transport)?;
        let http = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(CallError::Api(ApiError::BadBody {
                    http,
                    detail: format!("{route}: answer larger than {MAX_BODY} bytes"),
                }));
            }
        }
        parse_envelope(http, &body).map_err(CallError::Api)
    }

    /// A call to a route of the API, with the token when the API is protected: renewed
    /// ahead of expiry, and once more after a 401/403.
    pub async fn call(&self, route: &str, params: &[(&str, String)]) -> Result<Value, CallError> {
        if !self.protected {
            return self.get(route, params, None, None).await;
        }
        let token = self.token_for_use().await?;
        match self.get(route, params, Some(&token.access_token), None).await {
            Err(CallError::Api(e)) if e.is_auth() => {
                tracing::warn!(terminal = %self.terminal, route, error = %e, "terminal refused the access token; renewing once");
                let fresh = self.renew(&token.access_token).await?;
                match self.get(route, params, Some(&fresh.access_token), None).await {
                    Err(CallError::Api(e)) if e.is_auth() => Err(CallError::Auth(format!(
                        "the Kaspi terminal refuses even a freshly renewed access token ({e}); {}",
                        reregister_hint(&self.terminal)
                    ))),
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn load(&self) -> Result<Option<TokenPair>, CallError> {
        let stored = self
            .secrets
            .get(&self.terminal, TOKENS_SECRET)
            .map_err(|e| CallError::Auth(format!("cannot read the stored Kaspi tokens: {e}")))?;
        match stored {
            None => Ok(None),
            Some(s) => serde_json::from_slice(s.expose()).map(Some).map_err(|e| {
                CallError::Auth(format!(
                    "the stored Kaspi tokens are unreadable ({e}); {}",
                    reregister_hint(&self.terminal)
                ))
            }),
        }
    }

    /// Durable before use (kaspi.md: never lose the refresh token across a crash).
    async fn persist(&self, pair: &TokenPair) -> Result<(), String> {
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(pair).map_err(|e| e.to_string())?);
        self.secrets.set(&self.terminal, TOKENS_SECRET, &bytes).await.map_err(|e| e.to_string())
    }

    async fn token_for_use(&self) -> Result<TokenPair, CallError> {
        let current = {
            let mut guard = self.tokens.lock().await;
            if guard.is_none() {
                *guard = self.load().await?;
            }
            match guard.clone() {
                Some(t) => t,
                None => {
                    return Err(CallError::Auth(format!(
                        "no Kaspi access token is stored for terminal {}: register it first: `posbridge kaspi register {} --config <config file>` (it goes through the running agent), then press \"Allow\" on the terminal",
                        self.terminal, self.terminal
                    )))
                }
            }
        };
        let left = current.expires_at - Utc::now();
        let renew_before = chrono::Duration::from_std(self.renew_before).unwrap_or_default();
        if left < renew_before {
            match self.renew(&current.access_token).await {
                Ok(fresh) => return Ok(fresh),
                Err(e) if left > chrono::Duration::zero() => {
                    tracing::warn!(terminal = %self.terminal, error = %e, "early token renewal failed; using the current token while it lasts");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(current)
    }

    /// Renew with `/v2/revoke` unless another task already replaced `seen_access`.
    async fn renew(&self, seen_access: &str) -> Result<TokenPair, CallError> {
        let mut guard = self.tokens.lock().await;
        // A pair stored since this one was cached (a re-registration through the running
        // agent's control socket) replaces it, and may be all that is needed.
        if let Some(stored) = self.load().await? {
            if guard.as_ref().map(|g| &g.access_token) != Some(&stored.access_token) {
                *guard = Some(stored);
            }
        }
        let Some(current) = guard.clone() else {
            return Err(CallError::Auth(format!(
                "no Kaspi access token is stored for terminal {}; {}",
                self.terminal,
                reregister_hint(&self.terminal)
            )));
        };
        if current.access_token != seen_access {
            return Ok(current);
        }
        let params =
            [("name", self.register_name.clone()), ("refreshToken", current.refresh_token.clone())];
        let answer = self
            .get("revoke", &params, Some(&current.access_token), None)
            .await
            .and_then(|d| TokenAnswer::parse(&d).map_err(CallError::Api));
        let fresh = match answer {
            Ok(a) => TokenPair::from_answer(a, Utc::now()),
            Err(CallError::Transport(t)) => {
                let message = t.message();
                // The terminal may have renewed and the answer got lost: the old token is
                // then dead, and only re-registration helps. Nothing else to do.
                return Err(CallError::Auth(format!(
                    "renewing the Kaspi access token failed on the way ({message}); if the terminal keeps refusing, {}",
                    reregister_hint(&self.terminal)
                )));
            }
            Err(e) => {
                return Err(CallError::Auth(format!(
                    "renewing the Kaspi access token failed ({e}); {}",
                    reregister_hint(&self.terminal)
                )))
            }
        };
        if let Err(e) = self.persist(&fresh).await {
            // The old token died at the terminal the moment it answered; keep the new one
            // in memory so this run works, and say loudly that a restart will need a
            // re-registration.
            tracing::error!(terminal = %self.terminal, error = %e, "could not store the renewed Kaspi token; after a restart the terminal must be re-registered");
        }
        tracing::info!(terminal = %self.terminal, expires_at = %fresh.expires_at, "Kaspi access token renewed");
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// `/v2/register`: waits for the cashier's "Allow", then stores the pair durably.
    pub async fn register(&self) -> Result<TokenPair, CallError> {
        let params = [("name", self.register_name.clone())];
        let data = self.get("register", &params, None, Some(self.register_timeout)).await?;
        let pair =
            TokenPair::from_answer(TokenAnswer::parse(&data).map_err(CallError::Api)?, Utc::now());
        self.persist(&pair).await.map_err(|e| {
            CallError::Auth(format!("registered, but the tokens could not be stored: {e}"))
        })?;
        *self.tokens.lock().await = Some(pair.clone());
        Ok(pair)
    }
}
