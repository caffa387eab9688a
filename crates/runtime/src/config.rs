//! The sandbox configuration msb-runtime receives on stdin (JSON, camelCase). The type and
//! its checks are the contract's (crates/contract), shared with the addon and, generated,
//! with the SDK.

pub use msb_contract::{Mode, RuntimeConfig as Config};

use crate::error::RtError;

impl From<msb_contract::ConfigError> for RtError {
    fn from(e: msb_contract::ConfigError) -> Self {
        RtError::new(msb_contract::ErrorCode::InvalidConfig, e.to_string())
    }
}
