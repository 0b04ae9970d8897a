//! [`UsbBackend`] on `nusb` (pure Rust, usbfs on Linux): the default backend.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nusb::transfer::{
    Buffer, Bulk, ControlIn, ControlOut, ControlType, In, Out, Recipient, TransferError,
};
use nusb::{Endpoint, ErrorKind, MaybeFuture};

use super::{
    no_subsystem, subsystem_present, Ctrl, DevInfo, Endpoints, UsbBackend, UsbError, UsbErrorKind,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct NusbBackend;

pub struct NusbHandle {
    dev: nusb::Device,
    iface: Mutex<Option<nusb::Interface>>,
    ep_in: Mutex<Option<Endpoint<Bulk, In>>>,
    ep_out: Mutex<Option<Endpoint<Bulk, Out>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn map_err(e: nusb::Error) -> UsbError {
    let kind = match e.kind() {
        ErrorKind::Disconnected => UsbErrorKind::Disconnected,
        ErrorKind::Busy => UsbErrorKind::Busy,
        ErrorKind::PermissionDenied => UsbErrorKind::PermissionDenied,
        ErrorKind::NotFound => UsbErrorKind::NotFound,
        _ => UsbErrorKind::Other,
    };
    UsbError::new(kind, e.to_string())
}

fn map_transfer(e: TransferError) -> UsbError {
    let kind = match e {
        // nusb cancels a transfer when its timeout passes.
        TransferError::Cancelled => UsbErrorKind::Timeout,
        TransferError::Stall => UsbErrorKind::Stall,
        TransferError::Disconnected => UsbErrorKind::Disconnected,
        _ => UsbErrorKind::Other,
    };
    UsbError::new(kind, e.to_string())
}

/// bmRequestType → nusb's (type, recipient); the direction is the call's.
fn split_request_type(rt: u8) -> (ControlType, Recipient) {
    let ty = match (rt >> 5) & 3 {
        0 => ControlType::Standard,
        1 => ControlType::Class,
        _ => ControlType::Vendor,
    };
    let rcpt = match rt & 0x1f {
        0 => Recipient::Device,
        1 => Recipient::Interface,
        2 => Recipient::Endpoint,
        _ => Recipient::Other,
    };
    (ty, rcpt)
}

pub(crate) fn dev_info(d: &nusb::DeviceInfo) -> DevInfo {
    DevInfo {
        bus: d.busnum(),
        address: d.device_address(),
        vid: d.vendor_id(),
        pid: d.product_id(),
        serial: d.serial_number().map(str::to_string),
        manufacturer: d.manufacturer_string().map(str::to_string),
        product: d.product_string().map(str::to_string),
    }
}

fn list_raw() -> Result<Vec<nusb::DeviceInfo>, UsbError> {
    if !subsystem_present() {
        return Err(no_subsystem());
    }
    Ok(nusb::list_devices().wait().map_err(map_err)?.collect())
}

impl UsbBackend for NusbBackend {
    type Handle = NusbHandle;

    fn list(&self) -> Result<Vec<DevInfo>, UsbError> {
        Ok(list_raw()?.iter().map(dev_info).collect())
    }

    fn open(&self, dev: &DevInfo) -> Result<NusbHandle, UsbError> {
        let info = list_raw()?
            .into_iter()
            .find(|d| d.busnum() == dev.bus && d.device_address() == dev.address)
            .ok_or_else(|| UsbError::new(UsbErrorKind::NotFound, "the device left the bus"))?;
        let d = info.open().wait().map_err(map_err)?;
        Ok(NusbHandle {
            dev: d,
            iface: Mutex::new(None),
            ep_in: Mutex::new(None),
            ep_out: Mutex::new(None),
        })
    }

    fn control_in(
        &self, h: &NusbHandle, req: Ctrl, len: u16, timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let (control_type, recipient) = split_request_type(req.request_type);
        h.dev
            .control_in(
                ControlIn {
                    control_type,
                    recipient,
                    request: req.request,
                    value: req.value,
                    index: req.index,
                    length: len,
                },
                timeout,
            )
            .wait()
            .map_err(map_transfer)
    }

    fn control_out(
        &self, h: &NusbHandle, req: Ctrl, data: &[u8], timeout: Duration,
    ) -> Result<(), UsbError> {
        let (control_type, recipient) = split_request_type(req.request_type);
        h.dev
            .control_out(
                ControlOut {
                    control_type,
                    recipient,
                    request: req.request,
                    value: req.value,
                    index: req.index,
                    data,
                },
                timeout,
            )
            .wait()
            .map_err(map_transfer)
    }

    fn config_descriptor(&self, h: &NusbHandle) -> Result<Vec<u8>, UsbError> {
        h.dev.configurations().next().map(|c| c.as_bytes().to_vec()).ok_or_else(|| {
            UsbError::new(UsbErrorKind::Other, "the device has no configuration descriptor")
        })
    }

    fn claim(&self, h: &NusbHandle, eps: &Endpoints) -> Result<(), UsbError> {
        let active = h.dev.active_configuration().map(|c| c.configuration_value()).ok();
        if active != Some(eps.config) {
            h.dev
                .set_configuration(eps.config)
                .wait()
                .map_err(|e| map_err(e).context(format!("set configuration {}", eps.config)))?;
        }
        // Detaches a kernel driver bound to the interface, if any, then claims it.
        let iface = h.dev.detach_and_claim_interface(eps.interface).wait().map_err(map_err)?;
        let ep_in = iface.endpoint::<Bulk, In>(eps.ep_in).map_err(map_err)?;
        let ep_out = iface.endpoint::<Bulk, Out>(eps.ep_out).map_err(map_err)?;
        *lock(&h.ep_in) = Some(ep_in);
        *lock(&h.ep_out) = Some(ep_out);
        *lock(&h.iface) = Some(iface);
        Ok(())
    }

    fn bulk_in(
        &self, h: &NusbHandle, _ep: u8, buf: &mut [u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        let mut g = lock(&h.ep_in);
        let ep =
            g.as_mut().ok_or_else(|| UsbError::new(UsbErrorKind::Other, "bulk IN before claim"))?;
        let c = ep.transfer_blocking(Buffer::new(buf.len()), timeout);
        // Bytes that arrived before a timeout are kept: the stream must not lose them.
        let n = c.actual_len.min(buf.len()).min(c.buffer.len());
        buf[..n].copy_from_slice(&c.buffer[..n]);
        match c.status {
            Ok(()) => Ok(n),
            Err(TransferError::Cancelled) if n > 0 => Ok(n),
            Err(e) => Err(map_transfer(e)),
        }
    }

    fn bulk_out(
        &self, h: &NusbHandle, _ep: u8, data: &[u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        let mut g = lock(&h.ep_out);
        let ep = g
            .as_mut()
            .ok_or_else(|| UsbError::new(UsbErrorKind::Other, "bulk OUT before claim"))?;
        let c = ep.transfer_blocking(Buffer::from(data.to_vec()), timeout);
        match c.status {
            Ok(()) => Ok(c.actual_len),
            Err(TransferError::Cancelled) if c.actual_len > 0 => Ok(c.actual_len),
            Err(e) => Err(map_transfer(e)),
        }
    }
}
