//! Bootstrap: set clock, entropy and hostname, assemble the root filesystem
//! (overlay of the read-only image disk and the sandbox's writable disk) and switch to it.

use std::fs;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msb_protocol::{Bootstrap, DiskSpec, GuestMount, GuestNetwork, LowerSpec};

use crate::sys;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image disk `Prepare` mounted at /mnt/lower (in a template, and so in its restores).
static PREPARED_LOWER: Mutex<Option<DiskSpec>> = Mutex::new(None);
/// What `PrepareRoot` did, in a boot that makes a memory template for new sandboxes (and
/// so in their restores: each one's disk is a copy of this one as it was when the
/// template was saved, the host's guarantee, see msb-runtime's template.rs).
static PREPARED_ROOT: Mutex<PreparedRoot> = Mutex::new(PreparedRoot::NONE);

struct PreparedRoot {
    /// The writable disk mounted at /mnt/upper, the overlay root at /newroot.
    upper: Option<DiskSpec>,
    /// The overlay root made the root.
    switched: bool,
    /// The NIC configured so, and the name-service files written for it.
    network: Option<GuestNetwork>,
    /// The commands' memory limit set (from the memory available then: a restore's is
    /// the template's).
    memcg: bool,
}

impl PreparedRoot {
    const NONE: PreparedRoot = PreparedRoot {
        upper: None,
        switched: false,
        network: None,
        memcg: false,
    };
}

/// `Prepare`, in a boot that makes a memory template: mount the image disk read-only at
/// /mnt/lower and read its commonly used files (crate::warm). The image is the same in
/// every restore (the template's key has it), so its mount and page cache are too.
pub fn prepare(lower: &DiskSpec) -> Result<(), String> {
    let t0 = Instant::now();
    let dev = find_disk(lower)?;
    sys::flush_block_device(&dev);
    fs::create_dir_all("/mnt/lower").map_err(|e| format!("mkdir /mnt/lower: {e}"))?;
    mount_any(&dev, "/mnt/lower", &lower.fstype, libc::MS_RDONLY)?;
    *PREPARED_LOWER.lock().unwrap_or_else(|e| e.into_inner()) = Some(lower.clone());
    let bytes = crate::warm::warm(std::path::Path::new("/mnt/lower"));
    crate::log(&format!(
        "prepared in {} ms: image disk mounted, {bytes} bytes of its files read",
        t0.elapsed().as_millis()
    ));
    Ok(())
}

/// `PrepareRoot`, after `Prepare`, in a boot that makes a memory template for new
/// sandboxes: mount the writable disk (nothing on it yet) and the overlay root, write them
/// out, switch to that root and configure the NIC, so that a restore's bootstrap does
/// none of it. Whatever step fails, the bootstrap does it and what follows.
pub fn prepare_root(upper: &DiskSpec, network: Option<&GuestNetwork>) -> Result<(), String> {
    let t0 = Instant::now();
    let mut prepared = PREPARED_ROOT.lock().unwrap_or_else(|e| e.into_inner());
    let lower = PREPARED_LOWER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    if !lower || prepared.upper.is_some() {
        return Err("the image disk is not prepared, or the root is already".into());
    }
    if let Err(e) = mount_upper_and_root(upper) {
        // Nothing of a sandbox is on the disk yet: what was mounted goes, and the
        // bootstrap mounts it as usual.
        let _ = sys::unmount("/newroot");
        let _ = sys::unmount("/mnt/upper");
        return Err(e);
    }
    sys::sync_fs("/mnt/upper");
    prepared.upper = Some(upper.clone());
    switch_root()?;
    prepared.switched = true;
    if let Some(n) = network {
        crate::net::configure(n)?;
        crate::net::write_files(n);
        prepared.network = Some(n.clone());
    }
    crate::memcg::setup();
    prepared.memcg = true;
    crate::log(&format!("root prepared in {} ms", t0.elapsed().as_millis()));
    Ok(())
}

/// The writable disk at /mnt/upper and the overlay root at /newroot (over /mnt/lower).
fn mount_upper_and_root(spec: &DiskSpec) -> Result<(), String> {
    let upper = find_disk(spec)?;
    sys::flush_block_device(&upper);
    for d in ["/mnt/upper", "/newroot"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    sys::mount(&upper, "/mnt/upper", &spec.fstype, libc::MS_NOATIME, "")?;
    for d in ["/mnt/upper/data", "/mnt/upper/work"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    sys::mount(
        "overlay",
        "/newroot",
        "overlay",
        0,
        "lowerdir=/mnt/lower,upperdir=/mnt/upper/data,workdir=/mnt/upper/work",
    )
}

/// Carries the kernel filesystems over, then makes /newroot the root.
fn switch_root() -> Result<(), String> {
    for d in ["dev", "proc", "sys"] {
        let target = format!("/newroot/{d}");
        fs::create_dir_all(&target).map_err(|e| format!("mkdir {target}: {e}"))?;
        sys::mount(&format!("/{d}"), &target, "", libc::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| e.to_string())?;
    sys::mount(".", "/", "", libc::MS_MOVE, "")?;
    sys::chroot_here()?;

    let _ = fs::create_dir_all("/dev/pts");
    let _ = sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    let _ = fs::create_dir_all("/dev/shm");
    let _ = sys::mount(
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    let _ = fs::create_dir_all("/tmp");
    Ok(())
}

/// Returns the base environment of every command.
pub fn bootstrap(b: &Bootstrap) -> Result<Vec<(String, String)>, String> {
    let t0 = Instant::now();
    let mut steps: Vec<(&str, Duration)> = Vec::new();
    let mut last = t0;
    let mut mark = |step: &'static str| {
        let now = Instant::now();
        steps.push((step, now - last));
        last = now;
    };
    sys::set_time(b.time_unix_ms);
    // Credited and reseeded at once: a guest restored from a memory template must not
    // go on from the template's random state (writing to /dev/urandom only mixes).
    if !sys::add_entropy_and_reseed(&b.entropy) {
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/urandom") {
            let _ = f.write_all(&b.entropy);
        }
    }
    if !b.hostname.is_empty() {
        sys::set_hostname(&b.hostname)?;
    }

    // Host directories travel over virtiofs: its modules are loaded only when needed.
    let virtiofs = matches!(b.root.lower, LowerSpec::Virtiofs { .. })
        || b.mounts.iter().any(|m| m.fstype == "virtiofs");
    if virtiofs {
        sys::load_modules("/etc/msb/modules.virtiofs");
    }
    mark("clock, entropy, hostname");
    let prepared_root = std::mem::replace(
        &mut *PREPARED_ROOT.lock().unwrap_or_else(|e| e.into_inner()),
        PreparedRoot::NONE,
    );
    match (&b.network, &prepared_root.network) {
        // Only the NIC's settings count: the host's address and DNS go into files below.
        (Some(n), Some(p)) if crate::net::same_nic(n, p) => {}
        (Some(n), prepared) => {
            sys::load_modules("/etc/msb/modules.net");
            if prepared.is_some() {
                // Configured as the template's sandbox: this one's is another.
                crate::net::reconfigure(n)?;
            } else {
                crate::net::configure(n)?;
            }
        }
        (None, Some(_)) => crate::net::down()?,
        (None, None) => {}
    }
    mark(if prepared_root.network.is_some() {
        "network (prepared)"
    } else {
        "network"
    });
    if let Some(p) = &prepared_root.upper {
        // Mounted before the save: it cannot be unmounted here (the disk under it may be
        // another one by now, and an unmount writes to it). Never happens in our layouts.
        if *p != b.root.upper || !matches!(&b.root.lower, LowerSpec::Disk(_)) {
            return Err(format!(
                "the root was prepared on another disk ({}) than the bootstrap's ({})",
                p.serial, b.root.upper.serial
            ));
        }
    }
    let prepared_lower = PREPARED_LOWER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let stale_lower = prepared_lower.is_some();
    let prepared =
        prepared_lower.filter(|p| matches!(&b.root.lower, LowerSpec::Disk(spec) if spec == p));
    if prepared.is_none() {
        if prepared_root.upper.is_some() {
            return Err("the root was prepared over another image".into());
        }
        if stale_lower {
            // Prepared for another disk (not in a layout of ours): that mount goes first.
            let _ = sys::unmount("/mnt/lower");
        }
    }
    if prepared_root.upper.is_none() {
        fs::create_dir_all("/mnt/lower").map_err(|e| format!("mkdir /mnt/lower: {e}"))?;
        match &b.root.lower {
            LowerSpec::Disk(_) if prepared.is_some() => {}
            LowerSpec::Disk(spec) => {
                let lower = find_disk(spec)?;
                sys::flush_block_device(&lower);
                mount_any(&lower, "/mnt/lower", &spec.fstype, libc::MS_RDONLY)?;
            }
            LowerSpec::Virtiofs { tag } => {
                sys::mount(tag, "/mnt/lower", "virtiofs", libc::MS_RDONLY, "")?
            }
        }
        mount_upper_and_root(&b.root.upper)?;
    }
    mark(match (prepared.is_some(), prepared_root.upper.is_some()) {
        (_, true) => "disks (prepared)",
        (true, false) => "disks (image prepared)",
        _ => "disks",
    });
    if !prepared_root.switched {
        switch_root()?;
    }
    mark("root switch");
    if !prepared_root.memcg {
        crate::memcg::setup();
    }
    mark("memory cgroup");

    for m in &b.mounts {
        mount_extra(m)?;
    }
    if let Some(n) = &b.network {
        if prepared_root.network.as_ref() != Some(n) {
            crate::net::write_files(n);
        }
    }

    if let Some(w) = &b.workdir {
        fs::create_dir_all(w).map_err(|e| format!("workdir {w}: {e}"))?;
    }

    let mut base: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), b.hostname.clone()),
    ];
    if let Some(pem) = &b.ca_cert_pem {
        base.extend(crate::trust::install_ca(std::path::Path::new("/"), pem)?);
    }
    mark("volumes, files, trust");
    let parts: Vec<String> = steps
        .iter()
        .map(|(s, d)| format!("{s} {}", d.as_millis()))
        .collect();
    crate::log(&format!(
        "bootstrap in {} ms: {} (ms)",
        t0.elapsed().as_millis(),
        parts.join(", ")
    ));
    Ok(crate::env::merge(&base, &b.env))
}

/// The disks seen before the hello, (serial, /sys/block name): a restore's are the
/// template's (same layout), and a look at one serial file is cheaper than a scan.
static DISKS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Notes the disks there are now (before the hello: nothing sandbox-specific).
pub fn index_disks() {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return;
    };
    let found: Vec<(String, String)> = rd
        .flatten()
        .filter_map(|e| {
            let serial = fs::read_to_string(e.path().join("serial")).ok()?;
            Some((
                serial.trim().to_string(),
                e.file_name().to_string_lossy().into_owned(),
            ))
        })
        .collect();
    *DISKS.lock().unwrap_or_else(|e| e.into_inner()) = found;
}

/// The /dev node of the virtio disk whose serial is `spec.serial`.
fn find_disk(spec: &DiskSpec) -> Result<String, String> {
    let known = DISKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(serial, _)| *serial == spec.serial)
        .map(|(_, name)| name.clone());
    if let Some(name) = known {
        let serial = fs::read_to_string(format!("/sys/block/{name}/serial")).unwrap_or_default();
        if serial.trim() == spec.serial {
            return Ok(format!("/dev/{name}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(rd) = fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let serial = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if serial.trim() == spec.serial {
                    return Ok(format!("/dev/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no disk with serial '{}'", spec.serial));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Mount a block device; fstype "auto" tries each filesystem the kernel knows.
fn mount_any(dev: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), String> {
    if fstype != "auto" {
        return sys::mount(dev, target, fstype, flags, "");
    }
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let candidates: Vec<&str> = known
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(str::trim)
        .collect();
    for fs in &candidates {
        if sys::mount(dev, target, fs, flags, "").is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "{dev}: no filesystem the guest kernel knows ({}) could mount it",
        candidates.join(", ")
    ))
}

/// A volume: virtiofs share, tmpfs, or a disk volume (any other fstype: the virtio disk
/// whose serial is `source`), at an absolute guest path created if missing.
fn mount_extra(m: &GuestMount) -> Result<(), String> {
    if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
        return Err(format!(
            "volume target {} must be an absolute path",
            m.target
        ));
    }
    fs::create_dir_all(&m.target).map_err(|e| format!("volume {}: {e}", m.target))?;
    let flags = if m.readonly { libc::MS_RDONLY } else { 0 } | libc::MS_NOSUID | libc::MS_NODEV;
    match m.fstype.as_str() {
        "virtiofs" | "tmpfs" => sys::mount(&m.source, &m.target, &m.fstype, flags, &m.options),
        fstype
            if !fstype.is_empty()
                && fstype
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            let dev = find_disk(&DiskSpec {
                serial: m.source.clone(),
                fstype: fstype.to_string(),
            })?;
            mount_any(&dev, &m.target, fstype, flags)
                .map_err(|e| format!("volume {}: {e}", m.target))
        }
        other => Err(format!("volume {}: unsupported type {other}", m.target)),
    }
}
