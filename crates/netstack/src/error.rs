//! The crate's error type (re-exported at the root as `msb_netstack::NetError`). A leaf
//! module, so that config.rs, the transports and the stack can all return it without
//! depending on lib.rs.

use crate::config::Proto;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("cannot publish {proto:?} port {port} on 127.0.0.1: {source}")]
    Bind {
        proto: Proto,
        port: u16,
        source: std::io::Error,
    },
    #[error("bad frame on the guest's network stream: {0}")]
    Framing(String),
    #[error("guest network stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls interception: {0}")]
    Tls(String),
    #[error("this NetStack is already serving (or has served) a stream")]
    AlreadyServed,
}
