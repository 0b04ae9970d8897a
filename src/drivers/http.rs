//! The HTTP edge shared by the HTTP terminals (Kaspi on the LAN; Paywall and Kuveyt in the
//! cloud): one answer to the question the money rules turn on — did the request leave?
//! A connect or build failure proves it never reached the device ([`Transport::NotSent`]);
//! anything after that (timeout, reset, an unusable answer) may have left it acting
//! ([`Transport::MaybeSent`]).

use std::fmt;

/// A request that got no usable answer, and whether it can have reached the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// It never left (connection refused, DNS, TLS handshake): nothing can have happened.
    NotSent(String),
    /// It was sent, or may have been, but the answer is unusable: the device may have acted.
    MaybeSent(String),
}

impl Transport {
    /// What a failed `reqwest` call proves. The URL is left out of the message (a query
    /// may carry a token).
    pub fn of(e: reqwest::Error) -> Transport {
        let never_left = e.is_connect() || e.is_builder();
        let message = error_chain(&e.without_url());
        if never_left {
            Transport::NotSent(message)
        } else {
            Transport::MaybeSent(message)
        }
    }

    pub fn may_have_been_sent(&self) -> bool {
        matches!(self, Transport::MaybeSent(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Transport::NotSent(m) | Transport::MaybeSent(m) => m,
        }
    }

    /// The same verdict with a more helpful message.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Transport {
        match self {
            Transport::NotSent(m) => Transport::NotSent(f(m)),
            Transport::MaybeSent(m) => Transport::MaybeSent(f(m)),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::NotSent(m) => write!(f, "request not sent: {m}"),
            Transport::MaybeSent(m) => write!(f, "no usable answer: {m}"),
        }
    }
}

/// An error with its causes, `a: b: c` (reqwest hides the useful part — "connection
/// refused", "operation timed out", the TLS reason — in its source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
