//! Finished command records are kept in sled deflated, when that pays (`docs/performance.md`,
//! thirteenth measurement): sled 0.34 writes each change as a fragment, rewrites a leaf
//! every tenth change to it and moves live data out of segments less than half full, so
//! every byte of a record costs the SD card several bytes over its life; a finished
//! record (about 1 KB of JSON) deflates to about 40 %.
//!
//! Only what a checkpoint puts into sled is packed: the write-ahead log and the changes
//! held in memory stay plain JSON (no compression on a payment's path), unfinished records
//! stay plain (rewritten soon, and resumed by any version), and a store written before
//! holds plain records, which read as they are. A packed value:
//!
//! ```text
//! 0x00 | "cmd":{"id":"<id>","op":"<op>"} | 0x00 | raw deflate of the record's JSON
//! ```
//!
//! The leading NUL is never the start of JSON, so the two forms cannot be confused. The
//! head repeats the command's id and op in clear, so a damaged store's salvage
//! (`salvage.rs`) finds the id even when the deflated part is damaged, and so does the
//! salvage of an older agent (it searches for that very text): a downgrade followed by
//! store damage still never executes an id twice. An older agent reading a packed record
//! in a whole store fails closed: the record is reported undecodable and a command sent
//! again with its id is left unacknowledged, never executed (`docs/operator-guide.md`,
//! Upgrading).

use std::borrow::Cow;
use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::CMD;

/// Records shorter than this are kept plain: a queued command's record is 200–400 B and
/// is rewritten within moments; a finished one is about 1 KB and stays for the retention.
pub(crate) const MIN_PACKED: usize = 512;
/// A packed record inflating past this is damage, not data (commands are ≤ 64 KiB).
const MAX_UNPACKED: usize = 16 * 1024 * 1024;
const TAG: u8 = 0;
/// Where the command's id and op start in a record's JSON, after `{"seq":N`.
const HEAD_ID: &[u8] = b",\"cmd\":{\"id\":\"";
const HEAD_OP: &[u8] = b"\",\"op\":\"";

thread_local! {
    /// One compressor per thread that packs (the checkpoint thread): it holds about
    /// 230 KB of tables, which are reused rather than allocated for each record.
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// What sled is given for `value` under `key`: packed when `key` is a command record's,
/// the record is long enough, its head reads as expected and deflating makes it
/// shorter; else `value` itself.
pub(crate) fn pack<'a>(key: &[u8], value: &'a [u8]) -> Cow<'a, [u8]> {
    if !key.starts_with(CMD) || value.len() < MIN_PACKED {
        return Cow::Borrowed(value);
    }
    let Some((id, op)) = head(value) else { return Cow::Borrowed(value) };
    if !finished(value) {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len() / 2 + 64);
    out.push(TAG);
    write_head(&mut out, id, op);
    out.push(TAG);
    let deflated = DEFLATE.with(|d| {
        let mut d = d.borrow_mut();
        let c = d.get_or_insert_with(|| Compress::new(Compression::fast(), false));
        deflate(c, value, &mut out)
    });
    match deflated {
        Ok(()) if out.len() < value.len() => Cow::Owned(out),
        _ => Cow::Borrowed(value),
    }
}

/// The record's JSON from what sled holds under `key`: `Ok(None)` when the value is not
/// packed (use it as it is).
pub(crate) fn unpack(key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if !key.starts_with(CMD) || value.first() != Some(&TAG) {
        return Ok(None);
    }
    let end = value[1..]
        .iter()
        .position(|&b| b == TAG)
        .ok_or_else(|| "a packed record without the end of its head".to_string())?;
    inflate(&value[end + 2..]).map(Some)
}

/// The command record sled holds under `key`, packed or not; `None` when it does not
/// decode (the store's open and `doctor`'s look count it as corrupt).
pub(crate) fn record(key: &[u8], value: &[u8]) -> Option<super::CommandRecord> {
    let json = unpack(key, value).ok()?;
    serde_json::from_slice(json.as_deref().unwrap_or(value)).ok()
}

/// The id and op at the start of a record's JSON (`{"seq":N,"cmd":{"id":"…","op":"…"`),
/// if they are there and of the forms `mqtt-api.md` allows (so no quote or NUL in them).
fn head(json: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = json.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[digits..].strip_prefix(HEAD_ID)?;
    let id_len = rest.iter().position(|&b| b == b'"')?;
    let (id, rest) = rest.split_at(id_len);
    let rest = rest.strip_prefix(HEAD_OP)?;
    let op_len = rest.iter().position(|&b| b == b'"')?;
    let op = &rest[..op_len];
    let id_ok = (1..=64).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b));
    let op_ok =
        (1..=16).contains(&op.len()) && op.iter().all(|b| b.is_ascii_lowercase() || *b == b'_');
    (id_ok && op_ok).then_some((id, op))
}

/// Whether a record's JSON says its command has ended. Only such records are packed: an
/// unfinished one is rewritten soon, and an older agent (after a downgrade) must be able
/// to resume it.
fn finished(json: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct State {
        state: super::CmdState,
    }
    serde_json::from_slice::<State>(json).is_ok_and(|s| s.state.is_final())
}

/// `"cmd":{"id":"<id>","op":"<op>"}`: the text an id is searched for by in damaged files.
fn write_head(out: &mut Vec<u8>, id: &[u8], op: &[u8]) {
    out.extend_from_slice(&HEAD_ID[1..]);
    out.extend_from_slice(id);
    out.extend_from_slice(HEAD_OP);
    out.extend_from_slice(op);
    out.extend_from_slice(b"\"}");
}

fn deflate(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    c.reset();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(input.len() / 4 + 64);
        }
        let read = usize::try_from(c.total_in()).map_err(|e| e.to_string())?;
        let rest = input.get(read..).ok_or("deflate read past its input")?;
        match c.compress_vec(rest, out, FlushCompress::Finish).map_err(|e| e.to_string())? {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError => {}
        }
    }
}

/// Inflate a raw deflate stream; trailing bytes after its end are ignored (a damaged
/// file's salvage inflates from a position in the middle of other data).
pub(crate) fn inflate(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(input.len() * 3);
    loop {
        if out.capacity() - out.len() < 256 {
            if out.len() >= MAX_UNPACKED {
                return Err("a packed record inflates past 16 MiB".into());
            }
            out.reserve(out.len().max(1024));
        }
        let read = usize::try_from(d.total_in()).map_err(|e| e.to_string())?;
        let rest = input.get(read..).ok_or("inflate read past its input")?;
        let before = (d.total_in(), d.total_out());
        match d
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|e| format!("a packed record does not inflate: {e}"))?
        {
            Status::StreamEnd => return Ok(out),
            _ if (d.total_in(), d.total_out()) == before && out.capacity() > out.len() => {
                return Err("a packed record is cut short".into());
            }
            _ => {}
        }
    }
}

/// Where packed records start in `bytes` (a damaged file's): the position after each
/// head's closing NUL, with the id and op the head names.
pub(crate) fn find_packed(bytes: &[u8]) -> impl Iterator<Item = (usize, &str, &str)> + '_ {
    const START: &[u8] = b"\0\"cmd\":{\"id\":\"";
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let i = bytes.get(at..)?.windows(START.len()).position(|w| w == START)?;
        let start = at + i;
        at = start + START.len();
        // The id and op as `head` reads them from a record's JSON, then the whole head as
        // `write_head` writes it for them, and its closing NUL: anything else is not one.
        let tail = &bytes[start + 1..];
        let mut json = b"{\"seq\":0,".to_vec();
        json.extend_from_slice(&tail[..tail.len().min(128)]);
        let Some((id, op)) = head(&json) else { continue };
        let mut expected = Vec::with_capacity(128);
        write_head(&mut expected, id, op);
        expected.push(TAG);
        if !tail.starts_with(&expected) {
            continue;
        }
        // Both are ASCII (`head` checked their bytes), so these cannot fail.
        let id_at = HEAD_ID.len() - 1;
        let (Ok(id), Ok(op)) = (
            std::str::from_utf8(&tail[id_at..id_at + id.len()]),
            std::str::from_utf8(&tail[id_at + id.len() + HEAD_OP.len()..][..op.len()]),
        ) else {
            continue;
        };
        return Some((start + 1 + expected.len(), id, op));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"seq":42,"cmd":{{"id":"{id}","op":"payment","terminal":"ip-1","amount":223,"currency":"AZN"}},"state":"succeeded","journal":[{{"step":"note","data":"{}"}}]}}"#,
            "ab".repeat(pad)
        )
        .into_bytes()
    }

    fn cmd_key(id: &str) -> Vec<u8> {
        super::super::key(CMD, id.as_bytes())
    }

    #[test]
    fn a_finished_record_packs_smaller_and_unpacks_to_the_same_json() {
        let v = record("pay-1", 400);
        let p = pack(&cmd_key("pay-1"), &v);
        assert!(matches!(p, Cow::Owned(_)), "packed");
        assert!(p.len() < v.len() / 2, "{} of {}", p.len(), v.len());
        assert_eq!(p[0], TAG);
        let text = String::from_utf8_lossy(&p);
        assert!(text.contains(r#""cmd":{"id":"pay-1","op":"payment"}"#), "head in clear: {text}");
        assert_eq!(unpack(&cmd_key("pay-1"), &p).expect("unpack").as_deref(), Some(&v[..]));
        // The same compressor again (its tables reset between records).
        let w = record("pay-2", 300);
        let q = pack(&cmd_key("pay-2"), &w);
        assert_eq!(unpack(&cmd_key("pay-2"), &q).expect("unpack").as_deref(), Some(&w[..]));
    }

    #[test]
    fn short_records_other_keys_and_odd_heads_stay_plain() {
        let short = record("pay-1", 10);
        assert!(short.len() < MIN_PACKED);
        assert!(matches!(pack(&cmd_key("pay-1"), &short), Cow::Borrowed(_)));
        let long = record("pay-1", 400);
        assert!(matches!(pack(b"o\0\0\0\0\0\0\0\0\x01", &long), Cow::Borrowed(_)), "outbox");
        let odd = String::from_utf8(long.clone()).expect("utf8").replace("\"seq\":42,", "");
        assert!(matches!(pack(&cmd_key("pay-1"), odd.as_bytes()), Cow::Borrowed(_)));
        let quote = record("pa\\\"y", 400);
        assert!(matches!(pack(&cmd_key("x"), &quote), Cow::Borrowed(_)));
        let running =
            String::from_utf8(long.clone()).expect("utf8").replace("succeeded", "in_progress");
        assert!(
            matches!(pack(&cmd_key("pay-1"), running.as_bytes()), Cow::Borrowed(_)),
            "unfinished"
        );
        // Plain values read as they are, under any key.
        assert_eq!(unpack(&cmd_key("pay-1"), &long).expect("plain"), None);
        assert_eq!(unpack(b"s\0k", &[0, 1, 2]).expect("secret"), None, "not a record key");
    }

    #[test]
    fn a_damaged_packed_record_is_an_error_not_a_record() {
        let v = record("pay-1", 400);
        let p = pack(&cmd_key("pay-1"), &v).into_owned();
        let cut = &p[..p.len() - 20];
        assert!(unpack(&cmd_key("pay-1"), cut).is_err(), "cut short");
        let mut flipped = p.clone();
        let n = flipped.len();
        flipped[n / 2] ^= 0xFF;
        flipped[n / 2 + 1] ^= 0x5A;
        match unpack(&cmd_key("pay-1"), &flipped) {
            Err(_) => {}
            Ok(got) => assert_ne!(got.as_deref(), Some(&v[..]), "damage noticed or visible"),
        }
        assert!(unpack(&cmd_key("pay-1"), &[TAG, b'x', b'y']).is_err(), "no head end");
    }

    #[test]
    fn packed_records_are_found_in_other_bytes() {
        let mut bytes = vec![0xEEu8; 50];
        let a = pack(&cmd_key("pay-1"), &record("pay-1", 400)).into_owned();
        let b = pack(&cmd_key("ref.2:x"), &record("ref.2:x", 300)).into_owned();
        bytes.extend(&a);
        bytes.extend([0u8; 7]);
        bytes.extend(&b[..b.len() / 2]);
        let mut fake = b"\0\"cmd\":{\"id\":\"x-1\",\"op\":\"payment\"\xFF\"}\0".to_vec();
        fake.extend(&bytes);
        let bytes = fake;
        let found: Vec<(usize, &str, &str)> = find_packed(&bytes).collect();
        assert_eq!(found.len(), 2, "a head with other bytes in it is skipped: {found:?}");
        assert_eq!((found[0].1, found[0].2), ("pay-1", "payment"));
        assert_eq!(inflate(&bytes[found[0].0..]).expect("whole"), record("pay-1", 400));
        assert_eq!((found[1].1, found[1].2), ("ref.2:x", "payment"));
        assert!(inflate(&bytes[found[1].0..]).is_err(), "the second is cut in half");
    }
}
