//! The Token driver's journal steps.

use serde::{Deserialize, Serialize};

use crate::drivers::Step;

/// Durable right before the basket goes to the register: the basket id its sale result
/// will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Basket {
    pub basket_id: String,
    pub fiscal_no: String,
}

impl Step for Basket {
    const NAME: &'static str = "token_basket";
}
