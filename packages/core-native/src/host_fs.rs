//! Host-side file operations for `copyToHost` / `copyFromHost`, done relative to
//! directory file descriptors and never through a symbolic link.
//!
//! A destination may lie in a directory the guest can write (a bind or named volume):
//! whatever is there may have been made by the guest, and may change between two of our
//! steps. So every step names exactly one component relative to an open directory fd, with
//! `O_NOFOLLOW` (a link is never followed; one in the way of a write is replaced), and
//! modes are set with `fchmod` on the opened fd. Only the caller's own path to the parent
//! of the root is resolved as given.
//!
//! The fds are handed to JavaScript as numbers (Node reads, writes and closes them with
//! `fs.read` / `fs.write` / `fs.close`); every fd is `O_CLOEXEC`.
//!
//! Errors are `"<ERRNO>: <text>"` (e.g. `"ELOOP: ..."`), which the SDK turns into
//! `SandboxFsOpsError`s. Tested through the SDK (packages/sdk/test/host-fs.test.ts): a
//! napi cdylib cannot link its own Rust test binary.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use napi::Result;
use napi_derive::napi;

/// What `hostOpenAt` found.
#[napi(object)]
pub struct HostEntry {
    /// "file" | "dir" | "symlink" | "other"
    pub kind: String,
    /// Open fd (read-only) for "file" and "dir"; -1 otherwise.
    pub fd: i32,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// The link's target, for "symlink".
    pub target: Option<String>,
}

/// The parent directory of `path`, opened, and the last component.
#[napi(object)]
pub struct HostParent {
    pub fd: i32,
    pub name: String,
}

fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error().unwrap_or(0) {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ELOOP => "ELOOP",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EMFILE => "EMFILE",
        libc::EXDEV => "EXDEV",
        libc::EDQUOT => "EDQUOT",
        libc::EBUSY => "EBUSY",
        _ => "EIO",
    }
}

fn fail(what: &str, e: io::Error) -> napi::Error {
    napi::Error::from_reason(format!("{}: {what}: {e}", errno_name(&e)))
}

fn invalid(what: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("EINVAL: {what}"))
}

/// One path component: not empty, not `.` or `..`, no `/` or NUL.
fn component(name: &str) -> Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(invalid(format!("not a single file name: {name:?}")));
    }
    CString::new(name).map_err(|_| invalid("a file name contains NUL"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn openat(dirfd: i32, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<i32> {
    loop {
        // SAFETY: a NUL-terminated name; the kernel checks the fd.
        let r = unsafe {
            libc::openat(
                dirfd,
                name.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode as libc::c_uint,
            )
        };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn lstatat(dirfd: i32, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated name, valid out pointer.
    let r = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    match cvt(r) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fstat(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer; the kernel checks the fd.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn is(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn unlinkat(dirfd: i32, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dirfd, name.as_ptr(), 0) }).map(|_| ())
}

fn kind_of(st: &libc::stat) -> &'static str {
    if is(st, libc::S_IFREG) {
        "file"
    } else if is(st, libc::S_IFDIR) {
        "dir"
    } else if is(st, libc::S_IFLNK) {
        "symlink"
    } else {
        "other"
    }
}

/// Open the parent directory of the absolute `path` (resolved as given: it is the
/// caller's own path) and return it with the last component, which the other calls take
/// relative to it without ever following it.
#[napi]
pub fn host_open_parent(path: String) -> Result<HostParent> {
    if !path.starts_with('/') {
        return Err(invalid(format!("not an absolute path: {path:?}")));
    }
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rfind('/') {
        Some(0) => ("/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => return Err(invalid(format!("{path:?} has no last component"))),
    };
    component(name)?;
    let c = CString::new(parent).map_err(|_| invalid("the path contains NUL"))?;
    // SAFETY: NUL-terminated path.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
    .map_err(|e| fail(parent, e))?;
    Ok(HostParent {
        fd,
        name: name.to_string(),
    })
}

/// A real directory `name` in `dirfd`, opened: a missing one is created (mode 0700), a
/// symbolic link in the way is removed first (never followed), another kind of file is
/// `ENOTDIR`. The open itself refuses a link, so a guest swapping the new directory for a
/// link between the two steps gets `ELOOP`/`ENOTDIR`, never a way out.
#[napi]
pub fn host_mkdir_at(dirfd: i32, name: String) -> Result<i32> {
    let c = component(&name)?;
    match lstatat(dirfd, &c).map_err(|e| fail(&name, e))? {
        Some(st) if is(&st, libc::S_IFDIR) => {}
        Some(st) if is(&st, libc::S_IFLNK) => {
            unlinkat(dirfd, &c).map_err(|e| fail(&name, e))?;
            mkdirat(dirfd, &c).map_err(|e| fail(&name, e))?;
        }
        Some(_) => {
            return Err(fail(
                &format!("{name} exists and is not a directory"),
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ))
        }
        None => mkdirat(dirfd, &c).map_err(|e| fail(&name, e))?,
    }
    openat(dirfd, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| fail(&name, e))
}

fn mkdirat(dirfd: i32, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated name.
    match cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), 0o700) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()), // the open below decides
        Err(e) => Err(e),
    }
}

/// A new, empty regular file `name` in `dirfd`, opened for writing (mode 0600 until the
/// caller's `fchmod`). Whatever non-directory was there (a file, a link) is removed
/// first; the file is created with `O_EXCL`, so nothing in the way is ever written through.
#[napi]
pub fn host_create_file_at(dirfd: i32, name: String) -> Result<i32> {
    let c = component(&name)?;
    remove_non_dir(dirfd, &c, &name)?;
    openat(
        dirfd,
        &c,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )
    .map_err(|e| fail(&name, e))
}

/// A symbolic link `name` -> `target` in `dirfd`, replacing a non-directory in the way.
#[napi]
pub fn host_symlink_at(dirfd: i32, target: String, name: String) -> Result<()> {
    let c = component(&name)?;
    let t = CString::new(target).map_err(|_| invalid("a link target contains NUL"))?;
    remove_non_dir(dirfd, &c, &name)?;
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dirfd, c.as_ptr()) })
        .map(|_| ())
        .map_err(|e| fail(&name, e))
}

fn remove_non_dir(dirfd: i32, c: &CStr, name: &str) -> Result<()> {
    match lstatat(dirfd, c).map_err(|e| fail(name, e))? {
        Some(st) if is(&st, libc::S_IFDIR) => Err(fail(
            &format!("{name} is a directory"),
            io::Error::from_raw_os_error(libc::EISDIR),
        )),
        Some(_) => unlinkat(dirfd, c).map_err(|e| fail(name, e)),
        None => Ok(()),
    }
}

/// Open `name` in `dirfd` for reading without following it: a file or directory comes
/// back open (its kind and mode from `fstat` on that fd, so they describe what was
/// opened); a link comes back as its target; anything else (FIFO, socket, device) as
/// "other", never opened.
#[napi]
pub fn host_open_at(dirfd: i32, name: String) -> Result<HostEntry> {
    let c = component(&name)?;
    let Some(st) = lstatat(dirfd, &c).map_err(|e| fail(&name, e))? else {
        return Err(fail(&name, io::Error::from_raw_os_error(libc::ENOENT)));
    };
    if is(&st, libc::S_IFLNK) {
        return Ok(HostEntry {
            kind: "symlink".into(),
            fd: -1,
            mode: st.st_mode & 0o7777,
            target: Some(readlinkat(dirfd, &c).map_err(|e| fail(&name, e))?),
        });
    }
    if !is(&st, libc::S_IFREG) && !is(&st, libc::S_IFDIR) {
        return Ok(HostEntry {
            kind: "other".into(),
            fd: -1,
            mode: st.st_mode & 0o7777,
            target: None,
        });
    }
    // O_NONBLOCK: something swapped in for a FIFO must not hang the open.
    let fd = openat(dirfd, &c, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| fail(&name, e))?;
    // SAFETY: we own the fd just opened; it closes on error below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd).map_err(|e| fail(&name, e))?;
    let kind = kind_of(&st);
    if kind == "other" {
        return Ok(HostEntry {
            kind: kind.into(),
            fd: -1,
            mode: st.st_mode & 0o7777,
            target: None,
        });
    }
    // Reads of a regular file should block normally again.
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(HostEntry {
        kind: kind.into(),
        fd: std::os::fd::IntoRawFd::into_raw_fd(owned),
        mode: st.st_mode & 0o7777,
        target: None,
    })
}

fn readlinkat(dirfd: i32, name: &CStr) -> io::Result<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dirfd,
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EILSEQ))
}

/// The names in the open directory `dirfd` (without `.` and `..`), sorted. At most
/// `max` names: a larger directory is `E2BIG`.
#[napi]
pub fn host_list_dir(dirfd: i32, max: u32) -> Result<Vec<String>> {
    // fdopendir takes ownership of the fd it is given: give it a duplicate.
    // SAFETY: plain syscalls on the caller's fd.
    let dup = cvt(unsafe { libc::fcntl(dirfd, libc::F_DUPFD_CLOEXEC, 0) })
        .map_err(|e| fail("list", e))?;
    // SAFETY: dup is ours; rewind so a reused fd lists from the start.
    let dir = unsafe {
        libc::lseek(dup, 0, libc::SEEK_SET);
        libc::fdopendir(dup)
    };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(fail("list", e));
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: dir is a valid DIR*; errno tells the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(fail("list", e))
            };
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if names.len() >= max as usize {
            break Err(napi::Error::from_reason(format!(
                "E2BIG: the directory has more than {max} entries"
            )));
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => names.push(s.to_string()),
            Err(_) => {
                break Err(napi::Error::from_reason(
                    "EILSEQ: a file name is not valid UTF-8".to_string(),
                ))
            }
        }
    };
    // SAFETY: closes dir and dup.
    unsafe { libc::closedir(dir) };
    result?;
    names.sort();
    Ok(names)
}

// ---------------------------------------------------------------------------------------
// VolumeFs (packages/sdk/src/volume-fs.ts): the same rules for a named volume's directory,
// which every sandbox that mounts the volume can shape. Each call names one component
// relative to an open directory fd and never follows a link.
// ---------------------------------------------------------------------------------------

/** What `hostStatAt` found (`statx` with `AT_SYMLINK_NOFOLLOW`: a link is described, not followed). */
#[napi(object)]
pub struct HostStat {
    /// "file" | "dir" | "symlink" | "other"
    pub kind: String,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Length in bytes (a link: the length of its target).
    pub size: f64,
    /// Bytes allocated on the host disk (`st_blocks * 512`).
    pub allocated: f64,
    /// Modification time, ms since the epoch.
    pub mtime_ms: f64,
    /// Birth time, ms since the epoch, where the host filesystem records it.
    pub btime_ms: Option<f64>,
}

fn ms(t: &libc::statx_timestamp) -> f64 {
    t.tv_sec as f64 * 1000.0 + f64::from(t.tv_nsec / 1_000_000)
}

/// Describe `name` in `dirfd` without following it; `""` describes `dirfd` itself.
#[napi]
pub fn host_stat_at(dirfd: i32, name: String) -> Result<HostStat> {
    let (c, flags) = if name.is_empty() {
        (
            CString::default(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
        )
    } else {
        (component(&name)?, libc::AT_SYMLINK_NOFOLLOW)
    };
    // SAFETY: zeroed statx is a valid out-parameter.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated name, valid out pointer; the kernel checks the fd.
    cvt(unsafe {
        libc::statx(
            dirfd,
            c.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    })
    .map_err(|e| fail(&name, e))?;
    let fmt = libc::mode_t::from(st.stx_mode) & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "other",
    };
    Ok(HostStat {
        kind: kind.into(),
        mode: u32::from(st.stx_mode) & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        size: st.stx_size as f64,
        allocated: st.stx_blocks as f64 * 512.0,
        mtime_ms: ms(&st.stx_mtime),
        btime_ms: (st.stx_mask & libc::STATX_BTIME != 0).then(|| ms(&st.stx_btime)),
    })
}

/// The directory `name` in `dirfd`, opened, created with `mode` if missing. Unlike
/// `hostMkdirAt` nothing in the way is replaced: a link there is `ELOOP`, another kind
/// of file `ENOTDIR` (the open refuses to follow either).
#[napi]
pub fn host_make_dir_at(dirfd: i32, name: String, mode: u32) -> Result<i32> {
    let c = component(&name)?;
    // SAFETY: NUL-terminated name.
    match cvt(unsafe { libc::mkdirat(dirfd, c.as_ptr(), (mode & 0o7777) as libc::mode_t) }) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(fail(&name, e)),
    }
    openat(dirfd, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
        // O_DIRECTORY reports a link as ENOTDIR: say what it is.
        match lstatat(dirfd, &c) {
            Ok(Some(st)) if is(&st, libc::S_IFLNK) => fail(
                &format!("{name} is a symbolic link"),
                io::Error::from_raw_os_error(libc::ELOOP),
            ),
            _ => fail(&name, e),
        }
    })
}

/// Remove `name` from `dirfd` (`unlinkat`; with `dir`, an empty directory). A link is
/// removed itself, never what it points to.
#[napi]
pub fn host_unlink_at(dirfd: i32, name: String, dir: bool) -> Result<()> {
    let c = component(&name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dirfd, c.as_ptr(), flags) })
        .map(|_| ())
        .map_err(|e| fail(&name, e))
}

/// `renameat(fromfd, from, tofd, to)`: the entry itself moves (a link stays a link); an
/// entry at `to` is replaced as rename(2) does. With `noreplace`, an existing `to` is
/// `EEXIST` (`RENAME_NOREPLACE`).
#[napi]
pub fn host_rename_at(
    fromfd: i32,
    from: String,
    tofd: i32,
    to: String,
    noreplace: bool,
) -> Result<()> {
    let f = component(&from)?;
    let t = component(&to)?;
    let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
    // SAFETY: NUL-terminated names; the kernel checks the fds.
    cvt(unsafe { libc::renameat2(fromfd, f.as_ptr(), tofd, t.as_ptr(), flags) })
        .map(|_| ())
        .map_err(|e| fail(&format!("{from} -> {to}"), e))
}
