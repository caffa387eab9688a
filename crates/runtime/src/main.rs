//! msb-runtime: one process per sandbox. Reads its configuration (JSON) on stdin, boots
//! the VM, answers with one JSON line on stdout (`ready` or `error`), then relays clients
//! to the guest until the VM is gone. See docs/ARCHITECTURE.md "Process model".

mod config;
mod disks;
mod error;
mod relay;
mod vm;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use msb_protocol::{
    Bootstrap, DiskSpec, Frame, FrameDecoder, Message, RootSpec, CHANNEL_ID, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::RtError;
use crate::relay::{Control, Relay};

/// fd on which an attached runtime receives the read end of its creator's pipe.
const ATTACH_FD: i32 = 3;
const ATTACH_STOP_GRACE: Duration = Duration::from_secs(5);
const SIGNAL_STOP_GRACE: Duration = Duration::from_secs(10);

fn log(msg: &str) {
    eprintln!("msb-runtime: {msg}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--floor-argv" {
        // For bench/coldstart: the QEMU command line of a bare boot of `kernel` with
        // `initramfs`, with the same machine, accelerator and kernel arguments as a sandbox.
        match vm::floor_argv(Path::new(&args[2]), Path::new(&args[3])) {
            Ok(argv) => println!("{}", serde_json::json!(argv)),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async_main());
    std::process::exit(code);
}

/// The one line on stdout, then stdout is closed so the creator's read ends.
fn announce(line: serde_json::Value) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: replaces fd 1 with /dev/null.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn announce_error(e: &RtError) {
    announce(serde_json::json!({ "error": { "code": e.code, "message": e.message } }));
}

async fn async_main() -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        announce_error(&RtError::runtime(format!("reading configuration: {e}")));
        return 1;
    }
    let cfg: Config = match serde_json::from_str(&input) {
        Ok(c) => c,
        Err(e) => {
            announce_error(&RtError::new(
                "invalidConfig",
                format!("configuration: {e}"),
            ));
            return 1;
        }
    };
    let mut sb = match Sandbox::prepare(cfg) {
        Ok(s) => s,
        Err(e) => {
            announce_error(&e);
            return 1;
        }
    };
    match sb.boot().await {
        Ok(running) => {
            announce(
                serde_json::json!({ "ready": { "socket": sb.agent_sock, "pid": std::process::id() } }),
            );
            sb.run(running).await;
            sb.cleanup();
            0
        }
        Err(e) => {
            log(&e.to_string());
            announce_error(&e);
            sb.kill_vm().await;
            sb.cleanup();
            1
        }
    }
}

struct Sandbox {
    cfg: Config,
    dir: PathBuf,
    run_dir: PathBuf,
    agent_sock: PathBuf,
    vm_sock: PathBuf,
    /// Held for the life of the process: the sandbox name is in use while it is.
    _lock: fs::File,
    qemu: Option<Child>,
}

impl Sandbox {
    /// Everything before QEMU starts: validate, lock the name, redirect our log.
    fn prepare(cfg: Config) -> Result<Sandbox, RtError> {
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
            return Err(RtError::new(
                "sandboxAlreadyExists",
                format!("a sandbox named '{}' is already running", cfg.name),
            ));
        }
        // From here on, our stderr is the sandbox's runtime.log.
        if let Ok(f) = fs::File::create(dir.join("runtime.log")) {
            // SAFETY: replaces fd 2 with the log file.
            unsafe { libc::dup2(f.as_raw_fd(), 2) };
        }
        for stale in [
            "upper.ext4",
            "lower.ext4",
            "console.log",
            "qemu.log",
            "runtime.json",
            "exit.json",
        ] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let config_json = serde_json::to_vec_pretty(&serde_json::json!({
            "name": cfg.name, "image": cfg.image, "cpus": cfg.cpus, "memoryMib": cfg.memory_mib,
            "env": cfg.env, "workdir": cfg.workdir, "user": cfg.user, "hostname": cfg.hostname,
        }))
        .unwrap_or_default();
        fs::write(dir.join("config.json"), config_json)?;

        let run_dir = cfg
            .msb_home
            .join("run")
            .join(format!("{:08x}", random_u32()));
        fs::create_dir_all(&run_dir)?;
        let agent_sock = run_dir.join("agent.sock");
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
        Ok(Sandbox {
            cfg,
            dir,
            run_dir,
            agent_sock,
            vm_sock,
            _lock: lock,
            qemu: None,
        })
    }

    /// Start QEMU, format the upper disk meanwhile, handshake and bootstrap the guest.
    async fn boot(&mut self) -> Result<Running, RtError> {
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
        let lower = disks::prepare_lower(&self.cfg.image, &self.dir).await?;
        let upper = self.dir.join("upper.ext4");
        disks::create_upper_file(&upper)?;

        let accel = vm::pick_accel(&qemu_bin, &self.cfg.kernel, &self.cfg.initramfs);
        let paths = vm::VmPaths {
            console_log: &self.dir.join("console.log"),
            qemu_log: &self.dir.join("qemu.log"),
            agent_chardev: &self.vm_sock,
            lower: &lower.path,
            lower_readonly: true,
            upper: &upper,
        };
        let cmd = vm::qemu_command(&qemu_bin, &self.cfg, accel, &paths);
        log(&format!("starting {:?} ({accel:?})", cmd));
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RtError::runtime(format!("cannot start {}: {e}", qemu_bin.display())))?;
        self.qemu = Some(child);
        let format = tokio::spawn({
            let upper = upper.clone();
            async move { disks::format_upper(&upper).await }
        });

        let deadline = Instant::now() + Duration::from_millis(self.cfg.boot_timeout_ms);
        let stream = self.connect_chardev(deadline).await?;
        let (mut rd, mut wr) = stream.into_split();
        let mut dec = FrameDecoder::new();
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
        match self.next_guest_frame(&mut rd, &mut dec, deadline).await? {
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
                lower: DiskSpec {
                    serial: "lower".into(),
                    fstype: lower.fstype.clone(),
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
        };
        write_frame(&mut wr, &Frame::new(CHANNEL_ID, Message::Bootstrap(boot))).await?;
        loop {
            match self.next_guest_frame(&mut rd, &mut dec, deadline).await? {
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
        let _ = fs::write(
            self.dir.join("runtime.json"),
            serde_json::json!({ "pid": std::process::id(), "socket": self.agent_sock }).to_string(),
        );
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let relay = Relay::start(rd, wr, dec, ctl_tx.clone());
        relay.serve(listener);
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
        rd: &mut tokio::net::unix::OwnedReadHalf,
        dec: &mut FrameDecoder,
        deadline: Instant,
    ) -> Result<Message, RtError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match dec.next_frame() {
                Ok(Some(f)) if f.message.allowed_from_guest() && f.flags == 0 => {
                    return Ok(f.message)
                }
                Ok(Some(f)) => {
                    return Err(RtError::new(
                        "protocol",
                        format!("guest sent a message it may not send: {:?}", f.message),
                    ))
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(RtError::new(
                        "protocol",
                        format!("bad frame from guest: {e}"),
                    ))
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Wake up now and then to notice QEMU dying.
            match tokio::time::timeout(left.min(Duration::from_millis(200)), rd.read(&mut buf))
                .await
            {
                Ok(Ok(0)) => {
                    self.check_qemu_alive()?;
                    return Err(RtError::runtime("the guest channel closed during boot"));
                }
                Ok(Ok(n)) => dec.push(&buf[..n]),
                Ok(Err(e)) => return Err(RtError::runtime(format!("guest channel: {e}"))),
                Err(_) => {
                    self.check_qemu_alive()?;
                    if Instant::now() >= deadline {
                        return Err(self.boot_timeout());
                    }
                }
            }
        }
    }

    /// Serve until QEMU exits.
    async fn run(&mut self, mut running: Running) {
        let Some(mut qemu) = self.qemu.take() else {
            return;
        };
        if self.cfg.attached {
            watch_attach_pipe(running.ctl_tx.clone());
        }
        watch_signals(running.ctl_tx.clone());
        let mut kill_at: Option<tokio::time::Instant> = None;
        let status = loop {
            let kill_sleep = async {
                match kill_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = qemu.wait() => break status,
                Some(ctl) = running.ctl_rx.recv() => match ctl {
                    Control::Stop(grace) => {
                        if kill_at.is_none() {
                            log(&format!("stopping (grace {grace:?})"));
                            running.relay.send_to_guest(&Frame::new(CHANNEL_ID, Message::Shutdown)).await;
                            kill_at = Some(tokio::time::Instant::now() + grace);
                        }
                    }
                    Control::Kill => {
                        log("kill requested");
                        let _ = qemu.start_kill();
                    }
                    Control::Protocol(msg) => {
                        log(&format!("ending the sandbox: {msg}"));
                        let _ = qemu.start_kill();
                    }
                },
                _ = kill_sleep => {
                    log("grace period over: killing QEMU");
                    let _ = qemu.start_kill();
                    kill_at = None;
                }
            }
        };
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        log(&format!("QEMU exited: {status}"));
        let _ = fs::write(
            self.dir.join("exit.json"),
            serde_json::json!({ "qemu": status }).to_string(),
        );
    }

    async fn kill_vm(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill().await;
        }
    }

    fn cleanup(&self) {
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_file(self.dir.join("runtime.json"));
    }
}

struct Running {
    relay: Relay,
    ctl_tx: mpsc::Sender<Control>,
    ctl_rx: mpsc::Receiver<Control>,
}

async fn write_frame(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    frame: &Frame,
) -> Result<(), RtError> {
    let buf = frame
        .encode()
        .map_err(|e| RtError::new("protocol", e.to_string()))?;
    wr.write_all(&buf)
        .await
        .map_err(|e| RtError::runtime(format!("guest channel: {e}")))
}

/// The creator holds the write end of a pipe whose read end is our fd 3. When the
/// creator exits (even by SIGKILL) the pipe reaches EOF: stop the VM.
fn watch_attach_pipe(ctl: mpsc::Sender<Control>) {
    // SAFETY: fd 3 was set up by the creator for us and is owned by nothing else here.
    let file = unsafe { fs::File::from_raw_fd(ATTACH_FD) };
    tokio::spawn(async move {
        let _ = tokio::task::spawn_blocking(move || {
            let mut f = file;
            let mut b = [0u8; 64];
            while matches!(f.read(&mut b), Ok(n) if n > 0) {}
        })
        .await;
        log("creator went away: stopping");
        let _ = ctl.send(Control::Stop(ATTACH_STOP_GRACE)).await;
    });
}

fn watch_signals(ctl: mpsc::Sender<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = ctl.send(Control::Stop(SIGNAL_STOP_GRACE)).await;
    });
}

fn tail(path: &Path, lines: usize) -> String {
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
