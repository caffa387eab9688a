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

/// Where virtiofsd is installed when MSB_VIRTIOFSD does not say: Debian 12's
/// qemu-system-common, then the standalone (Rust) virtiofsd of newer distros.
pub const VIRTIOFSD_PATHS: [&str; 3] = [
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
];

/// virtiofsd: MSB_VIRTIOFSD, else the first of [`VIRTIOFSD_PATHS`] that exists.
fn virtiofsd() -> Result<PathBuf, RtError> {
    let p = match std::env::var("MSB_VIRTIOFSD") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => VIRTIOFSD_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| VIRTIOFSD_PATHS[0].into()),
    };
    if p.is_file() {
        Ok(p)
    } else {
        Err(RtError::runtime(format!(
            "virtiofsd not found at {} (needed for volumes and directory images): install qemu-system-common, or set MSB_VIRTIOFSD; run `msb doctor` to check the host",
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

/// A disk volume (`$MSB_HOME/volumes/<name>/disk.raw` or `disk.qcow2`, made by the SDK's
/// `Volume.builder(name).disk()`), attached as one more virtio disk whose serial the guest
/// finds it by.
pub struct VolumeDisk {
    pub serial: String,
    pub path: PathBuf,
    pub format: &'static str,
    pub readonly: bool,
}

/// Largest volume metadata file read (the SDK writes a few hundred bytes).
const MAX_VOLUME_META: u64 = 256 * 1024;

/// The image and its format and filesystem when the named volume `name` is a disk volume
/// (its metadata, `volumes/.meta/<name>.json`, written by the SDK, says so); `None` for a
/// directory volume. The image must be a regular file (a link is refused, not followed).
fn disk_volume(
    msb_home: &Path,
    name: &str,
) -> Result<Option<(PathBuf, &'static str, String)>, std::io::Error> {
    use std::io::{Error, ErrorKind, Read};
    let meta = msb_home
        .join("volumes")
        .join(".meta")
        .join(format!("{name}.json"));
    let mut text = String::new();
    match fs::File::open(&meta) {
        Ok(f) => {
            f.take(MAX_VOLUME_META).read_to_string(&mut text)?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None); // unreadable metadata: as the SDK, a directory volume
    };
    if v.get("kind").and_then(|k| k.as_str()) != Some("disk") {
        return Ok(None);
    }
    let (format, file) = match v.get("diskFormat").and_then(|f| f.as_str()) {
        Some("qcow2") => ("qcow2", "disk.qcow2"),
        _ => ("raw", "disk.raw"),
    };
    let fstype = match v.get("diskFstype").and_then(|f| f.as_str()) {
        Some(t)
            if !t.is_empty()
                && t.len() <= 16
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            t.to_string()
        }
        _ => "auto".to_string(),
    };
    let path = msb_home.join("volumes").join(name).join(file);
    let st = fs::symlink_metadata(&path)?;
    if !st.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "disk volume {name}: {} is not a regular file",
                path.display()
            ),
        ));
    }
    Ok(Some((path, format, fstype)))
}

/// What [`plan`] gives: the virtiofs shares, the guest's mounts, the disk volumes.
pub type Planned = (Vec<Share>, Vec<GuestMount>, Vec<VolumeDisk>);

/// The virtiofs shares of a sandbox (a directory image, bind and named volumes; sockets in
/// `run_dir`), the disk volumes it attaches, and what the guest mounts (those and tmpfs
/// volumes). Creates the directory of a named volume that does not exist yet.
pub fn plan(cfg: &Config, run_dir: &Path, lower: &Lower) -> Result<Planned, std::io::Error> {
    let mut shares = Vec::new();
    let mut mounts = Vec::new();
    let mut disks = Vec::new();
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
                if let Some((path, format, fstype)) = disk_volume(&cfg.msb_home, &source)? {
                    disks.push(VolumeDisk {
                        serial: tag.clone(),
                        path,
                        format,
                        readonly: m.readonly,
                    });
                    mounts.push(GuestMount {
                        fstype,
                        source: tag,
                        target: m.guest_path.clone(),
                        readonly: m.readonly,
                        options: String::new(),
                    });
                    continue;
                }
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
    Ok((shares, mounts, disks))
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

#[cfg(test)]
mod tests {
    use super::disk_volume;
    use std::fs;

    fn home(tag: &str) -> std::path::PathBuf {
        let h = std::env::temp_dir().join(format!("msb-shares-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&h);
        fs::create_dir_all(h.join("volumes/.meta")).unwrap();
        h
    }

    #[test]
    fn disk_volumes_are_found_from_their_metadata() {
        let h = home("meta");
        // No metadata, or a directory volume's: a share.
        fs::create_dir_all(h.join("volumes/plain")).unwrap();
        assert!(disk_volume(&h, "plain").unwrap().is_none());
        fs::write(h.join("volumes/.meta/dir.json"), r#"{"kind":"dir"}"#).unwrap();
        assert!(disk_volume(&h, "dir").unwrap().is_none());
        // A disk volume: its image, format and filesystem.
        fs::create_dir_all(h.join("volumes/d1")).unwrap();
        fs::write(h.join("volumes/d1/disk.qcow2"), b"QFI").unwrap();
        fs::write(
            h.join("volumes/.meta/d1.json"),
            r#"{"kind":"disk","diskFormat":"qcow2","diskFstype":"ext4"}"#,
        )
        .unwrap();
        let (path, format, fstype) = disk_volume(&h, "d1").unwrap().unwrap();
        assert_eq!(path, h.join("volumes/d1/disk.qcow2"));
        assert_eq!((format, fstype.as_str()), ("qcow2", "ext4"));
        // A hostile filesystem name falls back to "auto"; an image that is a link is refused.
        fs::create_dir_all(h.join("volumes/d2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", h.join("volumes/d2/disk.raw")).unwrap();
        fs::write(
            h.join("volumes/.meta/d2.json"),
            r#"{"kind":"disk","diskFstype":"ext4,dax"}"#,
        )
        .unwrap();
        assert!(disk_volume(&h, "d2").is_err());
        fs::remove_file(h.join("volumes/d2/disk.raw")).unwrap();
        fs::write(h.join("volumes/d2/disk.raw"), b"").unwrap();
        let (_, format, fstype) = disk_volume(&h, "d2").unwrap().unwrap();
        assert_eq!((format, fstype.as_str()), ("raw", "auto"));
        // A disk volume whose image is gone fails the boot.
        fs::remove_file(h.join("volumes/d2/disk.raw")).unwrap();
        assert!(disk_volume(&h, "d2").is_err());
        let _ = fs::remove_dir_all(&h);
    }
}
