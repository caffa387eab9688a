//! One sandbox's setup: lock its name, record it in the store, build its disks, start
//! QEMU, and bring the guest agent through hello and bootstrap.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use msb_protocol::{
    write_frame_async, Bootstrap, DiskSpec, Frame, FrameError, FrameReader, GuestMount,
    GuestNetwork, LowerSpec, Message, RootSpec, CHANNEL_ID, PROTOCOL_VERSION,
};
use msb_store::Store;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::config::{Config, Mode};
use crate::cpu::CpuSampler;
use crate::disks::Lower;
use crate::error::RtError;
use crate::relay::{Control, MetricsSource, Relay, GUEST_READ_SIZE};
use crate::shares::{self, Share};
use crate::{disks, log, log_error, vm};
use msb_netstack::{NetConfig, NetStack, VhostListener};

/// virtiofs tag of a directory image.
const ROOT_TAG: &str = "msbroot";

pub struct Sandbox {
    pub(crate) store: Store,
    pub(crate) cfg: Config,
    pub(crate) dir: PathBuf,
    run_dir: PathBuf,
    pub(crate) agent_sock: PathBuf,
    net_sock: PathBuf,
    vm_sock: PathBuf,
    /// Held for the life of the process: the sandbox name is in use while it is.
    _lock: fs::File,
    pub(crate) qemu: Option<Child>,
    /// A sandbox created by this process, whose row and directory go if its boot fails.
    created: bool,
    /// When QEMU started (uptime is measured from here).
    pub(crate) started: Instant,
    /// virtiofsd processes of the shares, and passt (killed with us).
    virtiofsd: Vec<Child>,
    /// `MSB_NET_BACKEND=user|passt`: a baseline network instead of ours (bench/net only).
    baseline: Option<String>,
    /// The MTU the network config asked for, given to a baseline as well (QEMU's user
    /// networking stays at 1500: it cannot be configured).
    baseline_mtu: u16,
}

/// bench/net compares our stack with QEMU's user networking and passt on the same VM.
fn baseline_backend() -> Option<String> {
    match std::env::var("MSB_NET_BACKEND").as_deref() {
        Ok("user") => Some("user".into()),
        Ok("passt") => Some("passt".into()),
        _ => None,
    }
}

impl Sandbox {
    /// Everything before QEMU starts: validate, lock the name, redirect our log.
    pub fn prepare(cfg: Config) -> Result<Sandbox, RtError> {
        cfg.validate()?;
        let dir = cfg.msb_home.join("sandboxes").join(&cfg.name);
        fs::create_dir_all(&dir)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on an open fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(match cfg.mode {
                Mode::Create => RtError::new(
                    "sandboxAlreadyExists",
                    format!(
                        "a sandbox named '{}' already exists and is running",
                        cfg.name
                    ),
                ),
                Mode::Start => RtError::new(
                    "sandboxStillRunning",
                    format!("sandbox '{}' is already running", cfg.name),
                ),
            });
        }
        let store = Store::open(&cfg.msb_home).map_err(|e| RtError::runtime(e.to_string()))?;
        let config_json = cfg.sdk_config.to_string();
        match cfg.mode {
            Mode::Create => {
                if !store
                    .insert_new(&cfg.name, &config_json, std::process::id())
                    .map_err(|e| RtError::runtime(e.to_string()))?
                {
                    return Err(RtError::new(
                        "sandboxAlreadyExists",
                        format!(
                            "a sandbox named '{}' already exists (stopped); remove it or start it",
                            cfg.name
                        ),
                    ));
                }
            }
            Mode::Start => {
                if store
                    .get_raw(&cfg.name)
                    .map_err(|e| RtError::runtime(e.to_string()))?
                    .is_none()
                {
                    return Err(RtError::new(
                        "sandboxNotFound",
                        format!("no sandbox named '{}'", cfg.name),
                    ));
                }
                // Keep the stored configuration unless a new one was given.
                let keep = if cfg.sdk_config.is_null() {
                    None
                } else {
                    Some(config_json.as_str())
                };
                let current = store
                    .get_raw(&cfg.name)
                    .ok()
                    .flatten()
                    .map(|r| r.config_json)
                    .unwrap_or_default();
                store
                    .set_starting(&cfg.name, keep.unwrap_or(&current), std::process::id())
                    .map_err(|e| RtError::runtime(e.to_string()))?;
            }
        }
        // From here on, our stderr is the sandbox's runtime.log.
        if let Ok(f) = fs::File::create(dir.join("runtime.log")) {
            // SAFETY: replaces fd 2 with the log file.
            unsafe { libc::dup2(f.as_raw_fd(), 2) };
        }
        // A new sandbox starts from nothing (files of an earlier one by that name go); a
        // restarted one keeps its writable disk.
        let stale: &[&str] = match cfg.mode {
            Mode::Create => &["upper.ext4", "lower.ext4", "console.log", "qemu.log"],
            Mode::Start => &["console.log", "qemu.log"],
        };
        for f in stale {
            let _ = fs::remove_file(dir.join(f));
        }
        // Recorded in the sandbox's directory first, so that if this process is killed the
        // next reader of the row (or the next start, or remove) can take it away.
        let run_dir = msb_store::new_run_dir(store.layout(), &cfg.name, random_u32())?;
        let agent_sock = run_dir.join("agent.sock");
        let net_sock = run_dir.join("net.sock");
        let vm_sock = run_dir.join("vm.sock");
        if agent_sock.as_os_str().len() > 100 {
            return Err(RtError::new(
                "invalidConfig",
                format!(
                    "msbHome: {} is too long for Unix socket paths (108 bytes)",
                    cfg.msb_home.display()
                ),
            ));
        }
        let created = cfg.mode == Mode::Create;
        Ok(Sandbox {
            baseline: None,
            baseline_mtu: 1500,
            virtiofsd: Vec::new(),
            started: Instant::now(),
            store,
            created,
            cfg,
            dir,
            run_dir,
            agent_sock,
            net_sock,
            vm_sock,
            _lock: lock,
            qemu: None,
        })
    }

    /// Start QEMU, format the upper disk meanwhile, handshake and bootstrap the guest.
    pub async fn boot(&mut self) -> Result<Running, RtError> {
        let qemu_bin = vm::find_qemu()?;
        for (what, p) in [
            ("kernel", &self.cfg.kernel),
            ("initramfs", &self.cfg.initramfs),
        ] {
            if !p.is_file() {
                return Err(RtError::new(
                    "kernelNotFound",
                    format!("guest {what} not found at {}: build it with `npm run setup` (runs test-vms/build.sh)", p.display()),
                ));
            }
        }
        let lower =
            disks::prepare_lower(&self.cfg.image, self.cfg.image_fstype.as_deref(), &self.dir)
                .await?;
        let (shares, mounts) = self.volumes(&lower)?;
        self.virtiofsd = shares::start(&shares, &self.dir.join("virtiofsd.log")).await?;
        let net = self.network().await?;
        if self.baseline.as_deref() == Some("passt") {
            self.start_passt().await?;
        }
        let upper = self.dir.join("upper.ext4");
        let fresh_upper = !upper.exists();
        if fresh_upper {
            disks::create_upper_file(&upper)?;
        }

        let accel = vm::pick_accel(&qemu_bin, &self.cfg.kernel, &self.cfg.initramfs);
        let paths = vm::VmPaths {
            console_log: &self.dir.join("console.log"),
            qemu_log: &self.dir.join("qemu.log"),
            agent_chardev: &self.vm_sock,
            lower: match &lower {
                Lower::Disk { path, format, .. } => Some((path.as_path(), *format)),
                Lower::Dir(_) => None,
            },
            upper: &upper,
            shares: shares
                .iter()
                .map(|s| (s.tag.as_str(), s.socket.as_path()))
                .collect(),
            net: match (&net, &self.baseline) {
                (Some((stack, _)), _) => {
                    let c = stack.config();
                    Some((
                        vm::NetBackend::VhostUser(self.net_sock.as_path()),
                        c.guest_mac.to_string(),
                        c.mtu,
                    ))
                }
                (None, Some(b)) => Some((
                    if b == "passt" {
                        vm::NetBackend::Stream(self.net_sock.as_path())
                    } else {
                        vm::NetBackend::User
                    },
                    "02:00:00:00:00:15".to_string(),
                    self.baseline_mtu,
                )),
                _ => None,
            },
        };

        let cmd = vm::qemu_command(&qemu_bin, &self.cfg, accel, &paths);
        log(&format!("starting {:?} ({accel:?})", cmd));
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RtError::runtime(format!("cannot start {}: {e}", qemu_bin.display())))?;
        self.qemu = Some(child);
        self.started = Instant::now();
        let format = tokio::spawn({
            let upper = upper.clone();
            async move {
                if fresh_upper {
                    disks::format_upper(&upper).await
                } else {
                    Ok(())
                }
            }
        });

        let deadline = Instant::now() + Duration::from_millis(self.cfg.boot_timeout_ms);
        let stream = self.connect_chardev(deadline).await?;
        let (rd, mut wr) = stream.into_split();
        // One reader for the whole life of the channel: what the guest sends right after
        // Ready stays in it for the relay.
        let mut rd = FrameReader::with_capacity(rd, GUEST_READ_SIZE);
        write_frame(
            &mut wr,
            &Frame::new(
                CHANNEL_ID,
                Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            ),
        )
        .await?;
        match self.next_guest_frame(&mut rd, deadline).await? {
            Message::Hello { version } if version == PROTOCOL_VERSION => {}
            Message::Hello { version } => {
                return Err(RtError::new("protocol", format!("guest agent speaks protocol {version}, host {PROTOCOL_VERSION}: rebuild the initramfs")))
            }
            other => return Err(RtError::new("protocol", format!("guest sent {other:?} before hello"))),
        }
        format
            .await
            .map_err(|e| RtError::runtime(e.to_string()))??;

        let mut entropy = vec![0u8; 32];
        if let Ok(mut f) = fs::File::open("/dev/urandom") {
            let _ = f.read_exact(&mut entropy);
        }
        let boot = Bootstrap {
            root: RootSpec {
                lower: match &lower {
                    Lower::Disk { fstype, .. } => LowerSpec::Disk(DiskSpec {
                        serial: "lower".into(),
                        fstype: fstype.clone(),
                    }),
                    Lower::Dir(_) => LowerSpec::Virtiofs {
                        tag: ROOT_TAG.into(),
                    },
                },
                upper: DiskSpec {
                    serial: "upper".into(),
                    fstype: "ext4".into(),
                },
            },
            env: self.cfg.env.clone(),
            workdir: self.cfg.workdir.clone(),
            user: self.cfg.user.clone(),
            hostname: self
                .cfg
                .hostname
                .clone()
                .unwrap_or_else(|| self.cfg.name.clone()),
            time_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            entropy,
            mounts,
            network: match (&net, &self.baseline) {
                (Some((stack, _)), _) => {
                    let c = stack.config();
                    Some(GuestNetwork {
                        ip: c.guest_ip,
                        prefix_len: c.prefix_len,
                        gateway: c.gateway_ip,
                        mtu: c.mtu,
                        host_ip: c.effective_host_ip(),
                        dns: c.dns,
                    })
                }
                // QEMU user networking and passt both reach the host at the gateway.
                (None, Some(_)) => Some(GuestNetwork {
                    ip: "10.0.2.15".parse().unwrap(),
                    prefix_len: 24,
                    gateway: "10.0.2.2".parse().unwrap(),
                    mtu: self.baseline_mtu,
                    host_ip: "10.0.2.2".parse().unwrap(),
                    dns: false,
                }),
                _ => None,
            },
        };
        write_frame(&mut wr, &Frame::new(CHANNEL_ID, Message::Bootstrap(boot))).await?;
        loop {
            match self.next_guest_frame(&mut rd, deadline).await? {
                Message::Ready => break,
                Message::Hello { .. } => continue, // an earlier hello, sent before we connected
                Message::Error { message, .. } => {
                    return Err(RtError::runtime(format!(
                        "guest bootstrap failed: {message}"
                    )))
                }
                other => {
                    return Err(RtError::new(
                        "protocol",
                        format!("guest sent {other:?} during bootstrap"),
                    ))
                }
            }
        }

        let _ = fs::remove_file(&self.agent_sock);
        let listener = UnixListener::bind(&self.agent_sock).map_err(|e| {
            RtError::runtime(format!("listen on {}: {e}", self.agent_sock.display()))
        })?;
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let relay = Relay::start(rd, wr, ctl_tx.clone());
        if let Some(pid) = self.qemu.as_ref().and_then(|q| q.id()) {
            relay.set_metrics_source(MetricsSource {
                net: net.as_ref().map(|(stack, _)| stack.clone()),
                cpu: CpuSampler::start(pid, self.cfg.cpus as u32),
                memory_limit_bytes: self.cfg.memory_mib as u64 * 1024 * 1024,
                started: self.started,
            });
        }
        relay.serve(listener);
        self.store
            .set_running(
                &self.cfg.name,
                std::process::id(),
                &self.agent_sock.display().to_string(),
            )
            .map_err(|e| RtError::runtime(e.to_string()))?;
        Ok(Running {
            relay,
            ctl_tx,
            ctl_rx,
        })
    }

    async fn connect_chardev(&mut self, deadline: Instant) -> Result<UnixStream, RtError> {
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

    fn check_qemu_alive(&mut self) -> Result<(), RtError> {
        if let Some(q) = self.qemu.as_mut() {
            if let Ok(Some(status)) = q.try_wait() {
                let qlog = fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
                return Err(RtError::runtime(format!(
                    "QEMU exited during boot ({status}): {}\nkernel log:\n{}",
                    qlog.trim(),
                    tail(&self.dir.join("console.log"), 20)
                )));
            }
        }
        Ok(())
    }

    /// The guest went away during boot: give QEMU a moment to exit, then say why as
    /// best the kernel log tells (out of memory, a panic), with its last lines.
    async fn guest_lost(&mut self, what: &str) -> RtError {
        if let Some(q) = self.qemu.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), q.wait()).await;
        }
        let console = self.dir.join("console.log");
        let log = fs::read_to_string(&console).unwrap_or_default();
        let cause = boot_failure_cause(&log, self.cfg.memory_mib);
        RtError::runtime(format!(
            "{what}{}; last lines of the kernel log ({}):\n{}",
            cause.map(|c| format!(": {c}")).unwrap_or_default(),
            console.display(),
            tail(&console, 20)
        ))
    }

    fn boot_timeout(&self) -> RtError {
        RtError::new(
            "agentTimeout",
            format!(
                "the guest agent did not answer within {} ms; last lines of the kernel log ({}):\n{}",
                self.cfg.boot_timeout_ms,
                self.dir.join("console.log").display(),
                tail(&self.dir.join("console.log"), 20)
            ),
        )
    }

    /// Next frame from the guest during boot, bounded by the boot deadline.
    async fn next_guest_frame(
        &mut self,
        rd: &mut FrameReader<tokio::net::unix::OwnedReadHalf>,
        deadline: Instant,
    ) -> Result<Message, RtError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Wake up now and then to notice QEMU dying (next_frame is cancel safe).
            match tokio::time::timeout(left.min(Duration::from_millis(200)), rd.next_frame()).await
            {
                Ok(Ok(Some(f))) if f.message.allowed_from_guest() && f.flags == 0 => {
                    return Ok(f.message)
                }
                Ok(Ok(Some(f))) => {
                    return Err(RtError::new(
                        "protocol",
                        format!("guest sent a message it may not send: {:?}", f.message),
                    ))
                }
                Ok(Ok(None) | Err(FrameError::Truncated)) => {
                    return Err(self
                        .guest_lost("the guest channel closed during boot")
                        .await)
                }
                Ok(Err(FrameError::Io(e))) => {
                    return Err(self.guest_lost(&format!("guest channel: {e}")).await)
                }
                Ok(Err(e)) => {
                    return Err(RtError::new(
                        "protocol",
                        format!("bad frame from guest: {e}"),
                    ))
                }
                Err(_) => {
                    self.check_qemu_alive()?;
                    if Instant::now() >= deadline {
                        return Err(self.boot_timeout());
                    }
                }
            }
        }
    }

    pub async fn kill_vm(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill().await;
        }
    }

    /// The userspace network: bind its published ports now (a taken port fails the boot
    /// before QEMU starts), listen for QEMU's frames, and serve them once it connects.
    async fn network(
        &mut self,
    ) -> Result<Option<(NetStack, tokio::task::JoinHandle<()>)>, RtError> {
        let Some(json) = &self.cfg.network else {
            return Ok(None);
        };
        let cfg = NetConfig::from_json(&json.to_string())
            .map_err(|e| RtError::new("invalidConfig", format!("network: {e}")))?;
        self.baseline = baseline_backend();
        self.baseline_mtu = match self.baseline.as_deref() {
            Some("passt") => cfg.mtu,
            _ => 1500,
        };
        if self.baseline.is_some() {
            return Ok(None);
        }
        let stack = NetStack::bind(cfg)
            .await
            .map_err(|e| RtError::new("invalidConfig", format!("network: {e}")))?;
        // Bound before QEMU starts: QEMU connects to it while it sets up the NIC.
        let listener =
            VhostListener::bind(&self.net_sock).map_err(|e| RtError::runtime(e.to_string()))?;
        let serving = stack.clone();
        let task = tokio::spawn(async move {
            // The stack runs in a task of its own so that a panic in it (a bug, found by a
            // hostile guest) is said plainly in runtime.log, next to the panic message,
            // instead of the guest silently going offline.
            match tokio::spawn(async move { serving.serve_vhost_user(listener).await }).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log_error(&format!("network: {e}")),
                Err(e) if e.is_panic() => log_error(
                    "network: the stack crashed (a bug); the sandbox has no network from now on",
                ),
                Err(_) => {}
            }
        });
        Ok(Some((stack, task)))
    }

    /// passt on our frames socket (bench/net's second baseline).
    async fn start_passt(&mut self) -> Result<(), RtError> {
        // passt drops to an unprivileged user before binding: its socket goes in /tmp.
        self.net_sock = std::env::temp_dir().join(format!("msb-passt-{}.sock", std::process::id()));
        let _ = fs::remove_file(&self.net_sock);
        let mut cmd = std::process::Command::new("passt");
        cmd.args(["-f", "-1", "-q", "-s"])
            .arg(&self.net_sock)
            .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
            .args(["-m", &self.baseline_mtu.to_string()]);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RtError::runtime(format!("cannot start passt: {e}")))?;
        self.virtiofsd.push(child);
        for _ in 0..500 {
            if self.net_sock.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(RtError::runtime("passt did not start"))
    }

    /// virtiofs shares (a directory image, bind and named volumes) and the guest mounts.
    fn volumes(&self, lower: &Lower) -> Result<(Vec<Share>, Vec<GuestMount>), RtError> {
        let mut shares = Vec::new();
        let mut mounts = Vec::new();
        let mut share = |tag: String, dir: PathBuf, readonly: bool| {
            let socket = self.run_dir.join(format!("{tag}.sock"));
            shares.push(Share {
                tag,
                dir,
                readonly,
                socket,
            });
        };
        if let Lower::Dir(dir) = lower {
            share(ROOT_TAG.into(), dir.clone(), true);
        }
        for (i, m) in self.cfg.mounts.iter().enumerate() {
            let tag = format!("msbvol{i}");
            let source = m.source.clone().unwrap_or_default();
            match m.kind.as_str() {
                "bind" => share(tag.clone(), PathBuf::from(&source), m.readonly),
                "named" => {
                    let dir = self.cfg.msb_home.join("volumes").join(&source);
                    fs::create_dir_all(&dir)?;
                    share(tag.clone(), dir, m.readonly);
                }
                _ => {}
            }
            mounts.push(match m.kind.as_str() {
                "tmpfs" => GuestMount {
                    fstype: "tmpfs".into(),
                    source: "tmpfs".into(),
                    target: m.guest_path.clone(),
                    readonly: m.readonly,
                    options: m.size_mib.map(|s| format!("size={s}m")).unwrap_or_default(),
                },
                _ => GuestMount {
                    fstype: "virtiofs".into(),
                    source: tag,
                    target: m.guest_path.clone(),
                    readonly: m.readonly,
                    options: String::new(),
                },
            });
        }
        Ok((shares, mounts))
    }

    pub fn cleanup(&self) {
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_file(self.store.layout().run_dir_record(&self.cfg.name));
        // The passt socket (bench/net) lives outside the run directory.
        let _ = fs::remove_file(&self.net_sock);
    }

    /// After a boot stopped half-way: the sandbox is recorded as stopped (it can be
    /// started or removed). A fresh upper disk may be half formatted: it goes, and the
    /// next start makes a new one (nothing was written to it: the guest never got ready).
    pub fn boot_cancelled(&self) {
        if self.created {
            let _ = fs::remove_file(self.dir.join("upper.ext4"));
        }
        let _ = self.store.set_exited(
            &self.cfg.name,
            msb_store::STOPPED,
            0,
            "stopped while booting",
        );
    }

    /// After a failed boot: a sandbox this process created is forgotten entirely (the name
    /// is free again); a restarted one is recorded as crashed with the reason.
    ///
    /// The logs (console.log, qemu.log, runtime.log) stay in the sandbox's directory for a
    /// look at what went wrong; the next create of that name starts without them, and
    /// `remove` takes them.
    pub fn boot_failed(&self, e: &RtError) {
        if self.created {
            msb_store::clean_run_dir(self.store.layout(), &self.cfg.name);
            for f in ["upper.ext4", "lower.ext4", "lock"] {
                let _ = fs::remove_file(self.dir.join(f));
            }
            let _ = self.store.delete(&self.cfg.name);
        } else {
            let _ = self.store.set_exited(
                &self.cfg.name,
                msb_store::CRASHED,
                1,
                &format!("start failed: {}", e.message),
            );
        }
    }
}

/// A booted sandbox: the relay and the control channel of its main loop.
pub struct Running {
    pub relay: Relay,
    pub ctl_tx: mpsc::Sender<Control>,
    pub ctl_rx: mpsc::Receiver<Control>,
}

async fn write_frame(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    frame: &Frame,
) -> Result<(), RtError> {
    write_frame_async(wr, frame).await.map_err(|e| match e {
        FrameError::Io(e) => RtError::runtime(format!("guest channel: {e}")),
        e => RtError::new("protocol", e.to_string()),
    })
}

/// The last `lines` lines of a log file.
/// What a guest's kernel log says about a boot that failed, in words for the error.
fn boot_failure_cause(log: &str, memory_mib: u32) -> Option<String> {
    let panic = log
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_string());
    let oom = [
        "deadlocked on memory",
        "Out of memory",
        "out_of_memory",
        "oom-kill",
        "Initramfs unpacking failed",
    ];
    if oom.iter().any(|p| log.contains(p)) {
        return Some(format!(
            "the guest ran out of memory while booting ({memory_mib} MiB; {}): give it more memory",
            panic.as_deref().unwrap_or("out of memory")
        ));
    }
    panic.map(|p| format!("the guest kernel panicked while booting ({p})"))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::boot_failure_cause;

    #[test]
    fn a_boot_that_ran_out_of_memory_says_so() {
        let log = "[    0.67] Kernel panic - not syncing: System is deadlocked on memory\n[    0.67]  out_of_memory.cold+0x2f/0x7e\n";
        let c = boot_failure_cause(log, 64).unwrap();
        assert!(c.contains("ran out of memory while booting (64 MiB"), "{c}");
        assert!(c.contains("System is deadlocked on memory"), "{c}");
        let c = boot_failure_cause(
            "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\n",
            512,
        )
        .unwrap();
        assert_eq!(
            c,
            "the guest kernel panicked while booting (Kernel panic - not syncing: VFS: Unable to mount root)"
        );
        assert_eq!(boot_failure_cause("all fine\n", 512), None);
    }
}
