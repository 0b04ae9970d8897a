//! Placeholder for terminal kinds this build does not drive yet: the configuration is
//! accepted (so a field engineer can prepare it) and every device command is rejected
//! with `device_unavailable` before anything is touched.

use async_trait::async_trait;
use serde_json::Value;

use super::{Driver, Health, OpContext, Outcome};
use crate::api::{Command, ErrorCode, Op, Rejection};

pub struct Unavailable {
    kind: &'static str,
}

impl Unavailable {
    pub fn new(kind: &'static str) -> Self {
        Unavailable { kind }
    }

    fn message(&self) -> String {
        format!(
            "the {} driver is not implemented in posbridge {} yet",
            self.kind,
            crate::VERSION
        )
    }
}

#[async_trait]
impl Driver for Unavailable {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn supports(&self, op: Op) -> bool {
        // fiscal_info is a Token op; everything else is "supported" so that the answer is
        // the honest device_unavailable rather than unsupported_op.
        op != Op::FiscalInfo || self.kind == "token"
    }

    fn validate(&self, _cmd: &Command) -> Result<(), Rejection> {
        Err(Rejection::new(ErrorCode::DeviceUnavailable, self.message()))
    }

    async fn execute(&self, _ctx: &mut OpContext) -> Outcome {
        Outcome::failed(ErrorCode::DeviceUnavailable, self.message(), None)
    }

    async fn resume(&self, _ctx: &mut OpContext) -> Outcome {
        Outcome::unknown(ErrorCode::DeviceUnavailable, self.message())
    }

    async fn health(&self) -> Health {
        Health {
            state: "error",
            identity: Value::Null,
            error: Some(self.message()),
        }
    }
}
