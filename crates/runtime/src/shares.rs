//! Host directories shared with the guest over virtiofs: one virtiofsd per directory,
//! started before QEMU and gone with msb-runtime (PDEATHSIG). A read-only share is made
//! read-only on the host side too (a private mount namespace with a read-only bind of the
//! directory), so even a guest that remounts it cannot write to the host.

use msb_contract::ErrorCode;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use msb_contract::MountKind;
use msb_protocol::GuestMount;
use tokio::process::{Child, Command};

use crate::config::Config;
use crate::disks::Lower;
use crate::error::RtError;

/// virtiofs tag of a directory image.
pub const ROOT_TAG: &str = "msbroot";

/// virtiofsd from Debian's qemu-system-common (MSB_VIRTIOFSD overrides).
fn virtiofsd() -> Result<PathBuf, RtError> {
    let p = std::env::var("MSB_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/usr/lib/qemu/virtiofsd".into());
    if p.is_file() {
        Ok(p)
    } else {
        Err(RtError::runtime(format!(
            "virtiofsd not found at {} (needed for volumes and directory images): install qemu-system-common",
            p.display()
        )))
    }
}

pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    pub readonly: bool,
    pub socket: PathBuf,
}

/// The virtiofs shares of a sandbox (a directory image, bind and named volumes; sockets in
/// `run_dir`) and what the guest mounts (those and tmpfs volumes). Creates the directory
/// of a named volume that does not exist yet.
pub fn plan(
    cfg: &Config,
    run_dir: &Path,
    lower: &Lower,
) -> Result<(Vec<Share>, Vec<GuestMount>), std::io::Error> {
    let mut shares = Vec::new();
    let mut mounts = Vec::new();
    let mut share = |tag: String, dir: PathBuf, readonly: bool| {
        let socket = run_dir.join(format!("{tag}.sock"));
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
    for (i, m) in cfg.mounts.iter().enumerate() {
        let tag = format!("msbvol{i}");
        let source = m.source.clone().unwrap_or_default();
        match m.kind {
            MountKind::Bind => share(tag.clone(), PathBuf::from(&source), m.readonly),
            MountKind::Named => {
                let dir = cfg.msb_home.join("volumes").join(&source);
                fs::create_dir_all(&dir)?;
                share(tag.clone(), dir, m.readonly);
            }
            MountKind::Tmpfs => {}
        }
        mounts.push(match m.kind {
            MountKind::Tmpfs => GuestMount {
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
                target: m.guest_path.clone(),
                readonly: m.readonly,
                options: m.size_mib.map(|s| format!("size={s}m")).unwrap_or_default(),
            },
            MountKind::Bind | MountKind::Named => GuestMount {
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

/// Start virtiofsd for each share and wait until its socket is there.
pub async fn start(shares: &[Share], log: &Path) -> Result<Vec<Child>, RtError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RtError::new(
            ErrorCode::InvalidConfig,
            "volumes and directory images need virtiofs, which needs root here; use a disk image, an OCI image or a tmpfs volume",
        ));
    }
    let bin = virtiofsd()?;
    let mut children = Vec::new();
    for s in shares {
        let _ = std::fs::remove_file(&s.socket);
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg(format!("--socket-path={}", s.socket.display()))
            .arg("-o")
            .arg(format!("source={}", s.dir.display()))
            .args([
                "-o",
                "cache=auto",
                "-o",
                "sandbox=chroot",
                "-o",
                "log_level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            cmd.stderr(f);
        }
        let dir = std::ffi::CString::new(s.dir.as_os_str().as_encoded_bytes())
            .map_err(|e| RtError::runtime(e.to_string()))?;
        let readonly = s.readonly;
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if readonly {
                    let none = c"none".as_ptr();
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            none,
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            dir.as_ptr(),
                            dir.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            none,
                            dir.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = Command::from(cmd).kill_on_drop(true).spawn().map_err(|e| {
            RtError::runtime(format!(
                "cannot start virtiofsd for {}: {e}",
                s.dir.display()
            ))
        })?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (s, c) in shares.iter().zip(children.iter_mut()) {
        while !s.socket.exists() {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(RtError::runtime(format!(
                    "virtiofsd for {} exited ({st}); see {}",
                    s.dir.display(),
                    log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(RtError::runtime(format!(
                    "virtiofsd for {} did not start",
                    s.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(children)
}
