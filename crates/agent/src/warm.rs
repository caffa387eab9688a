//! Reading an image's commonly used files into the page cache, in the boot that makes a
//! memory template (`Prepare`): every restore then finds them in memory instead of
//! reading its disk (the first command after a restore otherwise waits on the image's
//! shell, loader and libc).
//!
//! Paths are resolved inside the image's mount, symlinks included, never outside it.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Files most commands start with: the name service files, the shell, `env`, `true`.
const FILES: [&str; 9] = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/bin/sh",
    "/usr/bin/env",
    "/bin/true",
    "/usr/bin/true",
];

/// Where a glibc image keeps libc (an ELF's loader is found from its PT_INTERP).
const LIBC: [&str; 5] = [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/usr/lib64/libc.so.6",
    "/lib/libc.so.6",
];

/// Largest file read, and most bytes read in all.
const MAX_FILE: u64 = 8 << 20;
const MAX_TOTAL: u64 = 32 << 20;
/// Most symlinks followed for one path.
const MAX_LINKS: usize = 16;

/// Reads the files under `root` (the image's mount); returns the bytes read. Missing
/// files are skipped: an image need not have any of them.
pub fn warm(root: &Path) -> u64 {
    let mut queue: Vec<String> = FILES
        .iter()
        .chain(LIBC.iter())
        .map(|s| s.to_string())
        .collect();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let mut i = 0;
    while i < queue.len() {
        let path = queue[i].clone();
        i += 1;
        let Some(real) = resolve(root, &path) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real.clone());
        let Ok(mut f) = fs::File::open(&real) else {
            continue;
        };
        let Ok(meta) = f.metadata() else { continue };
        if !meta.is_file() || meta.len() > MAX_FILE || total + meta.len() > MAX_TOTAL {
            continue;
        }
        let mut head = Vec::new();
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if head.len() < 4096 {
                        head.extend_from_slice(&buf[..n.min(4096 - head.len())]);
                    }
                    total += n as u64;
                }
            }
        }
        if let Some(interp) = elf_interp(&head) {
            queue.push(interp);
        }
    }
    total
}

/// `path` (absolute, as the image sees it) as a path under `root`, every symlink on the
/// way followed inside the image; None when it does not exist or loops.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = std::iter::once(root.to_path_buf())
            .chain(done.iter().chain(std::iter::once(&c)).map(PathBuf::from))
            .collect();
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(components(target).into_iter().rev());
        } else {
            done.push(c);
        }
    }
    Some(
        std::iter::once(root.to_path_buf())
            .chain(done.into_iter().map(PathBuf::from))
            .collect(),
    )
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// The program interpreter (PT_INTERP) of a 64-bit little-endian ELF, from its first
/// bytes; None for anything else (a static binary, a script).
pub fn elf_interp(head: &[u8]) -> Option<String> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let at = |o: usize, n: usize| head.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| Some(u16::from_le_bytes(at(o, 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(at(o, 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(at(o, 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 56 {
        return None;
    }
    for i in 0..phnum.min(64) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 3 {
            continue; // not PT_INTERP
        }
        let off = usize::try_from(u64_at(ph.checked_add(8)?)?).ok()?;
        let size = usize::try_from(u64_at(ph.checked_add(32)?)?).ok()?;
        let bytes = at(off, size)?;
        let s = std::str::from_utf8(bytes).ok()?.trim_end_matches('\0');
        return s.starts_with('/').then(|| s.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("msb-warm-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_root_absolute_or_relative() {
        let t = TempDir::new("links");
        let r = &t.0;
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(r.join("usr/bin/busybox"), b"x").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("/usr/bin/busybox", r.join("usr/bin/sh")).unwrap();
        symlink("../bin/busybox", r.join("usr/bin/true")).unwrap();
        assert_eq!(resolve(r, "/bin/sh").unwrap(), r.join("usr/bin/busybox"));
        assert_eq!(
            resolve(r, "/usr/bin/true").unwrap(),
            r.join("usr/bin/busybox")
        );
        assert_eq!(resolve(r, "/nope"), None);
    }

    #[test]
    fn links_out_of_the_root_stay_in_it_and_loops_end() {
        let t = TempDir::new("escape");
        let r = &t.0;
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/passwd"), b"in the image").unwrap();
        symlink("../../../../etc/passwd", r.join("up")).unwrap();
        symlink("/etc/../../etc/passwd", r.join("abs")).unwrap();
        assert_eq!(resolve(r, "/up").unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve(r, "/abs").unwrap(), r.join("etc/passwd"));
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        assert_eq!(resolve(r, "/a"), None);
    }

    #[test]
    fn warm_reads_the_files_and_the_elf_interpreter_once() {
        let t = TempDir::new("warm");
        let r = &t.0;
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("lib")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        fs::write(r.join("lib/ld.so"), vec![7u8; 1000]).unwrap();
        let sh = elf_with_interp("/lib/ld.so");
        fs::write(r.join("bin/sh"), &sh).unwrap();
        symlink("sh", r.join("bin/true")).unwrap();
        assert_eq!(warm(r), 20 + 1000 + sh.len() as u64);
    }

    fn elf_with_interp(interp: &str) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let off = e.len() as u64;
        e[64..68].copy_from_slice(&3u32.to_le_bytes());
        e[64 + 8..64 + 16].copy_from_slice(&off.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
        e.extend_from_slice(interp.as_bytes());
        e.push(0);
        e
    }

    #[test]
    fn elf_interp_reads_pt_interp_and_refuses_the_rest() {
        assert_eq!(
            elf_interp(&elf_with_interp("/lib64/ld-linux-x86-64.so.2")).as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(elf_interp(b"#!/bin/sh\n"), None);
        let mut bad = elf_with_interp("/x");
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_interp(&bad), None);
    }
}
