//! The Kaspi driver's journal steps.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::drivers::Step;

/// Durable right before `/v2/payment` or `/v2/refund` leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sending {
    pub route: String,
    pub params: Map<String, Value>,
}

impl Step for Sending {
    const NAME: &'static str = "kaspi_sending";
}

/// The terminal's `processId`: what a resume follows instead of starting again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    #[serde(rename = "processId")]
    pub process_id: String,
}

impl Step for Process {
    const NAME: &'static str = "kaspi_process";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before the steps had types read back the same, and a typed step
    /// is stored in the same shape.
    #[test]
    fn the_stored_shape_is_unchanged() {
        let old = serde_json::json!({ "processId": "p-42" });
        let p: Process = serde_json::from_value(old.clone()).expect("old record");
        assert_eq!(p.process_id, "p-42");
        assert_eq!(serde_json::to_value(&p).expect("json"), old);
        assert_eq!(Process::NAME, "kaspi_process");
        assert_eq!(Sending::NAME, "kaspi_sending");
    }
}
