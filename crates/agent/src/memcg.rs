//! A memory reserve for the agent.
//!
//! Every command runs in one cgroup (`/sys/fs/cgroup/msb-commands`) whose `memory.max`
//! is the memory available at bootstrap less a reserve; the agent (PID 1) stays in the
//! root cgroup.
//! Without it, a command filling a tmpfs past RAM (pages no kill gives back) leaves the
//! OOM killer nothing but PID 1 at the agent's next allocation, and the kernel panics
//! ("System is deadlocked on memory"): the sandbox dies instead of the command. With
//! it, the cgroup's own OOM killer picks among the commands and the agent keeps serving.
//!
//! A command is born in the cgroup (spawn.rs: clone3 with CLONE_INTO_CGROUP), so nothing
//! it does runs outside it.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

const ROOT: &str = "/sys/fs/cgroup";
const GROUP: &str = "/sys/fs/cgroup/msb-commands";
const MIB: u64 = 1 << 20;

/// The cgroup's directory, once bootstrap made the cgroup; unset (commands stay in the
/// root) otherwise.
static GROUP_DIR: OnceLock<OwnedFd> = OnceLock::new();

/// Memory kept out of the commands' reach: 1/16 of the guest's, 16 to 64 MiB.
pub fn reserve_bytes(mem_total: u64) -> u64 {
    (mem_total / 16).clamp(16 * MIB, 64 * MIB)
}

/// `memory.max` for the commands' cgroup, from /proc/meminfo at bootstrap: what is
/// available then (the kernel, the agent and the initramfs already took theirs) less
/// the reserve (from MemTotal).
pub fn commands_max(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    let (total, available) = (field("MemTotal")?, field("MemAvailable")?);
    available
        .checked_sub(reserve_bytes(total))
        .filter(|&m| m > 0)
}

/// Mounts cgroup2 and makes the commands' cgroup: nothing sandbox-specific, so before
/// the hello (a memory template has it made). /sys, and this mount with it, moves into
/// the sandbox's root at bootstrap.
pub fn prepare() {
    match try_prepare() {
        Ok(()) => GROUP_MADE.store(true, Ordering::Relaxed),
        Err(e) => crate::log(&format!("no memory reserve for the agent: {e}")),
    }
}

/// At bootstrap: the cgroup's `memory.max`, from the memory available now.
pub fn setup() {
    if !GROUP_MADE.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = try_setup() {
        crate::log(&format!("no memory reserve for the agent: {e}"));
    }
}

/// Whether `prepare` made the cgroup.
static GROUP_MADE: AtomicBool = AtomicBool::new(false);

fn try_prepare() -> Result<(), String> {
    if !Path::new(ROOT).join("cgroup.controllers").exists() {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // favordynmods: moving a task into a cgroup (every command, exec.rs) no longer
        // waits for an RCU grace period (measured: the first command after a restore
        // 70 ms -> 47 ms), forks and exits paying a little instead. Older kernels lack it.
        crate::sys::mount("cgroup2", ROOT, "cgroup2", flags, "favordynmods")
            .or_else(|_| crate::sys::mount("cgroup2", ROOT, "cgroup2", flags, ""))?;
    }
    let controllers = fs::read_to_string(format!("{ROOT}/cgroup.controllers"))
        .map_err(|e| format!("cgroup.controllers: {e}"))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err("the kernel has no memory controller".into());
    }
    fs::write(format!("{ROOT}/cgroup.subtree_control"), "+memory")
        .map_err(|e| format!("cgroup.subtree_control: {e}"))?;
    match fs::create_dir(GROUP) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("mkdir {GROUP}: {e}")),
    }
}

fn try_setup() -> Result<(), String> {
    let meminfo = fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let max = commands_max(&meminfo).ok_or("no MemTotal/MemAvailable in /proc/meminfo")?;
    fs::write(format!("{GROUP}/memory.max"), max.to_string())
        .map_err(|e| format!("memory.max: {e}"))?;
    let dir = fs::File::open(GROUP).map_err(|e| format!("open {GROUP}: {e}"))?;
    let _ = GROUP_DIR.set(dir.into());
    Ok(())
}

/// The commands' cgroup directory (for clone3's CLONE_INTO_CGROUP), once bootstrap made
/// the cgroup.
pub fn group_dir() -> Option<RawFd> {
    GROUP_DIR.get().map(|fd| fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_sixteenth_within_16_and_64_mib() {
        assert_eq!(reserve_bytes(128 * MIB), 16 * MIB);
        assert_eq!(reserve_bytes(512 * MIB), 32 * MIB);
        assert_eq!(reserve_bytes(4096 * MIB), 64 * MIB);
    }

    #[test]
    fn commands_max_is_what_is_available_less_the_reserve() {
        let m = "MemTotal:         245000 kB\nMemFree:          200000 kB\nMemAvailable:     220000 kB\n";
        assert_eq!(commands_max(m), Some(220_000 * 1024 - 16 * MIB));
        assert_eq!(commands_max("MemTotal: 245000 kB\n"), None);
        // less available than the reserve
        assert_eq!(
            commands_max("MemTotal: 245000 kB\nMemAvailable: 1000 kB\n"),
            None
        );
        assert_eq!(
            commands_max("MemTotal: lots kB\nMemAvailable: 1000 kB\n"),
            None
        );
    }
}
