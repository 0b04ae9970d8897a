//! The pay-by-link driver's journal steps.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::Created;
use crate::drivers::Step;

/// Durable right before the link is created: the order id the provider keeps it by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Creating {
    pub order_id: String,
    pub mode: String,
}

impl Step for Creating {
    const NAME: &'static str = "kuveyt_creating";
}

/// The link the provider created, and its raw answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedStep {
    pub created: Created,
    pub answer: Value,
}

impl Step for CreatedStep {
    const NAME: &'static str = "kuveyt_created";
}
