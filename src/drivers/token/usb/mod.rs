//! Token over USB: Android Open Accessory (AOA v2), `token.md` § USB.
//!
//! One small trait, [`UsbBackend`], is the only thing that touches the bus: list devices,
//! open, control transfers in/out, the configuration descriptor, claim, bulk in/out. Two
//! implementations exist: [`nusb_backend`] (pure Rust, default) and `rusb_backend`
//! (libusb, cargo feature `libusb`); `fake` is a recording fake for the tests. The
//! accessory switch ([`aoa`]), the descriptor parsing ([`descriptor`]), the byte stream the
//! session runs over ([`stream`]) and the hotplug state machine ([`hotplug`]) are shared.

pub mod aoa;
pub mod descriptor;
// (Partly used by the tests that need the simulators, a default feature.)
#[cfg(test)]
#[cfg_attr(not(feature = "sims"), allow(dead_code))]
pub(crate) mod fake;
pub mod hotplug;
pub mod list;

pub mod nusb_backend;
pub mod port;
#[cfg(feature = "libusb")]
pub mod rusb_backend;
pub mod stream;

#[cfg(test)]
mod aoa_tests;
#[cfg(all(test, feature = "sims"))]
mod driver_tests;
#[cfg(all(test, feature = "sims"))]
mod link_tests;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use aoa::{AoaStrings, AoaTiming, Opened};
pub use port::{default_port, Port, UsbPort};
pub use stream::UsbStream;

/// One device on the bus, as listed (nothing opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    pub bus: u8,
    pub address: u8,
    pub vid: u16,
    pub pid: u16,
    /// From the OS's cache (sysfs); `None` when the device has none or it is unreadable.
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

impl DevInfo {
    /// `bus-address`: unique while the device stays plugged in (a re-enumeration or a
    /// replug gives a new address).
    pub fn id(&self) -> DevId {
        DevId { bus: self.bus, address: self.address }
    }

    /// The usbfs node the OS opens, `/dev/bus/usb/BBB/DDD`.
    pub fn node(&self) -> PathBuf {
        PathBuf::from(format!("/dev/bus/usb/{:03}/{:03}", self.bus, self.address))
    }
}

impl fmt::Display for DevInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:04x} on bus {} address {}",
            self.vid, self.pid, self.bus, self.address
        )?;
        if let Some(s) = &self.serial {
            write!(f, " serial {s:?}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevId {
    pub bus: u8,
    pub address: u8,
}

/// A control request's setup fields (`wLength` is the data length or the `len` asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctrl {
    /// bmRequestType as sent on the wire (0xC0 vendor/device/in, 0x40 vendor/device/out).
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
}

/// Bulk endpoints and the interface they belong to (from the configuration descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub config: u8,
    pub interface: u8,
    pub ep_in: u8,
    pub ep_out: u8,
    pub max_packet_in: u16,
}

/// What went wrong, so the message can say how to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbErrorKind {
    /// No USB subsystem visible (`/sys/bus/usb` missing: container, VM, this CI machine).
    NoSubsystem,
    /// No matching device on the bus.
    NotFound,
    PermissionDenied,
    /// Another program holds the device or the interface.
    Busy,
    Disconnected,
    Timeout,
    Stall,
    /// The device does not speak AOA (GET_PROTOCOL failed or answered 0).
    NotAccessory,
    /// Switched to accessory mode but never re-appeared as 18d1:2d00/2d01.
    NoReenumeration,
    /// Several devices could be the register and no `usb.serial` says which.
    Ambiguous,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbError {
    pub kind: UsbErrorKind,
    pub message: String,
}

impl UsbError {
    pub fn new(kind: UsbErrorKind, message: impl Into<String>) -> UsbError {
        UsbError { kind, message: message.into() }
    }

    /// The same error with what was being done in front (`opening 18d1:4ee1 …: `).
    pub fn context(mut self, what: impl fmt::Display) -> UsbError {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// How to fix it, by kind.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.kind {
            UsbErrorKind::NoSubsystem => {
                "in a container pass the host's /dev/bus/usb and /sys/bus/usb through, or run posbridge on the host"
            }
            UsbErrorKind::NotFound => {
                "is the register plugged in and switched on? check the USB cable, and the `usb` vid/pid/serial filter in the config (`posbridge usb list` shows what is on the bus)"
            }
            UsbErrorKind::PermissionDenied => {
                "this user may not open the device: install deploy/99-posbridge.rules as /etc/udev/rules.d/99-posbridge.rules, run `udevadm control --reload-rules && udevadm trigger --subsystem-match=usb`, add the posbridge user to group posbridge-usb and replug the register"
            }
            UsbErrorKind::Busy => {
                "another program holds the device (the vendor's IntegrationHub, adb, another posbridge); stop it and replug the register"
            }
            UsbErrorKind::NotAccessory => {
                "the device does not support Android accessory mode; is this the Token register (and not another Android device)?"
            }
            UsbErrorKind::NoReenumeration => {
                "the register did not come back as an accessory (18d1:2d00/2d01): turn ADB off on the register (the vendor's step 1), open the Token app, then replug"
            }
            UsbErrorKind::Timeout => {
                "no answer over USB: accept the accessory permission prompt on the register's screen (the vendor's step 5) and make sure the Token app is open"
            }
            UsbErrorKind::Disconnected => "the register was unplugged or reset",
            UsbErrorKind::Ambiguous => {
                "put the register's serial in the terminal's `usb = { serial = \"…\" }` (`posbridge usb list` shows it)"
            }
            UsbErrorKind::Stall | UsbErrorKind::Other => return None,
        })
    }
}

impl fmt::Display for UsbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = self.hint() {
            write!(f, " — {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UsbError {}

impl From<UsbError> for std::io::Error {
    fn from(e: UsbError) -> std::io::Error {
        use std::io::ErrorKind as K;
        let kind = match e.kind {
            UsbErrorKind::Disconnected => K::ConnectionAborted,
            UsbErrorKind::Timeout => K::TimedOut,
            UsbErrorKind::PermissionDenied => K::PermissionDenied,
            UsbErrorKind::NotFound | UsbErrorKind::NoSubsystem => K::NotFound,
            _ => K::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// The one edge to the USB bus. Blocking calls: the AOA switch runs on a blocking
/// thread and the bulk stream on two threads of its own, so a backend needs no runtime.
/// `Handle` must be shareable: bulk IN and bulk OUT run concurrently on two threads.
pub trait UsbBackend: Send + Sync + 'static {
    type Handle: Send + Sync + 'static;

    /// Every device on the bus, from the OS's cache; opens nothing.
    fn list(&self) -> Result<Vec<DevInfo>, UsbError>;
    fn open(&self, dev: &DevInfo) -> Result<Self::Handle, UsbError>;
    fn control_in(
        &self, h: &Self::Handle, req: Ctrl, len: u16, timeout: Duration,
    ) -> Result<Vec<u8>, UsbError>;
    fn control_out(
        &self, h: &Self::Handle, req: Ctrl, data: &[u8], timeout: Duration,
    ) -> Result<(), UsbError>;
    /// The raw bytes of the first configuration descriptor (with its interfaces and
    /// endpoints), parsed by [`descriptor::parse`].
    fn config_descriptor(&self, h: &Self::Handle) -> Result<Vec<u8>, UsbError>;
    /// Select the configuration, detach a kernel driver if any, claim the interface and
    /// get its endpoints ready.
    fn claim(&self, h: &Self::Handle, eps: &Endpoints) -> Result<(), UsbError>;
    /// One bulk IN transfer into `buf`; `Timeout` when nothing came within `timeout`.
    fn bulk_in(
        &self, h: &Self::Handle, ep: u8, buf: &mut [u8], timeout: Duration,
    ) -> Result<usize, UsbError>;
    /// One bulk OUT transfer; answers how many bytes went out.
    fn bulk_out(
        &self, h: &Self::Handle, ep: u8, data: &[u8], timeout: Duration,
    ) -> Result<usize, UsbError>;
}

/// Whether the OS shows a USB subsystem at all.
pub fn subsystem_present() -> bool {
    std::path::Path::new("/sys/bus/usb").exists()
}

/// The error every backend gives when `/sys/bus/usb` is missing.
pub fn no_subsystem() -> UsbError {
    UsbError::new(UsbErrorKind::NoSubsystem, "no USB subsystem (/sys/bus/usb missing)")
}
