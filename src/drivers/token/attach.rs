//! The USB side of a Token terminal (`transport = "usb"`): [`UsbSide`] holds the port,
//! which device the link is on and what the hotplug watcher saw; the watcher feeds it OS
//! hotplug events plus a periodic rescan and wakes the engine when the register arrives
//! or the linked one is unplugged (which marks the cached session dead). Also the
//! driver's USB connect (opening the accessory on a blocking thread) and unlink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::driver::{ConnectError, TokenDriver};
use super::usb::hotplug::{Action, Event, Presence};
use super::usb::{self, DevId, UsbPort};
use super::Io;
use crate::config::UsbFilter;

/// How often the bus is rescanned for the register (the hotplug fallback where udev
/// events do not reach the process).
pub(super) const RESCAN: Duration = Duration::from_secs(2);

/// The USB side of a terminal: the port, which device the link is on, and what the
/// hotplug watcher saw.
pub struct UsbSide {
    port: Arc<dyn UsbPort>,
    presence: std::sync::Mutex<Presence>,
    /// Woken on a relevant arrival or the loss of the linked device.
    pub(super) changed: Notify,
    /// The linked device left the bus: the cached session is dead.
    pub(super) lost: AtomicBool,
    watching: AtomicBool,
    rescan: Duration,
}

impl UsbSide {
    pub fn new(port: Arc<dyn UsbPort>, filter: UsbFilter, rescan: Duration) -> Arc<UsbSide> {
        Arc::new(UsbSide {
            port,
            presence: std::sync::Mutex::new(Presence::new(filter)),
            changed: Notify::new(),
            lost: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            rescan,
        })
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_linked(&self, id: Option<DevId>) {
        self.presence().set_linked(id);
    }

    /// Feed one bus event; wakes the engine when the terminal's state may have changed.
    pub fn apply(&self, ev: Event) {
        let actions = self.presence().on(ev);
        for a in actions {
            match a {
                Action::Connect => tracing::info!("token usb: register arrived"),
                Action::Lost(id) => {
                    tracing::warn!(?id, "token usb: register unplugged");
                    self.lost.store(true, Ordering::SeqCst);
                }
            }
            self.changed.notify_one();
        }
    }

    /// Start the hotplug watcher once (needs a runtime; ends with the driver).
    pub(super) fn start_watching(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(watch_bus(Arc::downgrade(self), self.port.watch(), self.rescan));
    }
}

/// OS hotplug events when they exist, plus a periodic rescan (containers and machines
/// without udev netlink events only ever get the rescan).
async fn watch_bus(side: Weak<UsbSide>, mut events: Option<usb::port::Events>, every: Duration) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let ev = tokio::select! {
            Some(ev) = async { match events.as_mut() { Some(e) => e.next().await, None => std::future::pending().await } } => ev,
            _ = tick.tick() => {
                let Some(port) = side.upgrade().map(|s| s.port.clone()) else { return };
                match tokio::task::spawn_blocking(move || port.list()).await {
                    Ok(Ok(devs)) => Event::Scan(devs),
                    Ok(Err(e)) => {
                        if !warned {
                            tracing::warn!(error = %e, "token usb: cannot list USB devices; will keep trying");
                            warned = true;
                        }
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let Some(s) = side.upgrade() else { return };
        s.apply(ev);
    }
}

impl TokenDriver {
    /// Open the USB accessory (blocking work on a blocking thread).
    pub(super) async fn usb_connect(&self) -> Result<Box<dyn Io>, ConnectError> {
        let side =
            self.usb.clone().ok_or_else(|| ConnectError::Unavailable("no USB port".into()))?;
        side.start_watching();
        let port = side.port.clone();
        let s = tokio::task::spawn_blocking(move || port.connect())
            .await
            .map_err(|e| ConnectError::Unavailable(format!("USB connect task failed: {e}")))?
            .map_err(|e| ConnectError::Unavailable(format!("USB: {e}")))?;
        side.lost.store(false, Ordering::SeqCst);
        side.set_linked(Some(s.device().id()));
        Ok(Box::new(s))
    }

    /// The link is down (the hotplug state machine may connect on the next arrival).
    pub(super) fn unlink(&self) {
        if let Some(u) = &self.usb {
            u.set_linked(None);
        }
    }
}
