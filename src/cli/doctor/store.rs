//! The store check: what `Store::inspect` finds in `store.path` (records, unfinished and
//! unknown commands, a money hold after damage) without opening a store the running agent
//! holds or one that belongs to another user, and whether the terminal checks may open it
//! themselves ([`StoreState`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Check;
use crate::config::Config;
use crate::store::{Store, StoreError};

/// Whether the doctor may open the store itself to build drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreState {
    /// Free and healthy: open it (secrets readable by drivers).
    Free,
    /// Held by the agent, missing, owned by another user or damaged: use a scratch store.
    Unavailable,
}

pub(super) fn store(cfg: &Config) -> (Check, StoreState) {
    const NAME: &str = "store";
    let dir = &cfg.store.path;
    if let Some(owner) = foreign_owner(dir) {
        return (
            Check::warn(
                NAME,
                format!(
                    "{} belongs to uid {owner}, not to this user: not opened (files created now would lock the agent out)",
                    dir.display()
                ),
                "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
            ),
            StoreState::Unavailable,
        );
    }
    match Store::inspect(dir) {
        Err(StoreError::InUse { .. }) => (
            Check::ok(
                NAME,
                format!("{}: in use by the running agent (ok)", dir.display()),
            ),
            StoreState::Unavailable,
        ),
        Ok(None) => (
            Check::warn(
                NAME,
                format!("no store at {} yet", dir.display()),
                "the agent creates it at first start (systemd: StateDirectory=posbridge)",
            ),
            StoreState::Unavailable,
        ),
        Ok(Some(i)) => {
            let detail = format!(
                "{}: {} commands, {} unfinished (resumed at start), {} unknown not reconciled, outbox {}, {:.1} MiB",
                dir.display(),
                i.records,
                i.unfinished,
                i.unknown,
                i.outbox,
                i.size_bytes as f64 / (1024.0 * 1024.0)
            );
            if let Some(h) = &i.money_hold {
                (
                    Check::fail(
                        NAME,
                        format!("{detail}; payments and refunds are REFUSED (store_damaged) since {}: the store was found damaged ({}), the copy is kept at {}, {} command ids were salvaged ({} as unknown)", h.since, h.error, h.moved_aside, h.salvaged, h.salvaged_unknown),
                        "reconcile the salvaged commands (`list` with state unknown) on the terminals, then stop the agent and run `posbridge store acknowledge` (README: A store that cannot be opened)",
                    ),
                    StoreState::Free,
                )
            } else if i.corrupt > 0 {
                (
                    Check::warn(
                        NAME,
                        format!("{detail}; {} undecodable records", i.corrupt),
                        "reconcile those commands with the cloud (README: A store that cannot be opened)",
                    ),
                    StoreState::Free,
                )
            } else {
                (Check::ok(NAME, detail), StoreState::Free)
            }
        }
        Err(e) => (
            Check::fail(
                NAME,
                format!("{}: {e}", dir.display()),
                "permissions: chown -R posbridge:posbridge the store; damage: the agent moves it aside at next start (README: A store that cannot be opened)",
            ),
            StoreState::Unavailable,
        ),
    }
}

/// The owner of `path` when it exists and is not the current user (root included: root
/// creating files there would leave them unwritable for the agent).
fn foreign_owner(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (meta.uid() != me).then_some(meta.uid())
}
