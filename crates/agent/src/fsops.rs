//! `sb.fs()` operations, run in the guest. Paths are resolved by the guest's own kernel
//! inside the guest's root: nothing here can name a host path. Errors carry the errno's
//! symbolic name so the SDK can report ENOENT, EISDIR, ... as such.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use msb_protocol::{Frame, FsEntry, FsOp, Message, INITIAL_WINDOW, MAX_CHUNK};

use crate::exec::{Control, Input, Sessions};
use crate::window::{send_windowed, Window};

/// Symbolic name of an I/O error's errno.
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EISDIR) => "EISDIR",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENOTEMPTY) => "ENOTEMPTY",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::ENAMETOOLONG) => "ENAMETOOLONG",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EFBIG) => "EFBIG",
        Some(libc::EDQUOT) => "EDQUOT",
        Some(libc::EIO) => "EIO",
        Some(n) => return format!("E{n}"),
        None => "EIO",
    };
    name.to_string()
}

fn fs_error(path: &str, e: &io::Error) -> Message {
    Message::FsError {
        errno: errno_name(e),
        message: format!("{path}: {e}"),
    }
}

fn entry(name: String, m: &fs::Metadata) -> FsEntry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let modified_ms = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    FsEntry {
        name,
        kind: kind.into(),
        size: m.len(),
        mode: m.mode() & 0o7777,
        modified_ms,
    }
}

fn require_absolute(path: &str) -> io::Result<()> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// Start an fs operation on session `id`. Quick operations answer at once; reads and
/// writes run on their own thread, flow-controlled like exec output and stdin.
pub fn start(s: &Arc<Sessions>, id: u32, op: FsOp) {
    let port = s.port().clone();
    let reply = |m: Message| {
        let _ = port.send(&Frame::new(id, m));
    };
    match op {
        FsOp::Read { path } => {
            let file = require_absolute(&path)
                .and_then(|_| File::open(&path))
                .and_then(|f| {
                    if f.metadata()?.is_dir() {
                        Err(io::Error::from_raw_os_error(libc::EISDIR))
                    } else {
                        Ok(f)
                    }
                });
            let mut file = match file {
                Ok(f) => f,
                Err(e) => return reply(fs_error(&path, &e)),
            };
            let window = Arc::new(Window::new(INITIAL_WINDOW));
            if !s.register(
                id,
                Control {
                    pgid: 0,
                    stdin: None,
                    window: window.clone(),
                    pty: None,
                },
            ) {
                return reply(Message::FsError {
                    errno: "EBUSY".into(),
                    message: "session id in use".into(),
                });
            }
            let s = s.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; MAX_CHUNK];
                let end = loop {
                    match file.read(&mut buf) {
                        Ok(0) => break Message::FsEnd,
                        Ok(n) => {
                            if !send_windowed(s.port(), &window, id, &buf[..n], Message::FsData) {
                                // Cancelled by the host (or the port is gone: then this
                                // send fails too).
                                break Message::FsError {
                                    errno: "ECANCELED".into(),
                                    message: "read cancelled by the host".into(),
                                };
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break fs_error(&path, &e),
                    }
                };
                s.unregister(id);
                let _ = s.port().send(&Frame::new(id, end));
            });
        }
        FsOp::Write { path, mode, append } => {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true);
            if append {
                opts.append(true);
            } else {
                opts.truncate(true);
            }
            opts.mode(mode.unwrap_or(0o644));
            let mut file = match require_absolute(&path).and_then(|_| opts.open(&path)) {
                Ok(f) => f,
                Err(e) => return reply(fs_error(&path, &e)),
            };
            if let Some(m) = mode {
                // An existing file keeps its mode on open: set it explicitly.
                let _ = file.set_permissions(fs::Permissions::from_mode(m));
            }
            let (tx, rx) = channel::<Input>();
            let window = Arc::new(Window::new(0));
            if !s.register(
                id,
                Control {
                    pgid: 0,
                    stdin: Some(tx),
                    window,
                    pty: None,
                },
            ) {
                return reply(Message::FsError {
                    errno: "EBUSY".into(),
                    message: "session id in use".into(),
                });
            }
            let s = s.clone();
            std::thread::spawn(move || {
                let mut failed: Option<io::Error> = None;
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Input::Data(d) => {
                            if failed.is_none() {
                                if let Err(e) = file.write_all(&d) {
                                    failed = Some(e);
                                }
                            }
                            let credit = Message::Credit {
                                bytes: d.len() as u32 + msb_protocol::FRAME_COST,
                            };
                            let _ = s.port().send(&Frame::new(id, credit));
                        }
                        Input::Close => break,
                    }
                }
                s.unregister(id);
                let msg = match failed {
                    Some(e) => fs_error(&path, &e),
                    None => Message::FsDone,
                };
                let _ = s.port().send(&Frame::new(id, msg));
            });
        }
        FsOp::List { path } => reply(match list(&path) {
            Ok(v) => Message::FsEntries(v),
            Err(e) => fs_error(&path, &e),
        }),
        FsOp::Stat { path } => reply(
            match require_absolute(&path).and_then(|_| fs::symlink_metadata(&path)) {
                Ok(m) => {
                    let name = Path::new(&path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "/".into());
                    Message::FsStat(entry(name, &m))
                }
                Err(e) => fs_error(&path, &e),
            },
        ),
        FsOp::Exists { path } => reply(match require_absolute(&path) {
            Ok(()) => Message::FsExists(fs::symlink_metadata(&path).is_ok()),
            Err(e) => fs_error(&path, &e),
        }),
        FsOp::Mkdir {
            path,
            mode,
            recursive,
        } => reply(done(&path, mkdir(&path, mode, recursive))),
        FsOp::Remove { path } => reply(done(&path, remove_file(&path))),
        FsOp::RemoveDir { path, recursive } => reply(done(
            &path,
            require_absolute(&path).and_then(|_| {
                if recursive {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_dir(&path)
                }
            }),
        )),
        FsOp::Copy { src, dst } => reply(done(
            &src,
            require_absolute(&src)
                .and(require_absolute(&dst))
                .and_then(|_| copy_tree(Path::new(&src), Path::new(&dst))),
        )),
        FsOp::Rename { src, dst } => reply(done(
            &src,
            require_absolute(&src)
                .and(require_absolute(&dst))
                .and_then(|_| fs::rename(&src, &dst)),
        )),
        FsOp::Symlink { target, link } => reply(done(
            &link,
            require_absolute(&link).and_then(|_| std::os::unix::fs::symlink(&target, &link)),
        )),
    }
}

fn done(path: &str, r: io::Result<()>) -> Message {
    match r {
        Ok(()) => Message::FsDone,
        Err(e) => fs_error(path, &e),
    }
}

fn list(path: &str) -> io::Result<Vec<FsEntry>> {
    require_absolute(path)?;
    let mut out = Vec::new();
    for e in fs::read_dir(path)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        out.push(entry(e.file_name().to_string_lossy().into_owned(), &m));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn mkdir(path: &str, mode: Option<u32>, recursive: bool) -> io::Result<()> {
    require_absolute(path)?;
    let mut b = fs::DirBuilder::new();
    b.recursive(recursive);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, mode.unwrap_or(0o755));
    b.create(path)?;
    if let Some(m) = mode {
        // The agent's umask would cut bits the caller asked for.
        fs::set_permissions(path, fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

fn remove_file(path: &str) -> io::Result<()> {
    require_absolute(path)?;
    if fs::symlink_metadata(path)?.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    fs::remove_file(path)
}

/// Copy a file, symlink or directory tree, keeping modes.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(src)?;
    if m.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if m.is_dir() {
        if dst.starts_with(src) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        fs::create_dir_all(dst)?;
        fs::set_permissions(dst, m.permissions())?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(src, dst).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn os(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn errno_names_are_symbolic() {
        let known = [
            (libc::ENOENT, "ENOENT"),
            (libc::EACCES, "EACCES"),
            (libc::EPERM, "EPERM"),
            (libc::EISDIR, "EISDIR"),
            (libc::ENOTDIR, "ENOTDIR"),
            (libc::EEXIST, "EEXIST"),
            (libc::ENOTEMPTY, "ENOTEMPTY"),
            (libc::EROFS, "EROFS"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::EINVAL, "EINVAL"),
            (libc::ELOOP, "ELOOP"),
            (libc::ENAMETOOLONG, "ENAMETOOLONG"),
            (libc::EXDEV, "EXDEV"),
            (libc::EBUSY, "EBUSY"),
            (libc::EFBIG, "EFBIG"),
            (libc::EDQUOT, "EDQUOT"),
            (libc::EIO, "EIO"),
        ];
        for (n, name) in known {
            assert_eq!(errno_name(&os(n)), name);
        }
    }

    #[test]
    fn other_errnos_are_numbered_and_errors_without_one_are_eio() {
        assert_eq!(errno_name(&os(libc::EMFILE)), format!("E{}", libc::EMFILE));
        assert_eq!(
            errno_name(&os(libc::ETIMEDOUT)),
            format!("E{}", libc::ETIMEDOUT)
        );
        assert_eq!(errno_name(&io::Error::other("no errno")), "EIO");
        assert_eq!(errno_name(&io::Error::from(io::ErrorKind::NotFound)), "EIO");
    }

    #[test]
    fn fs_errors_carry_the_errno_name_and_the_path() {
        let e = os(libc::ENOENT);
        assert_eq!(
            fs_error("/x/y", &e),
            Message::FsError {
                errno: "ENOENT".into(),
                message: format!("/x/y: {e}"),
            }
        );
        assert_eq!(done("/x", Ok(())), Message::FsDone);
        assert_eq!(
            done("/x", Err(os(libc::EEXIST))),
            fs_error("/x", &os(libc::EEXIST))
        );
    }

    #[test]
    fn only_absolute_paths_without_nul_are_accepted() {
        for good in ["/", "/etc/passwd", "/a/../b", "//x"] {
            assert!(require_absolute(good).is_ok(), "{good}");
        }
        for bad in ["", "etc", "./x", "../x", "/a\0b", "\0"] {
            let e = require_absolute(bad).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("msb-agent-fstest-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn join(&self, name: &str) -> String {
            self.0.join(name).to_str().unwrap().to_string()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn entries_say_kind_size_and_permission_bits() {
        let d = TempDir::new("entry");
        let f = d.join("f");
        fs::write(&f, b"hello").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        fs::create_dir(d.join("d")).unwrap();

        let e = entry("f".into(), &fs::symlink_metadata(&f).unwrap());
        assert_eq!(
            (e.name.as_str(), e.kind.as_str(), e.size, e.mode),
            ("f", "file", 5, 0o4751)
        );
        assert!(e.modified_ms > 1_600_000_000_000, "{}", e.modified_ms);
        let l = entry("l".into(), &fs::symlink_metadata(d.join("l")).unwrap());
        assert_eq!(l.kind, "symlink");
        let dir = entry("d".into(), &fs::symlink_metadata(d.join("d")).unwrap());
        assert_eq!(dir.kind, "dir");
        let null = entry("null".into(), &fs::symlink_metadata("/dev/null").unwrap());
        assert_eq!(null.kind, "other");

        // list: sorted by name, symlinks not followed.
        let names: Vec<_> = list(d.0.to_str().unwrap())
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        let want = [("d", "dir"), ("f", "file"), ("l", "symlink")];
        assert_eq!(
            names,
            want.map(|(n, k)| (n.to_string(), k.to_string())).to_vec()
        );
    }

    #[test]
    fn mkdir_sets_the_asked_mode_despite_the_umask_and_remove_refuses_dirs() {
        let d = TempDir::new("mkdir");
        let p = d.join("a/b");
        assert_eq!(
            mkdir(&p, Some(0o777), false).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        mkdir(&p, Some(0o777), true).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o777);
        assert_eq!(
            remove_file(&p).unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        assert!(fs::metadata(&p).is_ok());
    }

    #[test]
    fn copy_tree_keeps_modes_and_links_and_refuses_a_copy_into_itself() {
        let d = TempDir::new("copy");
        let src = d.join("src");
        fs::create_dir(&src).unwrap();
        fs::write(format!("{src}/x"), b"data").unwrap();
        fs::set_permissions(format!("{src}/x"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("x", format!("{src}/lnk")).unwrap();
        let dst = d.join("dst");
        copy_tree(Path::new(&src), Path::new(&dst)).unwrap();
        assert_eq!(fs::read(format!("{dst}/x")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(format!("{dst}/x")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(fs::read_link(format!("{dst}/lnk")).unwrap(), Path::new("x"));

        let inside = format!("{src}/sub");
        let e = copy_tree(Path::new(&src), Path::new(&inside)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(fs::metadata(&inside).is_err(), "nothing was created");
        // A sibling whose name merely starts with the source's is fine.
        copy_tree(Path::new(&src), Path::new(&format!("{src}2"))).unwrap();
    }
}
