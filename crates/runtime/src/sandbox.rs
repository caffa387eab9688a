//! One sandbox's life around its boot (crate::boot): lock its name and record it in the
//! store, and afterwards tidy up after a boot that failed or was stopped, or after the VM.

use msb_contract::ErrorCode;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use msb_store::Store;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::bench_backends::{self, Baseline};
use crate::config::{Config, Mode};
use crate::error::RtError;
use crate::relay::{Control, Relay};

pub struct Sandbox {
    pub(crate) store: Store,
    pub(crate) cfg: Config,
    pub(crate) dir: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) agent_sock: PathBuf,
    pub(crate) net_sock: PathBuf,
    pub(crate) vm_sock: PathBuf,
    /// QEMU's QMP socket (pause/resume).
    pub(crate) qmp_sock: PathBuf,
    /// Held for the life of the process: the sandbox name is in use while it is.
    _lock: fs::File,
    pub(crate) qemu: Option<Child>,
    /// A sandbox created by this process, whose row and directory go if its boot fails.
    created: bool,
    /// When QEMU started (uptime is measured from here).
    pub(crate) started: Instant,
    /// virtiofsd processes of the shares, and passt (bench/net): killed with us.
    pub(crate) helpers: Vec<Child>,
    /// `MSB_NET_BACKEND=user|passt`: a baseline network instead of ours (bench/net only;
    /// always None without the bench-backends feature).
    pub(crate) baseline: Option<Baseline>,
    /// The NIC is a frame stream to our stack rather than vhost-user (templated layouts).
    pub(crate) net_stream: bool,
}

impl Sandbox {
    /// Everything before QEMU starts: validate, lock the name, redirect our log.
    pub fn prepare(cfg: Config) -> Result<Sandbox, RtError> {
        cfg.validate()?;
        // Before anything is made: a bench-only backend this build lacks fails the start.
        let baseline = bench_backends::from_env()?;
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
                    ErrorCode::SandboxAlreadyExists,
                    format!(
                        "a sandbox named '{}' already exists and is running",
                        cfg.name
                    ),
                ),
                Mode::Start => RtError::new(
                    ErrorCode::SandboxStillRunning,
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
                        ErrorCode::SandboxAlreadyExists,
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
                        ErrorCode::SandboxNotFound,
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
            Mode::Create => &[
                "upper.ext4",
                "lower.ext4",
                "console.log",
                "qemu.log",
                crate::exec_log::FILE_NAME,
                crate::exec_log::PREVIOUS_FILE_NAME,
            ],
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
        let qmp_sock = run_dir.join("qmp.sock");
        if agent_sock.as_os_str().len() > 100 {
            return Err(RtError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "msbHome: {} is too long for Unix socket paths (108 bytes)",
                    cfg.msb_home.display()
                ),
            ));
        }
        let created = cfg.mode == Mode::Create;
        Ok(Sandbox {
            baseline,
            net_stream: false,
            helpers: Vec::new(),
            started: Instant::now(),
            store,
            created,
            cfg,
            dir,
            run_dir,
            agent_sock,
            net_sock,
            vm_sock,
            qmp_sock,
            _lock: lock,
            qemu: None,
        })
    }

    pub async fn kill_vm(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill().await;
        }
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
        if self.cfg.ephemeral {
            // A throwaway sandbox goes however its VM ends, a stop during boot included.
            self.forget_ephemeral();
            return;
        }
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
        } else if self.cfg.ephemeral {
            self.forget_ephemeral();
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

impl Sandbox {
    /// An ephemeral sandbox whose VM ended: its row, disks and logs go.
    fn forget_ephemeral(&self) {
        if let Err(e) = msb_store::remove_sandbox_state(&self.store, &self.cfg.name) {
            crate::log_error(&format!("removing the ephemeral sandbox: {e}"));
        }
    }
}

/// A booted sandbox: the relay and the control channel of its main loop.
pub struct Running {
    pub relay: Relay,
    pub ctl_tx: mpsc::Sender<Control>,
    pub ctl_rx: mpsc::Receiver<Control>,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b)
}
