//! The Paywall driver's journal steps.

use serde::{Deserialize, Serialize};

use crate::drivers::Step;

/// Durable right before the sale leaves: the MerchantUniqueCode Paywall will know it by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sending {
    pub merchant_unique_code: String,
    pub terminal_guid: String,
    pub mode: String,
}

impl Step for Sending {
    const NAME: &'static str = "paywall_sale_sending";
}
