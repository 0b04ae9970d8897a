//! The accessory interface's bulk endpoints, read from the raw configuration descriptor
//! (so 0x01/0x81 are not hard-coded; they are only the fallback when the descriptor
//! cannot be read).

use super::Endpoints;

const DT_CONFIG: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;
const TRANSFER_BULK: u8 = 2;

/// The endpoints `token.md` names, used when the descriptor is unavailable.
pub const FALLBACK: Endpoints =
    Endpoints { config: 1, interface: 0, ep_in: 0x81, ep_out: 0x01, max_packet_in: 512 };

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    pub alt: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// (address, attributes, max packet size)
    pub endpoints: Vec<(u8, u8, u16)>,
}

impl Interface {
    /// Android's ADB interface (class ff, subclass 42, protocol 1), present on 2d01.
    pub fn is_adb(&self) -> bool {
        self.class == 0xff && self.subclass == 0x42 && self.protocol == 1
    }

    fn bulk(&self, dir_in: bool) -> Option<(u8, u16)> {
        self.endpoints
            .iter()
            .find(|(a, attr, _)| attr & 3 == TRANSFER_BULK && (a & 0x80 != 0) == dir_in)
            .map(|(a, _, m)| (*a, *m))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub value: u8,
    pub interfaces: Vec<Interface>,
}

/// Parse a configuration descriptor set (config + interfaces + endpoints + class
/// descriptors, which are skipped). Every length is checked: a short or inconsistent
/// descriptor is an error, never a panic.
pub fn parse(raw: &[u8]) -> Result<Config, String> {
    if raw.len() < 9 || raw[1] != DT_CONFIG || raw[0] < 9 {
        return Err(format!(
            "not a configuration descriptor ({} bytes, type {:#04x})",
            raw.len(),
            raw.get(1).copied().unwrap_or(0)
        ));
    }
    let total = u16::from_le_bytes([raw[2], raw[3]]) as usize;
    if total < 9 || total > raw.len() {
        return Err(format!(
            "configuration descriptor says {total} bytes, only {} read",
            raw.len()
        ));
    }
    let raw = &raw[..total];
    let mut cfg = Config { value: raw[5], interfaces: Vec::new() };
    let mut at = raw[0] as usize;
    while at < raw.len() {
        let len = raw[at] as usize;
        if len < 2 || at + len > raw.len() {
            return Err(format!("descriptor at offset {at} has bad length {len}"));
        }
        let d = &raw[at..at + len];
        match d[1] {
            DT_INTERFACE if len >= 9 => cfg.interfaces.push(Interface {
                number: d[2],
                alt: d[3],
                class: d[5],
                subclass: d[6],
                protocol: d[7],
                endpoints: Vec::new(),
            }),
            DT_ENDPOINT if len >= 7 => {
                let Some(intf) = cfg.interfaces.last_mut() else {
                    return Err(format!("endpoint at offset {at} before any interface"));
                };
                intf.endpoints.push((d[2], d[3], u16::from_le_bytes([d[4], d[5]]) & 0x7ff));
            }
            DT_INTERFACE | DT_ENDPOINT => {
                return Err(format!("short descriptor at offset {at} ({len} bytes)"))
            }
            _ => {}
        }
        at += len;
    }
    Ok(cfg)
}

/// The accessory's bulk pair: interface 0 if it has one, else the first non-ADB
/// interface (alternate setting 0) with a bulk IN and a bulk OUT endpoint.
pub fn accessory_endpoints(cfg: &Config) -> Result<Endpoints, String> {
    let usable = |i: &&Interface| {
        i.alt == 0 && !i.is_adb() && i.bulk(true).is_some() && i.bulk(false).is_some()
    };
    let intf = cfg.interfaces.iter().filter(usable).min_by_key(|i| i.number).ok_or_else(|| {
        format!("no interface with a bulk IN/OUT pair among {} interface(s)", cfg.interfaces.len())
    })?;
    let (ep_in, max_packet_in) = intf.bulk(true).ok_or("no bulk IN")?;
    let (ep_out, _) = intf.bulk(false).ok_or("no bulk OUT")?;
    Ok(Endpoints {
        config: cfg.value,
        interface: intf.number,
        ep_in,
        ep_out,
        max_packet_in: max_packet_in.max(8),
    })
}
