//! Host directories shared with the guest over virtiofs: one virtiofsd per directory,
//! started before QEMU and gone with msb-runtime (PDEATHSIG). A read-only share is made
//! read-only on the host side too (a private mount namespace with a read-only bind of the
//! directory), so even a guest that remounts it cannot write to the host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::RtError;

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

/// Start virtiofsd for each share and wait until its socket is there.
pub async fn start(shares: &[Share], log: &Path) -> Result<Vec<Child>, RtError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RtError::new(
            "invalidConfig",
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
