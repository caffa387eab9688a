//! Host <-> guest wire protocol.
//!
//! A frame is `u32 length | u32 request id | u8 flags | payload`, big endian. `length`
//! counts the bytes after itself (id + flags + payload), so it is at least
//! [`HEADER_AFTER_LEN`]. The payload is one CBOR-encoded [`Message`].
//!
//! Every decoding path returns an error on truncated, oversized or garbage input; none
//! panics, and none allocates more than [`MAX_FRAME`] bytes for a frame.

#[cfg(feature = "tokio")]
mod codec;
mod frame;
mod message;
pub mod num;

#[cfg(feature = "tokio")]
pub use codec::{write_frame_async, FrameReader};

pub use frame::{
    decode_raw, encode_frame, read_frame, set_raw_id, write_frame, Frame, FrameDecoder, FrameError,
    FLAG_CONTROL, HEADER_AFTER_LEN, KNOWN_FLAGS, MAX_FRAME, MAX_PAYLOAD,
};
pub use message::{
    Bootstrap, DiskSpec, ExecRequest, FsEntry, FsOp, GuestMount, GuestNetwork, GuestStats,
    LowerSpec, Message, MetricsReport, RootSpec, TtySize,
};

/// Version spoken by this build. Both sides send it in `Hello`; a mismatch is fatal (see
/// [`check_version`]). Version 3: `FsEntry` and `MetricsReport` keys in camelCase, their
/// counters as floats (the golden file `tests/golden/messages.txt` shows every message).
pub const PROTOCOL_VERSION: u32 = 8;

/// What a peer's `Hello` version means. Host and guest are built together (the agent is
/// in the initramfs shipped with msb-runtime), so any difference is a broken install,
/// not a peer to negotiate with: both sides refuse it with an error naming both versions.
pub fn check_version(peer: u32) -> Result<(), String> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "protocol version mismatch: this side speaks {PROTOCOL_VERSION}, the peer {peer} \
             (msb-runtime, the addon and the guest's initramfs come from different builds)"
        ))
    }
}

/// Names of the resource limits an `ExecRequest` may set (setrlimit's RLIMIT_*, lower
/// case). The agent maps exactly these; the SDK's list is generated from this one.
pub const RLIMIT_NAMES: [&str; 9] = [
    "nofile", "nproc", "as", "cpu", "fsize", "core", "stack", "memlock", "data",
];

/// Request id used for frames that do not belong to a session (handshake, bootstrap).
pub const CHANNEL_ID: u32 = 0;

/// Largest chunk of stdout/stderr the agent puts in one frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Bytes a session may have in flight in each direction before the receiver grants
/// `Credit` (output: guest -> host; stdin and fs writes: host -> guest).
pub const INITIAL_WINDOW: u32 = 4 * 1024 * 1024;

/// What one data frame costs in credit on top of its payload, so that a stream of tiny
/// frames is bounded too (in frames, not only in bytes).
pub const FRAME_COST: u32 = 256;
