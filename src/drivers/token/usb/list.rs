//! `posbridge usb list`: what is on the bus, which device looks like a Token register,
//! and whether this user may open it. Opens nothing (the access check is `access(2)` on
//! the usbfs node).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use super::aoa::{is_accessory, VID_GOOGLE};
use super::{DevInfo, UsbError, UsbErrorKind};

pub fn kind(d: &DevInfo) -> &'static str {
    if is_accessory(d) {
        "Android accessory mode (Token register, switched)"
    } else if d.vid == VID_GOOGLE {
        "Android (18d1) — Token register candidate"
    } else {
        "-"
    }
}

/// Whether this process may open the device node read-write.
pub fn access(d: &DevInfo) -> String {
    let node = d.node();
    if !node.exists() {
        return format!("no ({} missing)", node.display());
    }
    let Ok(c) = CString::new(node.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    let ok = unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    if ok {
        "yes".into()
    } else {
        "no (permission: see deploy/99-posbridge.rules)".into()
    }
}

/// The listing as printed, or the error that prevented it.
pub fn render(devs: Result<Vec<DevInfo>, UsbError>) -> String {
    let mut devs = match devs {
        Ok(d) => d,
        Err(e) if e.kind == UsbErrorKind::NoSubsystem => return format!("{e}\n"),
        Err(e) => return format!("cannot list USB devices: {e}\n"),
    };
    if devs.is_empty() {
        return "no USB devices found\n".into();
    }
    devs.sort_by_key(|d| (d.bus, d.address));
    let mut out = String::from("BUS-ADDR  VID:PID    SERIAL            DEVICE                          TOKEN?                                             MAY OPEN\n");
    for d in &devs {
        let name = [d.manufacturer.as_deref(), d.product.as_deref()]
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "{:03}-{:03}   {:04x}:{:04x}  {:<16}  {:<30}  {:<49}  {}\n",
            d.bus,
            d.address,
            d.vid,
            d.pid,
            d.serial.as_deref().unwrap_or("-"),
            if name.is_empty() { "-".into() } else { name },
            kind(d),
            access(d)
        ));
    }
    out
}
