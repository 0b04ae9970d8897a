//! [`UsbBackend`] on `rusb` (libusb), cargo feature `libusb`: the same AOA logic
//! through libusb, for hosts where usbfs access via nusb is not wanted.
//!
//! `rusb::devices()` panics without a USB subsystem, so an explicit
//! `rusb::Context::new()` is used and its error handled; serial numbers come from
//! sysfs so listing never opens a device.

use std::time::Duration;

use rusb::UsbContext;

use super::{
    no_subsystem, subsystem_present, Ctrl, DevInfo, Endpoints, UsbBackend, UsbError, UsbErrorKind,
};

#[derive(Default)]
pub struct RusbBackend {
    ctx: std::sync::OnceLock<rusb::Context>,
}

pub struct RusbHandle {
    h: rusb::DeviceHandle<rusb::Context>,
}

fn map_err(e: rusb::Error) -> UsbError {
    let kind = match e {
        rusb::Error::Access => UsbErrorKind::PermissionDenied,
        rusb::Error::Busy => UsbErrorKind::Busy,
        rusb::Error::NoDevice => UsbErrorKind::Disconnected,
        rusb::Error::NotFound => UsbErrorKind::NotFound,
        rusb::Error::Timeout => UsbErrorKind::Timeout,
        rusb::Error::Pipe => UsbErrorKind::Stall,
        _ => UsbErrorKind::Other,
    };
    UsbError::new(kind, format!("libusb: {e}"))
}

/// A sysfs attribute of the device at bus/address, without opening it.
fn sysfs_attr(bus: u8, address: u8, name: &str) -> Option<String> {
    let rd = std::fs::read_dir("/sys/bus/usb/devices").ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let num = |f: &str| {
            std::fs::read_to_string(p.join(f)).ok().and_then(|s| s.trim().parse::<u8>().ok())
        };
        if num("busnum") == Some(bus) && num("devnum") == Some(address) {
            return std::fs::read_to_string(p.join(name)).ok().map(|s| s.trim().to_string());
        }
    }
    None
}

impl RusbBackend {
    fn ctx(&self) -> Result<&rusb::Context, UsbError> {
        if !subsystem_present() {
            return Err(no_subsystem());
        }
        if let Some(c) = self.ctx.get() {
            return Ok(c);
        }
        let c = rusb::Context::new().map_err(|e| map_err(e).context("libusb init"))?;
        Ok(self.ctx.get_or_init(|| c))
    }

    fn find(&self, dev: &DevInfo) -> Result<rusb::Device<rusb::Context>, UsbError> {
        self.ctx()?
            .devices()
            .map_err(map_err)?
            .iter()
            .find(|d| d.bus_number() == dev.bus && d.address() == dev.address)
            .ok_or_else(|| UsbError::new(UsbErrorKind::NotFound, "the device left the bus"))
    }
}

impl UsbBackend for RusbBackend {
    type Handle = RusbHandle;

    fn list(&self) -> Result<Vec<DevInfo>, UsbError> {
        let list = self.ctx()?.devices().map_err(map_err)?;
        Ok(list
            .iter()
            .filter_map(|d| {
                let desc = d.device_descriptor().ok()?;
                let (bus, address) = (d.bus_number(), d.address());
                Some(DevInfo {
                    bus,
                    address,
                    vid: desc.vendor_id(),
                    pid: desc.product_id(),
                    serial: sysfs_attr(bus, address, "serial"),
                    manufacturer: sysfs_attr(bus, address, "manufacturer"),
                    product: sysfs_attr(bus, address, "product"),
                })
            })
            .collect())
    }

    fn open(&self, dev: &DevInfo) -> Result<RusbHandle, UsbError> {
        let h = self.find(dev)?.open().map_err(map_err)?;
        Ok(RusbHandle { h })
    }

    fn control_in(
        &self, h: &RusbHandle, req: Ctrl, len: u16, timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut buf = vec![0u8; usize::from(len)];
        let n = h
            .h
            .read_control(req.request_type, req.request, req.value, req.index, &mut buf, timeout)
            .map_err(map_err)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn control_out(
        &self, h: &RusbHandle, req: Ctrl, data: &[u8], timeout: Duration,
    ) -> Result<(), UsbError> {
        h.h.write_control(req.request_type, req.request, req.value, req.index, data, timeout)
            .map_err(map_err)?;
        Ok(())
    }

    fn config_descriptor(&self, h: &RusbHandle) -> Result<Vec<u8>, UsbError> {
        // GET_DESCRIPTOR(CONFIGURATION, index 0): the raw set, parsed by our own code.
        let mut buf = vec![0u8; 4096];
        let n =
            h.h.read_control(0x80, 6, 0x0200, 0, &mut buf, Duration::from_secs(1))
                .map_err(map_err)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn claim(&self, h: &RusbHandle, eps: &Endpoints) -> Result<(), UsbError> {
        if h.h.active_configuration().ok() != Some(eps.config) {
            h.h.set_active_configuration(eps.config)
                .map_err(|e| map_err(e).context(format!("set configuration {}", eps.config)))?;
        }
        if h.h.kernel_driver_active(eps.interface).unwrap_or(false) {
            h.h.detach_kernel_driver(eps.interface)
                .map_err(|e| map_err(e).context("detach kernel driver"))?;
        }
        h.h.claim_interface(eps.interface).map_err(map_err)
    }

    fn bulk_in(
        &self, h: &RusbHandle, ep: u8, buf: &mut [u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        // rusb returns bytes that arrived before a timeout as Ok(n).
        h.h.read_bulk(ep, buf, timeout).map_err(map_err)
    }

    fn bulk_out(
        &self, h: &RusbHandle, ep: u8, data: &[u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        h.h.write_bulk(ep, data, timeout).map_err(map_err)
    }
}
