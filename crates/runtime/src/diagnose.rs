//! What the guest's logs say about a boot or a VM that ended: the last lines of a log,
//! and the likely cause of a failed boot in words for the error.

use std::fs;
use std::path::Path;

/// What a guest's kernel log says about a boot that failed, in words for the error.
pub fn boot_failure_cause(log: &str, memory_mib: u32) -> Option<String> {
    let panic = log
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_string());
    let oom = [
        "deadlocked on memory",
        "Out of memory",
        "out_of_memory",
        "oom-kill",
        "Initramfs unpacking failed",
    ];
    if oom.iter().any(|p| log.contains(p)) {
        return Some(format!(
            "the guest ran out of memory while booting ({memory_mib} MiB; {}): give it more memory",
            panic.as_deref().unwrap_or("out of memory")
        ));
    }
    panic.map(|p| format!("the guest kernel panicked while booting ({p})"))
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::boot_failure_cause;

    #[test]
    fn a_boot_that_ran_out_of_memory_says_so() {
        let log = "[    0.67] Kernel panic - not syncing: System is deadlocked on memory\n[    0.67]  out_of_memory.cold+0x2f/0x7e\n";
        let c = boot_failure_cause(log, 64).unwrap();
        assert!(c.contains("ran out of memory while booting (64 MiB"), "{c}");
        assert!(c.contains("System is deadlocked on memory"), "{c}");
        let c = boot_failure_cause(
            "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root\n",
            512,
        )
        .unwrap();
        assert_eq!(
            c,
            "the guest kernel panicked while booting (Kernel panic - not syncing: VFS: Unable to mount root)"
        );
        assert_eq!(boot_failure_cause("all fine\n", 512), None);
    }
}
