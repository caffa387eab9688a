//! Forks of a running sandbox.
//!
//! The parent (its main loop, on the client's `Fork{dir}`) stops its vCPUs, saves its
//! memory and device state into `dir` the way a memory template is saved
//! (template::save_stopped), copies its writable disk there (reflinked or sparse: the
//! VM is stopped, so memory and disk agree), writes `fork.json`, and runs on. The SDK
//! then creates the child with `forkFrom: dir` and `upperSource: dir/upper.ext4`: its
//! runtime starts QEMU with the same device layout and `-incoming defer`, loads the
//! state, says hello to the (already bootstrapped) agent and sends it `Forked`: fresh
//! entropy, the time, its own hostname, and the first request id that is its own (the
//! parent's sessions, below it, are forgotten on both sides).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Request ids the parent may still hand out after its next id was read: a fork's own
/// ids start this far above it, so they never meet a session the parent had open.
const ID_MARGIN: u32 = 1 << 16;
/// Largest fork.json read back.
const MAX_INFO_BYTES: u64 = 16 * 1024;

/// What the parent records for its child (`fork.json`); the child checks it is of the
/// same layout before loading anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkInfo {
    pub parent: String,
    pub first_id: u32,
    pub image: PathBuf,
    pub cpus: u8,
    pub memory_mib: u32,
    pub network: bool,
    /// The parent's NIC is a frame stream (`-netdev stream`), not vhost-user: the fork's
    /// must be the same (the device state was negotiated with it).
    #[serde(default)]
    pub net_stream: bool,
}

/// The first request id of a fork whose parent's relay would hand out `next` next.
pub fn first_id(next: u32) -> u32 {
    next.saturating_add(ID_MARGIN)
}

/// Where a fork's directory may be: `$MSB_HOME/forks/<name>`, a real directory (not a
/// link), so that a client cannot make the runtime write elsewhere.
pub fn check_dir(home: &Path, dir: &Path) -> Result<(), String> {
    let forks = home.join("forks");
    let ok_place = dir.parent() == Some(forks.as_path())
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.') && !n.contains('/'));
    if !ok_place {
        return Err(format!(
            "a fork's directory must be directly under {}",
            forks.display()
        ));
    }
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

pub fn write_info(dir: &Path, info: &ForkInfo) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(info).map_err(|e| e.to_string())?;
    fs::write(dir.join("fork.json"), text).map_err(|e| format!("fork.json: {e}"))
}

pub fn read_info(dir: &Path) -> Result<ForkInfo, String> {
    let p = dir.join("fork.json");
    let f = msb_store::sparse::open_regular_nofollow(&p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_INFO_BYTES {
        return Err(format!("{} is {len} bytes: not a fork's", p.display()));
    }
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INFO_BYTES), &mut text)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))
}

/// The child's configuration must give the parent's device layout: same image, vCPUs,
/// memory, network on or off.
pub fn check_layout(info: &ForkInfo, mine: &ForkInfo) -> Result<(), String> {
    let diff = |what: &str, a: String, b: String| {
        Err(format!(
            "the fork's {what} ({b}) is not its parent's ({a}): a fork keeps its parent's layout"
        ))
    };
    if info.image != mine.image {
        return diff(
            "image",
            info.image.display().to_string(),
            mine.image.display().to_string(),
        );
    }
    if info.cpus != mine.cpus {
        return diff("cpus", info.cpus.to_string(), mine.cpus.to_string());
    }
    if info.memory_mib != mine.memory_mib {
        return diff(
            "memory",
            info.memory_mib.to_string(),
            mine.memory_mib.to_string(),
        );
    }
    if info.network != mine.network {
        return diff(
            "network",
            info.network.to_string(),
            mine.network.to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ForkInfo {
        ForkInfo {
            parent: "p".into(),
            first_id: first_id(3),
            image: "/img".into(),
            cpus: 1,
            memory_mib: 512,
            network: true,
            net_stream: true,
        }
    }

    #[test]
    fn a_forks_ids_start_well_above_its_parents() {
        assert_eq!(first_id(3), 3 + 65_536);
        assert_eq!(first_id(u32::MAX - 1), u32::MAX);
    }

    #[test]
    fn the_fork_directory_is_under_forks_and_real() {
        let home = std::env::temp_dir().join(format!("msb-fork-test-{}", std::process::id()));
        let forks = home.join("forks");
        fs::create_dir_all(forks.join("f1")).unwrap();
        assert_eq!(check_dir(&home, &forks.join("f1")), Ok(()));
        assert!(check_dir(&home, &home.join("f1")).is_err());
        assert!(check_dir(&home, &forks.join("f1/..")).is_err());
        assert!(check_dir(&home, &forks.join(".hidden")).is_err());
        std::os::unix::fs::symlink("/tmp", forks.join("link")).unwrap();
        let e = check_dir(&home, &forks.join("link")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        assert!(check_dir(&home, &forks.join("missing")).is_err());
        // fork.json round-trips; an oversized one is refused.
        write_info(&forks.join("f1"), &info()).unwrap();
        assert_eq!(read_info(&forks.join("f1")).unwrap(), info());
        fs::write(forks.join("f1/fork.json"), vec![b' '; 20_000]).unwrap();
        assert!(read_info(&forks.join("f1"))
            .unwrap_err()
            .contains("not a fork's"));
        let _ = fs::remove_dir_all(&home);
    }

    #[test]
    fn a_fork_keeps_its_parents_layout() {
        assert_eq!(check_layout(&info(), &info()), Ok(()));
        let e = check_layout(
            &info(),
            &ForkInfo {
                memory_mib: 1024,
                ..info()
            },
        )
        .unwrap_err();
        assert!(e.contains("memory (1024) is not its parent's (512)"), "{e}");
        assert!(check_layout(
            &info(),
            &ForkInfo {
                network: false,
                ..info()
            }
        )
        .is_err());
    }
}
