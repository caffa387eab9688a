//! Booting a prepared sandbox, in named steps (after Firecracker's `builder.rs`):
//!
//! 1. [`check_vmm`](Sandbox::check_vmm): QEMU and the guest's kernel and initramfs are there
//! 2. [`attach_disks`](Sandbox::attach_disks): the image as the lower disk, the upper disk's place
//! 3. [`attach_shares`](Sandbox::attach_shares): virtiofsd for a directory image and the volumes
//! 4. [`attach_network`](Sandbox::attach_network): the userspace stack (or a bench baseline)
//! 5. [`start_vmm`](Sandbox::start_vmm): QEMU, while the upper disk is formatted; with a
//!    memory template of this shape (crate::template), [`restore_template`](Sandbox::restore_template)
//!    loads it instead of the kernel booting, else the cold boot saves one after step 6
//! 6. [`handshake`](Sandbox::handshake): hello both ways on the agent channel
//! 7. [`bootstrap`](Sandbox::bootstrap): root disks, mounts, network, identity; until Ready
//! 8. [`start_relay`](Sandbox::start_relay): serve agent.sock, record the sandbox as running
//!
//! Each step has its own error type (boot/error.rs); [`BootError`] gathers them and is
//! turned into the `RtError` (code and message) the SDK sees at [`Sandbox::boot`].

pub mod error;
mod guest;
mod network;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use msb_contract::ErrorCode;
use msb_protocol::GuestMount;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use self::error::{BootError, DiskError, RelayError, ShareError, VmmError};
use self::guest::GuestLink;
use self::network::Network;
use crate::cpu::CpuSampler;
use crate::disks::{self, Lower};
use crate::error::RtError;
use crate::qmp::Qmp;
use crate::relay::{Control, MetricsSource, Relay};
use crate::sandbox::{Running, Sandbox};
use crate::shares::{self, Share};
use crate::{log, template, vm};

/// The VMM found by [`Sandbox::check_vmm`].
pub struct Vmm {
    qemu: PathBuf,
}

/// The root disks: the image (lower, read-only) and the sandbox's writable upper disk.
pub struct Disks {
    pub lower: Lower,
    pub upper: PathBuf,
    /// The upper disk does not exist yet: it is made right before QEMU starts and
    /// formatted while the guest boots.
    fresh_upper: bool,
}

/// How long a restored guest has to answer the hello before its template is given up
/// for a cold boot (it answers in milliseconds when the template is sound).
const RESTORED_HELLO: Duration = Duration::from_secs(10);

/// Where a boot's time went, for one line in runtime.log.
struct StepClock {
    t0: Instant,
    last: Instant,
    parts: Vec<(&'static str, u128)>,
}

impl StepClock {
    fn new() -> StepClock {
        let now = Instant::now();
        StepClock {
            t0: now,
            last: now,
            parts: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.parts.push((step, (now - self.last).as_millis()));
        self.last = now;
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(s, ms)| format!("{s} {ms}"))
            .collect();
        format!(
            "booted in {} ms: {} (ms)",
            self.t0.elapsed().as_millis(),
            parts.join(", ")
        )
    }
}

/// What this boot does with memory templates.
pub enum TemplatePlan {
    /// Templates off, or a layout that is never templated.
    None,
    /// Restore from this template (its directory), its save of this stage.
    Restore(template::Shape, PathBuf, template::Stage),
    /// Boot cold and save the guest as this shape's template after the handshake.
    Make(template::Shape),
    /// A fork (crate::fork): restore the parent's state saved in this directory.
    Fork(PathBuf, crate::fork::ForkInfo),
}

/// The virtiofs shares (served by virtiofsd from now on) and the guest's mounts.
pub struct Shares {
    shares: Vec<Share>,
    mounts: Vec<GuestMount>,
    /// Disk volumes, attached as extra virtio disks.
    disks: Vec<shares::VolumeDisk>,
}

impl Sandbox {
    /// Start QEMU, format the upper disk meanwhile, handshake and bootstrap the guest.
    pub async fn boot(&mut self) -> Result<Running, RtError> {
        self.boot_steps().await.map_err(RtError::from)
    }

    async fn boot_steps(&mut self) -> Result<Running, BootError> {
        let mut clock = StepClock::new();
        let vmm = self.check_vmm()?;
        let disks = self.attach_disks().await?;
        let shares = self.attach_shares(&disks.lower).await?;
        clock.mark("disks and shares");
        let fork = match self.cfg.fork_from.clone() {
            Some(dir) => Some(self.fork_plan(dir, &shares)?),
            None => None,
        };
        // A templated layout's restores map their memory private, which vhost-user cannot
        // serve: its NIC is a frame stream, in the boot that makes the template too (the
        // saved device state must match). A fork's NIC is its parent's.
        let stream = match &fork {
            Some(TemplatePlan::Fork(_, info)) => info.net_stream,
            _ => self.templatable(&disks, &shares),
        };
        let mut net = self.attach_network(stream).await?;
        self.net_stream = stream && net.is_some();
        clock.mark("network");
        if disks.fresh_upper {
            disks::create_upper_file(&disks.upper).map_err(DiskError::Upper)?;
        }
        let accel = vm::pick_accel(&vmm.qemu, &self.cfg.kernel, &self.cfg.initramfs);
        let mut plan = match fork {
            Some(p) => p,
            None if stream => self.template_plan(&vmm, accel, &disks, net.as_ref()),
            None => TemplatePlan::None,
        };
        let mut format_upper = disks.fresh_upper;
        if let TemplatePlan::Restore(shape, dir, template::Stage::Root) = &plan {
            // A new sandbox restored with the root mounted: its disk is the template's,
            // copied before QEMU opens it (nothing to format).
            let t0 = Instant::now();
            match template::copy_upper(dir, shape, &disks.upper) {
                Ok(_) => {
                    format_upper = false;
                    log(&format!(
                        "upper disk: a copy of the template {}'s, made in {} ms",
                        shape.key(),
                        t0.elapsed().as_millis()
                    ));
                }
                Err(e) => {
                    log(&format!(
                        "memory template {}: {e}; removed: cold boot instead",
                        shape.key()
                    ));
                    template::remove(dir);
                    plan = TemplatePlan::Make(shape.clone());
                }
            }
        }
        let mut formatting = self.start_vmm(
            &vmm,
            accel,
            &disks,
            format_upper,
            &shares,
            net.as_ref(),
            &plan,
        )?;
        clock.mark("QEMU started");
        if let TemplatePlan::Fork(dir, info) = &plan {
            let r = self.restore_fork(dir, info, formatting).await;
            // Its memory is in the new QEMU, its disk ours: the directory has done its part.
            let _ = fs::remove_dir_all(dir);
            let link = r?;
            return Ok(self.start_relay(link, net, info.first_id)?);
        }
        let mut restored = None;
        if let TemplatePlan::Restore(shape, dir, stage) = &plan {
            // Nothing is formatted for a restore (a new sandbox's disk is the template's
            // copy, any other has its data); the task is awaited all the same, before the
            // hello (it must not outlive a QEMU that goes: a cold start may follow).
            let loaded = self.restore_template(shape, dir, *stage).await;
            formatting
                .await
                .map_err(DiskError::FormatTask)?
                .map_err(DiskError::Upper)?;
            formatting = tokio::spawn(async { Ok(()) });
            let r = match loaded {
                Ok(()) => self
                    .handshake(formatting, Some(RESTORED_HELLO))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match r {
                Ok(link) => restored = Some(link),
                Err(e) => {
                    // A template that does not load is no reason to fail the create: it
                    // is removed, and this boot starts over cold (and makes a new one).
                    log(&format!(
                        "memory template {}: {e}; removed: cold boot instead",
                        shape.key()
                    ));
                    template::remove(dir);
                    self.end_qemu().await;
                    net = self.restart_network(net).await?;
                    plan = TemplatePlan::Make(shape.clone());
                }
            }
            if restored.is_none() {
                formatting =
                    self.start_vmm(&vmm, accel, &disks, false, &shares, net.as_ref(), &plan)?;
            } else {
                formatting = tokio::spawn(async { Ok(()) });
            }
        }
        let mut link = match restored {
            Some(link) => link,
            None => self.handshake(formatting, None).await?,
        };
        clock.mark("restore or kernel boot, hello");
        if let TemplatePlan::Make(shape) = &plan {
            match self.prepare_image(&mut link, &disks).await {
                Ok(()) => {
                    clock.mark("image prepared");
                    self.make_template(shape, &mut link, &disks, net.as_ref())
                        .await;
                    clock.mark("template saved");
                }
                Err(e) => log(&format!(
                    "memory template {}: not made: the guest could not prepare the image: {e}",
                    shape.key()
                )),
            }
        }
        self.bootstrap(&mut link, &disks, shares.mounts, net.as_ref())
            .await?;
        clock.mark("bootstrap");
        let running = self.start_relay(link, net, 1)?;
        clock.mark("relay");
        log(&clock.summary());
        Ok(running)
    }

    /// Ends a QEMU that will not be used (its restore failed).
    async fn end_qemu(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.start_kill();
            let _ = q.wait().await;
        }
    }

    /// Boot step "check VMM": QEMU, and the guest kernel and initramfs it boots.
    fn check_vmm(&self) -> Result<Vmm, VmmError> {
        let qemu = vm::find_qemu().map_err(VmmError::NotFound)?;
        for (what, path) in [
            ("kernel", &self.cfg.kernel),
            ("initramfs", &self.cfg.initramfs),
        ] {
            if !path.is_file() {
                return Err(VmmError::GuestAsset {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(Vmm { qemu })
    }

    /// Boot step "attach disks": the image as the lower disk (a directory image becomes
    /// a virtiofs share in the next step), and where the upper disk is.
    async fn attach_disks(&mut self) -> Result<Disks, DiskError> {
        let lower =
            disks::prepare_lower(&self.cfg.image, self.cfg.image_fstype.as_deref(), &self.dir)
                .await
                .map_err(DiskError::Lower)?;
        let upper = self.dir.join("upper.ext4");
        if let (Some(src), Some(_), false) =
            (&self.cfg.upper_source, &self.cfg.fork_from, upper.exists())
        {
            // A fork's disk copy is its own: moved, not copied again.
            if fs::rename(src, &upper).is_ok() {
                log(&format!("upper disk moved from {}", src.display()));
            }
        }
        if let (Some(src), false) = (&self.cfg.upper_source, upper.exists()) {
            // A new sandbox from a disk snapshot: its writable disk is a copy of the
            // snapshot's (reflinked where the filesystem can, holes kept otherwise).
            let t0 = Instant::now();
            let size = msb_store::sparse::copy_sparse(src, &upper).map_err(|e| {
                DiskError::Upper(RtError::new(
                    ErrorCode::InvalidConfig,
                    format!("upperSource: cannot copy {}: {e}", src.display()),
                ))
            })?;
            log(&format!(
                "upper disk copied from {} ({size} bytes apparent) in {} ms",
                src.display(),
                t0.elapsed().as_millis()
            ));
        }
        Ok(Disks {
            lower,
            fresh_upper: !upper.exists(),
            upper,
        })
    }

    /// Boot step "attach shares": one virtiofsd per shared directory, the guest's mounts.
    async fn attach_shares(&mut self, lower: &Lower) -> Result<Shares, ShareError> {
        let (shares, mounts, disks) =
            shares::plan(&self.cfg, &self.run_dir, lower).map_err(ShareError::Volume)?;
        let children = shares::start(&shares, &self.dir.join("virtiofsd.log"))
            .await
            .map_err(ShareError::Virtiofsd)?;
        self.helpers.extend(children);
        Ok(Shares {
            shares,
            mounts,
            disks,
        })
    }

    /// Whether this boot's layout is templated (crate::template): templates on, no shares
    /// or disk volumes, an image disk, our own network stack or none.
    fn templatable(&self, disks: &Disks, shares: &Shares) -> bool {
        template::enabled()
            && self.cfg.memory_template
            && shares.shares.is_empty()
            && shares.disks.is_empty()
            && self.baseline.is_none()
            && matches!(disks.lower, Lower::Disk { .. })
    }

    /// The memory template a templated boot restores from or makes.
    fn template_plan(
        &self,
        vmm: &Vmm,
        accel: vm::Accel,
        disks: &Disks,
        net: Option<&Network>,
    ) -> TemplatePlan {
        let Lower::Disk {
            path,
            format,
            fstype,
        } = &disks.lower
        else {
            return TemplatePlan::None;
        };
        let ids = (
            template::FileId::of(&self.cfg.kernel),
            template::FileId::of(&self.cfg.initramfs),
            template::FileId::of(&vmm.qemu),
            template::FileId::of(path),
            fs::metadata(&disks.upper).map(|m| m.len()),
        );
        let (Some(kernel), Some(initramfs), Some(qemu), Some(image), Ok(upper_bytes)) = ids else {
            return TemplatePlan::None;
        };
        let shape = template::Shape {
            kernel,
            initramfs,
            qemu,
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: msb_protocol::PROTOCOL_VERSION,
            accel: format!("{accel:?}"),
            cpus: self.cfg.cpus,
            memory_mib: self.cfg.memory_mib,
            cmdline: vm::kernel_cmdline(accel),
            image,
            image_format: format.to_string(),
            image_fstype: fstype.clone(),
            upper_bytes,
            nic_mtu: net.map(|n| n.nic(&self.net_sock).2),
        };
        // A new sandbox's disk has nothing on it yet: it is restored with the root mounted,
        // on a copy of the template's disk; any other is restored with its own disk.
        let stage = if disks.fresh_upper {
            template::Stage::Root
        } else {
            template::Stage::Image
        };
        match template::find(&self.cfg.msb_home, &shape, stage) {
            Ok(dir) => TemplatePlan::Restore(shape, dir, stage),
            Err(why) => {
                log(&format!(
                    "memory template {}: {why}: cold boot, making it meanwhile",
                    shape.key()
                ));
                TemplatePlan::Make(shape)
            }
        }
    }

    /// A fork's plan: its parent's saved state, if this sandbox has the parent's layout.
    fn fork_plan(&self, dir: PathBuf, shares: &Shares) -> Result<TemplatePlan, VmmError> {
        let fail = |e: String| VmmError::Fork(e);
        crate::fork::check_dir(&self.cfg.msb_home, &dir).map_err(fail)?;
        let info = crate::fork::read_info(&dir).map_err(fail)?;
        if !shares.shares.is_empty() || !shares.disks.is_empty() || self.baseline.is_some() {
            return Err(fail("a fork has no shares or volumes".into()));
        }
        let mine = crate::fork::ForkInfo {
            image: self.cfg.image.clone(),
            cpus: self.cfg.cpus,
            memory_mib: self.cfg.memory_mib,
            network: self.cfg.network.is_some(),
            ..info.clone()
        };
        crate::fork::check_layout(&info, &mine).map_err(fail)?;
        Ok(TemplatePlan::Fork(dir, info))
    }

    /// Boot steps of a fork, in place of restore/handshake/bootstrap: load the parent's
    /// state into the QEMU just started with `-incoming defer`, say hello to its agent
    /// (bootstrapped already), tell it it is a fork (crate::fork).
    async fn restore_fork(
        &mut self,
        dir: &std::path::Path,
        info: &crate::fork::ForkInfo,
        formatting: JoinHandle<Result<(), RtError>>,
    ) -> Result<GuestLink, BootError> {
        let t0 = Instant::now();
        let pid = self
            .qemu
            .as_ref()
            .and_then(|q| q.id())
            .ok_or_else(|| VmmError::Fork("QEMU is gone".into()))?;
        let loaded = async {
            let mut qmp = Qmp::connect(&self.qmp_sock, Duration::from_secs(5)).await?;
            template::load(&mut qmp, pid, dir, info.memory_mib as u64 * 1024 * 1024).await
        }
        .await
        .map_err(VmmError::Fork)?;
        let link = self.handshake_fork(formatting, info).await?;
        log(&format!(
            "forked from {}: restored ({} bytes of memory) in {} ms (memory {} ms, devices {} ms)",
            info.parent,
            loaded.memory_bytes,
            t0.elapsed().as_millis(),
            loaded.memory_ms,
            loaded.devices_ms
        ));
        Ok(link)
    }

    /// Boot step "restore template": QEMU was started with `-incoming defer` and the
    /// template's `ram` as its (private, copy-on-write) memory; load the device state, and
    /// the guest runs on from where the template's agent had said hello. A failure is the
    /// caller's to handle (boot_steps: remove the template, boot cold).
    async fn restore_template(
        &mut self,
        shape: &template::Shape,
        dir: &std::path::Path,
        stage: template::Stage,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let dir = template::stage_dir(dir, stage);
        let mut qmp = Qmp::connect(&self.qmp_sock, Duration::from_secs(5)).await?;
        let devices_ms = template::load_mapped(&mut qmp, &dir).await?;
        log(&format!(
            "memory template {}: restored (memory mapped copy-on-write from {}) in {} ms (devices {devices_ms} ms)",
            shape.key(),
            dir.join("ram").display(),
            t0.elapsed().as_millis(),
        ));
        Ok(())
    }

    /// After a cold boot's handshake and `Prepare`, before anything sandbox-specific
    /// reaches the guest: save it as the template of its shape (template::Stage::Image),
    /// then, for a new sandbox (its writable disk just formatted), have the guest mount
    /// that disk and the root, switch to it, configure its NIC (`PrepareRoot`) and save
    /// again (Stage::Root, with a copy of the disk). A failure is logged, never fatal: without the second save the template
    /// is still made (restarts use it; the next new sandbox makes it again, whole).
    async fn make_template(
        &mut self,
        shape: &template::Shape,
        link: &mut GuestLink,
        disks: &Disks,
        net: Option<&Network>,
    ) {
        let t0 = Instant::now();
        let key = shape.key();
        let Some(pid) = self.qemu.as_ref().and_then(|q| q.id()) else {
            return log(&format!("memory template {key}: not made: QEMU is gone"));
        };
        let r = async {
            let mut draft = template::Draft::new(&self.cfg.msb_home, shape)?;
            let mut qmp = Qmp::connect(&self.qmp_sock, Duration::from_secs(5)).await?;
            let image = draft
                .save(&mut qmp, pid, template::Stage::Image, None)
                .await?;
            let root = if disks.fresh_upper {
                match self.prepare_root(link, net).await {
                    Ok(()) => draft
                        .save(&mut qmp, pid, template::Stage::Root, Some(&disks.upper))
                        .await
                        .map_err(|e| format!("its root save: {e}")),
                    Err(e) => Err(format!("the guest could not mount the writable disk: {e}")),
                }
            } else {
                Err("no root save (the writable disk has a sandbox's data)".into())
            };
            draft.commit()?;
            Ok::<_, String>((image, root))
        }
        .await;
        match r {
            Ok((image, Ok(root))) => log(&format!(
                "memory template {key}: made ({image} bytes of memory, {root} with the root mounted) in {} ms",
                t0.elapsed().as_millis()
            )),
            Ok((image, Err(e))) => log(&format!(
                "memory template {key}: made ({image} bytes of memory; {e}) in {} ms",
                t0.elapsed().as_millis()
            )),
            Err(e) => log(&format!("memory template {key}: not made: {e}")),
        }
    }

    /// Boot step "start VMM": start QEMU (waiting for a template's or a fork's state when
    /// there is one), and format a new upper disk while the guest boots (the handshake
    /// waits for it).
    #[allow(clippy::too_many_arguments)]
    fn start_vmm(
        &mut self,
        vmm: &Vmm,
        accel: vm::Accel,
        disks: &Disks,
        fresh_upper: bool,
        shares: &Shares,
        net: Option<&Network>,
        plan: &TemplatePlan,
    ) -> Result<JoinHandle<Result<(), RtError>>, VmmError> {
        let template_ram = match plan {
            TemplatePlan::Restore(_, dir, stage) => {
                Some(template::stage_dir(dir, *stage).join("ram"))
            }
            _ => None,
        };
        let paths = vm::VmPaths {
            console_log: &self.dir.join("console.log"),
            qemu_log: &self.dir.join("qemu.log"),
            agent_chardev: &self.vm_sock,
            qmp: &self.qmp_sock,
            lower: match &disks.lower {
                Lower::Disk { path, format, .. } => Some((path.as_path(), *format)),
                Lower::Dir(_) => None,
            },
            upper: &disks.upper,
            shares: shares
                .shares
                .iter()
                .map(|s| (s.tag.as_str(), s.socket.as_path()))
                .collect(),
            volume_disks: shares
                .disks
                .iter()
                .map(|d| (d.serial.as_str(), d.path.as_path(), d.format, d.readonly))
                .collect(),
            net: net.map(|n| n.nic(&self.net_sock)),
            incoming: matches!(plan, TemplatePlan::Restore(..) | TemplatePlan::Fork(..)),
            memory: match &template_ram {
                Some(ram) => vm::GuestMemory::Template(ram),
                None => vm::GuestMemory::Memfd,
            },
        };
        let cmd = vm::qemu_command(&vmm.qemu, &self.cfg, accel, &paths);
        log(&format!("starting {:?} ({accel:?})", cmd));
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                qemu: vmm.qemu.clone(),
                source,
            })?;
        self.qemu = Some(child);
        self.started = Instant::now();
        let upper = disks.upper.clone();
        Ok(tokio::spawn(async move {
            if fresh_upper {
                disks::format_upper(&upper).await
            } else {
                Ok(())
            }
        }))
    }

    /// Boot step "start relay": listen on agent.sock, relay clients to the guest, give the
    /// relay its metrics sources, and record the sandbox as running.
    fn start_relay(
        &mut self,
        link: GuestLink,
        net: Option<Network>,
        first_id: u32,
    ) -> Result<Running, RelayError> {
        let _ = fs::remove_file(&self.agent_sock);
        let listener =
            UnixListener::bind(&self.agent_sock).map_err(|source| RelayError::Listen {
                path: self.agent_sock.clone(),
                source,
            })?;
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let relay = Relay::start_from(link.rd, link.wr, ctl_tx.clone(), first_id);
        crate::exec_log::start(&self.dir, &relay);
        if let Some(i) = net.as_ref().and_then(Network::interceptor) {
            let ctl = ctl_tx.clone();
            tokio::spawn(async move {
                i.terminate_requested().await;
                let _ = ctl.send(Control::SecretViolation).await;
            });
        }
        if let Some(pid) = self.qemu.as_ref().and_then(|q| q.id()) {
            relay.set_metrics_source(MetricsSource {
                net: net.as_ref().and_then(Network::stack).cloned(),
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
            .map_err(|e| RelayError::Store(e.to_string()))?;
        Ok(Running {
            relay,
            ctl_tx,
            ctl_rx,
        })
    }
}
