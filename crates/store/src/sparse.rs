//! Sparse disk files: copying a sandbox's writable disk (4 GiB apparent, mostly holes)
//! into a snapshot and back, and a digest of its content that does not read the holes.
//!
//! The files were written by a guest: their content is data, never trusted for a path.
//! The source is opened without following a link and must be a regular file; the copy
//! goes to a new temporary file in the destination's directory, renamed over it once
//! complete, so a copy cut short never leaves a half file under the final name.

use std::ffi::CString;
use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Largest file copied or hashed (the upper disk is 4 GiB; volumes go up to 1 TiB).
pub const MAX_SPARSE_FILE: u64 = 1 << 40;

/// Chunk of the content digest: a chunk of zeros counts as a hole, wherever its bytes
/// were allocated, so the digest depends on the content only.
pub const DIGEST_CHUNK: u64 = 1 << 20;

/// Name of [`sparse_sha256`]'s algorithm, as recorded next to its digest.
pub const SPARSE_SHA256: &str = "msb-sparse-sha256-v1";

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// Opens a regular file for reading without following a link in its last component.
pub fn open_regular_nofollow(path: &Path) -> Result<File> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path; the fd is owned by the File from here on.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    let f = unsafe { File::from_raw_fd(fd) };
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if m.size() > MAX_SPARSE_FILE {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is larger than 1 TiB", path.display()),
        ));
    }
    Ok(f)
}

/// The data extents of `f` (offset, length), from SEEK_DATA/SEEK_HOLE. A filesystem
/// without them reports the whole file as data.
pub fn data_extents(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            if e.raw_os_error() == Some(libc::EINVAL) && out.is_empty() && pos == 0 {
                return Ok(vec![(0, size)]); // no SEEK_DATA here
            }
            return Err(e);
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        if hole > data {
            out.push((data, hole - data));
        }
        pos = hole;
    }
    Ok(out)
}

/// The data extents of the regular file at `path` (not a link), and its apparent size.
pub fn file_extents(path: &Path) -> Result<(u64, Vec<(u64, u64)>)> {
    let f = open_regular_nofollow(path)?;
    let size = f.metadata()?.size();
    Ok((size, data_extents(&f, size)?))
}

/// Copies `src` to `dst` keeping holes: a reflink (FICLONE) where the filesystem can,
/// else its data extents only. `dst` is replaced atomically (temp file + rename) and
/// must not be a link. Returns the apparent size.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<u64> {
    let from = open_regular_nofollow(src)?;
    let size = from.metadata()?.size();
    let dir = dst
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "destination has no directory"))?;
    let name = dst
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "destination has no name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let c = cstr(&tmp)?;
    // SAFETY: NUL-terminated path; O_EXCL|O_NOFOLLOW: never through a planted link.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    let to = unsafe { File::from_raw_fd(fd) };
    let done = (|| -> Result<()> {
        // SAFETY: FICLONE takes the source fd as its argument.
        let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
        if !cloned {
            to.set_len(size)?;
            let mut buf = vec![0u8; 1 << 20];
            for (off, len) in data_extents(&from, size)? {
                let mut at = off;
                let end = off + len;
                while at < end {
                    let n = ((end - at) as usize).min(buf.len());
                    from.read_exact_at(&mut buf[..n], at)?;
                    // Zero runs inside allocated extents stay holes in the copy.
                    if buf[..n].iter().any(|&b| b != 0) {
                        to.write_all_at(&buf[..n], at)?;
                    }
                    at += n as u64;
                }
            }
        }
        to.sync_all()?;
        std::fs::rename(&tmp, dst)
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(size)
}

/// The content digest of a sparse file (`msb-sparse-sha256-v1`, "sha256:<hex>"): the
/// file is cut into 1 MiB chunks; each chunk that is not all zeros contributes its
/// index and its sha256; the digest is the sha256 of the apparent size followed by those
/// pairs. Holes are never read, and how the zeros are stored does not matter.
pub fn sparse_sha256(path: &Path) -> Result<String> {
    use ring::digest::{Context, SHA256};
    let f = open_regular_nofollow(path)?;
    let size = f.metadata()?.size();
    let mut outer = Context::new(&SHA256);
    outer.update(b"msb-sparse-sha256-v1\0");
    outer.update(&size.to_le_bytes());
    let mut buf = vec![0u8; DIGEST_CHUNK as usize];
    let mut last_chunk: Option<u64> = None;
    for (off, len) in data_extents(&f, size)? {
        let first = off / DIGEST_CHUNK;
        let end = (off + len).div_ceil(DIGEST_CHUNK);
        for chunk in first..end {
            if last_chunk.is_some_and(|l| chunk <= l) {
                continue; // already hashed as part of the previous extent
            }
            last_chunk = Some(chunk);
            let start = chunk * DIGEST_CHUNK;
            let n = (size - start).min(DIGEST_CHUNK) as usize;
            f.read_exact_at(&mut buf[..n], start)?;
            if buf[..n].iter().all(|&b| b == 0) {
                continue;
            }
            outer.update(&chunk.to_le_bytes());
            outer.update(ring::digest::digest(&SHA256, &buf[..n]).as_ref());
        }
    }
    let hex: String = outer
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse_file(
        dir: &Path,
        name: &str,
        size: u64,
        writes: &[(u64, &[u8])],
    ) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in writes {
            f.write_all_at(bytes, *at).unwrap();
        }
        p
    }

    #[test]
    fn a_copy_has_the_same_content_and_keeps_the_holes() {
        let d = tempfile::tempdir().unwrap();
        let size = 64 << 20;
        let src = sparse_file(
            d.path(),
            "src",
            size,
            &[(4096, b"first"), (40 << 20, b"second")],
        );
        let dst = d.path().join("dst");
        assert_eq!(copy_sparse(&src, &dst).unwrap(), size);
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a, b);
        // 64 MiB apparent; only the two written blocks (at most a few MiB) allocated.
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(blocks < 4 << 20, "copy allocates {blocks} bytes");
        assert_eq!(sparse_sha256(&src).unwrap(), sparse_sha256(&dst).unwrap());
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn the_digest_follows_content_not_allocation() {
        let d = tempfile::tempdir().unwrap();
        let holes = sparse_file(d.path(), "holes", 8 << 20, &[(3 << 20, b"x")]);
        // The same content with the zeros written out.
        let mut content = vec![0u8; 8 << 20];
        content[3 << 20] = b'x';
        let dense = d.path().join("dense");
        File::create(&dense).unwrap().write_all(&content).unwrap();
        assert_eq!(
            sparse_sha256(&holes).unwrap(),
            sparse_sha256(&dense).unwrap()
        );
        let other = sparse_file(d.path(), "other", 8 << 20, &[(3 << 20, b"y")]);
        assert_ne!(
            sparse_sha256(&holes).unwrap(),
            sparse_sha256(&other).unwrap()
        );
        let longer = sparse_file(d.path(), "longer", 9 << 20, &[(3 << 20, b"x")]);
        assert_ne!(
            sparse_sha256(&holes).unwrap(),
            sparse_sha256(&longer).unwrap()
        );
        assert!(sparse_sha256(&holes).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn links_and_non_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = sparse_file(d.path(), "real", 4096, &[(0, b"data")]);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(copy_sparse(&link, &d.path().join("out")).is_err());
        assert!(sparse_sha256(&link).is_err());
        assert!(copy_sparse(d.path(), &d.path().join("out")).is_err());
        assert!(!d.path().join("out").exists());
    }
}
