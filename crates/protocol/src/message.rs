use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::num;

/// Every message of the protocol. Which side may send which is checked by
/// [`Message::allowed_from_guest`] and [`Message::allowed_from_client`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// First frame each way on every connection.
    Hello {
        version: u32,
    },
    /// Host -> guest, before `Bootstrap`, only in a boot that makes a memory template:
    /// mount the image disk read-only and read its commonly used files, so that the
    /// template (and every restore of it) has them in memory. Nothing sandbox-specific:
    /// a template is made per image. Answered `Prepared`, or `Error`.
    Prepare {
        lower: DiskSpec,
    },
    /// Host -> guest, after `Prepared`, in a boot that makes a memory template for new
    /// sandboxes: mount the writable disk (formatted a moment ago, nothing on it yet) and
    /// the overlay root on it, write it out, switch to that root and configure the NIC as
    /// `network` (the bootstrap configures it again when its own differs). Each sandbox
    /// restored from that template gets a copy of the disk as it was saved. Answered
    /// `Prepared`, or `Error`.
    PrepareRoot {
        upper: DiskSpec,
        network: Option<GuestNetwork>,
    },
    /// Guest -> host: `Prepare` (or `PrepareRoot`) done.
    Prepared,
    /// Host -> guest, once, after the guest's hello: everything sandbox-specific.
    Bootstrap(Bootstrap),
    /// Guest -> host: bootstrap done, the root filesystem is in place.
    Ready,
    /// Start a process; the frame's request id names the session.
    Exec(ExecRequest),
    /// The process of a session is running.
    Started {
        pid: u32,
    },
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The process ended: `code` when it exited, `signal` when a signal killed it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The process could not be started (no such command, bad user, ...).
    Failed {
        reason: String,
    },
    /// Host -> guest: stop every process, sync, power off.
    Shutdown,
    /// An error that ends the request (or, with the channel id, the bootstrap).
    Error {
        code: String,
        message: String,
    },
    /// Client -> msb-runtime (control flag): graceful stop with a deadline.
    Stop {
        timeout_ms: u64,
    },
    /// Client -> msb-runtime (control flag): end the VM at once.
    Kill,
    /// Client -> msb-runtime (control flag): finish running execs, refuse new ones, then stop.
    Drain,
    /// Client -> msb-runtime (control flag): stop watching the creator; keep running.
    Detach,
    /// Client -> msb-runtime (control flag) and msb-runtime -> guest: ask for resource figures.
    Metrics,
    /// Guest -> host: the guest's own figures, answering `Metrics`.
    GuestStats(GuestStats),
    /// msb-runtime -> client: answer to `Metrics`.
    MetricsReport(MetricsReport),
    /// msb-runtime -> client: a control request was carried out.
    Done,
    /// Host -> guest, on an exec (or fs write) session: bytes for its stdin.
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Host -> guest: end of stdin (EOF).
    StdinClose,
    /// Host -> guest: send a signal to the session's process group.
    Signal {
        signal: i32,
    },
    /// Host -> guest: new terminal size of a TTY session.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Host -> guest: the host consumed this many bytes of the session's output; the
    /// guest may send that many more (flow control).
    Credit {
        bytes: u32,
    },
    /// Host -> guest: a filesystem operation; the frame's id names the session.
    Fs(FsOp),
    /// Guest -> host: file contents of an `FsOp::Read` (flow-controlled like stdout).
    FsData(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Guest -> host: end of an `FsOp::Read`.
    FsEnd,
    FsEntries(Vec<FsEntry>),
    FsStat(FsEntry),
    FsExists(bool),
    /// Guest -> host: the operation (or a write, after `StdinClose`) is complete.
    FsDone,
    /// Guest -> host: the operation failed; `errno` is the symbolic name (ENOENT, ...).
    FsError {
        errno: String,
        message: String,
    },
    /// Client -> msb-runtime (control flag): is the guest agent answering? The runtime
    /// makes one round trip to the guest and answers `Done` (or `Error`). Not activity:
    /// the idle clock keeps running.
    Ping,
    /// Client -> msb-runtime (control flag): count as activity, restarting the idle
    /// timeout's clock. Answered by `Touched`.
    Touch,
    /// msb-runtime -> client: answer to `Touch`, with the sandbox's activity sequence
    /// (how many times activity was recorded since boot, this touch included).
    Touched {
        activity_seq: u64,
    },
    /// Client -> msb-runtime (control flag): stop the VM's vCPUs (it uses no CPU; its
    /// memory stays). Answered `Done` once paused. Commands are refused meanwhile
    /// (`sandboxPaused`); a stop or kill still works.
    Pause,
    /// Client -> msb-runtime (control flag): let a paused VM run again. Answered `Done`.
    Resume,
    /// msb-runtime -> guest: set the wall clock to the host's (after a resume the guest's
    /// clock is behind by the pause). Not answered; frames after it see the new time.
    SetClock {
        unix_ms: u64,
    },
    /// Client -> msb-runtime (control flag): save the running sandbox for a fork into the
    /// host directory `dir` (its memory, device state and a copy of its writable disk);
    /// the sandbox goes on. Answered `Done`, or `Error`.
    Fork {
        dir: String,
    },
    /// msb-runtime -> guest, the first frame after the hello of a forked guest: it is a
    /// new sandbox from now on. The agent mixes `entropy` into the kernel's pool and
    /// reseeds it, sets the clock and the hostname, and forgets every session of an id
    /// below `first_id` (the parent's: their output goes nowhere). Not answered.
    Forked {
        #[serde(with = "serde_bytes")]
        entropy: Vec<u8>,
        first_id: u32,
        hostname: String,
        unix_ms: u64,
    },
}

/// Filesystem operations of `sb.fs()`. Paths are guest paths, resolved in the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum FsOp {
    Read {
        path: String,
    },
    /// Followed by `Stdin` chunks and `StdinClose`; answered by `FsDone`.
    Write {
        path: String,
        mode: Option<u32>,
        append: bool,
    },
    List {
        path: String,
    },
    Stat {
        path: String,
    },
    Exists {
        path: String,
    },
    Mkdir {
        path: String,
        mode: Option<u32>,
        recursive: bool,
    },
    Remove {
        path: String,
    },
    RemoveDir {
        path: String,
        recursive: bool,
    },
    Copy {
        src: String,
        dst: String,
    },
    Rename {
        src: String,
        dst: String,
    },
    Symlink {
        target: String,
        link: String,
    },
}

/// One directory entry or `stat` result. Untrusted (the guest makes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
pub struct FsEntry {
    pub name: String,
    /// "file" | "dir" | "symlink" | "other"
    #[ts(type = "\"file\" | \"dir\" | \"symlink\" | \"other\"")]
    pub kind: String,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Milliseconds since the epoch.
    #[ts(type = "number")]
    pub modified_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, TS)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What the guest reports about itself. Untrusted: the host only passes the numbers on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct GuestStats {
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// One metrics sample as msb-runtime reports it (runtime -> client only). The counters
/// cross as floating point numbers: exact to 2^53, and a plain `number` in JavaScript.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default, TS)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    /// Percent of the sandbox's vCPUs (0..=100) used over the last second, from the host's
    /// accounting of the VMM process.
    pub cpu_percent: f64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub memory_bytes: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub memory_limit_bytes: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub disk_read_bytes: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub disk_write_bytes: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub net_rx_bytes: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub net_tx_bytes: u64,
    /// Milliseconds since the epoch.
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub timestamp_ms: u64,
    #[serde(with = "num")]
    #[ts(type = "number")]
    pub uptime_ms: u64,
}

impl Message {
    /// The variant name, for errors and logs (never the payload: it may be large).
    pub fn kind_name(&self) -> String {
        let dbg = format!("{self:?}");
        dbg.split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Messages the (untrusted) guest may send to the host.
    pub fn allowed_from_guest(&self) -> bool {
        matches!(
            self,
            Message::Hello { .. }
                | Message::Ready
                | Message::Prepared
                | Message::Started { .. }
                | Message::Stdout(_)
                | Message::Stderr(_)
                | Message::Exited { .. }
                | Message::Failed { .. }
                | Message::Error { .. }
                | Message::GuestStats(_)
                | Message::FsData(_)
                | Message::FsEnd
                | Message::FsEntries(_)
                | Message::FsStat(_)
                | Message::FsExists(_)
                | Message::FsDone
                | Message::FsError { .. }
                | Message::Credit { .. }
        )
    }

    /// Messages a client may send to msb-runtime.
    pub fn allowed_from_client(&self) -> bool {
        matches!(
            self,
            Message::Hello { .. }
                | Message::Exec(_)
                | Message::Stop { .. }
                | Message::Kill
                | Message::Drain
                | Message::Detach
                | Message::Metrics
                | Message::Ping
                | Message::Touch
                | Message::Pause
                | Message::Resume
                | Message::Fork { .. }
                | Message::Stdin(_)
                | Message::StdinClose
                | Message::Signal { .. }
                | Message::Resize { .. }
                | Message::Credit { .. }
                | Message::Fs(_)
        )
    }

    /// Messages a client sends on an existing session (routed to the guest as is).
    pub fn is_session_input(&self) -> bool {
        matches!(
            self,
            Message::Stdin(_)
                | Message::StdinClose
                | Message::Signal { .. }
                | Message::Resize { .. }
                | Message::Credit { .. }
        )
    }

    /// True for the last message of a session.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            Message::Exited { .. }
                | Message::Failed { .. }
                | Message::Error { .. }
                | Message::FsEnd
                | Message::FsEntries(_)
                | Message::FsStat(_)
                | Message::FsExists(_)
                | Message::FsDone
                | Message::FsError { .. }
        )
    }
}

/// A command to run. The SDK builds it; `AgentClient.exec` takes it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, TS)]
pub struct ExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Merged over the sandbox's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// A user name from the guest's /etc/passwd, or `uid[:gid]`.
    #[serde(default)]
    pub user: Option<String>,
    /// Stdin is a pipe fed by `Stdin` messages (else /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout carries the terminal's output).
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Resource limits (names from [`crate::RLIMIT_NAMES`]), soft and hard. 64-bit: `u64::MAX` is RLIM_INFINITY (a `bigint` in TypeScript).
    #[serde(default)]
    pub rlimits: Vec<(String, u64)>,
}

/// A block device, found in the guest by its virtio serial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub serial: String,
    pub fstype: String,
}

/// Where the read-only image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowerSpec {
    /// A block device (`fstype` "auto": try the filesystems the kernel knows).
    Disk(DiskSpec),
    /// A host directory shared read-only over virtiofs under this tag.
    Virtiofs { tag: String },
}

/// A mount made after the root switch, before any command runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestMount {
    /// "virtiofs" (source = tag) or "tmpfs".
    pub fstype: String,
    pub source: String,
    /// Absolute guest path; created if missing.
    pub target: String,
    pub readonly: bool,
    /// Filesystem options, e.g. "size=64m" for tmpfs.
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootSpec {
    /// Read-only image.
    pub lower: LowerSpec,
    /// Writable per-sandbox disk holding the overlay's `data/` and `work/`.
    pub upper: DiskSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub root: RootSpec,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Default user of commands (`name`, `uid` or `uid:gid`); root when absent.
    #[serde(default)]
    pub user: Option<String>,
    pub hostname: String,
    /// Host wall clock, for the guest to set its own (snapshot restores reuse an old one).
    pub time_unix_ms: u64,
    /// Fresh entropy mixed into the guest's pool.
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    #[serde(default)]
    pub mounts: Vec<GuestMount>,
    /// The guest's NIC configuration; None: no network (no NIC is attached either).
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// The installation's interception CA (PEM), when the sandbox's TLS is intercepted:
    /// the agent adds it to the guest's trust store and points the usual variables
    /// (`SSL_CERT_FILE`, ...) at it. Never a private key.
    #[serde(default)]
    pub ca_cert_pem: Option<String>,
}

/// Static configuration of eth0, set by the agent before any command runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestNetwork {
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
    pub mtu: u16,
    /// Written to /etc/hosts as `host.microsandbox.internal`.
    pub host_ip: std::net::Ipv4Addr,
    /// The gateway answers DNS (resolv.conf points at it).
    pub dns: bool,
}
