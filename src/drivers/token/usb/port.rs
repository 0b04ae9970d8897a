//! A backend plus this terminal's filter and timing, type-erased for the driver.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

use super::aoa::{self, AoaTiming};
use super::hotplug::Event;
use super::{DevInfo, UsbBackend, UsbError, UsbStream};
use crate::config::UsbFilter;

pub type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub trait UsbPort: Send + Sync {
    /// Blocking: find the register, switch it to accessory mode if needed, open and
    /// claim it, and start the byte stream.
    fn connect(&self) -> Result<UsbStream, UsbError>;
    /// Blocking: the devices on the bus.
    fn list(&self) -> Result<Vec<DevInfo>, UsbError>;
    /// Hotplug events from the OS when the backend can watch (nusb + udev); the
    /// driver rescans periodically either way.
    fn watch(&self) -> Option<Events> {
        None
    }
}

pub struct Port<B: UsbBackend> {
    pub backend: Arc<B>,
    pub filter: UsbFilter,
    pub timing: AoaTiming,
}

impl<B: UsbBackend> Port<B> {
    pub fn new(backend: Arc<B>, filter: UsbFilter, timing: AoaTiming) -> Port<B> {
        Port { backend, filter, timing }
    }
}

impl<B: UsbBackend> UsbPort for Port<B> {
    fn connect(&self) -> Result<UsbStream, UsbError> {
        let opened =
            aoa::connect(&*self.backend, &self.filter, &self.filter.accessory, &self.timing)?;
        tracing::info!(dev = %opened.dev, endpoints = ?opened.endpoints, aoa = ?opened.protocol, "token usb: accessory claimed");
        UsbStream::start(self.backend.clone(), opened, self.timing).map_err(|e| {
            UsbError::new(
                super::UsbErrorKind::Other,
                format!("cannot start the USB transfer threads: {e}"),
            )
        })
    }

    fn list(&self) -> Result<Vec<DevInfo>, UsbError> {
        self.backend.list()
    }
}

/// The nusb port: adds `nusb::watch_devices` events.
pub struct NusbPort(pub Port<super::nusb_backend::NusbBackend>);

impl UsbPort for NusbPort {
    fn connect(&self) -> Result<UsbStream, UsbError> {
        self.0.connect()
    }

    fn list(&self) -> Result<Vec<DevInfo>, UsbError> {
        self.0.list()
    }

    fn watch(&self) -> Option<Events> {
        use futures_util::StreamExt;
        use nusb::hotplug::HotplugEvent;
        use nusb::MaybeFuture;
        if !super::subsystem_present() {
            return None;
        }
        let watch = match nusb::watch_devices() {
            Ok(w) => w,
            Err(e) => {
                tracing::info!(error = %e, "token usb: no hotplug events (udev netlink unavailable); rescanning periodically");
                return None;
            }
        };
        // nusb reports a departure by its own id: remember arrivals' bus addresses.
        let mut ids: std::collections::HashMap<nusb::DeviceId, DevInfo> = nusb::list_devices()
            .wait()
            .map(|it| it.map(|d| (d.id(), super::nusb_backend::dev_info(&d))).collect())
            .unwrap_or_default();
        Some(Box::pin(watch.filter_map(move |ev| {
            let out = match ev {
                HotplugEvent::Connected(d) => {
                    let info = super::nusb_backend::dev_info(&d);
                    ids.insert(d.id(), info.clone());
                    Some(Event::Arrived(info))
                }
                HotplugEvent::Disconnected(id) => ids.remove(&id).map(|d| Event::Left(d.id())),
            };
            futures_util::future::ready(out)
        })))
    }
}

/// The build's backend: nusb, or libusb with the `libusb` feature.
pub fn default_port(filter: UsbFilter) -> Arc<dyn UsbPort> {
    #[cfg(feature = "libusb")]
    {
        Arc::new(Port::new(
            Arc::new(super::rusb_backend::RusbBackend::default()),
            filter,
            AoaTiming::default(),
        ))
    }
    #[cfg(not(feature = "libusb"))]
    {
        Arc::new(NusbPort(Port::new(
            Arc::new(super::nusb_backend::NusbBackend),
            filter,
            AoaTiming::default(),
        )))
    }
}
