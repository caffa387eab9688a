//! Bootstrap: set clock, entropy and hostname, assemble the root filesystem
//! (overlay of the read-only image disk and the sandbox's writable disk) and switch to it.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use msb_protocol::{Bootstrap, DiskSpec};

use crate::sys;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Returns the base environment of every command.
pub fn bootstrap(b: &Bootstrap) -> Result<Vec<(String, String)>, String> {
    sys::set_time(b.time_unix_ms);
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/urandom") {
        let _ = f.write_all(&b.entropy);
    }
    if !b.hostname.is_empty() {
        sys::set_hostname(&b.hostname)?;
    }

    let lower = find_disk(&b.root.lower)?;
    let upper = find_disk(&b.root.upper)?;
    sys::flush_block_device(&lower);
    sys::flush_block_device(&upper);

    for d in ["/mnt/lower", "/mnt/upper", "/newroot"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    sys::mount(
        &lower,
        "/mnt/lower",
        &b.root.lower.fstype,
        libc::MS_RDONLY,
        "",
    )?;
    sys::mount(
        &upper,
        "/mnt/upper",
        &b.root.upper.fstype,
        libc::MS_NOATIME,
        "",
    )?;
    for d in ["/mnt/upper/data", "/mnt/upper/work"] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    sys::mount(
        "overlay",
        "/newroot",
        "overlay",
        0,
        "lowerdir=/mnt/lower,upperdir=/mnt/upper/data,workdir=/mnt/upper/work",
    )?;

    // Carry the kernel filesystems over, then make /newroot the root.
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

    if let Some(w) = &b.workdir {
        fs::create_dir_all(w).map_err(|e| format!("workdir {w}: {e}"))?;
    }

    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("HOSTNAME".into(), b.hostname.clone()),
    ];
    for (k, v) in &b.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    Ok(env)
}

/// The /dev node of the virtio disk whose serial is `spec.serial`.
fn find_disk(spec: &DiskSpec) -> Result<String, String> {
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
