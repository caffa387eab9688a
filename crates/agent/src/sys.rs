//! Thin wrappers over the syscalls PID 1 needs.

use std::ffi::CString;
use std::fs;
use std::time::{Duration, Instant};

use crate::log;

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    let fptr = if fstype.is_empty() {
        std::ptr::null()
    } else {
        f.as_ptr()
    };
    let dptr = if data.is_empty() {
        std::ptr::null()
    } else {
        d.as_ptr() as *const libc::c_void
    };
    // SAFETY: every pointer is a valid NUL-terminated string or null.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), fptr, flags, dptr) };
    if rc != 0 {
        return Err(format!("mount {fstype} {src} on {target}: {}", errno()));
    }
    Ok(())
}

/// proc, sys and dev for the initramfs stage. EBUSY (already mounted) is fine.
pub fn mount_early() -> Result<(), String> {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        let _ = fs::create_dir_all(dir);
        if let Err(e) = mount(src, dir, fs, libc::MS_NOSUID, "") {
            if !e.contains("busy") {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Load the kernel modules listed (one path per line, in dependency order).
pub fn load_modules(list: &str) {
    let Ok(text) = fs::read_to_string(list) else {
        return;
    };
    let params = cstr("");
    for path in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let image = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                log(&format!("module {path}: {e}"));
                continue;
            }
        };
        // SAFETY: image is a live buffer of the given length; params is NUL-terminated.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len() as libc::c_ulong,
                params.as_ptr(),
            )
        };
        if rc != 0 {
            let e = errno();
            if e.raw_os_error() != Some(libc::EEXIST) {
                log(&format!("module {path}: {e}"));
            }
        }
    }
}

/// Adds `seed` to the kernel's pool, credited (RNDADDENTROPY), then reseeds the CRNG from
/// it at once (RNDRESEEDCRNG). False when either ioctl failed.
pub fn add_entropy_and_reseed(seed: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") else {
        return false;
    };
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // SAFETY: the buffer is a valid rand_pool_info of buf_size bytes; the fd is open.
    let added = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } == 0;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } == 0;
    added && reseeded
}

pub fn set_time(unix_ms: u64) {
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
}

pub fn set_hostname(name: &str) -> Result<(), String> {
    // SAFETY: pointer and length describe `name`.
    let rc = unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) };
    if rc != 0 {
        return Err(format!("sethostname: {}", errno()));
    }
    Ok(())
}

/// Flush a block device's buffers: after a snapshot restore the disk behind it may differ.
/// Unmount `target` (Err when nothing is mounted there).
pub fn unmount(target: &str) -> Result<(), String> {
    let t = cstr(target);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), 0) } != 0 {
        return Err(format!(
            "umount {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes out the filesystem mounted at `path` (data, metadata, journal); best effort.
pub fn sync_fs(path: &str) {
    if let Ok(f) = fs::File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on an open fd.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

pub fn flush_block_device(dev: &str) {
    if let Ok(f) = fs::File::open(dev) {
        use std::os::fd::AsRawFd;
        const BLKFLSBUF: libc::c_ulong = 0x1261;
        // SAFETY: ioctl on an open block device fd with no argument.
        unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) };
    }
}

pub fn chroot_here() -> Result<(), String> {
    let dot = cstr(".");
    // SAFETY: valid C strings.
    unsafe {
        if libc::chroot(dot.as_ptr()) != 0 {
            return Err(format!("chroot: {}", errno()));
        }
        libc::chdir(cstr("/").as_ptr());
    }
    Ok(())
}

/// PIDs of user processes (everything but PID 1 and kernel threads).
fn user_processes() -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == 1 {
                continue;
            }
            // Kernel threads have an empty cmdline.
            if fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| !c.is_empty())
                .unwrap_or(false)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGTERM everything, give it a moment, SIGKILL the rest, sync.
pub fn shutdown() {
    // SAFETY: kill(-1) signals every process but PID 1.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !user_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
}

/// Ends the VM. QEMU runs with -no-reboot and the kernel with reboot=t, so a reboot
/// request makes QEMU exit whether or not ACPI power-off works.
pub fn power_off() -> ! {
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The guest's figures for `Metrics`: memory from /proc/meminfo, disk I/O of the virtio
/// disks from /proc/diskstats, network from /proc/net/dev (all but loopback).
pub fn guest_stats() -> msb_protocol::GuestStats {
    let mut s = msb_protocol::GuestStats::default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    for line in meminfo.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "MemTotal:" => s.mem_total_bytes = v * 1024,
            "MemAvailable:" => s.mem_available_bytes = v * 1024,
            _ => {}
        }
    }
    // Fields: major minor name reads merged sectors_read ms writes merged sectors_written ...
    let disks = fs::read_to_string("/proc/diskstats").unwrap_or_default();
    for line in disks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !f[2].starts_with("vd") || f[2][2..].chars().any(|c| c.is_ascii_digit())
        {
            continue;
        }
        s.disk_read_bytes += f[5].parse::<u64>().unwrap_or(0) * 512;
        s.disk_write_bytes += f[9].parse::<u64>().unwrap_or(0) * 512;
    }
    let net = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    for line in net.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            s.net_rx_bytes += f[0];
            s.net_tx_bytes += f[8];
        }
    }
    s
}
