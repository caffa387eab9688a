//! The sandbox configuration msb-runtime receives on stdin (JSON, camelCase).

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::RtError;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub name: String,
    pub msb_home: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub image: PathBuf,
    pub cpus: u8,
    pub memory_mib: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub attached: bool,
    /// Attached only: when the creator exits without stopping the sandbox (a crash,
    /// SIGKILL), remove it (row, disks, logs) instead of leaving it stopped.
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_ms: u64,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub max_duration_secs: Option<u64>,
    /// The SDK's view of the configuration, stored as the sandbox's config (opaque here).
    #[serde(default)]
    pub sdk_config: serde_json::Value,
    #[serde(default)]
    pub mounts: Vec<MountCfg>,
    /// Filesystem of a disk image when detection cannot tell (e.g. qcow2); None: detect.
    #[serde(default)]
    pub image_fstype: Option<String>,
    /// Verbosity of this runtime's log: trace, debug, info (default), warn, error.
    #[serde(default)]
    pub log_level: Option<String>,
    /// The network (msb_netstack::NetConfig as JSON); None: no NIC at all.
    #[serde(default)]
    pub network: Option<serde_json::Value>,
}

/// A volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountCfg {
    pub guest_path: String,
    /// "bind" (source: host dir), "named" (source: volume name), "tmpfs".
    pub kind: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, rename = "sizeMiB")]
    pub size_mib: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new sandbox: the name must be free.
    #[default]
    Create,
    /// Boot a stopped sandbox again, keeping its writable disk.
    Start,
}

fn default_boot_timeout() -> u64 {
    60_000
}

/// Smallest guest memory accepted, in MiB (the SDK's `MIN_MEMORY_MIB` is the same).
pub const MIN_MEMORY_MIB: u32 = 128;

impl Config {
    /// The SDK validates too; this is the last line for anything that reaches us directly.
    pub fn validate(&self) -> Result<(), RtError> {
        let bad =
            |field: &str, why: &str| Err(RtError::new("invalidConfig", format!("{field}: {why}")));
        let n = &self.name;
        if n.is_empty() || n.len() > 63 {
            return bad("name", "must be 1 to 63 characters");
        }
        if !n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return bad("name", "may contain only letters, digits, '_', '.', '-' and must start with a letter or digit");
        }
        if self.cpus == 0 {
            return bad("cpus", "must be at least 1");
        }
        // The smallest guest that boots every time (measured: 64 MiB never does, 80 MiB
        // boots in 12-15 s under memory pressure, 96 MiB and up normally).
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad("memoryMib", &format!("must be at least {MIN_MEMORY_MIB}"));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return bad("workdir", "must be an absolute path");
            }
        }
        if self.idle_timeout_secs == Some(0) {
            return bad("idleTimeoutSecs", "must be at least 1");
        }
        if self.max_duration_secs == Some(0) {
            return bad("maxDurationSecs", "must be at least 1");
        }
        for (i, m) in self.mounts.iter().enumerate() {
            let field = format!("mounts[{i}]");
            if !m.guest_path.starts_with('/') || m.guest_path.split('/').any(|c| c == "..") {
                return bad(
                    &field,
                    &format!("guest path {} must be absolute", m.guest_path),
                );
            }
            match (m.kind.as_str(), m.source.as_deref()) {
                ("bind", Some(src)) => {
                    let p = std::path::Path::new(src);
                    if !p.is_absolute() || !p.is_dir() {
                        return bad(
                            &field,
                            &format!("bind source {src} is not an existing host directory"),
                        );
                    }
                }
                ("named", Some(name)) => {
                    let ok = name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphanumeric())
                        && name.len() <= 63
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                    if !ok {
                        return bad(&field, &format!("invalid volume name {name}"));
                    }
                }
                ("tmpfs", _) => {
                    if m.size_mib == Some(0) {
                        return bad(&field, "tmpfs size must be at least 1 MiB");
                    }
                }
                (kind, _) => {
                    return bad(
                        &field,
                        &format!("unknown volume kind {kind} or missing source"),
                    )
                }
            }
        }
        if let Some(l) = &self.log_level {
            if !["trace", "debug", "info", "warn", "error"].contains(&l.as_str()) {
                return bad("logLevel", "must be trace, debug, info, warn or error");
            }
        }
        if !self.msb_home.is_absolute() {
            return bad("msbHome", "must be an absolute path");
        }
        Ok(())
    }
}
