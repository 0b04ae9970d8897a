//! The engine's wall clock, injected: every deadline, recovery window and retention the
//! engine decides reads it. Production runs on [`SystemClock`]; tests run on
//! [`TokioClock`], which follows tokio's clock, so under `tokio::time::pause()` a test
//! moves time forward with `tokio::time::advance` instead of sleeping.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that advances with tokio's clock from the moment it was made (paused time
/// included). For tests.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    at: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock { wall: Utc::now(), at: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.at);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}
