//! The configuration msb-runtime receives on stdin: the SDK builds it (typed by the
//! generated `RuntimeConfig`), the addon's `startSandbox` passes it on, the runtime reads
//! and checks it here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Default of [`RuntimeConfig::boot_timeout_ms`]: the runtime enforces it, the addon waits
/// a little longer as a backstop.
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 60_000;

/// Smallest guest memory accepted, in MiB (measured: 64 MiB never boots, 80 MiB boots in
/// 12-15 s under memory pressure, 96 MiB and up normally).
pub const MIN_MEMORY_MIB: u32 = 128;

/// Accepted values of [`RuntimeConfig::log_level`].
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub name: String,
    pub msb_home: PathBuf,
    /// msb-runtime's own path: used by the addon to start it (the runtime ignores it).
    #[serde(default)]
    pub runtime_path: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub image: PathBuf,
    pub cpus: u8,
    pub memory_mib: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Default user of commands (`name`, `uid` or `uid:gid`); root when absent.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// false: detached (msb-runtime calls setsid and outlives the creating process).
    #[serde(default)]
    pub attached: bool,
    /// When the VM ends, however it ends (a stop, kill, drain, idle timeout, the creator
    /// exiting, a crash of the guest), remove the sandbox (row, disks, logs) instead of
    /// leaving it stopped. Attached or detached.
    #[serde(default)]
    pub ephemeral: bool,
    /// Boot from a memory template of this sandbox's shape when there is one, and make
    /// one when there is not (msb-runtime's `MSB_TEMPLATES=off` turns them off for all).
    #[serde(default = "default_true")]
    pub memory_template: bool,
    #[serde(default = "default_boot_timeout")]
    #[ts(type = "number")]
    pub boot_timeout_ms: u64,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    #[ts(type = "number | null")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(default)]
    #[ts(type = "number | null")]
    pub max_duration_secs: Option<u64>,
    /// The SDK's view of the configuration, stored verbatim as the sandbox's config
    /// (opaque here; never a registry password).
    #[serde(default)]
    #[ts(type = "unknown")]
    pub sdk_config: serde_json::Value,
    /// Volumes (virtiofs for bind and named ones, tmpfs in the guest).
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// Create mode only: the new sandbox's writable disk starts as a copy of this file (a
    /// disk snapshot's `upper.ext4`, copied sparse or reflinked) instead of an empty one.
    #[serde(default)]
    pub upper_source: Option<PathBuf>,
    /// Create mode only: a fork. The directory a running sandbox saved itself into
    /// (`Fork`): the new sandbox restores that memory and device state instead of booting,
    /// on `upper_source` (the parent's disk copied at the same moment).
    #[serde(default)]
    pub fork_from: Option<PathBuf>,
    /// Filesystem of a disk image when detection cannot tell (e.g. qcow2); None: detect.
    #[serde(default)]
    pub image_fstype: Option<String>,
    /// Verbosity of msb-runtime's log (one of [`LOG_LEVELS`]); None: info.
    #[serde(default)]
    #[ts(type = "\"trace\" | \"debug\" | \"info\" | \"warn\" | \"error\" | null")]
    pub log_level: Option<String>,
    /// The network (`msb_netstack::NetConfig`, checked by the stack); None: no NIC at all.
    #[serde(default)]
    #[ts(as = "Option<msb_netstack::NetConfig>")]
    pub network: Option<serde_json::Value>,
    /// The values of `network.secrets`, by env var. Only ever on msb-runtime's stdin:
    /// never stored, logged or passed to the guest. A secret without a value here has its
    /// placeholder blocked everywhere.
    #[serde(default, skip_serializing)]
    #[ts(
        as = "Option<Vec<msb_netstack::secrets_config::SecretValue>>",
        optional
    )]
    pub secret_values: Vec<msb_netstack::secrets_config::SecretValue>,
}

/// A volume as msb-runtime takes it.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase")]
pub struct MountConfig {
    /// Absolute path inside the guest.
    pub guest_path: String,
    pub kind: MountKind,
    /// bind: absolute host directory; named: volume name; tmpfs: none.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    /// tmpfs only: size cap in MiB (None: the guest's default).
    #[serde(default, rename = "sizeMiB")]
    #[ts(type = "number | null")]
    pub size_mib: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host directory over virtiofs.
    Bind,
    /// A named volume under `$MSB_HOME/volumes`, over virtiofs.
    Named,
    /// A tmpfs in the guest.
    Tmpfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, TS)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new sandbox: the name must be free.
    #[default]
    Create,
    /// Boot a stopped sandbox again, keeping its writable disk.
    Start,
}

fn default_true() -> bool {
    true
}

fn default_boot_timeout() -> u64 {
    DEFAULT_BOOT_TIMEOUT_MS
}

/// A field of the configuration that is not acceptable: `"<field>: <why>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl RuntimeConfig {
    /// The SDK validates too; this is the last line for anything that reaches the runtime
    /// directly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| {
            Err(ConfigError {
                field: field.into(),
                why: why.into(),
            })
        };
        let n = &self.name;
        if n.is_empty() || n.len() > 63 {
            return bad("name", "must be 1 to 63 characters");
        }
        if !valid_name(n) {
            return bad("name", "may contain only letters, digits, '_', '.', '-' and must start with a letter or digit");
        }
        if self.cpus == 0 {
            return bad("cpus", "must be at least 1");
        }
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
            match (m.kind, m.source.as_deref()) {
                (MountKind::Bind, Some(src)) => {
                    let p = std::path::Path::new(src);
                    if !p.is_absolute() || !p.is_dir() {
                        return bad(
                            &field,
                            &format!("bind source {src} is not an existing host directory"),
                        );
                    }
                }
                (MountKind::Named, Some(name)) => {
                    if !valid_name(name) {
                        return bad(&field, &format!("invalid volume name {name}"));
                    }
                }
                (MountKind::Tmpfs, _) => {
                    if m.size_mib == Some(0) {
                        return bad(&field, "tmpfs size must be at least 1 MiB");
                    }
                }
                (kind, None) => {
                    return bad(
                        &field,
                        &format!("a {} volume needs a source", kind.as_str()),
                    )
                }
            }
        }
        if let Some(l) = &self.log_level {
            if !LOG_LEVELS.contains(&l.as_str()) {
                return bad("logLevel", "must be trace, debug, info, warn or error");
            }
        }
        if !self.msb_home.is_absolute() {
            return bad("msbHome", "must be an absolute path");
        }
        if let Some(u) = &self.upper_source {
            if self.mode != Mode::Create {
                return bad(
                    "upperSource",
                    "only a new sandbox (mode create) starts from a copy",
                );
            }
            if !u.is_absolute() {
                return bad("upperSource", "must be an absolute path");
            }
        }
        if let Some(f) = &self.fork_from {
            if self.mode != Mode::Create || !f.is_absolute() {
                return bad(
                    "forkFrom",
                    "must be an absolute path, for a new sandbox (mode create)",
                );
            }
            if self.upper_source.is_none() {
                return bad("forkFrom", "a fork needs upperSource (its parent's disk)");
            }
            if !self.mounts.is_empty() {
                return bad("forkFrom", "a fork has no volumes");
            }
        }
        Ok(())
    }
}

impl MountKind {
    pub const ALL: [MountKind; 3] = [MountKind::Bind, MountKind::Named, MountKind::Tmpfs];

    pub fn as_str(&self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Named => "named",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> RuntimeConfig {
        let mut v = serde_json::json!({
            "name": "w1", "msbHome": "/tmp/h", "kernel": "/k", "initramfs": "/i", "image": "/img",
            "cpus": 1, "memoryMib": 256
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn upper_source_is_for_a_new_sandbox_and_an_absolute_path() {
        assert_eq!(config(serde_json::json!({})).validate(), Ok(()));
        assert_eq!(
            config(serde_json::json!({"upperSource": "/s/upper.ext4"})).validate(),
            Ok(())
        );
        let field = |e: Result<(), ConfigError>| e.unwrap_err().field;
        assert_eq!(
            field(config(serde_json::json!({"upperSource": "rel/upper.ext4"})).validate()),
            "upperSource"
        );
        assert_eq!(
            field(
                config(serde_json::json!({"upperSource": "/s/upper.ext4", "mode": "start"}))
                    .validate()
            ),
            "upperSource"
        );
    }

    #[test]
    fn a_fork_is_a_new_sandbox_with_its_parents_disk() {
        let ok =
            serde_json::json!({"forkFrom": "/h/forks/f", "upperSource": "/h/forks/f/upper.ext4"});
        assert_eq!(config(ok).validate(), Ok(()));
        let field = |v: serde_json::Value| config(v).validate().unwrap_err();
        let e = field(serde_json::json!({"forkFrom": "/h/forks/f"}));
        assert_eq!(e.field, "forkFrom");
        assert!(e.why.contains("upperSource"), "{e}");
        let e = field(serde_json::json!({"forkFrom": "rel", "upperSource": "/u"}));
        assert_eq!(e.field, "forkFrom");
        assert!(e.why.contains("absolute"), "{e}");
        let e = field(serde_json::json!({
            "forkFrom": "/f", "upperSource": "/u",
            "mounts": [{"guestPath": "/t", "kind": "tmpfs"}]
        }));
        assert_eq!(
            (e.field.as_str(), e.why.as_str()),
            ("forkFrom", "a fork has no volumes")
        );
    }
}
