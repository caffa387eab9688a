//! The QEMU command line and the host facts it depends on.

use msb_contract::ErrorCode;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::Config;
use crate::error::RtError;

pub struct VmPaths<'a> {
    pub console_log: &'a Path,
    pub qemu_log: &'a Path,
    pub agent_chardev: &'a Path,
    /// QEMU's QMP socket (msb-runtime connects to it to pause and resume the VM).
    pub qmp: &'a Path,
    /// Read-only image disk and its format (raw, qcow2); None for a shared directory.
    pub lower: Option<(&'a Path, &'a str)>,
    pub upper: &'a Path,
    /// virtiofs shares: (tag, vhost-user socket).
    pub shares: Vec<(&'a str, &'a Path)>,
    /// Disk volumes: (serial, image, format, read-only).
    pub volume_disks: Vec<(&'a str, &'a Path, &'a str, bool)>,
    /// The NIC: (backend, guest MAC, MTU).
    pub net: Option<(NetBackend<'a>, String, u16)>,
    /// Start paused, waiting for a memory template's state (`migrate-incoming` over QMP).
    pub incoming: bool,
    /// Where the guest's memory comes from.
    pub memory: GuestMemory<'a>,
}

/// The guest's RAM (QEMU's `memory-backend-*` object `mem`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GuestMemory<'a> {
    /// A shared memfd: vhost-user backends (virtiofsd, our stack over vhost-user) map it,
    /// and template saves and forks read it through /proc.
    Memfd,
    /// A memory template's `ram` file mapped private: copy-on-write, the pages the guest
    /// does not write stay the page cache's, shared by every restore of the template.
    /// Only with a NIC that does not map guest memory (`-netdev stream`).
    Template(&'a Path),
}

/// What the guest's virtio-net is connected to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NetBackend<'a> {
    /// Our stack, over vhost-user on this socket (needs shared guest memory).
    VhostUser(&'a Path),
    /// Length-prefixed frames on this socket (`-netdev stream`): our stack when guest memory
    /// is a private mapping (templated layouts), or passt (bench/net).
    Stream(&'a Path),
    /// QEMU's own user networking (bench/net's baseline only).
    #[cfg(feature = "bench-backends")]
    User,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM when it really works here, TCG otherwise; `MSB_ACCEL=kvm|tcg` forces one.
///
/// An openable /dev/kvm is not enough: on some nested hosts QEMU aborts ("failed to set
/// MSR") or the guest hangs under KVM. So the first sandbox after each host boot runs a
/// probe (the bench's floor initramfs, which prints a line and powers off) and the verdict
/// is cached in the temp directory, keyed by boot id and QEMU binary.
pub fn pick_accel(qemu: &Path, kernel: &Path, initramfs: &Path) -> Accel {
    match std::env::var("MSB_ACCEL").as_deref() {
        Ok("tcg") => return Accel::Tcg,
        Ok("kvm") => return Accel::Kvm,
        _ => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let qemu_mtime = fs::metadata(qemu)
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let key = format!("{}|{}|{qemu_mtime}", boot_id.trim(), qemu.display());
    // SAFETY: getuid has no preconditions.
    let cache = std::env::temp_dir().join(format!("msb-accel-{}", unsafe { libc::getuid() }));
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Some((k, v)) = text.rsplit_once('\n') {
            if k == key {
                return if v == "kvm" { Accel::Kvm } else { Accel::Tcg };
            }
        }
    }
    let floor = initramfs.with_file_name("floor.cpio");
    let verdict = if floor.is_file() && kvm_boots(qemu, kernel, &floor) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let tmp = cache.with_extension(format!("{}", std::process::id()));
    let v = if verdict == Accel::Kvm { "kvm" } else { "tcg" };
    if fs::write(&tmp, format!("{key}\n{v}")).is_ok() {
        let _ = fs::rename(&tmp, &cache);
    }
    verdict
}

fn kvm_boots(qemu: &Path, kernel: &Path, floor: &Path) -> bool {
    use std::io::Read;
    let child = std::process::Command::new(qemu)
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(floor)
        .args(["-append", "console=ttyS0 quiet reboot=t panic=-1 pci=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let mut out = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        let _ = tx.send(s);
    });
    let ok = rx
        .recv_timeout(std::time::Duration::from_secs(8))
        .map(|s| s.contains("init reached"))
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    ok
}

pub fn find_qemu() -> Result<PathBuf, RtError> {
    if let Ok(p) = std::env::var("MSB_QEMU") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(RtError::new(
            ErrorCode::QemuNotFound,
            format!("MSB_QEMU points at {}, which does not exist. Unset it, or install QEMU with `sudo apt-get install qemu-system-x86`. Run `msb doctor` to check the host.", p.display()),
        ));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    for dir in path.split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = Path::new(dir).join("qemu-system-x86_64");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(RtError::new(
        ErrorCode::QemuNotFound,
        "QEMU is not installed: qemu-system-x86_64 was not found on PATH. Install it with \
         `sudo apt-get install qemu-system-x86` (Debian/Ubuntu), or set MSB_QEMU to its path. \
         Run `msb doctor` to check the host.",
    ))
}

/// Host TSC frequency in kHz: microvm has no PIT/HPET to calibrate against under TCG.
fn tsc_khz() -> u64 {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

/// The kernel command line: the same for every sandbox on this host (snapshot-friendly).
pub fn kernel_cmdline(accel: Accel) -> String {
    let mut args = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "rdinit=/init".into(),
        "reboot=t".into(),
        "panic=-1".into(),
        "i8042.noaux".into(),
        "i8042.nokbd".into(),
        "mitigations=off".into(),
        "cryptomgr.notests".into(),
        "random.trust_cpu=on".into(),
        "audit=0".into(),
        "apparmor=0".into(),
        "security=none".into(),
        "8250.nr_uarts=1".into(),
        "nokaslr".into(),
        "pci=off".into(),
    ];
    if accel == Accel::Tcg {
        let khz = tsc_khz();
        args.push(format!("tsc_early_khz={khz}"));
        args.push("tsc=reliable".into());
        args.push(format!("lpj={}", khz * 4));
        args.push("no_timer_check".into());
        // Per-CPU memory in page-sized units, not 2 MiB ones: the first cgroup, mount and
        // NIC of the bootstrap use up the boot chunk, and a new 2 MiB chunk's allocation
        // maps (~150 KiB, zeroed one byte per emulated instruction) cost a cold boot
        // ~5 ms of guest time under TCG. Under KVM the large-page boot chunk is kept.
        args.push("percpu_alloc=page".into());
    }
    args.join(" ")
}

pub fn qemu_command(qemu: &Path, cfg: &Config, accel: Accel, p: &VmPaths) -> std::process::Command {
    let mut c = std::process::Command::new(qemu);
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    // Guest memory (see GuestMemory) as a named backend; modern virtio-mmio goes with it.
    c.args(["-M", "microvm,memory-backend=mem"]);
    match p.memory {
        GuestMemory::Memfd => c.arg("-object").arg(format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            cfg.memory_mib
        )),
        GuestMemory::Template(ram) => c.arg("-object").arg(format!(
            "memory-backend-file,id=mem,size={}M,share=off,mem-path={}",
            cfg.memory_mib,
            qemu_path(ram)
        )),
    };
    c.args(["-global", "virtio-mmio.force-legacy=false"]);
    c.args(["-accel", accel_arg, "-cpu", cpu]);
    c.args([
        "-smp",
        &cfg.cpus.to_string(),
        "-m",
        &format!("{}M", cfg.memory_mib),
    ]);
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    c.arg("-kernel").arg(&cfg.kernel);
    c.arg("-initrd").arg(&cfg.initramfs);
    c.args(["-append", &kernel_cmdline(accel)]);
    c.arg("-serial")
        .arg(format!("file:{}", p.console_log.display()));
    c.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qemu_path(p.qmp)));
    // Fixed device order: agent port, lower disk, upper disk, shares.
    // Two ports (0 is reserved for consoles; the agent's is 1) instead of QEMU's 31: the
    // guest's driver sets up two virtqueues per possible port at probe, which under
    // emulation was ~50 ms of every cold boot (measured: kernel to /init -54 ms).
    c.args(["-device", "virtio-serial-device,max_ports=2"]);
    c.arg("-chardev").arg(format!(
        "socket,id=agent,path={},server=on,wait=off",
        p.agent_chardev.display()
    ));
    c.args(["-device", "virtserialport,chardev=agent,name=agent"]);
    if let Some((lower, format)) = p.lower {
        c.arg("-drive").arg(format!(
            "id=lower,file={},format={format},if=none,readonly=on",
            qemu_path(lower)
        ));
        c.args(["-device", "virtio-blk-device,drive=lower,serial=lower"]);
    }
    c.arg("-drive").arg(format!(
        "id=upper,file={},format=raw,if=none,discard=unmap",
        qemu_path(p.upper)
    ));
    c.args(["-device", "virtio-blk-device,drive=upper,serial=upper"]);
    for (i, (serial, path, format, readonly)) in p.volume_disks.iter().enumerate() {
        // Read-only: the guest's writes (ext4 replaying a journal left by a VM that was
        // killed) go to a throwaway overlay; the image itself is never written.
        let ro = if *readonly { ",snapshot=on" } else { "" };
        c.arg("-drive").arg(format!(
            "id=vol{i},file={},format={format},if=none{ro}",
            qemu_path(path)
        ));
        c.arg("-device")
            .arg(format!("virtio-blk-device,drive=vol{i},serial={serial}"));
    }
    if let Some((backend, mac, mtu)) = &p.net {
        match backend {
            // The virtqueues are served by msb-runtime's userspace stack.
            NetBackend::VhostUser(sock) => {
                c.arg("-chardev")
                    .arg(format!("socket,id=net0,path={}", sock.display()));
                c.args(["-netdev", "vhost-user,id=n0,chardev=net0"])
            }
            // Frames go to our stack (or passt), 4-byte length before each.
            NetBackend::Stream(sock) => c.arg("-netdev").arg(format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                sock.display()
            )),
            #[cfg(feature = "bench-backends")]
            NetBackend::User => c.args(["-netdev", "user,id=n0,net=10.0.2.0/24"]),
        };
        let host_mtu = if *mtu > 1500 {
            format!(",host_mtu={mtu}")
        } else {
            String::new()
        };
        c.arg("-device")
            .arg(format!("virtio-net-device,netdev=n0,mac={mac}{host_mtu}"));
    }
    for (i, (tag, sock)) in p.shares.iter().enumerate() {
        c.arg("-chardev")
            .arg(format!("socket,id=fs{i},path={}", sock.display()));
        c.arg("-device")
            .arg(format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"));
    }

    if p.incoming {
        c.args(["-incoming", "defer"]);
    }
    c.stdin(Stdio::null());
    if let Ok(f) = fs::File::create(p.qemu_log) {
        if let Ok(f2) = f.try_clone() {
            c.stdout(f2);
        }
        c.stderr(f);
    }
    // SAFETY: prctl is async-signal-safe. QEMU must never outlive msb-runtime.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

/// QEMU argv for a bare boot (no devices but the serial console on stdio).
pub fn floor_argv(kernel: &Path, initramfs: &Path) -> Result<Vec<String>, RtError> {
    let qemu = find_qemu()?;
    let accel = pick_accel(&qemu, kernel, initramfs);
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut v: Vec<String> = vec![qemu.display().to_string()];
    for a in [
        "-M", "microvm", "-accel", accel_arg, "-cpu", cpu, "-smp", "1", "-m", "512M",
    ] {
        v.push(a.into());
    }
    for a in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
    ] {
        v.push(a.into());
    }
    v.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initramfs.display().to_string(),
    ]);
    v.extend(["-append".into(), kernel_cmdline(accel)]);
    Ok(v)
}

/// QEMU's -drive option splits on commas; a comma in a path is written twice.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sized_per_cpu_chunks_only_under_emulation() {
        let tcg = kernel_cmdline(Accel::Tcg);
        let kvm = kernel_cmdline(Accel::Kvm);
        assert!(tcg.split(' ').any(|a| a == "percpu_alloc=page"), "{tcg}");
        assert!(!kvm.contains("percpu_alloc"), "{kvm}");
        // The rest is common: the same kernel arguments before the emulation-only ones.
        assert!(tcg.starts_with(&kvm), "{tcg} / {kvm}");
    }
}
