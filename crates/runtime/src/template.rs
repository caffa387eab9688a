//! Memory templates: a booted guest saved after its agent said hello and mounted the image
//! disk (`Prepare`: read-only, some of its files read into the page cache), before
//! `Bootstrap`, so nothing sandbox-specific is in it; restored into a new QEMU instead of
//! booting the kernel again. A template holds two saves ([`Stage`]): that one, for
//! sandboxes whose writable disk has their data already (a start after a stop), and one
//! made a moment later with the writable disk (empty, just formatted) and the overlay root
//! mounted too (`PrepareUpper`), for new sandboxes: each gets a copy of that disk (`root/
//! upper`, reflinked or sparse: about 2 MB), and its bootstrap mounts nothing. Restores of
//! the second kind share that filesystem's UUID.
//!
//! A template is keyed by everything the saved device and memory state depends on: the
//! kernel, the initramfs (with the agent), QEMU, the accelerator, vCPUs, memory, the kernel
//! command line, the protocol version, the image disk (path, size, modification time and
//! inode: each image has its own template) and the device layout (writable disk size, NIC
//! and MTU). Layouts with shares or disk volumes are never
//! templated (their device counts vary). `$MSB_HOME/templates/<key>/` holds `ram` (the
//! guest's memory: a sparse file, untouched and zero pages left as holes), `state` (QEMU's
//! migration stream of the devices and vCPUs, without the RAM: `x-ignore-shared`) and
//! `meta.json` (what the key was made of, and every file's size); `root/` holds the second
//! save's `ram`, `state` and `upper`.
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
    /// Its filesystem as the guest was told to mount it ("": found by the guest).
    pub image_fstype: String,
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
    /// The `Stage::Image` save's files.
    state_bytes: u64,
    ram_bytes: u64,
    /// The `Stage::Root` save's, when it was made.
    root: Option<RootMeta>,
    created_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootMeta {
    state_bytes: u64,
    ram_bytes: u64,
    /// Apparent size of `root/upper`.
    upper_bytes: u64,
}

/// How far the saved guest had got: a template holds one save of each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The image disk mounted (`Prepare`): for a sandbox whose writable disk has its data
    /// already (a start after a stop, a disk snapshot). In the template's directory.
    Image,
    /// The writable disk and the overlay root mounted too (`PrepareUpper`): for a new
    /// sandbox, whose writable disk is then a copy of the saved `upper`. In `root/`.
    Root,
}

/// The directory of a template's save of `stage` (its `ram` and `state`).
pub fn stage_dir(template: &Path, stage: Stage) -> PathBuf {
    match stage {
        Stage::Image => template.to_path_buf(),
        Stage::Root => template.join("root"),
    }
}

// 3: templated layouts' NIC is a frame stream (their restores map memory private).
// 4: a template per image: its disk is mounted in it.
// 5: a second save with the writable disk and the root mounted (`root/`); the image's
//    filesystem type in the shape.
// 6: the agent's virtio-serial device has 2 ports (a template's device state names them).
const META_FORMAT: u32 = 6;
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

/// A usable template for `shape` with a save of `stage`: its directory, or why there is
/// none. A damaged one (meta unreadable or of another shape, a file missing or of another
/// size than recorded) is removed, and so is one without the stage (made by a start of a
/// stopped sandbox, which saves no root): the next new sandbox makes it again, whole.
pub fn find(home: &Path, shape: &Shape, stage: Stage) -> Result<PathBuf, String> {
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
            let mut files = vec![
                (d.join("state"), m.state_bytes),
                (d.join("ram"), m.ram_bytes),
            ];
            if let Some(r) = &m.root {
                let root = stage_dir(&d, Stage::Root);
                files.push((root.join("state"), r.state_bytes));
                files.push((root.join("ram"), r.ram_bytes));
                files.push((root.join("upper"), r.upper_bytes));
            }
            match check_files(&files) {
                Err(why) => why,
                Ok(()) if stage == Stage::Root && m.root.is_none() => {
                    "it has no save with the root mounted (made by a start of a stopped sandbox)"
                        .to_string()
                }
                Ok(()) => return Ok(d),
            }
        }
    };
    remove(&d);
    Err(format!(
        "the template {} was damaged: {why}; removed",
        d.display()
    ))
}

/// Each file a regular file (not a link) of its recorded size.
fn check_files(files: &[(PathBuf, u64)]) -> Result<(), String> {
    for (path, recorded) in files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match fs::symlink_metadata(path) {
            Err(e) => return Err(format!("a file of it is missing ({name}: {e})")),
            Ok(m) if !m.is_file() => return Err(format!("its {name} is not a regular file")),
            Ok(m) if m.len() != *recorded => {
                return Err(format!(
                    "its {name} is {} bytes, {recorded} recorded (truncated or replaced)",
                    m.len()
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// A new sandbox's writable disk restored with `Stage::Root`: a copy (reflinked where the
/// filesystem can, holes kept) of the disk saved with it, in place of `dst`. Returns the
/// bytes the copy has (apparent size), checked against the template's disk size.
pub fn copy_upper(template: &Path, shape: &Shape, dst: &Path) -> Result<u64, String> {
    let src = stage_dir(template, Stage::Root).join("upper");
    let n = msb_store::sparse::copy_sparse(&src, dst)
        .map_err(|e| format!("copying its writable disk: {e}"))?;
    if n != shape.upper_bytes {
        return Err(format!(
            "its writable disk is {n} bytes, {} expected",
            shape.upper_bytes
        ));
    }
    Ok(n)
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

/// A template being made: its saves go to a temporary directory, renamed into place by
/// [`Draft::commit`] (so a half-made template never exists under its key); dropped
/// uncommitted, the directory goes. Another process making the same template at the same
/// time is fine: the first rename wins, the other copy is dropped.
pub struct Draft {
    shape: Shape,
    final_dir: PathBuf,
    tmp: PathBuf,
    image: Option<(u64, u64)>,
    root: Option<RootMeta>,
}

impl Draft {
    pub fn new(home: &Path, shape: &Shape) -> Result<Draft, String> {
        let final_dir = dir(home, shape);
        let parent = final_dir.parent().expect("templates/<key>");
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let tmp = parent.join(format!(".{}.tmp-{}", shape.key(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        Ok(Draft {
            shape: shape.clone(),
            final_dir,
            tmp,
            image: None,
            root: None,
        })
    }

    /// Saves the running guest (stopped for the save, running again after) as `stage`;
    /// `Stage::Root` with a copy of the writable disk `upper`, made while the guest is
    /// stopped (the disk and the memory saved are of one instant). Returns the bytes of
    /// memory saved.
    pub async fn save(
        &mut self,
        qmp: &mut Qmp,
        qemu_pid: u32,
        stage: Stage,
        upper: Option<&Path>,
    ) -> Result<u64, String> {
        let into = stage_dir(&self.tmp, stage);
        fs::create_dir_all(&into).map_err(|e| format!("{}: {e}", into.display()))?;
        let ram_bytes = self.shape.memory_mib as u64 * 1024 * 1024;
        qmp.execute("stop", None).await?;
        let saved = async {
            let used = save_stopped(qmp, qemu_pid, ram_bytes, &into).await?;
            let upper_bytes = match (stage, upper) {
                (Stage::Root, Some(u)) => Some(
                    msb_store::sparse::copy_sparse(u, &into.join("upper"))
                        .map_err(|e| format!("copying the writable disk: {e}"))?,
                ),
                (Stage::Root, None) => return Err("a root save needs its writable disk".into()),
                (Stage::Image, _) => None,
            };
            Ok::<_, String>((used, upper_bytes))
        }
        .await;
        // The guest goes on booting this sandbox whatever happened to the save.
        qmp.execute("cont", None).await?;
        let (used, upper_bytes) = saved?;
        let state_bytes = fs::metadata(into.join("state"))
            .map_err(|e| format!("state: {e}"))?
            .len();
        match upper_bytes {
            Some(upper_bytes) => {
                self.root = Some(RootMeta {
                    state_bytes,
                    ram_bytes,
                    upper_bytes,
                })
            }
            None => self.image = Some((state_bytes, ram_bytes)),
        }
        Ok(used)
    }

    /// Writes meta.json and puts the template in place (a `Stage::Image` save is needed).
    pub fn commit(self) -> Result<(), String> {
        let (state_bytes, ram_bytes) = self.image.ok_or("no save of the image stage")?;
        let meta = Meta {
            format: META_FORMAT,
            shape: self.shape.clone(),
            state_bytes,
            ram_bytes,
            root: self.root,
            created_unix_ms: crate::unix_ms_now(),
        };
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        fs::write(self.tmp.join("meta.json"), text).map_err(|e| format!("meta.json: {e}"))?;
        let parent = self.final_dir.parent().expect("templates/<key>");
        match fs::rename(&self.tmp, &self.final_dir) {
            Ok(()) => {
                prune(parent, MAX_TEMPLATES);
                Ok(())
            }
            // Made meanwhile by another sandbox of the same shape.
            Err(_) if self.final_dir.exists() => Ok(()),
            Err(e) => Err(format!("{}: {e}", self.final_dir.display())),
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tmp);
    }
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
            image_fstype: "ext4".into(),
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
        assert_eq!(find(&home, &s, Stage::Image).unwrap_err(), "none made yet");
        let d = dir(&home, &s);
        let write = |state: &[u8], recorded: u64, sh: &Shape, root: bool| {
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(d.join("root")).unwrap();
            fs::write(d.join("state"), state).unwrap();
            fs::write(d.join("ram"), b"ram").unwrap();
            for f in ["state", "ram", "upper"] {
                fs::write(d.join("root").join(f), f).unwrap();
            }
            let m = Meta {
                format: META_FORMAT,
                shape: sh.clone(),
                state_bytes: recorded,
                ram_bytes: 3,
                root: root.then_some(RootMeta {
                    state_bytes: 5,
                    ram_bytes: 3,
                    upper_bytes: 5,
                }),
                created_unix_ms: 0,
            };
            fs::write(d.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        };
        write(b"0123456789", 10, &s, true);
        assert_eq!(find(&home, &s, Stage::Image).unwrap(), d);
        assert_eq!(find(&home, &s, Stage::Root).unwrap(), d);
        assert_eq!(stage_dir(&d, Stage::Root), d.join("root"));
        // Truncated: removed, cold boot.
        write(b"01234", 10, &s, true);
        let e = find(&home, &s, Stage::Image).unwrap_err();
        assert!(e.contains("state is 5 bytes, 10 recorded"), "{e}");
        assert!(!d.exists());
        // The root save's disk truncated: the same.
        write(b"0123456789", 10, &s, true);
        fs::write(d.join("root").join("upper"), b"up").unwrap();
        let e = find(&home, &s, Stage::Root).unwrap_err();
        assert!(e.contains("upper is 2 bytes, 5 recorded"), "{e}");
        assert!(!d.exists());
        // A link in place of a file: not followed, not used.
        write(b"0123456789", 10, &s, true);
        fs::remove_file(d.join("ram")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("ram")).unwrap();
        assert!(find(&home, &s, Stage::Image)
            .unwrap_err()
            .contains("not a regular file"));
        // Without a root save: fine for a restart, removed when a new sandbox needs it.
        write(b"0123456789", 10, &s, false);
        assert_eq!(find(&home, &s, Stage::Image).unwrap(), d);
        let e = find(&home, &s, Stage::Root).unwrap_err();
        assert!(e.contains("no save with the root mounted"), "{e}");
        assert!(!d.exists());
        // Another shape under this key (a meta edited, a hash collision): not used.
        write(b"0123456789", 10, &shape(1024), true);
        assert!(find(&home, &s, Stage::Image)
            .unwrap_err()
            .contains("another shape"));
        // Garbage meta.
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("meta.json"), b"{").unwrap();
        assert!(find(&home, &s, Stage::Image)
            .unwrap_err()
            .contains("unreadable"));
        assert!(!d.exists());
        let _ = fs::remove_dir_all(&home);
    }

    #[test]
    fn a_restore_copies_the_disk_of_the_root_save() {
        let home = std::env::temp_dir().join(format!("msb-tpl-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&home);
        let mut s = shape(512);
        s.upper_bytes = 1 << 20;
        let d = dir(&home, &s);
        fs::create_dir_all(d.join("root")).unwrap();
        let f = fs::File::create(d.join("root").join("upper")).unwrap();
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"superblock", 1024).unwrap();
        let dst = home.join("upper.ext4");
        fs::write(&dst, b"an empty disk").unwrap();
        assert_eq!(copy_upper(&d, &s, &dst).unwrap(), 1 << 20);
        let got = fs::read(&dst).unwrap();
        assert_eq!(&got[1024..1034], b"superblock");
        assert_eq!(got.len(), 1 << 20);
        // A disk of another size than the template's is refused.
        s.upper_bytes = 2 << 20;
        assert!(copy_upper(&d, &s, &dst).unwrap_err().contains("expected"));
        let _ = fs::remove_dir_all(&home);
    }

    #[test]
    fn exec_uris_quote_the_path() {
        assert_eq!(sh_quote(Path::new("/a b/it's")), "'/a b/it'\\''s'");
    }
}
