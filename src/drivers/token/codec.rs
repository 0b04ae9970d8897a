//! Frames and messages of the Integration Hub link (`token.md`: Frames), as a pure
//! tokio-util codec: no I/O here.
//!
//! ```text
//! frame   = type: u16 | len: u32 | body: len bytes | crc: u16      (big-endian)
//! crc     = CRC-16/CCITT-FALSE over type ‖ len ‖ body
//! message = start (49) → data (T) → end (50)
//! ```
//! Protocol faults (bad CRC, oversize length, stray frame, undecryptable body) are
//! *items* of the decoder (`Inbound::Fault`), not decoder errors: tokio-util ends a
//! `Framed` stream after the first `Err`, and the spec wants "an error event, never a
//! crash" with the session still usable. Only real I/O ends the stream.

use bytes::{Buf, BufMut, BytesMut};
use crc::{Crc, CRC_16_IBM_3740};
use tokio_util::codec::{Decoder, Encoder};

use super::crypto::{self, BodyError, Key};

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout); the `crc`
/// catalogue names it CRC-16/IBM-3740.
pub const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

pub const TYPE_START: u16 = 49;
pub const TYPE_END: u16 = 50;
const HEADER: usize = 6;
const TRAILER: usize = 2;
/// Largest body accepted from a length field. A whole fiscal info with hundreds of PLUs
/// compresses far below this; anything larger is a desynchronised stream, and we never
/// reserve memory for it.
pub const MAX_BODY: usize = 1024 * 1024;

/// Packet types (`token.md`: Packet types).
pub mod ty {
    /// PC→device: our company and library version; device→PC: its info, with the fiscal number.
    pub const DEVICE_INFO: u16 = 0;
    /// PC→device: the basket JSON of a sale.
    pub const BASKET: u16 = 1;
    /// PC→device empty; device→PC: sections and saved products (before any sale).
    pub const FISCAL_INFO: u16 = 2;
    /// Device→PC: the sale result JSON (after the receipt).
    pub const SALE_RESULT: u16 = 3;
    /// PC→device: the fixed challenge `asdfg`.
    pub const HELLO: u16 = 4;
    /// Device→PC: its certificate and its signature of the challenge.
    pub const CERTIFICATE: u16 = 5;
    /// PC→device: a new session key, encrypted under the current one.
    pub const KEY: u16 = 6;
    /// Either way: close the link (empty).
    pub const CLOSE: u16 = 7;
    /// Device→PC: whether the basket was processed.
    pub const BASKET_STATUS: u16 = 9;
    /// Device→PC: an error report.
    pub const ERROR: u16 = 60;
}

/// One complete start–data–end message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub ty: u16,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn new(ty: u16, payload: impl Into<Vec<u8>>) -> Message {
        Message { ty, payload: payload.into() }
    }

    /// The device's acknowledgement: a message of the request's type whose payload is `OK`.
    pub fn is_ok(&self) -> bool {
        self.payload == b"OK"
    }

    /// Payload as text: UTF-8, else Windows-1254 (`token.md`: section names seen as
    /// `YÝYECEK`, i.e. the device may send Windows-1254 bytes).
    pub fn text(&self) -> String {
        match std::str::from_utf8(&self.payload) {
            Ok(s) => s.to_string(),
            Err(_) => {
                encoding_rs::WINDOWS_1254.decode_without_bom_handling(&self.payload).0.into_owned()
            }
        }
    }
}

/// Why a frame or message was dropped. The stream stays usable after each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("bad CRC on a type {ty} frame: got {got:#06x}, computed {want:#06x}")]
    BadCrc { ty: u16, got: u16, want: u16 },
    #[error("frame length {0} exceeds the {MAX_BODY}-byte limit; {1} buffered bytes discarded")]
    Oversize(u32, usize),
    #[error("type {ty} frame outside a start-data-end triplet ({why})")]
    Stray { ty: u16, why: &'static str },
    #[error("type {ty} frame: {err}")]
    Body { ty: u16, err: BodyError },
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Message(Message),
    Fault(Fault),
}

/// A raw, CRC-checked frame (body still sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub ty: u16,
    pub body: Vec<u8>,
}

/// Encode one frame around an already sealed body.
pub fn put_frame(dst: &mut BytesMut, ty: u16, body: &[u8]) {
    let start = dst.len();
    dst.reserve(HEADER + body.len() + TRAILER);
    dst.put_u16(ty);
    dst.put_u32(body.len() as u32);
    dst.put_slice(body);
    let crc = CRC16.checksum(&dst[start..]);
    dst.put_u16(crc);
}

/// Split one frame off `src` if it is complete. `Ok(None)`: need more bytes.
pub fn take_frame(src: &mut BytesMut) -> Result<Option<RawFrame>, Fault> {
    if src.len() < HEADER {
        return Ok(None);
    }
    let ty = u16::from_be_bytes([src[0], src[1]]);
    let len = u32::from_be_bytes([src[2], src[3], src[4], src[5]]);
    if len as usize > MAX_BODY {
        // The length cannot be trusted, so neither can any frame boundary after it:
        // drop what is buffered and resynchronise on the next read.
        let dropped = src.len();
        src.clear();
        return Err(Fault::Oversize(len, dropped));
    }
    let total = HEADER + len as usize + TRAILER;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    let frame = src.split_to(total);
    let got = u16::from_be_bytes([frame[total - 2], frame[total - 1]]);
    let want = CRC16.checksum(&frame[..total - TRAILER]);
    if got != want {
        return Err(Fault::BadCrc { ty, got, want });
    }
    Ok(Some(RawFrame { ty, body: frame[HEADER..total - TRAILER].to_vec() }))
}

/// Triplet reassembly: only complete start–data–end sequences become messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Assembly {
    #[default]
    Idle,
    Started,
    Data(Message),
}

/// The link codec: frames ↔ messages under the current session key.
#[derive(Debug)]
pub struct TokenCodec {
    key: Key,
    /// The key before the last switch, able to open one more message (`token.md`: the
    /// late `4 OK` under the bootstrap key — the vendor's "bad decrypt").
    previous: Option<Key>,
    assembly: Assembly,
    /// `seal(key, b"")`: the body of every start and end frame. AES-ECB and zlib are
    /// deterministic, so it is the same 16 bytes for as long as the key is: sealed once
    /// per key instead of twice per message (each seal builds a zlib encoder), and a frame
    /// carrying exactly these bytes opens to the empty payload without inflating.
    empty: Vec<u8>,
    previous_empty: Vec<u8>,
}

impl Default for TokenCodec {
    fn default() -> Self {
        TokenCodec::new(Key::bootstrap())
    }
}

impl TokenCodec {
    pub fn new(key: Key) -> TokenCodec {
        TokenCodec {
            empty: crypto::seal(&key, b""),
            key,
            previous: None,
            assembly: Assembly::Idle,
            previous_empty: Vec::new(),
        }
    }

    /// Switch to `key` at once for sending; keep the old key for one inbound message.
    pub fn switch_key(&mut self, key: Key) {
        let empty = crypto::seal(&key, b"");
        self.previous_empty = std::mem::replace(&mut self.empty, empty);
        let old = std::mem::replace(&mut self.key, key);
        self.previous = Some(old);
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    fn open(&self, body: &[u8]) -> Result<Vec<u8>, BodyError> {
        if body == self.empty.as_slice()
            || (self.previous.is_some() && body == self.previous_empty.as_slice())
        {
            return Ok(Vec::new());
        }
        match crypto::open(&self.key, body) {
            Ok(p) => Ok(p),
            Err(e) => match &self.previous {
                Some(prev) => crypto::open(prev, body).map_err(|_| e),
                None => Err(e),
            },
        }
    }

    /// Feed one CRC-checked frame to the triplet state machine.
    fn assemble(&mut self, f: RawFrame) -> Option<Inbound> {
        let payload = match self.open(&f.body) {
            Ok(p) => p,
            Err(err) => {
                self.assembly = Assembly::Idle;
                return Some(Inbound::Fault(Fault::Body { ty: f.ty, err }));
            }
        };
        let stray = |ty, why| Some(Inbound::Fault(Fault::Stray { ty, why }));
        match (std::mem::take(&mut self.assembly), f.ty) {
            (Assembly::Idle, TYPE_START) => {
                self.assembly = Assembly::Started;
                None
            }
            (Assembly::Idle, ty) => stray(ty, "no start frame"),
            (Assembly::Started, TYPE_START) | (Assembly::Data(_), TYPE_START) => {
                // A new start: the previous message is abandoned, this one may be whole.
                self.assembly = Assembly::Started;
                stray(TYPE_START, "previous message had no end frame")
            }
            (Assembly::Started, TYPE_END) => stray(TYPE_END, "no data frame"),
            (Assembly::Started, ty) => {
                self.assembly = Assembly::Data(Message { ty, payload });
                None
            }
            (Assembly::Data(m), TYPE_END) => {
                // One whole message opened: the previous key has had its one chance.
                self.previous = None;
                Some(Inbound::Message(m))
            }
            (Assembly::Data(_), ty) => stray(ty, "second data frame"),
        }
    }
}

impl Decoder for TokenCodec {
    type Item = Inbound;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, std::io::Error> {
        loop {
            match take_frame(src) {
                Ok(None) => return Ok(None),
                Ok(Some(f)) => {
                    if let Some(item) = self.assemble(f) {
                        return Ok(Some(item));
                    }
                }
                Err(fault) => {
                    self.assembly = Assembly::Idle;
                    return Ok(Some(Inbound::Fault(fault)));
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, std::io::Error> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() => Ok(None),
            None => {
                // A frame cut by the peer closing: drop it, the caller sees the EOF next.
                let n = buf.len();
                buf.advance(n);
                Ok(None)
            }
        }
    }
}

impl Encoder<Message> for TokenCodec {
    type Error = std::io::Error;

    fn encode(&mut self, m: Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        <Self as Encoder<&Message>>::encode(self, &m, dst)
    }
}

impl Encoder<&Message> for TokenCodec {
    type Error = std::io::Error;

    fn encode(&mut self, m: &Message, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        if m.payload.len() > crypto::MAX_PAYLOAD || m.ty == TYPE_START || m.ty == TYPE_END {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot send a type {} message of {} bytes", m.ty, m.payload.len()),
            ));
        }
        // The three frames go out in one write (token.md: one bulk OUT transfer).
        put_frame(dst, TYPE_START, &self.empty);
        put_frame(dst, m.ty, &crypto::seal(&self.key, &m.payload));
        put_frame(dst, TYPE_END, &self.empty);
        Ok(())
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
