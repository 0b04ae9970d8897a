//! The write-ahead log that makes a commit one `write` + one `fdatasync`.
//!
//! sled's `flush()` writes its segments with two or three `sync_file_range` round trips
//! and still needs an `fdatasync` after it (`CRATES.md`): a millisecond or more per
//! commit on this hardware. So every change is applied to sled *and* appended to an
//! in-memory buffer, in the same order, under one lock. A commit writes that buffer to
//! the current log file and `fdatasync`s it; sled is made durable only at a checkpoint
//! (idle, or when the log grows), after which the log is dropped. On open, the logs are
//! replayed over sled in order; every operation carries the whole value, so replaying
//! something sled already has changes nothing.
//!
//! Files: `<store.path>/sled/posbridge-wal.<generation>` (inside sled's directory, so a
//! damaged store moved aside takes its log with it). Record:
//! `u32 LE length | u32 LE CRC-32C of the payload | payload`, payload = operations
//! `0x01 u32 klen key u32 vlen value` (insert) or `0x02 u32 klen key` (remove). A record
//! that is cut short or fails its checksum ends the replay of its file: it was being
//! written when the process died, so its commit never returned.

use std::fs::File;
use std::path::{Path, PathBuf};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const PREFIX: &str = "posbridge-wal.";
const OP_INSERT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// A record longer than this is damage, not data (commands are ≤ 64 KiB each).
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// One atomic change, logged as one record (one frame: a replay applies all of it or none
/// of it). Held once, as the log's encoding: laying it over sled's state reads the keys
/// and values from there (`sync::PendingLog::frame`).
#[derive(Default)]
pub(crate) struct LoggedBatch {
    ops: Vec<u8>,
}

impl LoggedBatch {
    pub(crate) fn insert(&mut self, k: &[u8], v: &[u8]) {
        self.ops.push(OP_INSERT);
        put_bytes(&mut self.ops, k);
        put_bytes(&mut self.ops, v);
    }

    pub(crate) fn remove(&mut self, k: &[u8]) {
        self.ops.push(OP_REMOVE);
        put_bytes(&mut self.ops, k);
    }

    /// The keys it writes, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        Ops(&self.ops).map(|(k, _)| k)
    }

    /// Its changes, in order: (key, `Some(value)` to insert, `None` to remove).
    pub(crate) fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        Ops(&self.ops)
    }

    /// Append this batch as one framed record to `buf`.
    pub(crate) fn frame_into(&self, buf: &mut Vec<u8>) {
        if self.ops.is_empty() {
            return;
        }
        buf.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        buf.extend_from_slice(&CASTAGNOLI.checksum(&self.ops).to_le_bytes());
        buf.extend_from_slice(&self.ops);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn file_name(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{generation:020}"))
}

/// Log files under `dir`, oldest generation first.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) =
            name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((generation, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Delete the logs under `dir` older than `generation` (their changes are in a durable
/// sled). A removal lost in a crash only replays changes sled already has.
pub(crate) fn remove_before(dir: &Path, generation: u64) -> std::io::Result<()> {
    for (g, path) in list(dir)? {
        if g < generation {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// What a replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) records: u64,
    /// Bytes after the last whole record of a file (a commit cut short by a crash).
    pub(crate) torn_bytes: u64,
}

/// The batches in one log file's bytes, up to the first record that is cut short or
/// fails its checksum, and the bytes after it.
#[cfg(test)]
pub(crate) fn decode(bytes: &[u8]) -> (Vec<sled::Batch>, u64) {
    let (out, at) = decode_from(bytes);
    (out, (bytes.len() - at) as u64)
}

fn decode_from(bytes: &[u8]) -> (Vec<sled::Batch>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((b, next)) = frame_at(bytes, at) {
        out.push(b);
        at = next;
    }
    (out, at)
}

/// The whole, valid record at `at` and where the next one starts.
fn frame_at(bytes: &[u8], at: usize) -> Option<(sled::Batch, usize)> {
    let head = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len)?;
    if CASTAGNOLI.checksum(payload) != crc {
        return None;
    }
    Some((decode_ops(payload)?, at + 8 + len))
}

/// Whether a log whose decoding stopped at `at` is damaged in the middle rather than cut
/// short at its end: the record there is whole by its length, and a valid record follows
/// it. (A crash mid-append leaves only the last record partial; a flipped bit or a lost
/// sector inside the log leaves good records after the bad one.)
fn damaged_mid_log(bytes: &[u8], at: usize) -> bool {
    let Some(head) = bytes.get(at..at + 8) else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_RECORD || at + 8 + len >= bytes.len() {
        return false;
    }
    frame_at(bytes, at + 8 + len).is_some()
}

/// The writes of a record's ops, in order: (key, `Some(value)` to insert, `None` to
/// remove). Stops at the first op it cannot read ([`decode_ops`] checks that first).
struct Ops<'a>(&'a [u8]);

impl<'a> Iterator for Ops<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        fn take<'a>(p: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
            let b = p.get(4..4 + len)?;
            *p = &p[4 + len..];
            Some(b)
        }
        let (&op, rest) = self.0.split_first()?;
        let mut p = rest;
        let item = match op {
            OP_INSERT => {
                let k = take(&mut p)?;
                (k, Some(take(&mut p)?))
            }
            OP_REMOVE => (take(&mut p)?, None),
            _ => return None,
        };
        self.0 = p;
        Some(item)
    }
}

fn decode_ops(p: &[u8]) -> Option<sled::Batch> {
    let mut batch = sled::Batch::default();
    let mut ops = Ops(p);
    for (k, v) in ops.by_ref() {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    // Every byte read as an op, or the record is not one this version wrote.
    ops.0.is_empty().then_some(batch)
}

/// Apply every log under `dir` to `db`, oldest first. Returns what was applied and the
/// highest generation seen (0 when there were none).
pub(crate) fn replay(db: &sled::Db, dir: &Path) -> Result<(Replayed, u64), super::StoreError> {
    let io = |source| super::StoreError::Io { path: dir.to_path_buf(), source };
    let mut seen = Replayed::default();
    let mut last = 0;
    for (generation, path) in list(dir).map_err(io)? {
        let bytes = std::fs::read(&path).map_err(io)?;
        let (batches, at) = decode_from(&bytes);
        // Zeros after the last record are space allocated ahead, not a torn record.
        let torn = bytes[at..].iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64;
        // A partial last record is a commit that never returned: a crash mid-append, or a
        // failed append after which the syncer moved to a fresh generation (so this can be
        // any generation's tail). A bad record with good ones after it is damage,
        // reported — never a silent truncation of committed changes.
        if torn > 0 && damaged_mid_log(&bytes, at) {
            return Err(super::StoreError::LogDamaged {
                path: path.display().to_string(),
                offset: at as u64,
            });
        }
        if torn > 0 {
            tracing::warn!(log = %path.display(), torn_bytes = torn,
                "store log ends in a partial record (a commit cut short by a crash; it was never acknowledged)");
        }
        seen.torn_bytes += torn;
        for b in batches {
            db.apply_batch(b)?;
            seen.records += 1;
        }
        last = last.max(generation);
    }
    Ok((seen, last))
}

/// The log file commits append to.
///
/// Its space is allocated ahead (`fallocate`, [`PREALLOCATE`] at a time), so a commit
/// writes inside the file's size: its `fdatasync` then has no file size to commit, only
/// the data (measured on ext4, 400 B records: 98 µs and 5.0 KiB written to the device per
/// sync, against 148 µs and 8.6 KiB when each sync also grows the file;
/// docs/performance.md). The bytes after the last record read as zeros, which the replay
/// takes as the end of the log. Where the file system cannot allocate ahead (or the disk
/// is full), the log simply grows with each append, as before.
pub(crate) struct LogFile {
    pub(crate) generation: u64,
    file: File,
    /// Bytes of records written (where the next append goes).
    pub(crate) len: u64,
    /// Bytes allocated ahead (the file's size once `fallocate` succeeded).
    allocated: u64,
}

/// How much log space is allocated at a time.
pub(crate) const PREALLOCATE: u64 = 1024 * 1024;

impl LogFile {
    /// Create generation `generation` under `dir` and make its directory entry durable.
    pub(crate) fn create(dir: &Path, generation: u64) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(file_name(dir, generation))?;
        let mut log = LogFile { generation, file, len: 0, allocated: 0 };
        log.allocate(PREALLOCATE);
        // The allocation is made durable with the directory entry: the first commit's
        // `fdatasync` then has no size change to write.
        log.file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(log)
    }

    /// Allocate the file up to `to` bytes, if the file system can (best effort: a log
    /// that grows with its appends is correct, only slower).
    fn allocate(&mut self, to: u64) {
        use std::os::fd::AsRawFd;
        if to <= self.allocated || crate::faults::io("wal:allocate").is_err() {
            return;
        }
        let (Ok(offset), Ok(len)) =
            (libc::off64_t::try_from(self.allocated), libc::off64_t::try_from(to - self.allocated))
        else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor this struct owns; no memory is passed.
        // (`fallocate64`: on 32-bit ARM `off_t` is 32 bits wide.)
        let rc = unsafe { libc::fallocate64(self.file.as_raw_fd(), 0, offset, len) };
        if rc == 0 {
            self.allocated = to;
        } else {
            tracing::debug!(error = %std::io::Error::last_os_error(), "store log: no space allocated ahead");
        }
    }

    /// Append and `fdatasync`: when this returns, the bytes survive a power cut.
    pub(crate) fn append_durably(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.len + bytes.len() as u64;
        if end > self.allocated && self.allocated > 0 {
            // One size change now rather than one per commit from here on.
            // (Where that fails the file grows with this write; its `fdatasync` then
            // writes the new size too.)
            self.allocate(end.div_ceil(PREALLOCATE) * PREALLOCATE + PREALLOCATE);
        }
        crate::faults::io("wal:append")?;
        self.file.write_all_at(bytes, self.len)?;
        crate::faults::io("wal:sync")?;
        self.file.sync_data()?;
        self.len = end;
        Ok(())
    }
}

/// Bytes of whole records at the start of a log file's bytes (the rest is a torn tail or
/// space allocated ahead).
#[cfg(test)]
pub(crate) fn records_len(bytes: &[u8]) -> usize {
    decode_from(bytes).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ops: &[(&str, Option<&str>)]) -> LoggedBatch {
        let mut b = LoggedBatch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k.as_bytes(), v.as_bytes()),
                None => b.remove(k.as_bytes()),
            }
        }
        b
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let mut buf = Vec::new();
        batch(&[("a", Some("1")), ("b", Some("2"))]).frame_into(&mut buf);
        batch(&[("a", None)]).frame_into(&mut buf);
        let whole = buf.len();
        batch(&[("c", Some("3"))]).frame_into(&mut buf);
        // Every cut inside the third record keeps exactly the first two.
        for cut in whole..buf.len() {
            let (b, torn) = decode(&buf[..cut]);
            assert_eq!(b.len(), 2, "cut at {cut}");
            assert_eq!(torn as usize, cut - whole);
        }
        assert_eq!(decode(&buf).0.len(), 3);
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_at_that_record() {
        let mut buf = Vec::new();
        batch(&[("a", Some("1"))]).frame_into(&mut buf);
        let first = buf.len();
        batch(&[("b", Some("2"))]).frame_into(&mut buf);
        batch(&[("c", Some("3"))]).frame_into(&mut buf);
        buf[first + 10] ^= 0x01;
        let (b, torn) = decode(&buf);
        assert_eq!(b.len(), 1);
        assert_eq!(torn as usize, buf.len() - first);
    }

    #[test]
    fn garbage_never_panics() {
        // Lengths pointing past the end, zero lengths, huge lengths, bad op codes.
        for bytes in [vec![0xFF; 64], vec![0; 64], vec![5, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9], {
            let mut v = Vec::new();
            let payload = [7u8, 1, 0, 0, 0, b'k'];
            v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v.extend_from_slice(&CASTAGNOLI.checksum(&payload).to_le_bytes());
            v.extend_from_slice(&payload);
            v
        }] {
            let (b, torn) = decode(&bytes);
            assert!(b.is_empty());
            assert_eq!(torn as usize, bytes.len());
        }
    }

    #[test]
    fn damage_inside_a_log_is_reported_never_truncated() {
        let three = || {
            let mut buf = Vec::new();
            batch(&[("a", Some("1"))]).frame_into(&mut buf);
            let first = buf.len();
            batch(&[("b", Some("2"))]).frame_into(&mut buf);
            batch(&[("c", Some("3"))]).frame_into(&mut buf);
            (buf, first)
        };
        // A flipped bit in the middle record: good records follow it → damage.
        let (mut buf, first) = three();
        buf[first + 10] ^= 0x01;
        assert!(damaged_mid_log(&buf, first));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(file_name(dir.path(), 1), &buf).expect("write");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let e = replay(&db, dir.path()).expect_err("damage reported");
        assert!(matches!(e, super::super::StoreError::LogDamaged { .. }), "{e}");
        // The last record cut short (a crash mid-append): a torn tail, replayed up to it.
        let (buf, _) = three();
        let cut = &buf[..buf.len() - 3];
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(file_name(dir.path(), 1), cut).expect("write");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, _) = replay(&db, dir.path()).expect("torn tail is fine");
        assert_eq!((seen.records, seen.torn_bytes > 0), (2, true));
        // The same cut in an older generation: a failed append, after which the syncer
        // wrote the same changes into a fresh generation. Fine too.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(file_name(dir.path(), 1), cut).expect("write");
        std::fs::write(file_name(dir.path(), 2), &buf).expect("write");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, _) = replay(&db, dir.path()).expect("an older torn tail is fine");
        assert_eq!(seen.records, 5);
    }

    #[test]
    fn a_log_allocated_ahead_replays_its_records_and_no_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogFile::create(dir.path(), 1).expect("create");
        let size = || std::fs::metadata(file_name(dir.path(), 1)).expect("meta").len();
        // The file is its allocated size before anything is written (fallocate works on
        // ext4 and tmpfs, where the tests run).
        assert_eq!(size(), PREALLOCATE);
        let mut buf = Vec::new();
        batch(&[("a", Some("1"))]).frame_into(&mut buf);
        batch(&[("b", Some("2"))]).frame_into(&mut buf);
        log.append_durably(&buf).expect("append");
        assert_eq!(size(), PREALLOCATE, "a commit inside the allocation keeps the size");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, _) = replay(&db, dir.path()).expect("replay");
        assert_eq!((seen.records, seen.torn_bytes), (2, 0), "zeros after the records are not torn");
        // A commit past the allocation extends it, and everything still replays.
        let big = vec![b'v'; PREALLOCATE as usize + 1000];
        let mut buf = Vec::new();
        let mut b = LoggedBatch::default();
        b.insert(b"big", &big);
        b.frame_into(&mut buf);
        log.append_durably(&buf).expect("append past the allocation");
        assert!(size() >= log.len + PREALLOCATE, "{} vs {}", size(), log.len);
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, _) = replay(&db, dir.path()).expect("replay");
        assert_eq!((seen.records, seen.torn_bytes), (3, 0));
        assert_eq!(db.get("big").expect("get").map(|v| v.len()), Some(big.len()));
    }

    #[test]
    fn replay_applies_generations_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut old = LogFile::create(dir.path(), 3).expect("create");
        let mut buf = Vec::new();
        batch(&[("k", Some("old")), ("gone", Some("x"))]).frame_into(&mut buf);
        old.append_durably(&buf).expect("append");
        let mut new = LogFile::create(dir.path(), 10).expect("create");
        let mut buf = Vec::new();
        batch(&[("k", Some("new")), ("gone", None)]).frame_into(&mut buf);
        new.append_durably(&buf).expect("append");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, last) = replay(&db, dir.path()).expect("replay");
        assert_eq!(seen.records, 2);
        assert_eq!(last, 10);
        assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"new"[..]));
        assert!(db.get("gone").expect("get").is_none());
    }
}
