//! The write-ahead log that makes a commit one `write` + one `fdatasync`.
//!
//! sled's `flush()` writes its segments with two or three `sync_file_range` round trips
//! and still needs an `fdatasync` after it (`CRATES.md`): a millisecond or more per
//! commit on this hardware. So every change is applied to sled *and* appended to an
//! in-memory buffer, in the same order, under one lock. A commit writes that buffer to
//! the current log file and `fdatasync`s it; sled is made durable only at a checkpoint
//! (`engine::CheckpointSchedule`, or when the log grows), after which the log is dropped. On open, the logs are
//! replayed over sled in order; every operation carries the whole value, so replaying
//! something sled already has changes nothing.
//!
//! Files: `<store.path>/sled/posbridge-wal.<generation>` (inside sled's directory, so a
//! damaged store moved aside takes its log with it). Record:
//! `u32 LE length | u32 LE CRC-32C of the payload | payload`, payload = operations
//! `0x01 u32 klen key u32 vlen value` (insert) or `0x02 u32 klen key` (remove). A record
//! that is cut short or fails its checksum ends the replay of its file: it was being
//! written when the process died, so its commit never returned.
//!
//! A log file is reused: at a checkpoint the newest log it made obsolete becomes the spare
//! (`posbridge-wal.spare-<generation>`), and the next generation is written over it from
//! its start, into blocks already written, so a commit's `fdatasync` has no extent to
//! convert and commits no file-system metadata (measured: `docs/performance.md`). The old
//! records left after the new ones must never replay: a record is bound to its file's
//! generation, its length field with the top bit set and its checksum XORed with the
//! CRC-32C of the generation (distinct for generations below 2^32), so one left from an
//! earlier generation fails its checksum and ends the replay there. Records without the
//! top bit (written before reuse) are checked as they are; such files are never reused.
//!
//! Where the file system takes direct I/O, commits are written around the page cache in
//! whole device sectors ([`Direct`]): a 1 KB commit then costs the SD card two 512 B
//! sectors instead of one or two 4 KiB pages. The format and the replay are the same.

use std::fs::File;
use std::path::{Path, PathBuf};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const PREFIX: &str = "posbridge-wal.";
const OP_INSERT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// A record longer than this is damage, not data (commands are ≤ 64 KiB each).
const MAX_RECORD: usize = 256 * 1024 * 1024;
/// In a record's length field: its checksum is bound to its file's generation.
const BOUND: u32 = 1 << 31;
/// The spare log's name: this, then the highest generation it held.
const SPARE: &str = "posbridge-wal.spare-";

/// What a record's checksum is XORed with in generation `generation`'s file.
fn binding(generation: u64) -> u32 {
    CASTAGNOLI.checksum(&generation.to_le_bytes())
}

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
    let mut out = named(dir, PREFIX)?;
    out.sort();
    Ok(out)
}

/// The files under `dir` named `prefix` then a generation, with that generation.
fn named(dir: &Path, prefix: &str) -> std::io::Result<Vec<(u64, PathBuf)>> {
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
            name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((generation, entry.path()));
    }
    Ok(out)
}

/// Delete the logs under `dir` older than `generation` (their changes are in a durable
/// sled; a removal lost in a crash only replays changes sled already has), except that
/// the newest of them becomes the spare the next generation is written over (when there
/// is none yet and it was written by [`LogFile`], its records bound to its generation).
pub(crate) fn retire_before(dir: &Path, generation: u64) -> std::io::Result<()> {
    let mut old: Vec<(u64, PathBuf)> =
        list(dir)?.into_iter().filter(|(g, _)| *g < generation).collect();
    if spare(dir)?.is_none() {
        if let Some((g, path)) = old.last() {
            if bound(path)? {
                std::fs::rename(path, dir.join(format!("{SPARE}{g:020}")))?;
                old.pop();
            }
        }
    }
    for (_, path) in old {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Make sure a spare is ready under `dir` (a new store has none): written ahead like a new
/// log, holding no records, named for `generation` (the log just created), so the first
/// checkpoint writes over it instead of writing a new log's space in the middle of the
/// commits. Costs one write of [`PREALLOCATE`] at a store's first start.
pub(crate) fn prepare_spare(dir: &Path, generation: u64) -> std::io::Result<()> {
    if spare(dir)?.is_some() {
        return Ok(());
    }
    LogFile::written_ahead(dir, &dir.join(format!("{SPARE}{generation:020}")), generation).map(drop)
}

/// Whether the log at `path` starts with a record bound to its generation (one written
/// before reuse, or an empty log, is never reused).
fn bound(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 4];
    match File::open(path)?.read_exact(&mut head) {
        Ok(()) => Ok(u32::from_le_bytes(head) & BOUND != 0),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The spare log under `dir`, if any: the highest generation it held, and its path.
pub(crate) fn spare(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    Ok(named(dir, SPARE)?.into_iter().max())
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
pub(crate) fn decode(bytes: &[u8], generation: u64) -> (Vec<sled::Batch>, u64) {
    let (out, at) = decode_from(bytes, generation);
    (out, (bytes.len() - at) as u64)
}

fn decode_from(bytes: &[u8], generation: u64) -> (Vec<sled::Batch>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((b, next)) = frame_at(bytes, at, generation) {
        out.push(b);
        at = next;
    }
    (out, at)
}

/// The record at `at`, whole by its length: its payload, its checksum as stored, whether
/// that checksum is bound to a generation, and where the next record starts.
fn record_at(bytes: &[u8], at: usize) -> Option<(&[u8], u32, bool, usize)> {
    let head = bytes.get(at..at + 8)?;
    let field = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let stored = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let len = (field & !BOUND) as usize;
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len)?;
    Some((payload, stored, field & BOUND != 0, at + 8 + len))
}

/// The whole, valid record at `at` in a file of generation `generation`, and where the
/// next one starts.
fn frame_at(bytes: &[u8], at: usize, generation: u64) -> Option<(sled::Batch, usize)> {
    let (payload, stored, bound, next) = record_at(bytes, at)?;
    let crc = if bound { stored ^ binding(generation) } else { stored };
    if CASTAGNOLI.checksum(payload) != crc {
        return None;
    }
    Some((decode_ops(payload)?, next))
}

/// Whether the record at `at` (where the replay stopped) is one an earlier generation left
/// in a reused file: whole, and valid for one of the 64 generations before `generation`.
/// Such a record is the end of this generation's records, not a commit cut short (only
/// the warning depends on it: damage is looked for either way).
fn left_from_before(bytes: &[u8], at: usize, generation: u64) -> bool {
    let Some((payload, stored, true, _)) = record_at(bytes, at) else { return false };
    let sum = CASTAGNOLI.checksum(payload);
    (generation.saturating_sub(64)..generation).any(|g| stored ^ binding(g) == sum)
}

/// Whether a log whose decoding stopped at `at` is damaged in the middle rather than cut
/// short at its end: the record there is whole by its length, and a valid record follows
/// it. (A crash mid-append leaves only the last record partial; a flipped bit or a lost
/// sector inside the log leaves good records after the bad one.)
fn damaged_mid_log(bytes: &[u8], at: usize, generation: u64) -> bool {
    match record_at(bytes, at) {
        Some((_, _, _, next)) if next < bytes.len() => frame_at(bytes, next, generation).is_some(),
        _ => false,
    }
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
        let (batches, at) = decode_from(&bytes, generation);
        // Zeros after the last record are space allocated ahead, and records an earlier
        // generation left in a reused file are the end of this one's: not a torn record.
        let torn = if left_from_before(&bytes, at, generation) {
            0
        } else {
            bytes[at..].iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64
        };
        // A partial last record is a commit that never returned: a crash mid-append, or a
        // failed append after which the syncer moved to a fresh generation (so this can be
        // any generation's tail). A bad record with good ones after it is damage,
        // reported — never a silent truncation of committed changes.
        if damaged_mid_log(&bytes, at, generation) {
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
    // Generations go on above any the spare has held: its old records must stay foreign.
    if let Some((held, _)) = spare(dir).map_err(io)? {
        last = last.max(held);
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
    /// Commits written in device sectors around the page cache, where the file system
    /// can ([`Direct`]); `None`: through the page cache.
    direct: Option<Direct>,
}

/// How much log space is allocated at a time.
pub(crate) const PREALLOCATE: u64 = 1024 * 1024;

impl LogFile {
    /// Create generation `generation` under `dir` and make its directory entry durable:
    /// the spare renamed, when there is one that held only older generations (written
    /// over from its start), else a new file.
    pub(crate) fn create(dir: &Path, generation: u64) -> std::io::Result<LogFile> {
        let name = file_name(dir, generation);
        if let Some((held, path)) = spare(dir)? {
            if held < generation {
                std::fs::rename(&path, &name)?;
                let file = std::fs::OpenOptions::new().read(true).write(true).open(&name)?;
                let allocated = file.metadata()?.len();
                File::open(dir)?.sync_all()?;
                let direct = Direct::open(&name, &file);
                return Ok(LogFile { generation, file, len: 0, allocated, direct });
            }
            // A spare that held this generation or a later one (logs deleted by hand):
            // never written over.
            std::fs::remove_file(&path)?;
        }
        LogFile::written_ahead(dir, &name, generation)
    }

    /// A new, empty file at `name` (under `dir`) for generation `generation`, written
    /// with zeros, not only allocated (`fallocate` leaves extents that the first write into
    /// each converts, a metadata commit at its `fdatasync`): its commits then cost what a
    /// reused log's do, for one write of PREALLOCATE per new file (a fresh store's log and
    /// spare; a log that outgrew the spare). Made durable with its directory entry: the
    /// first commit's `fdatasync` then has no size change to write.
    fn written_ahead(dir: &Path, name: &Path, generation: u64) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(name)?;
        let mut log = LogFile { generation, file, len: 0, allocated: 0, direct: None };
        log.prewrite(PREALLOCATE);
        log.file.sync_all()?;
        File::open(dir)?.sync_all()?;
        log.direct = Direct::open(name, &log.file);
        Ok(log)
    }

    /// Write zeros up to `to` bytes (best effort, as [`LogFile::allocate`]).
    fn prewrite(&mut self, to: u64) {
        use std::os::unix::fs::FileExt;
        if crate::faults::io("wal:allocate").is_err() {
            return;
        }
        // Page by page: written in larger pieces, the page cache may hold the file in
        // large folios, and a commit that dirties a few bytes then counts (and may write)
        // a whole folio (measured: 67 KB of `write_bytes` per 2 KB sync with 64 KiB
        // pieces, 6 KB with 4 KiB ones, as with `fallocate`).
        let zeros = [0u8; 4096];
        let mut at = 0;
        while at < to {
            let n = (to - at).min(zeros.len() as u64);
            if let Err(e) = self.file.write_all_at(&zeros[..n as usize], at) {
                tracing::debug!(error = %e, "store log: no space written ahead");
                return;
            }
            at += n;
        }
        self.allocated = to;
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
        // The bench's stage timestamps (`crate::stages`): a commit's write and its sync.
        let noted = crate::stages::next_commit();
        let note = |step: usize| {
            if let Some(id) = &noted {
                crate::stages::mark(id, crate::stages::COMMIT[step]);
            }
        };
        note(0);
        let direct = match self
            .direct
            .as_mut()
            .map(|d| d.write(&self.file, self.len, bytes, self.generation))
        {
            Some(Ok(())) => true,
            // The file system refused the alignment after all: through the page cache
            // from now on.
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(error = %e, "store log: direct writes refused; writing through the page cache");
                self.direct = None;
                false
            }
            Some(Err(e)) => return Err(e),
            None => false,
        };
        if !direct {
            let mut owned = bytes.to_vec();
            bind(&mut owned, self.generation);
            self.file.write_all_at(&owned, self.len)?;
        }
        note(1);
        crate::faults::io("wal:sync")?;
        self.file.sync_data()?;
        note(2);
        self.len = end;
        Ok(())
    }

    /// Whether commits go around the page cache (the file system takes direct I/O).
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }
}

/// Bind each record in `frames` (whole records, as framed) to `generation`: the length
/// field's top bit set, the checksum XORed with the generation's (see the module's doc).
fn bind(frames: &mut [u8], generation: u64) {
    let mut at = 0;
    while let Some(head) = frames.get_mut(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        head[..4].copy_from_slice(&(len | BOUND).to_le_bytes());
        head[4..].copy_from_slice(&(crc ^ binding(generation)).to_le_bytes());
        at += 8 + (len & !BOUND) as usize;
    }
}

/// A log's commits written around the page cache (`O_DIRECT`), in whole sectors of the
/// device rather than whole memory pages.
///
/// Through the page cache, a commit's `fdatasync` writes every page the commit touched:
/// at least 4 KiB, more when it crosses a page boundary, for a commit of a few hundred
/// bytes (an SD card's wear, and the kernel's `write_bytes`, count those pages). Written
/// directly, a commit costs the sectors it touches: 512 B each on an SD card. The
/// `fdatasync` after it is still what makes it durable (the device's write cache).
///
/// The file is written in whole sectors, so the first and last sector a commit touches
/// are rewritten with what they already hold around the new bytes: the `window` mirrors
/// the file from `start` (read through the page cache when it moves on, since a reused
/// log holds an earlier generation's records after the end, which must stay as they are
/// for the replay to tell them apart from a torn record).
struct Direct {
    file: File,
    /// The device's direct-I/O alignment (offsets, lengths and memory), in bytes.
    sector: usize,
    /// Backing memory, over-allocated so an aligned window fits in it.
    mem: Vec<u8>,
    /// Where the aligned window starts in `mem`, and its length.
    at: usize,
    len: usize,
    /// The file offset the window mirrors from.
    start: u64,
}

/// How much of the log the window mirrors at a time (a read through the page cache each
/// time a commit goes past it).
const WINDOW: usize = 64 * 1024;
/// Memory alignment of the window (any direct-I/O alignment up to a page).
const PAGE: usize = 4096;

impl Direct {
    /// The log at `path` (already open as `file`) opened for direct writes, when its file
    /// system takes them (`statx` reports its alignment, Linux ≥ 6.1); else `None`.
    fn open(path: &Path, file: &File) -> Option<Direct> {
        use std::os::unix::fs::OpenOptionsExt;
        // An escape hatch for a file system whose direct I/O misbehaves, and for the
        // bench's comparison (docs/configuration.md).
        if std::env::var_os("POSBRIDGE_STORE_DIRECT").is_some_and(|v| v == "0") {
            return None;
        }
        let sector = dio_alignment(file)?;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| tracing::debug!(error = %e, "store log: no direct writes"))
            .ok()?;
        Some(Direct { file: direct, sector, mem: Vec::new(), at: 0, len: 0, start: 0 })
    }

    /// Write `bytes` at file offset `at` (bound to `generation`), in whole sectors.
    fn write(
        &mut self, file: &File, at: u64, bytes: &[u8], generation: u64,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let s = self.sector as u64;
        let from = at / s * s;
        let to = (at + bytes.len() as u64).div_ceil(s) * s;
        if from < self.start || to > self.start + self.len as u64 {
            self.load(file, from, (to - from) as usize)?;
        }
        let window = &mut self.mem[self.at..self.at + self.len];
        let i = (at - self.start) as usize;
        let new = &mut window[i..i + bytes.len()];
        new.copy_from_slice(bytes);
        bind(new, generation);
        let (a, b) = ((from - self.start) as usize, (to - self.start) as usize);
        let written = self.file.write_all_at(&window[a..b], from);
        if written.is_err() {
            // What the file holds there is unknown now: read it again before the next.
            self.len = 0;
        }
        written
    }

    /// Mirror the file from `from` (sector-aligned), at least `need` bytes of it.
    fn load(&mut self, file: &File, from: u64, need: usize) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = need.max(WINDOW).div_ceil(PAGE) * PAGE;
        // Grown for a large commit (a burst's), and back to a window's size after it.
        if self.mem.len() < len + PAGE || self.mem.len() > 4 * (len + PAGE) {
            self.mem = vec![0; len + PAGE];
        }
        let at = self.mem.as_ptr().align_offset(PAGE);
        if at >= PAGE || self.sector > PAGE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let window = &mut self.mem[at..at + len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut window[got..], from + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.len = 0;
                    return Err(e);
                }
            }
        }
        window[got..].fill(0);
        (self.at, self.len, self.start) = (at, len, from);
        Ok(())
    }
}

/// The direct-I/O alignment `file`'s file system asks for (offsets and memory), when it
/// takes direct I/O for it at all.
fn dio_alignment(file: &File) -> Option<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statx` writes only into `buf`, a plain C struct of the right type; the
    // path is an empty C string and `AT_EMPTY_PATH` makes the call about `file`'s
    // descriptor, which outlives the call.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut buf,
        )
    };
    if rc != 0 || buf.stx_mask & libc::STATX_DIOALIGN == 0 || buf.stx_dio_offset_align == 0 {
        return None;
    }
    let sector = buf.stx_dio_offset_align.max(buf.stx_dio_mem_align) as usize;
    (sector.is_power_of_two() && sector <= PAGE).then_some(sector)
}

/// Bytes of whole records at the start of a log file's bytes (the rest is a torn tail or
/// space allocated ahead).
#[cfg(test)]
pub(crate) fn records_len(bytes: &[u8], generation: u64) -> usize {
    decode_from(bytes, generation).1
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
            let (b, torn) = decode(&buf[..cut], 1);
            assert_eq!(b.len(), 2, "cut at {cut}");
            assert_eq!(torn as usize, cut - whole);
        }
        assert_eq!(decode(&buf, 1).0.len(), 3);
    }

    #[test]
    fn a_flipped_bit_ends_the_replay_at_that_record() {
        let mut buf = Vec::new();
        batch(&[("a", Some("1"))]).frame_into(&mut buf);
        let first = buf.len();
        batch(&[("b", Some("2"))]).frame_into(&mut buf);
        batch(&[("c", Some("3"))]).frame_into(&mut buf);
        buf[first + 10] ^= 0x01;
        let (b, torn) = decode(&buf, 1);
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
            let (b, torn) = decode(&bytes, 1);
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
        assert!(damaged_mid_log(&buf, first, 1));
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
        // The file is its written-ahead size before any record is written.
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

    /// Apply every log under `dir` to a fresh db; (what was seen, value of each key).
    fn replayed(dir: &Path, keys: &[&str]) -> (Replayed, Vec<Option<String>>) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (seen, _) = replay(&db, dir).expect("replay");
        let values = keys
            .iter()
            .map(|k| db.get(k).expect("get").map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect();
        (seen, values)
    }

    fn append(log: &mut LogFile, ops: &[(&str, Option<&str>)]) {
        let mut buf = Vec::new();
        batch(ops).frame_into(&mut buf);
        log.append_durably(&buf).expect("append");
    }

    /// A checkpoint's obsolete log becomes the spare and the next generation is written
    /// over it: the records the earlier generation left after the new ones (the same sizes
    /// here, so they line up exactly) never replay, and do not read as a torn commit.
    #[test]
    fn a_reused_log_replays_only_its_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut one = LogFile::create(dir.path(), 1).expect("create");
        for k in ["a", "b", "c"] {
            append(&mut one, &[(k, Some("old1"))]);
        }
        drop(one);
        let _two = LogFile::create(dir.path(), 2).expect("create");
        retire_before(dir.path(), 2).expect("retire");
        assert_eq!(spare(dir.path()).expect("spare").map(|(g, _)| g), Some(1));
        let mut three = LogFile::create(dir.path(), 3).expect("create");
        assert!(spare(dir.path()).expect("spare").is_none(), "the spare was taken");
        assert!(three.allocated >= PREALLOCATE, "written over, not allocated anew");
        append(&mut three, &[("a", Some("new3"))]);
        let (seen, values) = replayed(dir.path(), &["a", "b", "c"]);
        assert_eq!(seen, Replayed { records: 1, torn_bytes: 0 });
        assert_eq!(values, vec![Some("new3".to_string()), None, None]);
        // And a commit cut short over the old records is still a torn tail.
        let mut bytes = std::fs::read(file_name(dir.path(), 3)).expect("read");
        let end = records_len(&bytes, 3);
        let mut half = Vec::new();
        batch(&[("b", Some("new3"))]).frame_into(&mut half);
        bytes[end..end + 8].copy_from_slice(&half[..8]);
        bytes[end + 3] |= 0x80; // bound
        bytes[end + 4..end + 8].copy_from_slice(
            &(u32::from_le_bytes([half[4], half[5], half[6], half[7]]) ^ binding(3)).to_le_bytes(),
        );
        bytes[end + 8] ^= 0xFF; // its payload never made it whole
        std::fs::write(file_name(dir.path(), 3), &bytes).expect("write");
        let (seen, values) = replayed(dir.path(), &["a", "b"]);
        assert_eq!(seen.records, 1);
        assert!(seen.torn_bytes > 0, "{seen:?}");
        assert_eq!(values, vec![Some("new3".to_string()), None]);
    }

    /// Where the file system takes direct I/O (ext4, xfs, btrfs; Linux ≥ 6.1), a small
    /// commit costs the device sectors it touches, not a 4 KiB page of the page cache (an
    /// SD card's wear; the kernel's `write_bytes`); either way every commit replays.
    #[test]
    fn a_small_commit_writes_sectors_not_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogFile::create(dir.path(), 1).expect("create");
        let probe = File::open(file_name(dir.path(), 1)).expect("open");
        assert_eq!(log.is_direct(), dio_alignment(&probe).is_some());
        let written = || -> u64 {
            let io = std::fs::read_to_string("/proc/thread-self/io").expect("io");
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("write_bytes")
        };
        let value = "v".repeat(300);
        let keys: Vec<String> = (0..40).map(|k| format!("k{k}")).collect();
        let before = written();
        for k in &keys {
            append(&mut log, &[(k, Some(&value))]);
        }
        let per_commit = (written() - before) / keys.len() as u64;
        if log.is_direct() {
            // ~320 B records: one sector, or two where one crosses a sector's end.
            assert!(per_commit <= 1024, "{per_commit} B written per commit");
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (seen, values) = replayed(dir.path(), &names);
        assert_eq!(seen, Replayed { records: 40, torn_bytes: 0 });
        assert!(values.iter().all(|v| v.as_deref() == Some(value.as_str())));
    }

    /// A direct write the file system refuses (here: an alignment it does not take, which
    /// it answers with EINVAL) is written through the page cache instead, and the log goes
    /// on that way: nothing is lost and the commit still succeeds.
    #[test]
    fn refused_direct_writes_fall_back_to_the_page_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogFile::create(dir.path(), 1).expect("create");
        let Some(direct) = log.direct.as_mut() else {
            return; // no direct I/O on this file system: nothing to fall back from
        };
        assert!(direct.sector >= 512);
        direct.sector = 256; // a 256-byte write: refused by a device of 512-byte sectors
        append(&mut log, &[("a", Some("1"))]);
        assert!(!log.is_direct(), "falls back after a refused write");
        append(&mut log, &[("b", Some("2"))]);
        let (seen, values) = replayed(dir.path(), &["a", "b"]);
        assert_eq!(seen, Replayed { records: 2, torn_bytes: 0 });
        assert_eq!(values, vec![Some("1".to_string()), Some("2".to_string())]);
    }

    /// Damage inside a reused log is found as before: a bad record with a good one of
    /// the same generation after it.
    #[test]
    fn damage_inside_a_reused_log_is_still_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut one = LogFile::create(dir.path(), 1).expect("create");
        for k in ["a", "b", "c", "d"] {
            append(&mut one, &[(k, Some("old"))]);
        }
        drop(one);
        let _two = LogFile::create(dir.path(), 2).expect("create");
        retire_before(dir.path(), 2).expect("retire");
        let mut three = LogFile::create(dir.path(), 3).expect("create");
        append(&mut three, &[("a", Some("new"))]);
        append(&mut three, &[("b", Some("new"))]);
        let path = file_name(dir.path(), 3);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0x01; // inside the first record's payload
        std::fs::write(&path, &bytes).expect("write");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        assert!(matches!(
            replay(&db, dir.path()),
            Err(super::super::StoreError::LogDamaged { .. })
        ));
    }

    /// Logs written before reuse (records not bound to a generation) still replay, and
    /// are never made the spare.
    #[test]
    fn an_unbound_log_replays_and_is_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut buf = Vec::new();
        batch(&[("k", Some("v"))]).frame_into(&mut buf);
        std::fs::write(file_name(dir.path(), 4), &buf).expect("write");
        let (seen, values) = replayed(dir.path(), &["k"]);
        assert_eq!(seen.records, 1);
        assert_eq!(values, vec![Some("v".to_string())]);
        retire_before(dir.path(), 5).expect("retire");
        assert!(spare(dir.path()).expect("spare").is_none());
        assert!(list(dir.path()).expect("list").is_empty(), "deleted instead");
    }

    /// Generations go on above the spare's, even with every log gone: its old records
    /// could otherwise match a generation written over them again.
    #[test]
    fn generations_go_on_above_the_spare() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nine = LogFile::create(dir.path(), 9).expect("create");
        append(&mut nine, &[("k", Some("v"))]);
        drop(nine);
        retire_before(dir.path(), 10).expect("retire");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (_, last) = replay(&db, dir.path()).expect("replay");
        assert_eq!(last, 9, "the spare's generation counts");
        // A spare that held the generation asked for is not written over.
        let log = LogFile::create(dir.path(), 9).expect("create");
        assert_eq!(log.allocated, PREALLOCATE);
        assert!(spare(dir.path()).expect("spare").is_none());
    }
}
