//! The machine's own checks: the clock (set, NTP synchronized) and the free disk space
//! where the store lives ([`free_bytes`]).

use std::path::Path;

use super::Check;

const DISK_FAIL: u64 = 50 * 1024 * 1024;
const DISK_WARN: u64 = 200 * 1024 * 1024;

pub(super) fn clock() -> Check {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    let synced = Path::new("/run/systemd/timesync/synchronized").exists();
    let detail =
        format!("{}{}", crate::api::ts(now), if synced { " (NTP synchronized)" } else { "" });
    if now.year() < 2024 {
        Check::fail(
            "clock",
            format!("{detail}: the clock is not set"),
            "enable time sync (`timedatectl set-ntp true`; a Raspberry Pi has no RTC) — deadlines and TLS depend on it",
        )
    } else {
        Check::ok("clock", detail)
    }
}

/// Free space on the file system holding `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

pub(super) fn disk(path: &Path) -> Check {
    const NAME: &str = "disk";
    match free_bytes(path) {
        Err(e) => Check::warn(NAME, format!("cannot stat {}: {e}", path.display()), ""),
        Ok(free) => {
            let detail =
                format!("{:.0} MiB free for {}", free as f64 / (1024.0 * 1024.0), path.display());
            let fix = "free space (journalctl --vacuum-size=50M, apt-get clean) or move store.path to a bigger disk";
            if free < DISK_FAIL {
                Check::fail(NAME, detail, fix)
            } else if free < DISK_WARN {
                Check::warn(NAME, detail, fix)
            } else {
                Check::ok(NAME, detail)
            }
        }
    }
}
