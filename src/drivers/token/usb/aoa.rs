//! The Android Open Accessory switch (`token.md` § USB), shared by every backend:
//! find the register (VID 0x18D1 or the configured VID/PID/serial — nothing else is
//! ever opened), `GET_PROTOCOL`, `SEND_STRING` 0–5, `START`, wait for it to re-enumerate
//! as 18d1:2d01/2d00 (bounded retries), read its endpoints, claim interface 0.

use std::thread::sleep;
use std::time::Duration;

use super::descriptor;
use super::{Ctrl, DevId, DevInfo, Endpoints, UsbBackend, UsbError, UsbErrorKind};
use crate::config::UsbFilter;

pub const VID_GOOGLE: u16 = 0x18d1;
pub const PID_ACCESSORY: u16 = 0x2d00;
pub const PID_ACCESSORY_ADB: u16 = 0x2d01;

/// bmRequestType: vendor request to the device, device-to-host / host-to-device.
pub const RT_VENDOR_IN: u8 = 0xc0;
pub const RT_VENDOR_OUT: u8 = 0x40;
pub const ACCESSORY_GET_PROTOCOL: u8 = 51;
pub const ACCESSORY_SEND_STRING: u8 = 52;
pub const ACCESSORY_START: u8 = 53;

/// The identification strings sent with `SEND_STRING` (index 0–5), from the config.
pub use crate::config::UsbAccessory as AoaStrings;

impl AoaStrings {
    /// In `SEND_STRING` index order.
    pub fn indexed(&self) -> [&str; 6] {
        [&self.manufacturer, &self.model, &self.description, &self.version, &self.uri, &self.serial]
    }
}

/// Timeouts and retry bounds (vendor values by default; tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoaTiming {
    pub control_timeout: Duration,
    /// Attempts to find and open the accessory after `START` (the vendor: 4, 1 s apart).
    pub open_attempts: u32,
    pub retry_delay: Duration,
    /// A bulk OUT transfer must finish within this (the vendor: 15 s).
    pub write_timeout: Duration,
    /// Each bulk IN poll (the vendor: 1 s).
    pub read_poll: Duration,
    /// Upper bound of one bulk IN transfer (the vendor: 15000 bytes); rounded down to a
    /// multiple of the endpoint's max packet size.
    pub read_buffer: usize,
}

impl Default for AoaTiming {
    fn default() -> Self {
        AoaTiming {
            control_timeout: Duration::from_secs(1),
            open_attempts: 4,
            retry_delay: Duration::from_secs(1),
            write_timeout: Duration::from_secs(15),
            read_poll: Duration::from_secs(1),
            read_buffer: 15000,
        }
    }
}

impl AoaTiming {
    /// The bulk IN length: ≤ `read_buffer`, a whole number of packets (nusb requires it
    /// and it avoids babble errors), at least one packet.
    pub fn read_len(&self, max_packet: u16) -> usize {
        let mp = usize::from(max_packet.max(8));
        ((self.read_buffer / mp).max(1)) * mp
    }
}

pub fn is_accessory(d: &DevInfo) -> bool {
    d.vid == VID_GOOGLE && (d.pid == PID_ACCESSORY || d.pid == PID_ACCESSORY_ADB)
}

/// A device that may be the register before the switch: the configured VID (default
/// 0x18D1), and PID/serial when configured. Accessory-mode devices are not candidates.
pub fn is_candidate(d: &DevInfo, f: &UsbFilter) -> bool {
    !is_accessory(d)
        && d.vid == f.vid.unwrap_or(VID_GOOGLE)
        && f.pid.is_none_or(|p| p == d.pid)
        && f.serial.as_ref().is_none_or(|s| d.serial.as_ref() == Some(s))
}

/// An accessory-mode device this terminal may use (serial checked when configured).
pub fn is_our_accessory(d: &DevInfo, f: &UsbFilter) -> bool {
    is_accessory(d) && f.serial.as_ref().is_none_or(|s| d.serial.as_ref() == Some(s))
}

/// Whether a device is any concern of this terminal (hotplug filtering).
pub fn is_relevant(d: &DevInfo, f: &UsbFilter) -> bool {
    is_candidate(d, f) || is_our_accessory(d, f)
}

/// The accessory to use among `devs`: 2d01 before 2d00 (the vendor's order), the one
/// with `serial` first when given.
fn pick_accessory<'a>(
    devs: &'a [DevInfo], f: &UsbFilter, serial: Option<&str>,
) -> Option<&'a DevInfo> {
    let mut acc: Vec<&DevInfo> = devs.iter().filter(|d| is_our_accessory(d, f)).collect();
    acc.sort_by_key(|d| {
        (serial.is_some() && d.serial.as_deref() != serial, d.pid != PID_ACCESSORY_ADB)
    });
    acc.first().copied()
}

/// An accessory opened and claimed, ready for bulk transfers.
pub struct Opened<H> {
    pub handle: H,
    pub dev: DevInfo,
    pub endpoints: Endpoints,
    /// The AOA protocol version the device announced, when this call switched it.
    pub protocol: Option<u16>,
}

impl<H> Opened<H> {
    pub fn id(&self) -> DevId {
        self.dev.id()
    }
}

/// `GET_PROTOCOL`: the device's AOA version (≥ 1 means it can be an accessory).
pub fn get_protocol<B: UsbBackend>(b: &B, h: &B::Handle, t: &AoaTiming) -> Result<u16, UsbError> {
    let req =
        Ctrl { request_type: RT_VENDOR_IN, request: ACCESSORY_GET_PROTOCOL, value: 0, index: 0 };
    let data = b.control_in(h, req, 2, t.control_timeout).map_err(|e| match e.kind {
        UsbErrorKind::Stall => {
            UsbError::new(UsbErrorKind::NotAccessory, "GET_PROTOCOL refused (stall)")
        }
        _ => e.context("GET_PROTOCOL"),
    })?;
    let [lo, hi] = data[..] else {
        return Err(UsbError::new(
            UsbErrorKind::NotAccessory,
            format!("GET_PROTOCOL answered {} bytes, expected 2", data.len()),
        ));
    };
    Ok(u16::from_le_bytes([lo, hi]))
}

/// `GET_PROTOCOL`, `SEND_STRING` 0–5 (NUL-terminated, index in wIndex), `START`.
pub fn switch<B: UsbBackend>(
    b: &B, h: &B::Handle, strings: &AoaStrings, t: &AoaTiming,
) -> Result<u16, UsbError> {
    let version = get_protocol(b, h, t)?;
    if version < 1 {
        return Err(UsbError::new(
            UsbErrorKind::NotAccessory,
            format!("GET_PROTOCOL answered version {version}"),
        ));
    }
    for (i, s) in strings.indexed().iter().enumerate() {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        let req = Ctrl {
            request_type: RT_VENDOR_OUT,
            request: ACCESSORY_SEND_STRING,
            value: 0,
            index: i as u16,
        };
        b.control_out(h, req, &data, t.control_timeout)
            .map_err(|e| e.context(format!("SEND_STRING {i}")))?;
    }
    let req = Ctrl { request_type: RT_VENDOR_OUT, request: ACCESSORY_START, value: 0, index: 0 };
    b.control_out(h, req, &[], t.control_timeout).map_err(|e| e.context("START"))?;
    Ok(version)
}

/// Open an accessory-mode device and claim its bulk interface.
pub fn open_accessory<B: UsbBackend>(b: &B, dev: &DevInfo) -> Result<Opened<B::Handle>, UsbError> {
    let h = b.open(dev).map_err(|e| e.context(format!("opening {dev}")))?;
    let endpoints = match b
        .config_descriptor(&h)
        .map_err(|e| e.to_string())
        .and_then(|raw| descriptor::parse(&raw))
        .and_then(|c| descriptor::accessory_endpoints(&c))
    {
        Ok(e) => e,
        Err(why) => {
            tracing::warn!(%dev, why, "token usb: endpoints not found in the descriptor; using 0x01/0x81 on interface 0");
            descriptor::FALLBACK
        }
    };
    b.claim(&h, &endpoints)
        .map_err(|e| e.context(format!("claiming interface {} of {dev}", endpoints.interface)))?;
    Ok(Opened { handle: h, dev: dev.clone(), endpoints, protocol: None })
}

/// The whole connect: use an accessory already on the bus (after a restart or a
/// replug of the host side), else switch a candidate and wait for it to come back.
pub fn connect<B: UsbBackend>(
    b: &B, filter: &UsbFilter, strings: &AoaStrings, t: &AoaTiming,
) -> Result<Opened<B::Handle>, UsbError> {
    let devs = b.list()?;
    if filter.serial.is_none() {
        // Two registers (or a register and another Google-id Android device) and no
        // serial to tell them apart: taking one would be a guess — refuse, and name them.
        let ours: Vec<&DevInfo> = devs
            .iter()
            .filter(|d| is_candidate(d, filter) || is_our_accessory(d, filter))
            .collect();
        if ours.len() > 1 {
            let names: Vec<String> = ours.iter().map(|d| d.to_string()).collect();
            return Err(UsbError::new(
                UsbErrorKind::Ambiguous,
                format!(
                    "{} devices could be the register ({}): set usb.serial to the one to use (`posbridge usb list` shows their serials); none was touched",
                    ours.len(),
                    names.join(", ")
                ),
            ));
        }
    }
    if let Some(acc) = pick_accessory(&devs, filter, filter.serial.as_deref()) {
        tracing::debug!(dev = %acc, "token usb: register already in accessory mode");
        return open_accessory(b, acc);
    }
    let mut candidates: Vec<&DevInfo> = devs.iter().filter(|d| is_candidate(d, filter)).collect();
    candidates.sort_by_key(|d| (d.bus, d.address));
    let Some(dev) = candidates.first().copied() else {
        return Err(UsbError::new(
            UsbErrorKind::NotFound,
            format!(
                "no Token register on the bus (looked for {:04x}:{}{}; {} other device(s) left alone)",
                filter.vid.unwrap_or(VID_GOOGLE),
                filter.pid.map_or("*".to_string(), |p| format!("{p:04x}")),
                filter.serial.as_ref().map_or(String::new(), |s| format!(" serial {s:?}")),
                devs.len()
            ),
        ));
    };

    let version = {
        let h = b.open(dev).map_err(|e| e.context(format!("opening {dev}")))?;
        switch(b, &h, strings, t)
            .map_err(|e| e.context(format!("switching {dev} to accessory mode")))?
        // the handle is dropped here: the device is about to disconnect
    };
    tracing::info!(%dev, aoa_version = version, "token usb: accessory START sent; waiting for re-enumeration");
    let serial = dev.serial.clone();
    let mut last = None;
    for attempt in 1..=t.open_attempts.max(1) {
        sleep(t.retry_delay);
        let devs = b.list()?;
        let Some(acc) = pick_accessory(&devs, filter, serial.as_deref()) else {
            tracing::debug!(attempt, "token usb: accessory not on the bus yet");
            continue;
        };
        match open_accessory(b, acc) {
            Ok(mut o) => {
                o.protocol = Some(version);
                return Ok(o);
            }
            // The node may appear before udev applies the rule: retry within the bound.
            Err(e) => {
                tracing::debug!(attempt, error = %e, "token usb: accessory not openable yet");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        UsbError::new(
            UsbErrorKind::NoReenumeration,
            format!(
                "{dev} accepted START (AOA v{version}) but no 18d1:2d00/2d01 appeared within {} attempt(s) {:?} apart",
                t.open_attempts.max(1),
                t.retry_delay
            ),
        )
    }))
}
