//! Test-only fault hook: abort the process at a named durability point.
//!
//! `POSBRIDGE_FAULT_ABORT_AT=<point>` makes the agent call `abort()` (as sudden as
//! `kill -9`: no destructors, no flush) the first time it reaches `<point>`, e.g.
//! `journal:ip_sending:before` or `intake:stored`. The crash tests use it to stop the
//! agent exactly between two journal writes. Unset in production: the check is one
//! comparison against an empty value.

use std::sync::OnceLock;

pub const ENV: &str = "POSBRIDGE_FAULT_ABORT_AT";

fn target() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| std::env::var(ENV).unwrap_or_default())
}

pub fn hit(point: &str) {
    let t = target();
    if !t.is_empty() && t == point {
        eprintln!("posbridge: fault injection: aborting at {point}");
        std::process::abort();
    }
}
