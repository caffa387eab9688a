//! The typed errors of the boot steps, and their mapping to the error codes the SDK knows
//! (`RtError`): each error's `code()` is the code, its `Display` the message.

use msb_contract::ErrorCode;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use msb_protocol::{FrameError, Message};

use crate::error::RtError;

/// Why a boot failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Disks(#[from] DiskError),
    #[error(transparent)]
    Shares(#[from] ShareError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Finding QEMU and the guest's kernel, starting QEMU.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{}", .0.message)]
    NotFound(RtError),
    #[error("guest {what} not found at {}: build it with `npm run setup` (runs test-vms/build.sh)", .path.display())]
    GuestAsset { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Upper(#[from] DiskError),
    #[error("cannot start {}: {source}", .qemu.display())]
    Spawn { qemu: PathBuf, source: io::Error },
    #[error("starting the fork: {0}")]
    Fork(String),
}

/// The lower (image) and upper (writable) disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{}", .0.message)]
    Lower(RtError),
    /// Creating or formatting the upper disk.
    #[error("{}", .0.message)]
    Upper(RtError),
    #[error("{0}")]
    FormatTask(tokio::task::JoinError),
}

/// virtiofs shares: a directory image, bind and named volumes.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{0}")]
    Volume(io::Error),
    #[error("{}", .0.message)]
    Virtiofsd(RtError),
}

/// The guest's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network configuration did not parse, or its ports could not be bound.
    #[error("network: {0}")]
    Config(String),
    #[error("{0}")]
    Listen(String),
    /// `MSB_NET_BACKEND` asks for a bench-only backend this build does not have.
    #[cfg(not(feature = "bench-backends"))]
    #[error("MSB_NET_BACKEND={0} is a bench-only network backend and this msb-runtime was built without them: build it with `cargo build --release -p msb-runtime --features bench-backends` (see bench/net/net.ts), or unset MSB_NET_BACKEND")]
    BenchBackendNotBuilt(String),
    /// A bench baseline (passt) did not start.
    #[cfg(feature = "bench-backends")]
    #[error("{0}")]
    Baseline(String),
}

/// The guest channel during boot (hello and bootstrap).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the guest agent did not answer within {timeout_ms} ms; last lines of the kernel log ({}):\n{tail}", .console.display())]
    Timeout {
        timeout_ms: u64,
        console: PathBuf,
        tail: String,
    },
    #[error("QEMU exited during boot ({status}): {qemu_log}\nkernel log:\n{tail}")]
    QemuExited {
        status: ExitStatus,
        qemu_log: String,
        tail: String,
    },
    /// The channel closed or failed: `cause` is what the kernel log says about it.
    #[error("{what}{}; last lines of the kernel log ({}):\n{tail}", .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default(), .console.display())]
    Lost {
        what: String,
        cause: Option<String>,
        console: PathBuf,
        tail: String,
    },
    #[error("bad frame from guest: {0}")]
    BadFrame(FrameError),
    #[error("guest sent a message it may not send: {0:?}")]
    Forbidden(Box<Message>),
    #[error("guest channel: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Encode(FrameError),
}

/// Hello both ways (and the upper disk's formatting, which it waits for).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("guest agent speaks protocol {guest}, host {host}: rebuild the initramfs")]
    Version { guest: u32, host: u32 },
    #[error("guest sent {0:?} before hello")]
    BeforeHello(Box<Message>),
    #[error(transparent)]
    Upper(#[from] DiskError),
}

/// Bootstrap until the guest is ready.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("guest bootstrap failed: {0}")]
    Guest(String),
    #[error("guest sent {0:?} during bootstrap")]
    Unexpected(Box<Message>),
}

/// Listening on agent.sock and recording the sandbox as running.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("listen on {}: {source}", .path.display())]
    Listen { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Store(String),
}

const RUNTIME: ErrorCode = ErrorCode::Runtime;
const PROTOCOL: ErrorCode = ErrorCode::Protocol;
const INVALID_CONFIG: ErrorCode = ErrorCode::InvalidConfig;

impl BootError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BootError::Vmm(e) => e.code(),
            BootError::Disks(e) => e.code(),
            BootError::Shares(e) => e.code(),
            BootError::Network(e) => e.code(),
            BootError::Handshake(e) => e.code(),
            BootError::Bootstrap(e) => e.code(),
            BootError::Relay(e) => e.code(),
        }
    }
}

impl VmmError {
    pub fn code(&self) -> ErrorCode {
        match self {
            VmmError::NotFound(e) => e.code,
            VmmError::GuestAsset { .. } => ErrorCode::KernelNotFound,
            VmmError::Upper(e) => e.code(),
            VmmError::Spawn { .. } | VmmError::Fork(_) => RUNTIME,
        }
    }
}

impl DiskError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DiskError::Lower(e) | DiskError::Upper(e) => e.code,
            DiskError::FormatTask(_) => RUNTIME,
        }
    }
}

impl ShareError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ShareError::Volume(_) => RUNTIME,
            ShareError::Virtiofsd(e) => e.code,
        }
    }
}

impl NetworkError {
    pub fn code(&self) -> ErrorCode {
        match self {
            NetworkError::Config(_) => INVALID_CONFIG,
            NetworkError::Listen(_) => RUNTIME,
            #[cfg(not(feature = "bench-backends"))]
            NetworkError::BenchBackendNotBuilt(_) => INVALID_CONFIG,
            #[cfg(feature = "bench-backends")]
            NetworkError::Baseline(_) => RUNTIME,
        }
    }
}

impl LinkError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LinkError::Timeout { .. } => ErrorCode::AgentTimeout,
            LinkError::QemuExited { .. } | LinkError::Lost { .. } | LinkError::Write(_) => RUNTIME,
            LinkError::BadFrame(_) | LinkError::Forbidden(_) | LinkError::Encode(_) => PROTOCOL,
        }
    }
}

impl HandshakeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::Link(e) => e.code(),
            HandshakeError::Version { .. } | HandshakeError::BeforeHello(_) => PROTOCOL,
            HandshakeError::Upper(e) => e.code(),
        }
    }
}

impl BootstrapError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BootstrapError::Link(e) => e.code(),
            BootstrapError::Guest(_) => RUNTIME,
            BootstrapError::Unexpected(_) => PROTOCOL,
        }
    }
}

impl RelayError {
    pub fn code(&self) -> ErrorCode {
        RUNTIME
    }
}

/// At the boundary: the code and message the SDK sees.
macro_rules! into_rt_error {
    ($($t:ty),*) => {$(
        impl From<$t> for RtError {
            fn from(e: $t) -> RtError {
                RtError::new(e.code(), e.to_string())
            }
        }
    )*};
}
into_rt_error!(BootError, NetworkError);

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(e: impl Into<BootError>) -> RtError {
        RtError::from(e.into())
    }

    /// The codes and messages users see are the ones boot() gave before it had steps.
    #[test]
    fn boot_errors_keep_their_codes_and_messages() {
        let e = rt(VmmError::GuestAsset {
            what: "kernel",
            path: "/x/vmlinux".into(),
        });
        assert_eq!(e.code.as_str(), "kernelNotFound");
        assert_eq!(
            e.message,
            "guest kernel not found at /x/vmlinux: build it with `npm run setup` (runs test-vms/build.sh)"
        );
        let e = rt(DiskError::Lower(RtError::new(
            ErrorCode::ImageNotFound,
            "image /nope: gone",
        )));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("imageNotFound", "image /nope: gone")
        );
        let e = rt(VmmError::Spawn {
            qemu: "/usr/bin/qemu".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(e.code.as_str(), "runtime");
        assert!(
            e.message.starts_with("cannot start /usr/bin/qemu: "),
            "{}",
            e.message
        );
        let e = rt(NetworkError::Config("port 80 taken".into()));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("invalidConfig", "network: port 80 taken")
        );
        let e = rt(HandshakeError::Link(LinkError::Timeout {
            timeout_ms: 500,
            console: "/s/console.log".into(),
            tail: "[ 1.0] hi".into(),
        }));
        assert_eq!(e.code.as_str(), "agentTimeout");
        assert_eq!(
            e.message,
            "the guest agent did not answer within 500 ms; last lines of the kernel log (/s/console.log):\n[ 1.0] hi"
        );
        let lost = |cause: Option<&str>| {
            rt(BootstrapError::Link(LinkError::Lost {
                what: "the guest channel closed during boot".into(),
                cause: cause.map(String::from),
                console: "/s/console.log".into(),
                tail: "t".into(),
            }))
        };
        assert_eq!(
            lost(None).message,
            "the guest channel closed during boot; last lines of the kernel log (/s/console.log):\nt"
        );
        let e = lost(Some("oom"));
        assert_eq!(e.code.as_str(), "runtime");
        assert_eq!(
            e.message,
            "the guest channel closed during boot: oom; last lines of the kernel log (/s/console.log):\nt"
        );
        let e = rt(HandshakeError::Version { guest: 1, host: 2 });
        assert_eq!(e.code.as_str(), "protocol");
        assert_eq!(
            e.message,
            "guest agent speaks protocol 1, host 2: rebuild the initramfs"
        );
        let e = rt(BootstrapError::Guest("no disk".into()));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("runtime", "guest bootstrap failed: no disk")
        );
        let e = rt(BootstrapError::Unexpected(Box::new(Message::Ready)));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("protocol", "guest sent Ready during bootstrap")
        );
        let e = rt(HandshakeError::Link(LinkError::Forbidden(Box::new(
            Message::Kill,
        ))));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("protocol", "guest sent a message it may not send: Kill")
        );
        let e = rt(RelayError::Listen {
            path: "/r/agent.sock".into(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        });
        assert_eq!(e.code.as_str(), "runtime");
        assert!(
            e.message.starts_with("listen on /r/agent.sock: "),
            "{}",
            e.message
        );
    }
}
