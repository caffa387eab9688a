//! The one contract between Rust and TypeScript.
//!
//! Every shape that crosses into TypeScript is a Rust type with a `ts_rs::TS` derive,
//! defined where it is used: the protocol's exec request, fs ops and entries, and metrics
//! (crates/protocol), the network config and its policy (crates/netstack), the status
//! values (crates/store), and here the runtime config, the addon's session events and the
//! error codes. [`typescript`] renders all of them (and the constants the SDK needs) into
//! `packages/contract/src/generated.ts`; the test `tests/generated.rs` fails when that
//! committed file differs from what the types give now (`MSB_BLESS=1` rewrites it).

mod error_code;
mod event;
mod runtime_config;
mod typescript;

pub use error_code::ErrorCode;
pub use event::{safe_errno, trusted_code, NotAnEvent, SessionEvent};
pub use runtime_config::{
    ConfigError, Mode, MountConfig, MountKind, RuntimeConfig, DEFAULT_BOOT_TIMEOUT_MS, LOG_LEVELS,
    MIN_MEMORY_MIB,
};
pub use typescript::typescript;
