//! The guest channel during boot: connect to QEMU's agent chardev, hello both ways, then
//! bootstrap until the guest is ready. Every read is bounded by the boot deadline and
//! wakes up now and then to notice QEMU dying.

use std::fs;
use std::io::Read;
use std::time::{Duration, Instant};

use msb_protocol::{
    write_frame_async, Bootstrap, DiskSpec, Frame, FrameError, FrameReader, GuestMount, LowerSpec,
    Message, RootSpec, CHANNEL_ID, PROTOCOL_VERSION,
};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::error::{BootstrapError, DiskError, HandshakeError, LinkError};
use super::network::Network;
use super::Disks;
use crate::diagnose::{boot_failure_cause, tail};
use crate::disks::Lower;
use crate::error::RtError;
use crate::relay::GUEST_READ_SIZE;
use crate::sandbox::Sandbox;
use crate::shares::ROOT_TAG;
use crate::unix_ms_now;

/// How often a read during boot wakes up to see whether QEMU is still there.
const ALIVE_CHECK: Duration = Duration::from_millis(200);

/// The guest channel, and the deadline of the boot.
pub struct GuestLink {
    /// One reader for the whole life of the channel: what the guest sends right after
    /// Ready stays in it for the relay.
    pub rd: FrameReader<OwnedReadHalf>,
    pub wr: OwnedWriteHalf,
    deadline: Instant,
}

impl Sandbox {
    /// Boot step "handshake": connect to the agent's chardev, send our hello and wait for
    /// the guest's, then for the upper disk's formatting (done while the guest booted).
    pub(super) async fn handshake(
        &mut self,
        formatting: JoinHandle<Result<(), RtError>>,
        within: Option<Duration>,
    ) -> Result<GuestLink, HandshakeError> {
        let boot_timeout = Duration::from_millis(self.cfg.boot_timeout_ms);
        let deadline = Instant::now() + within.map_or(boot_timeout, |w| w.min(boot_timeout));
        let mut link = self.open_link(deadline).await?;
        match self.next_guest_frame(&mut link).await? {
            Message::Hello { version } => same_version(version)?,
            other => return Err(HandshakeError::BeforeHello(Box::new(other))),
        }
        formatting
            .await
            .map_err(DiskError::FormatTask)?
            .map_err(DiskError::Upper)?;
        Ok(link)
    }

    /// A fork's handshake: its agent is the parent's, bootstrapped and serving. Hello both
    /// ways (what the parent's sessions still send before it is skipped), then `Forked`:
    /// entropy, time, hostname and the first request id that is the fork's own.
    pub(super) async fn handshake_fork(
        &mut self,
        formatting: JoinHandle<Result<(), RtError>>,
        info: &crate::fork::ForkInfo,
    ) -> Result<GuestLink, HandshakeError> {
        formatting
            .await
            .map_err(DiskError::FormatTask)?
            .map_err(DiskError::Upper)?;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.boot_timeout_ms);
        let mut link = self.open_link(deadline).await?;
        loop {
            match self.next_guest_frame(&mut link).await? {
                Message::Hello { version } => break same_version(version)?,
                _ => continue, // the parent's sessions' output, on its way at the fork
            }
        }
        let forked = Message::Forked {
            entropy: fresh_entropy(),
            first_id: info.first_id,
            hostname: self
                .cfg
                .hostname
                .clone()
                .unwrap_or_else(|| self.cfg.name.clone()),
            unix_ms: unix_ms_now(),
        };
        send(&mut link, &Frame::new(CHANNEL_ID, forked)).await?;
        Ok(link)
    }

    /// Connect to the agent's chardev (by `deadline`) and send our hello.
    async fn open_link(&mut self, deadline: Instant) -> Result<GuestLink, HandshakeError> {
        let stream = self.connect_chardev(deadline).await?;
        let (rd, wr) = stream.into_split();
        let mut link = GuestLink {
            rd: FrameReader::with_capacity(rd, GUEST_READ_SIZE),
            wr,
            deadline,
        };
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
        };
        send(&mut link, &Frame::new(CHANNEL_ID, hello)).await?;
        Ok(link)
    }

    /// Boot step "bootstrap": send the guest its root disks, mounts, network, identity,
    /// clock and entropy; wait until it is ready.
    pub(super) async fn bootstrap(
        &mut self,
        link: &mut GuestLink,
        disks: &Disks,
        mounts: Vec<GuestMount>,
        net: Option<&Network>,
    ) -> Result<(), BootstrapError> {
        let boot = self.bootstrap_message(disks, mounts, net);
        send(link, &Frame::new(CHANNEL_ID, Message::Bootstrap(boot))).await?;
        loop {
            match self.next_guest_frame(link).await? {
                Message::Ready => return Ok(()),
                Message::Hello { .. } => continue, // an earlier hello, sent before we connected
                Message::Error { message, .. } => return Err(BootstrapError::Guest(message)),
                other => return Err(BootstrapError::Unexpected(Box::new(other))),
            }
        }
    }

    /// `Prepare`, in a boot that makes a memory template: the agent mounts the image disk
    /// and reads its common files before the save, so restores have them in memory.
    pub(super) async fn prepare_image(
        &mut self,
        link: &mut GuestLink,
        disks: &Disks,
    ) -> Result<(), BootstrapError> {
        let Lower::Disk { fstype, .. } = &disks.lower else {
            return Ok(());
        };
        let lower = DiskSpec {
            serial: "lower".into(),
            fstype: fstype.clone(),
        };
        send(link, &Frame::new(CHANNEL_ID, Message::Prepare { lower })).await?;
        self.await_prepared(link).await
    }

    /// The guest's `Prepared` (an earlier hello skipped), or its error.
    async fn await_prepared(&mut self, link: &mut GuestLink) -> Result<(), BootstrapError> {
        loop {
            match self.next_guest_frame(link).await? {
                Message::Prepared => return Ok(()),
                Message::Hello { .. } => continue,
                Message::Error { message, .. } => return Err(BootstrapError::Guest(message)),
                other => return Err(BootstrapError::Unexpected(Box::new(other))),
            }
        }
    }

    /// `PrepareRoot` (a template's boot, after its first save): the guest mounts the
    /// writable disk, nothing on it yet, and the overlay root, switches to it and
    /// configures its NIC as this sandbox's.
    pub(super) async fn prepare_root(
        &mut self,
        link: &mut GuestLink,
        net: Option<&Network>,
    ) -> Result<(), BootstrapError> {
        let msg = Message::PrepareRoot {
            upper: upper_spec(),
            network: net.map(Network::guest),
        };
        send(link, &Frame::new(CHANNEL_ID, msg)).await?;
        self.await_prepared(link).await
    }

    /// The sandbox's environment plus, for each secret, its env var set to the
    /// placeholder (the guest never sees a value).
    fn guest_env(&self) -> Vec<(String, String)> {
        let mut env = self.cfg.env.clone();
        let secrets = self.cfg.network.as_ref().and_then(|n| n.get("secrets"));
        for s in secrets.and_then(|s| s.as_array()).into_iter().flatten() {
            if let (Some(k), Some(p)) = (
                s.get("envVar").and_then(|v| v.as_str()),
                s.get("placeholder").and_then(|v| v.as_str()),
            ) {
                env.push((k.to_string(), p.to_string()));
            }
        }
        env
    }

    fn bootstrap_message(
        &self,
        disks: &Disks,
        mounts: Vec<GuestMount>,
        net: Option<&Network>,
    ) -> Bootstrap {
        let entropy = fresh_entropy();
        Bootstrap {
            root: RootSpec {
                lower: match &disks.lower {
                    Lower::Disk { fstype, .. } => LowerSpec::Disk(DiskSpec {
                        serial: "lower".into(),
                        fstype: fstype.clone(),
                    }),
                    Lower::Dir(_) => LowerSpec::Virtiofs {
                        tag: ROOT_TAG.into(),
                    },
                },
                upper: upper_spec(),
            },
            env: self.guest_env(),
            workdir: self.cfg.workdir.clone(),
            user: self.cfg.user.clone(),
            hostname: self
                .cfg
                .hostname
                .clone()
                .unwrap_or_else(|| self.cfg.name.clone()),
            time_unix_ms: unix_ms_now(),
            entropy,
            mounts,
            network: net.map(Network::guest),
            ca_cert_pem: net.and_then(Network::ca_cert_pem),
        }
    }

    async fn connect_chardev(&mut self, deadline: Instant) -> Result<UnixStream, LinkError> {
        loop {
            if let Ok(s) = UnixStream::connect(&self.vm_sock).await {
                return Ok(s);
            }
            self.check_qemu_alive()?;
            if Instant::now() > deadline {
                return Err(self.boot_timeout());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Next frame from the guest during boot, bounded by the boot deadline.
    async fn next_guest_frame(&mut self, link: &mut GuestLink) -> Result<Message, LinkError> {
        loop {
            let left = link.deadline.saturating_duration_since(Instant::now());
            // next_frame is cancel safe: a timeout loses no bytes.
            match tokio::time::timeout(left.min(ALIVE_CHECK), link.rd.next_frame()).await {
                Ok(Ok(Some(f))) if f.message.allowed_from_guest() && f.flags == 0 => {
                    return Ok(f.message)
                }
                Ok(Ok(Some(f))) => return Err(LinkError::Forbidden(Box::new(f.message))),
                Ok(Ok(None) | Err(FrameError::Truncated)) => {
                    return Err(self
                        .guest_lost("the guest channel closed during boot")
                        .await)
                }
                Ok(Err(FrameError::Io(e))) => {
                    return Err(self.guest_lost(&format!("guest channel: {e}")).await)
                }
                Ok(Err(e)) => return Err(LinkError::BadFrame(e)),
                Err(_) => {
                    self.check_qemu_alive()?;
                    if Instant::now() >= link.deadline {
                        return Err(self.boot_timeout());
                    }
                }
            }
        }
    }

    fn check_qemu_alive(&mut self) -> Result<(), LinkError> {
        if let Some(q) = self.qemu.as_mut() {
            if let Ok(Some(status)) = q.try_wait() {
                let qemu_log = fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
                return Err(LinkError::QemuExited {
                    status,
                    qemu_log: qemu_log.trim().to_string(),
                    tail: tail(&self.dir.join("console.log"), 20),
                });
            }
        }
        Ok(())
    }

    /// The guest went away during boot: give QEMU a moment to exit, then say why as
    /// best the kernel log tells (out of memory, a panic), with its last lines.
    async fn guest_lost(&mut self, what: &str) -> LinkError {
        if let Some(q) = self.qemu.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), q.wait()).await;
        }
        let console = self.dir.join("console.log");
        let log = fs::read_to_string(&console).unwrap_or_default();
        LinkError::Lost {
            what: what.to_string(),
            cause: boot_failure_cause(&log, self.cfg.memory_mib),
            tail: tail(&console, 20),
            console,
        }
    }

    fn boot_timeout(&self) -> LinkError {
        let console = self.dir.join("console.log");
        LinkError::Timeout {
            timeout_ms: self.cfg.boot_timeout_ms,
            tail: tail(&console, 20),
            console,
        }
    }
}

/// 32 bytes from the host's RNG for the guest's pool.
fn fresh_entropy() -> Vec<u8> {
    let mut entropy = vec![0u8; 32];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut entropy);
    }
    entropy
}

/// The guest's hello must be of this build's protocol version.
fn same_version(guest: u32) -> Result<(), HandshakeError> {
    if guest == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::Version {
            guest,
            host: PROTOCOL_VERSION,
        })
    }
}

async fn send(link: &mut GuestLink, frame: &Frame) -> Result<(), LinkError> {
    write_frame_async(&mut link.wr, frame)
        .await
        .map_err(|e| match e {
            FrameError::Io(e) => LinkError::Write(e),
            e => LinkError::Encode(e),
        })
}

/// The writable disk as the guest knows it (the same in `PrepareRoot` and `Bootstrap`).
fn upper_spec() -> DiskSpec {
    DiskSpec {
        serial: "upper".into(),
        fstype: "ext4".into(),
    }
}
