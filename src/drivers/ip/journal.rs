//! The IP driver's journal steps.

use serde::{Deserialize, Serialize};

use crate::drivers::Step;

/// Durable right before the request leaves: the `ref` the terminal keeps it by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sending {
    pub r#ref: String,
    pub addr: String,
}

impl Step for Sending {
    const NAME: &'static str = "ip_sending";
}
