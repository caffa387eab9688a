//! Memory templates: a booted guest saved after its agent said hello and mounted the image
//! disk (`Prepare`: read-only, some of its files read into the page cache), before
//! `Bootstrap`, so nothing sandbox-specific is in it; restored into a new QEMU instead of
//! booting the kernel again.
//!
//! A template is keyed by everything the saved device and memory state depends on: the
//! kernel, the initramfs (with the agent), QEMU, the accelerator, vCPUs, memory, the kernel
//! command line, the protocol version, the image disk (path, size, modification time and
//! inode: each image has its own template) and the device layout (writable disk size, NIC
//! and MTU). Layouts with shares or disk volumes are never
//! templated (their device counts vary). `$MSB_HOME/templates/<key>/` holds `ram` (the
//! guest's memory: a sparse file, untouched and zero pages left as holes), `state` (QEMU's
//! migration stream of the devices and vCPUs, without the RAM: `x-ignore-shared`) and
//! `meta.json` (what the key was made of, and both files' sizes).
//!
//! The template is made by a cold boot, whose RAM is QEMU's shared memfd: a save stops
//! the VM, copies the memfd (read through `/proc/<qemu>/fd`) into `ram`, migrates the
//! device state into `state`, and lets the VM go on. A restore starts QEMU with
//! `-incoming defer` and `ram` itself as the guest's memory, mapped private
//! (copy-on-write: pages no restore wrote stay shared page cache), and loads `state`: the
//! guest runs on at once from where the template's agent said hello. Templated layouts'
//! NIC is a frame stream (vhost-user would need the memory shared with the stack). A
//! template is written in a temporary directory and renamed into place, so a half-written
//! one never exists under its key; a file of another size than recorded (truncated) or an
//! unreadable meta is removed and the sandbox boots cold (a state QEMU cannot load too:
//! boot.rs starts that boot over).
//!
//! `MSB_TEMPLATES=off` (msb-runtime's environment) turns templates off.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::qmp::Qmp;

/// What a template's state depends on (the key is a hash of it; meta.json keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    pub kernel: FileId,
    pub initramfs: FileId,
    pub qemu: FileId,
    pub runtime_version: String,
    pub protocol_version: u32,
    pub accel: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub cmdline: String,
    /// The image disk, mounted in the template (its page cache holds some of its files),
    /// and its format.
    pub image: FileId,
    pub image_format: String,
    pub upper_bytes: u64,
    /// The NIC's MTU; None: no NIC.
    pub nic_mtu: Option<u16>,
}

/// A file as far as a template cares: path, size, modification time and inode (a rebuilt
/// kernel or agent is another file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hash)]
pub struct FileId {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<FileId> {
        let m = fs::metadata(path).ok()?;
        Some(FileId {
            path: path.to_path_buf(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    format: u32,
    shape: Shape,
    state_bytes: u64,
    ram_bytes: u64,
    created_unix_ms: u64,
}

// 3: templated layouts' NIC is a frame stream (their restores map memory private).
// 4: a template per image: its disk is mounted in it.
const META_FORMAT: u32 = 4;
/// Largest meta.json read back.
const MAX_META_BYTES: u64 = 64 * 1024;
/// Longest a save or a load may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Templates are on unless `MSB_TEMPLATES` is `off`, `0` or `false`.
pub fn enabled() -> bool {
    !matches!(
        std::env::var("MSB_TEMPLATES").as_deref(),
        Ok("off" | "0" | "false")
    )
}

impl Shape {
    pub fn key(&self) -> String {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

pub fn dir(home: &Path, shape: &Shape) -> PathBuf {
    home.join("templates").join(shape.key())
}

/// A usable template for `shape`: its directory, or why there is none. A damaged one
/// (meta unreadable or of another shape, state missing or of another size) is removed.
pub fn find(home: &Path, shape: &Shape) -> Result<PathBuf, String> {
    let d = dir(home, shape);
    let meta_path = d.join("meta.json");
    let meta = match fs::symlink_metadata(&meta_path) {
        Err(_) => return Err("none made yet".into()),
        Ok(m) if !m.is_file() || m.len() > MAX_META_BYTES => None,
        Ok(_) => fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok()),
    };
    let why = match meta {
        None => "its meta.json is unreadable".to_string(),
        Some(m) if m.format != META_FORMAT || &m.shape != shape => {
            "it was made for another shape".to_string()
        }
        Some(m) => {
            let state = d.join("state");
            let ram = fs::symlink_metadata(d.join("ram"));
            match (fs::symlink_metadata(&state), ram) {
                (Ok(s), Ok(r))
                    if s.is_file()
                        && s.len() == m.state_bytes
                        && r.is_file()
                        && r.len() == m.ram_bytes =>
                {
                    return Ok(d)
                }
                (Ok(s), Ok(r)) => format!(
                    "its state is {} bytes and its ram {} bytes, {} and {} recorded (truncated or replaced)",
                    s.len(),
                    r.len(),
                    m.state_bytes,
                    m.ram_bytes
                ),
                (Err(e), _) | (_, Err(e)) => format!("a file of it is missing ({e})"),
            }
        }
    };
    remove(&d);
    Err(format!(
        "the template {} was damaged: {why}; removed",
        d.display()
    ))
}

/// Moves a template aside, then deletes it (sandboxes restored from it keep their mapping
/// of the deleted `ram`: private, and no one writes the file).
pub fn remove(d: &Path) {
    let trash = d.with_file_name(format!(
        ".{}.removing-{}",
        d.file_name().and_then(|n| n.to_str()).unwrap_or("t"),
        std::process::id()
    ));
    if fs::rename(d, &trash).is_ok() {
        let _ = fs::remove_dir_all(&trash);
    }
}

/// Most templates kept: each shape (image, vCPUs, memory...) has its own, of about the
/// guest's used memory on disk; the least recently made go first.
const MAX_TEMPLATES: usize = 8;

fn prune(parent: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort();
    let n = all.len().saturating_sub(keep);
    for (_, d) in all.into_iter().take(n) {
        remove(&d);
    }
}

/// `exec:` migration URIs run through /bin/sh: the path is single-quoted.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Polls `query-migrate` until the migration completed (or failed).
async fn wait_migration(qmp: &mut Qmp) -> Result<(), String> {
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    loop {
        let r = qmp.execute("query-migrate", None).await?;
        match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = r
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no reason given");
                return Err(format!("migration failed: {why}"));
            }
            _ if Instant::now() > deadline => {
                return Err(format!("migration not done in {MIGRATE_TIMEOUT:?}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// QEMU's guest-memory memfd (`memory-backend-memfd,id=mem`), opened through /proc.
fn qemu_memfd(qemu_pid: u32, write: bool) -> Result<fs::File, String> {
    let fds = format!("/proc/{qemu_pid}/fd");
    for e in fs::read_dir(&fds)
        .map_err(|e| format!("{fds}: {e}"))?
        .flatten()
    {
        let is_mem = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().starts_with("/memfd:mem"))
            .unwrap_or(false);
        if is_mem {
            return fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()));
        }
    }
    Err(format!("QEMU {qemu_pid} has no guest-memory memfd"))
}

const PAGE: usize = 4096;

/// Copies the data of `src` (its data extents, all-zero pages skipped) to `dst` at the
/// same offsets; `dst` keeps holes elsewhere. Returns the bytes written.
fn copy_pages(src: &fs::File, size: u64, dst: &fs::File) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let extents = msb_store::sparse::data_extents(src, size).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for (off, len) in extents {
        let mut at = off;
        while at < off + len {
            let n = ((off + len - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)
                .map_err(|e| format!("reading guest memory: {e}"))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    dst.write_all_at(page, at + (i * PAGE) as u64)
                        .map_err(|e| format!("writing guest memory: {e}"))?;
                    written += page.len() as u64;
                }
            }
            at += n as u64;
        }
    }
    Ok(written)
}

/// Copies the data extents of the sparse file `src` to `dst` at the same offsets, in 1 MiB
/// writes (a template's `ram` has its zero pages as holes already). Returns the bytes.
fn copy_extents(src: &fs::File, size: u64, dst: &fs::File) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let extents = msb_store::sparse::data_extents(src, size).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for (off, len) in extents {
        let mut at = off;
        while at < off + len {
            let n = ((off + len - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)
                .map_err(|e| format!("reading the template's memory: {e}"))?;
            dst.write_all_at(&buf[..n], at)
                .map_err(|e| format!("writing guest memory: {e}"))?;
            written += n as u64;
            at += n as u64;
        }
    }
    Ok(written)
}

/// Saves the running guest (stopped for the save, running again after) as the template of
/// `shape`. Returns the bytes of memory saved. Another process saving the same template at
/// the same time is fine: the first rename wins, the other copy is dropped.
pub async fn save(qmp: &mut Qmp, qemu_pid: u32, home: &Path, shape: &Shape) -> Result<u64, String> {
    let final_dir = dir(home, shape);
    let parent = final_dir.parent().expect("templates/<key>");
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", shape.key(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let state = tmp.join("state");
    let ram_bytes = shape.memory_mib as u64 * 1024 * 1024;
    let result = async {
        qmp.execute("stop", None).await?;
        let saved = save_stopped(qmp, qemu_pid, ram_bytes, &tmp).await;
        // The guest goes on booting this sandbox whatever happened to the save.
        qmp.execute("cont", None).await?;
        let used = saved?;
        let state_bytes = fs::metadata(&state)
            .map_err(|e| format!("{}: {e}", state.display()))?
            .len();
        let meta = Meta {
            format: META_FORMAT,
            shape: shape.clone(),
            state_bytes,
            ram_bytes,
            created_unix_ms: crate::unix_ms_now(),
        };
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        fs::write(tmp.join("meta.json"), text).map_err(|e| format!("meta.json: {e}"))?;
        match fs::rename(&tmp, &final_dir) {
            Ok(()) => {
                prune(parent, MAX_TEMPLATES);
                Ok(used)
            }
            // Made meanwhile by another sandbox of the same shape.
            Err(_) if final_dir.exists() => Ok(used),
            Err(e) => Err(format!("{}: {e}", final_dir.display())),
        }
    }
    .await;
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// Saves a stopped VM into `into`. With its memory a shared memfd: the memory as the
/// sparse file `ram` (zero pages left as holes) and the devices and vCPUs as the migration
/// stream `state` without the RAM (`x-ignore-shared`). With its memory a template mapped
/// private (a restored sandbox, saved for a fork): only `state`, RAM included (QEMU sends
/// the non-zero pages). The VM stays stopped (in QEMU's `postmigrate`; `cont` runs it
/// again). Returns the bytes of memory saved (0 when the RAM is in the stream).
pub async fn save_stopped(
    qmp: &mut Qmp,
    qemu_pid: u32,
    ram_bytes: u64,
    into: &Path,
) -> Result<u64, String> {
    let used = match qemu_memfd(qemu_pid, false) {
        Ok(mem) => {
            let ram = fs::File::create(into.join("ram")).map_err(|e| format!("ram: {e}"))?;
            ram.set_len(ram_bytes).map_err(|e| format!("ram: {e}"))?;
            Some(copy_pages(&mem, ram_bytes, &ram)?)
        }
        Err(_) => None,
    };
    qmp.execute(
        "migrate-set-capabilities",
        Some(
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": used.is_some() }] }),
        ),
    )
    .await?;
    // The default bandwidth cap (128 MiB/s) would make a RAM stream crawl; this one goes
    // to a local file.
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": 1u64 << 40 })),
    )
    .await?;
    let uri = format!("exec:cat > {}", sh_quote(&into.join("state")));
    qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
    wait_migration(qmp).await?;
    Ok(used.unwrap_or(0))
}

/// Loads a template's device state into a QEMU started with `-incoming defer` whose memory
/// is the template's `ram` mapped private: nothing to copy (the guest's pages come from
/// the file as it touches them, and stay shared with every other restore until written).
/// Returns the milliseconds the load took.
pub async fn load_mapped(qmp: &mut Qmp, template: &Path) -> Result<u64, String> {
    let t0 = Instant::now();
    // The template's stream has no RAM (saved with x-ignore-shared); this side's memory is
    // private, so nothing is skipped here and nothing arrives for it either.
    incoming(qmp, &template.join("state"), true).await?;
    Ok(t0.elapsed().as_millis() as u64)
}

/// `migrate-incoming` of a state file, with or without x-ignore-shared, until the guest runs.
async fn incoming(qmp: &mut Qmp, state: &Path, ignore_shared: bool) -> Result<(), String> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": ignore_shared }] }),
        ),
    )
    .await?;
    let uri = format!("exec:cat {}", sh_quote(state));
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await?;
    wait_migration(qmp).await?;
    // Normally running already (autostart); make sure.
    let status = qmp.execute("query-status", None).await?;
    if status.get("status").and_then(|s| s.as_str()) != Some("running") {
        qmp.execute("cont", None).await?;
    }
    Ok(())
}

/// What a restore did, for the log.
pub struct Loaded {
    pub memory_bytes: u64,
    pub memory_ms: u64,
    pub devices_ms: u64,
}

/// Restores a saved guest (a fork's) into a QEMU started with `-incoming defer` whose
/// memory is a shared memfd: `ram`, when the save wrote one, into the memfd, then the
/// state (which holds the RAM itself when there is no `ram`: see [`save_stopped`]).
pub async fn load(
    qmp: &mut Qmp,
    qemu_pid: u32,
    saved: &Path,
    ram_bytes: u64,
) -> Result<Loaded, String> {
    let t0 = Instant::now();
    let ram_path = saved.join("ram");
    let has_ram = fs::symlink_metadata(&ram_path).is_ok();
    let used = if has_ram {
        let mem = qemu_memfd(qemu_pid, true)?;
        let ram =
            msb_store::sparse::open_regular_nofollow(&ram_path).map_err(|e| format!("ram: {e}"))?;
        copy_extents(&ram, ram_bytes, &mem)?
    } else {
        0
    };
    let copied = t0.elapsed();
    incoming(qmp, &saved.join("state"), has_ram).await?;
    Ok(Loaded {
        memory_bytes: used,
        memory_ms: copied.as_millis() as u64,
        devices_ms: (t0.elapsed() - copied).as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(mem: u32) -> Shape {
        let f = |p: &str| FileId {
            path: p.into(),
            size: 1,
            mtime_ns: 2,
            ino: 3,
        };
        Shape {
            kernel: f("/k"),
            initramfs: f("/i"),
            qemu: f("/q"),
            runtime_version: "0.1.0".into(),
            protocol_version: 5,
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: mem,
            cmdline: "console=ttyS0".into(),
            image: FileId {
                path: "/i/rootfs.ext4".into(),
                size: 64 << 20,
                mtime_ns: 1,
                ino: 3,
            },
            image_format: "raw".into(),
            upper_bytes: 4 << 30,
            nic_mtu: Some(1500),
        }
    }

    #[test]
    fn the_key_follows_the_shape() {
        assert_eq!(shape(512).key(), shape(512).key());
        assert_ne!(shape(512).key(), shape(1024).key());
        assert_eq!(shape(512).key().len(), 16);
        // Another image, or the same path rewritten, is another template.
        let mut other = shape(512);
        other.image.path = "/i/other.ext4".into();
        assert_ne!(other.key(), shape(512).key());
        let mut rewritten = shape(512);
        rewritten.image.mtime_ns += 1;
        assert_ne!(rewritten.key(), shape(512).key());
    }

    #[test]
    fn find_refuses_and_removes_damaged_templates() {
        let home = std::env::temp_dir().join(format!("msb-tpl-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&home);
        let s = shape(512);
        assert_eq!(find(&home, &s).unwrap_err(), "none made yet");
        let d = dir(&home, &s);
        let write = |state: &[u8], recorded: u64, sh: &Shape| {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("state"), state).unwrap();
            fs::write(d.join("ram"), b"ram").unwrap();
            let m = Meta {
                format: META_FORMAT,
                shape: sh.clone(),
                state_bytes: recorded,
                ram_bytes: 3,
                created_unix_ms: 0,
            };
            fs::write(d.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        };
        write(b"0123456789", 10, &s);
        assert_eq!(find(&home, &s).unwrap(), d);
        // Truncated: removed, cold boot.
        write(b"01234", 10, &s);
        let e = find(&home, &s).unwrap_err();
        assert!(e.contains("state is 5 bytes"), "{e}");
        assert!(!d.exists());
        // Another shape under this key (a meta edited, a hash collision): not used.
        write(b"0123456789", 10, &shape(1024));
        assert!(find(&home, &s).unwrap_err().contains("another shape"));
        // Garbage meta.
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("meta.json"), b"{").unwrap();
        assert!(find(&home, &s).unwrap_err().contains("unreadable"));
        assert!(!d.exists());
        let _ = fs::remove_dir_all(&home);
    }

    #[test]
    fn exec_uris_quote_the_path() {
        assert_eq!(sh_quote(Path::new("/a b/it's")), "'/a b/it'\\''s'");
    }
}
