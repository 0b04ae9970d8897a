//! The bounded path from the broker to the intake (`mqtt-api.md`: Durability promise 9).
//!
//! The connection task must never await the intake (it alone polls the connection, and
//! the intake's PUBACKs go through it), so the queue between them cannot push back by
//! blocking. Instead every queued command holds a [`Slot`] until its PUBACK has been
//! asked for; when the queue holds [`MAX_QUEUED`] commands or [`MAX_QUEUED_BYTES`] bytes,
//! the connection task stops taking commands (leaving them unacknowledged: the broker
//! keeps them, persistent session, QoS 1) but keeps the connection until the intake has
//! drained the queue and every PUBACK it asked for has gone out. Only then does it
//! reconnect, and the broker delivers the commands it skipped again. (Dropping the
//! connection at once, as before, sent the PUBACKs of everything queued to a dead
//! connection: under a flood the same commands came back again and again, a livelock.)
//! A reconnect is also how the intake gets commands redelivered after a failed batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Commands queued for the intake at most.
pub const MAX_QUEUED: usize = 4096;
/// Bytes of queued command payloads at most.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

#[derive(Default)]
pub struct Gate {
    count: AtomicUsize,
    bytes: AtomicUsize,
    reconnect: Notify,
    /// Woken when the queue becomes empty.
    drained: Notify,
}

/// One queued command's share of the bound; given back on drop.
pub struct Slot {
    gate: Arc<Gate>,
    bytes: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        if self.gate.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.drained.notify_one();
        }
    }
}

impl Gate {
    /// A slot for a payload of `bytes`, or `None` when the queue is full.
    pub fn admit(self: &Arc<Self>, bytes: usize) -> Option<Slot> {
        let count = self.count.load(Ordering::Acquire);
        let queued = self.bytes.load(Ordering::Acquire);
        if count >= MAX_QUEUED || (count > 0 && queued + bytes > MAX_QUEUED_BYTES) {
            return None;
        }
        self.count.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        Some(Slot { gate: self.clone(), bytes })
    }

    pub fn queued(&self) -> (usize, usize) {
        (self.count.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire))
    }

    /// Ask the connection task to drop and re-open the connection.
    pub fn force_reconnect(&self) {
        self.reconnect.notify_one();
    }

    pub(crate) async fn reconnect_requested(&self) {
        self.reconnect.notified().await
    }

    /// Resolves (maybe spuriously: check [`Gate::queued`]) once the queue has emptied.
    pub(crate) async fn drained(&self) {
        self.drained.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_full_and_frees_on_drop() {
        let g = Arc::new(Gate::default());
        let mut slots: Vec<Slot> = (0..MAX_QUEUED).map(|_| g.admit(10).expect("room")).collect();
        assert!(g.admit(10).is_none(), "full by count");
        slots.pop();
        assert!(g.admit(10).is_some(), "room again once one is taken");
        drop(slots);
        assert_eq!(g.queued(), (0, 0));
        let big = g.admit(MAX_QUEUED_BYTES).expect("one alone always fits");
        assert!(g.admit(1).is_none(), "full by bytes");
        drop(big);
        assert!(g.admit(1).is_some());
    }
}
