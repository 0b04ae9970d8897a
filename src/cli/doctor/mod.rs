//! `posbridge doctor`: checks a field engineer runs on the machine — configuration, clock,
//! broker (TCP + MQTT CONNECT with the agent's credentials), the running agent's retained
//! status, store, disk, key and secret file permissions, and every terminal through its
//! driver's `health()`. Prints a table (check | status | detail | fix); any FAIL makes the
//! exit status non-zero.
//!
//! It must not disturb a running agent: the MQTT check uses its own client id
//! (`{client_id}-doctor`) with a clean session, and a store locked by the agent is
//! reported as in use (fine) rather than opened.
//!
//! Layout: this file holds the public face — [`run`], [`render`], [`failed`] and the
//! [`Check`] rows; each area of checks has its own file: `broker` (MQTT connect and the
//! agent's retained status), `store` (the store directory), `host` (clock and disk space),
//! `security` (signed commands, device key, `*_file` permissions) and `terminals` (every
//! terminal through its driver).

mod broker;
mod host;
mod security;
mod store;
mod terminals;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::config::Config;

pub use host::free_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
    /// What to do about it; empty when `ok`.
    pub fix: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), level: Level::Ok, detail: detail.into(), fix: String::new() }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), level: Level::Warn, detail: detail.into(), fix: fix.into() }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), level: Level::Fail, detail: detail.into(), fix: fix.into() }
    }
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// Run every check for the configuration at `path`.
pub async fn run(path: &Path) -> Vec<Check> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "config",
                format!("{e}"),
                format!("fix the named key, then `posbridge check --config {}`", path.display()),
            )]
        }
    };
    let mut checks = vec![Check::ok(
        "config",
        format!("{} is valid ({} terminal(s))", path.display(), cfg.terminals.len()),
    )];
    checks.push(host::clock());
    checks.push(security::security(&cfg));
    let (broker_checks, broker) = broker::brokers(&cfg).await;
    checks.extend(broker_checks);
    checks.push(broker::agent_status(&cfg, &broker));
    let (store_check, store_state) = store::store(&cfg);
    checks.push(store_check);
    checks.push(host::disk(&cfg.store.path));
    checks.push(security::key_file(&cfg));
    checks.extend(security::files(&cfg));
    checks.extend(terminals::terminals(&cfg, store_state, &broker).await);
    checks
}

/// The table: check | status | detail | fix.
pub fn render(checks: &[Check]) -> String {
    let w_name = checks.iter().map(|c| c.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<w_name$}  {:<6}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!("{:<w_name$}  {:<6}  {}\n", c.name, c.level.as_str(), c.detail));
        if !c.fix.is_empty() && c.level != Level::Ok {
            out.push_str(&format!("{:<w_name$}  {:<6}  fix: {}\n", "", "", c.fix));
        }
    }
    let fails = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warns = checks.iter().filter(|c| c.level == Level::Warn).count();
    out.push_str(&format!(
        "\n{} checks: {} ok, {warns} warning(s), {fails} failure(s)\n",
        checks.len(),
        checks.len() - fails - warns
    ));
    out
}
