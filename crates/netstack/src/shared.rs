//! What the stack task shares with its frame transports (host.rs's stream reader and
//! writer, vhost.rs, device.rs) and with the `NetStack` handle: the largest frame
//! accepted, and the counters and flags they update without locks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

/// Largest Ethernet frame accepted on the stream (65535-byte IP packet + Ethernet header +
/// one VLAN tag). A larger length prefix closes the stream.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;

#[derive(Default)]
pub(crate) struct Shared {
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tcp_flows: AtomicUsize,
    pub tcp_flows_peak: AtomicUsize,
    pub udp_flows: AtomicUsize,
    pub denied: AtomicU64,
    pub over_cap: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub dns_queries: AtomicU64,
    /// Set by the stack when the frame queue to the guest was full; the writer clears it
    /// and wakes the stack.
    pub tx_blocked: AtomicBool,
}
