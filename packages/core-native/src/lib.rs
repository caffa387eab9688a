//! Node addon: starts msb-runtime processes and talks to them over their agent socket.
//!
//! Errors are thrown as JS errors whose message is `"<code>: <text>"`; the SDK maps the
//! code to a typed error class.

mod client;
mod host_fs;
mod lock;
mod serde_js;
mod sparse;
mod spawn;
mod state;

pub use client::AgentClient;
pub use host_fs::{
    host_create_file_at, host_list_dir, host_mkdir_at, host_open_at, host_open_parent,
    host_symlink_at, HostEntry, HostParent,
};
pub use host_fs::{host_make_dir_at, host_rename_at, host_stat_at, host_unlink_at, HostStat};
pub use lock::{lock_file, FileLock};
pub use sparse::{copy_sandbox_upper, copy_sparse, sparse_extents, sparse_sha256, SparseLayout};
pub use spawn::{release_attachment, start_sandbox};
pub use state::{
    get_sandbox, kill_sandbox, list_sandboxes, remove_sandbox, terminate_sandbox,
    update_sandbox_config, SandboxRecord,
};

pub(crate) fn err(code: msb_contract::ErrorCode, msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("{code}: {msg}"))
}
