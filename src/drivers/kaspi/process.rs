//! The life of one Kaspi process (payment or refund) after `/v2/payment` gave its
//! `processId`, as a state machine with an injected clock: it says what to ask next and
//! when, and when the outcome is known. No I/O; the driver does the asking.
//!
//! kaspi.md: poll `/v2/status` about every second until `success`/`fail`/`unknown`; an
//! `unknown` process is actualized at most once per 10 s, within `actualize_window`; the
//! overall deadline (QR 180 s + confirmation 60 s + margin) ends in `unknown`, never a guess.

use std::time::Duration;

use tokio::time::Instant;

use super::api::{code, ApiError, ProcessStatus, StatusData};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub poll: Duration,
    pub actualize_every: Duration,
    pub actualize_window: Duration,
    pub deadline: Duration,
}

/// Which route to call next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Status,
    Actualize,
}

/// What the terminal (or the link) said to the last question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Data(StatusData),
    Error(ApiError),
    /// The request failed on the way (connect, timeout, reset).
    Transport(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// `success` or `fail`: the device's own final word.
    Final(StatusData),
    /// Nobody can know (yet): `unknown` with `needs_reconciliation`.
    Unknown { reason: String, last: Option<StatusData>, device_code: Option<i64> },
}

// One short-lived value per answer: boxing the end would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Ask { ask: Ask, at: Instant },
    Done(End),
}

#[derive(Debug)]
pub struct Process {
    timing: Timing,
    deadline: Instant,
    /// Set at the first `unknown`: actualizing stops here.
    window_until: Option<Instant>,
    last_actualize: Option<Instant>,
    last_data: Option<StatusData>,
    last_error: Option<String>,
    last_sub: Option<String>,
}

impl Process {
    /// A process just started (or found in the journal after a restart): ask its status now.
    pub fn new(timing: Timing, now: Instant) -> (Process, Step) {
        let p = Process {
            timing,
            deadline: now + timing.deadline,
            window_until: None,
            last_actualize: None,
            last_data: None,
            last_error: None,
            last_sub: None,
        };
        (p, Step::Ask { ask: Ask::Status, at: now })
    }

    /// The new device sub-state, when it changed (for `evt`).
    pub fn sub_status_change(&mut self, d: &StatusData) -> Option<String> {
        let sub = d.sub_status.clone()?;
        if self.last_sub.as_deref() == Some(sub.as_str()) {
            return None;
        }
        self.last_sub = Some(sub.clone());
        Some(sub)
    }

    pub fn on_answer(&mut self, asked: Ask, now: Instant, answer: Answer) -> Step {
        if asked == Ask::Actualize {
            // Counted from the answer, which comes after the terminal saw the call: the
            // next one then reaches it at least `actualize_every` later.
            self.last_actualize = Some(now);
        }
        match answer {
            Answer::Data(d) => self.on_data(now, d),
            Answer::Error(e) => self.on_error(asked, now, e),
            Answer::Transport(msg) => {
                self.last_error = Some(msg);
                self.retry(asked, now)
            }
        }
    }

    fn on_data(&mut self, now: Instant, d: StatusData) -> Step {
        match d.status {
            ProcessStatus::Success | ProcessStatus::Fail => Step::Done(End::Final(d)),
            ProcessStatus::Wait => {
                self.last_data = Some(d);
                self.retry(Ask::Status, now)
            }
            ProcessStatus::Unknown => {
                self.last_data = Some(d);
                let until = *self.window_until.get_or_insert(now + self.timing.actualize_window);
                self.next_actualize(now, until)
            }
        }
    }

    fn on_error(&mut self, asked: Ask, now: Instant, e: ApiError) -> Step {
        let unknown = |this: &Self, reason: String, code: Option<i64>| {
            Step::Done(End::Unknown { reason, last: this.last_data.clone(), device_code: code })
        };
        match e.device_code() {
            Some(code::PROCESS_NOT_FOUND) => unknown(
                self,
                format!("the terminal no longer knows this process ({e}); it may never have started, or is older than 24 h"),
                Some(code::PROCESS_NOT_FOUND),
            ),
            Some(c @ (code::UNSUPPORTED_METHOD | code::TRANSACTION_NOT_FOUND)) => {
                unknown(self, format!("the terminal cannot actualize this process: {e}"), Some(c))
            }
            // Already final: its status says how it ended.
            Some(code::UNABLE_TO_ACTUALIZE) if asked == Ask::Actualize => Step::Ask {
                ask: Ask::Status,
                at: now,
            },
            _ if e.is_auth() => unknown(
                self,
                format!("the terminal refused the access token while the operation ran: {e}"),
                None,
            ),
            _ => {
                self.last_error = Some(e.to_string());
                self.retry(asked, now)
            }
        }
    }

    /// Ask again after a `wait` or a passing error, within the deadline or window.
    fn retry(&mut self, asked: Ask, now: Instant) -> Step {
        match (asked, self.window_until) {
            (Ask::Actualize, Some(until)) => self.next_actualize(now, until),
            _ if now >= self.deadline => Step::Done(End::Unknown {
                reason: format!(
                    "no final status within {:?}{}",
                    self.timing.deadline,
                    self.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
                last: self.last_data.clone(),
                device_code: None,
            }),
            _ => Step::Ask { ask: Ask::Status, at: (now + self.timing.poll).min(self.deadline) },
        }
    }

    fn next_actualize(&mut self, now: Instant, until: Instant) -> Step {
        // kaspi.md: /v2/actualize at most once per 10 s.
        let at = match self.last_actualize {
            None => now,
            Some(last) => (last + self.timing.actualize_every).max(now),
        };
        if at > until {
            let msg = self
                .last_data
                .as_ref()
                .and_then(|d| d.message.clone())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Step::Done(End::Unknown {
                reason: format!(
                    "the terminal still reports the outcome as unknown after actualizing for {:?}{msg}",
                    self.timing.actualize_window
                ),
                last: self.last_data.clone(),
                device_code: None,
            });
        }
        Step::Ask { ask: Ask::Actualize, at }
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
