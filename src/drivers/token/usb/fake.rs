//! A recording fake of the USB edge (the one thing that cannot exist on a machine
//! without USB): an Android register that answers `GET_PROTOCOL`, takes `SEND_STRING`
//! and `START`, re-enumerates as an accessory after a scripted number of bus scans, and
//! whose bulk endpoints are a byte pipe handed to the test (which bridges it to the
//! Token simulator's device side). Every call is recorded for the assertions. Also the
//! devices (the register, a mouse, a phone) and the fast timing the USB tests share.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::aoa::{
    AoaTiming, ACCESSORY_GET_PROTOCOL, ACCESSORY_SEND_STRING, ACCESSORY_START, PID_ACCESSORY_ADB,
    RT_VENDOR_IN, RT_VENDOR_OUT, VID_GOOGLE,
};
use super::{Ctrl, DevInfo, Endpoints, UsbBackend, UsbError, UsbErrorKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List,
    Open { vid: u16, pid: u16, address: u8 },
    ControlIn { ctrl: Ctrl, len: u16 },
    ControlOut { ctrl: Ctrl, data: Vec<u8> },
    ConfigDescriptor,
    Claim(Endpoints),
    BulkIn { ep: u8, len: usize },
    BulkOut { ep: u8, len: usize },
}

/// How the fake register behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// `GET_PROTOCOL`'s answer, or the error it fails with.
    pub protocol: Result<u16, UsbErrorKind>,
    /// Fail the control request with this bRequest (and wIndex, for SEND_STRING).
    pub fail_control: Option<(u8, u16, UsbErrorKind)>,
    /// Bus scans after `START` before the accessory shows up; `None` = never.
    pub reenumerate_after: Option<u32>,
    pub accessory_pid: u16,
    /// Errors for successive opens of the accessory (consumed one per open).
    pub accessory_open_errors: Vec<UsbErrorKind>,
    /// Errors for successive opens of the device before the switch.
    pub open_errors: Vec<UsbErrorKind>,
    pub claim_error: Option<UsbErrorKind>,
    /// The accessory's configuration descriptor; `None` = reading it fails.
    pub descriptor: Option<Vec<u8>>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            protocol: Ok(2),
            fail_control: None,
            reenumerate_after: Some(1),
            accessory_pid: PID_ACCESSORY_ADB,
            accessory_open_errors: Vec::new(),
            open_errors: Vec::new(),
            claim_error: None,
            descriptor: Some(accessory_descriptor(0x81, 0x01)),
        }
    }
}

/// A captured-style configuration descriptor of an Android accessory with ADB
/// (18d1:2d01): interface 0 = accessory (ff/ff/00, bulk IN `ep_in`, bulk OUT `ep_out`,
/// 512-byte packets), interface 1 = ADB (ff/42/01, bulk 0x82/0x02).
pub fn accessory_descriptor(ep_in: u8, ep_out: u8) -> Vec<u8> {
    let mut d = vec![
        // configuration: wTotalLength filled below, 2 interfaces, value 1, bus powered, 500 mA
        9, 2, 0, 0, 2, 1, 0, 0x80, 250, //
        // interface 0, alt 0, 2 endpoints, vendor class ff/ff/00, iInterface 4
        9, 4, 0, 0, 2, 0xff, 0xff, 0x00, 4, //
        7, 5, ep_in, 2, 0x00, 0x02, 0, // bulk IN, 512
        7, 5, ep_out, 2, 0x00, 0x02, 0, // bulk OUT, 512
        // interface 1: ADB
        9, 4, 1, 0, 2, 0xff, 0x42, 0x01, 5, //
        7, 5, 0x82, 2, 0x00, 0x02, 0, //
        7, 5, 0x02, 2, 0x00, 0x02, 1,
    ];
    let total = d.len() as u16;
    d[2..4].copy_from_slice(&total.to_le_bytes());
    d
}

pub fn android_device(address: u8, serial: &str) -> DevInfo {
    DevInfo {
        bus: 1,
        address,
        vid: VID_GOOGLE,
        pid: 0x4ee1,
        serial: Some(serial.into()),
        manufacturer: Some("TOKEN".into()),
        product: Some("X30TR".into()),
    }
}

pub fn mouse() -> DevInfo {
    DevInfo {
        bus: 1,
        address: 2,
        vid: 0x046d,
        pid: 0xc52b,
        serial: None,
        manufacturer: Some("Logitech".into()),
        product: None,
    }
}

pub fn other_android() -> DevInfo {
    // Another Android device (a phone) with another vendor id: never probed by default.
    DevInfo {
        bus: 1,
        address: 3,
        vid: 0x04e8,
        pid: 0x6860,
        serial: Some("PHONE".into()),
        manufacturer: None,
        product: None,
    }
}

/// Timing with short timeouts and retry delays, so the fake's retries run fast.
pub fn fast() -> AoaTiming {
    AoaTiming {
        control_timeout: Duration::from_millis(100),
        open_attempts: 4,
        retry_delay: Duration::from_millis(10),
        write_timeout: Duration::from_secs(5),
        read_poll: Duration::from_millis(50),
        read_buffer: 15000,
    }
}

struct State {
    devices: Vec<DevInfo>,
    script: Script,
    /// The device that took `START` and the scans left before it comes back.
    switching: Option<(DevInfo, u32)>,
    strings: [Option<Vec<u8>>; 6],
    next_address: u8,
    /// Bumped by `unplug`: handles of an older generation are disconnected.
    generation: u64,
}

pub struct FakeUsb {
    state: Mutex<State>,
    calls: Mutex<Vec<Call>>,
    /// Where the device end of each claimed accessory's pipe goes.
    bridge: Option<(Handle, mpsc::UnboundedSender<DuplexStream>)>,
}

pub struct FakeHandle {
    dev: DevInfo,
    generation: u64,
    rd: Mutex<Option<ReadHalf<DuplexStream>>>,
    wr: Mutex<Option<WriteHalf<DuplexStream>>>,
    claimed: Mutex<Option<Endpoints>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn err(kind: UsbErrorKind, what: &str) -> UsbError {
    UsbError::new(kind, format!("fake: {what}"))
}

impl FakeUsb {
    pub fn new(devices: Vec<DevInfo>, script: Script) -> FakeUsb {
        FakeUsb {
            state: Mutex::new(State {
                devices,
                script,
                switching: None,
                strings: Default::default(),
                next_address: 20,
                generation: 0,
            }),
            calls: Mutex::new(Vec::new()),
            bridge: None,
        }
    }

    /// Claimed accessories' device-side pipes arrive on the returned receiver (the
    /// test serves them with the simulator). Bulk transfers run on `rt`.
    pub fn bridged(
        devices: Vec<DevInfo>, script: Script, rt: Handle,
    ) -> (FakeUsb, mpsc::UnboundedReceiver<DuplexStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut f = FakeUsb::new(devices, script);
        f.bridge = Some((rt, tx));
        (f, rx)
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Control transfers only, in order.
    pub fn control_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::ControlIn { .. } | Call::ControlOut { .. }))
            .collect()
    }

    pub fn strings(&self) -> [Option<Vec<u8>>; 6] {
        lock(&self.state).strings.clone()
    }

    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut lock(&self.state).script)
    }

    /// The register is unplugged: gone from the bus, every open handle disconnected.
    pub fn unplug(&self) {
        let mut s = lock(&self.state);
        s.devices.retain(|d| d.vid != VID_GOOGLE);
        s.switching = None;
        s.generation += 1;
    }

    /// Plug a device in (a new address, as the OS would give).
    pub fn plug(&self, mut dev: DevInfo) -> DevInfo {
        let mut s = lock(&self.state);
        dev.address = s.next_address;
        s.next_address = s.next_address.wrapping_add(1);
        s.devices.push(dev.clone());
        dev
    }

    fn record(&self, c: Call) {
        lock(&self.calls).push(c)
    }

    fn live(&self, h: &FakeHandle) -> Result<(), UsbError> {
        let s = lock(&self.state);
        if s.generation != h.generation || !s.devices.iter().any(|d| d.id() == h.dev.id()) {
            return Err(err(UsbErrorKind::Disconnected, "device gone"));
        }
        Ok(())
    }

    fn failing(&self, c: &Ctrl) -> Option<UsbError> {
        let s = lock(&self.state);
        match s.script.fail_control {
            Some((req, index, kind))
                if req == c.request && (req != ACCESSORY_SEND_STRING || index == c.index) =>
            {
                Some(err(kind, "scripted control failure"))
            }
            _ => None,
        }
    }
}

impl UsbBackend for FakeUsb {
    type Handle = FakeHandle;

    fn list(&self) -> Result<Vec<DevInfo>, UsbError> {
        self.record(Call::List);
        let mut s = lock(&self.state);
        if let Some((dev, left)) = s.switching.take() {
            if left == 0 {
                let mut acc = dev.clone();
                acc.vid = VID_GOOGLE;
                acc.pid = s.script.accessory_pid;
                acc.address = s.next_address;
                s.next_address = s.next_address.wrapping_add(1);
                s.devices.push(acc);
            } else {
                s.switching = Some((dev, left - 1));
            }
        }
        Ok(s.devices.clone())
    }

    fn open(&self, dev: &DevInfo) -> Result<FakeHandle, UsbError> {
        self.record(Call::Open { vid: dev.vid, pid: dev.pid, address: dev.address });
        let mut s = lock(&self.state);
        if !s.devices.iter().any(|d| d.id() == dev.id()) {
            return Err(err(UsbErrorKind::NotFound, "no such device"));
        }
        let errors = if super::aoa::is_accessory(dev) {
            &mut s.script.accessory_open_errors
        } else {
            &mut s.script.open_errors
        };
        if !errors.is_empty() {
            let kind = errors.remove(0);
            return Err(err(kind, "scripted open failure"));
        }
        Ok(FakeHandle {
            dev: dev.clone(),
            generation: s.generation,
            rd: Mutex::new(None),
            wr: Mutex::new(None),
            claimed: Mutex::new(None),
        })
    }

    fn control_in(
        &self, h: &FakeHandle, ctrl: Ctrl, len: u16, _timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        self.record(Call::ControlIn { ctrl, len });
        self.live(h)?;
        if let Some(e) = self.failing(&ctrl) {
            return Err(e);
        }
        if ctrl.request_type != RT_VENDOR_IN || ctrl.request != ACCESSORY_GET_PROTOCOL {
            return Err(err(UsbErrorKind::Stall, "unknown IN request"));
        }
        let v = lock(&self.state).script.protocol;
        match v {
            Ok(v) => Ok(v.to_le_bytes()[..usize::from(len.min(2))].to_vec()),
            Err(kind) => Err(err(kind, "GET_PROTOCOL")),
        }
    }

    fn control_out(
        &self, h: &FakeHandle, ctrl: Ctrl, data: &[u8], _timeout: Duration,
    ) -> Result<(), UsbError> {
        self.record(Call::ControlOut { ctrl, data: data.to_vec() });
        self.live(h)?;
        if let Some(e) = self.failing(&ctrl) {
            return Err(e);
        }
        if ctrl.request_type != RT_VENDOR_OUT {
            return Err(err(UsbErrorKind::Stall, "not a vendor OUT request"));
        }
        let mut s = lock(&self.state);
        match ctrl.request {
            ACCESSORY_SEND_STRING if ctrl.index < 6 && data.last() == Some(&0) => {
                s.strings[usize::from(ctrl.index)] = Some(data.to_vec());
                Ok(())
            }
            ACCESSORY_START if data.is_empty() => {
                // The device drops off the bus and comes back (or not) as an accessory.
                s.devices.retain(|d| d.id() != h.dev.id());
                if let Some(n) = s.script.reenumerate_after {
                    s.switching = Some((h.dev.clone(), n));
                }
                Ok(())
            }
            _ => Err(err(UsbErrorKind::Stall, "bad OUT request")),
        }
    }

    fn config_descriptor(&self, h: &FakeHandle) -> Result<Vec<u8>, UsbError> {
        self.record(Call::ConfigDescriptor);
        self.live(h)?;
        lock(&self.state)
            .script
            .descriptor
            .clone()
            .ok_or_else(|| err(UsbErrorKind::Other, "descriptor unreadable"))
    }

    fn claim(&self, h: &FakeHandle, eps: &Endpoints) -> Result<(), UsbError> {
        self.record(Call::Claim(*eps));
        self.live(h)?;
        if let Some(kind) = lock(&self.state).script.claim_error {
            return Err(err(kind, "scripted claim failure"));
        }
        if let Some((_, tx)) = &self.bridge {
            let (host, device) = tokio::io::duplex(64 * 1024);
            let (rd, wr) = tokio::io::split(host);
            *lock(&h.rd) = Some(rd);
            *lock(&h.wr) = Some(wr);
            let _ = tx.send(device);
        }
        *lock(&h.claimed) = Some(*eps);
        Ok(())
    }

    fn bulk_in(
        &self, h: &FakeHandle, ep: u8, buf: &mut [u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        self.record(Call::BulkIn { ep, len: buf.len() });
        self.live(h)?;
        if lock(&h.claimed).map(|e| e.ep_in) != Some(ep) {
            return Err(err(UsbErrorKind::Stall, "bulk IN on an unclaimed endpoint"));
        }
        let Some((rt, _)) = &self.bridge else {
            std::thread::sleep(timeout);
            return Err(err(UsbErrorKind::Timeout, "nothing to read"));
        };
        let mut g = lock(&h.rd);
        let Some(rd) = g.as_mut() else {
            return Err(err(UsbErrorKind::Disconnected, "pipe closed"));
        };
        match rt.block_on(async { tokio::time::timeout(timeout, rd.read(buf)).await }) {
            Err(_) => {
                drop(g);
                self.live(h)?;
                Err(err(UsbErrorKind::Timeout, "bulk IN"))
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                *g = None;
                Err(err(UsbErrorKind::Disconnected, "the device end closed"))
            }
            Ok(Ok(n)) => Ok(n),
        }
    }

    fn bulk_out(
        &self, h: &FakeHandle, ep: u8, data: &[u8], timeout: Duration,
    ) -> Result<usize, UsbError> {
        self.record(Call::BulkOut { ep, len: data.len() });
        self.live(h)?;
        if lock(&h.claimed).map(|e| e.ep_out) != Some(ep) {
            return Err(err(UsbErrorKind::Stall, "bulk OUT on an unclaimed endpoint"));
        }
        let Some((rt, _)) = &self.bridge else {
            return Ok(data.len());
        };
        let mut g = lock(&h.wr);
        let Some(wr) = g.as_mut() else {
            return Err(err(UsbErrorKind::Disconnected, "pipe closed"));
        };
        match rt.block_on(async {
            tokio::time::timeout(timeout, async {
                wr.write_all(data).await?;
                wr.flush().await
            })
            .await
        }) {
            Err(_) => Err(err(UsbErrorKind::Timeout, "bulk OUT")),
            Ok(Err(_)) => {
                *g = None;
                Err(err(UsbErrorKind::Disconnected, "the device end closed"))
            }
            Ok(Ok(())) => Ok(data.len()),
        }
    }
}
