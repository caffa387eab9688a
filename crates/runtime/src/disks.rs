//! Root disks: the read-only image disk (lower) and the sandbox's writable disk (upper).

use msb_contract::ErrorCode;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::RtError;

/// Size of a new upper disk. The file is sparse: only written blocks use host space.
const UPPER_SIZE: u64 = 4 << 30;

/// The read-only image, as the guest will get it.
pub enum Lower {
    Disk {
        path: PathBuf,
        fstype: String,
        format: &'static str,
    },
    /// A host directory, shared read-only over virtiofs.
    Dir(PathBuf),
}

/// Work out what `image` is. `fstype` is the caller's word for a disk whose filesystem
/// cannot be detected (qcow2, or a filesystem without a known magic).
pub async fn prepare_lower(
    image: &Path,
    fstype: Option<&str>,
    sandbox_dir: &Path,
) -> Result<Lower, RtError> {
    let meta = fs::metadata(image).map_err(|e| {
        RtError::new(
            ErrorCode::ImageNotFound,
            format!("image {}: {e}", image.display()),
        )
    })?;
    if meta.is_dir() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(Lower::Dir(image.to_path_buf()));
        }
        // virtiofsd needs root: without it, copy the directory into an ext4 image
        // (mke2fs -d keeps modes; owners become the invoking user's).
        let out = sandbox_dir.join("lower.ext4");
        if !out.exists() {
            let size_mib = dir_size(image) / (1 << 20) * 13 / 10 + 64;
            run_mke2fs(
                &["-q", "-F", "-t", "ext4", "-d"],
                &[image.as_os_str(), out.as_os_str()],
                Some(size_mib),
            )
            .await?;
        }
        return Ok(Lower::Disk {
            path: out,
            fstype: "ext4".into(),
            format: "raw",
        });
    }
    let mut head = [0u8; 4];
    fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| {
            RtError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "image {}: cannot read it as a disk image: {e}",
                    image.display()
                ),
            )
        })?;
    if head == *b"QFI\xfb" {
        let fstype = fstype.unwrap_or("auto").to_string();
        return Ok(Lower::Disk {
            path: image.to_path_buf(),
            fstype,
            format: "qcow2",
        });
    }
    let fstype = match (detect_fstype(image)?, fstype) {
        (_, Some(given)) => given.to_string(),
        (Some(found), None) => found,
        (None, None) => {
            return Err(RtError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "image {}: not a directory and not a disk with a filesystem this version can detect (ext4, ext2/3, erofs); name it with imageWith(i => i.disk(path).fstype(...))",
                    image.display()
                ),
            ))
        }
    };
    Ok(Lower::Disk {
        path: image.to_path_buf(),
        fstype,
        format: "raw",
    })
}

/// Identify a raw disk's filesystem from its superblock magic.
pub fn detect_fstype(path: &Path) -> Result<Option<String>, RtError> {
    let mut head = vec![0u8; 2048];
    let mut f = fs::File::open(path).map_err(|e| {
        RtError::new(
            ErrorCode::ImageNotFound,
            format!("image {}: {e}", path.display()),
        )
    })?;
    let n = f.read(&mut head)?;
    head.truncate(n);
    if head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
        return Ok(Some("ext4".into()));
    }
    if head.len() >= 1028 && head[1024..1028] == [0xE2, 0xE1, 0xF5, 0xE0] {
        return Ok(Some("erofs".into()));
    }
    Ok(None)
}

/// Create the sparse file for a fresh upper disk (fast: QEMU can open it at once).
pub fn create_upper_file(path: &Path) -> Result<(), RtError> {
    let f = fs::File::create(path)?;
    f.set_len(UPPER_SIZE)?;
    Ok(())
}

/// Put an empty ext4 filesystem on the upper disk. Runs while the guest boots: the agent
/// does not touch disks before bootstrap, which waits for this.
pub async fn format_upper(path: &Path) -> Result<(), RtError> {
    run_mke2fs(
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "msb-upper",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ],
        &[path.as_os_str()],
        None,
    )
    .await
}

/// mke2fs from PATH, else from the sbin directories (a non-root user's PATH often has
/// none of them, and Debian puts mke2fs in /usr/sbin).
fn mke2fs_path() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join("mke2fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "mke2fs".into())
}

async fn run_mke2fs(
    flags: &[&str],
    paths: &[&std::ffi::OsStr],
    size_mib: Option<u64>,
) -> Result<(), RtError> {
    let mut cmd = Command::new(mke2fs_path());
    cmd.args(flags).args(paths);
    if let Some(s) = size_mib {
        cmd.arg(format!("{s}M"));
    }
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|e| {
        RtError::runtime(format!(
            "cannot run mke2fs ({e}); install e2fsprogs (apt-get install e2fsprogs); run `msb doctor` to check the host"
        ))
    })?;
    if !out.status.success() {
        return Err(RtError::runtime(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().max(4096);
        }
    }
    total
}
