//! Rendering the contract as one TypeScript module.

use std::collections::BTreeMap;

use msb_netstack::config::Group;
use msb_netstack::secrets_config::{
    ViolationKind, DEFAULT_INTERCEPTED_PORTS, MAX_PLACEHOLDER_LEN, MAX_SECRETS,
    MAX_SECRET_VALUE_LEN,
};
use msb_protocol::{
    ExecRequest, FsEntry, FsOp, MetricsReport, TtySize, PROTOCOL_VERSION, RLIMIT_NAMES,
};
use msb_store::SandboxStatus;
use ts_rs::{Config, TypeVisitor, TS};

use crate::{
    ErrorCode, MountKind, RuntimeConfig, SessionEvent, DEFAULT_BOOT_TIMEOUT_MS, LOG_LEVELS,
    MIN_MEMORY_MIB,
};

/// Collects the declaration of every visited type and, recursively, of its dependencies.
struct Collector<'a> {
    cfg: &'a Config,
    decls: BTreeMap<String, String>,
}

impl TypeVisitor for Collector<'_> {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        // Only named, declarable types (not primitives, arrays, tuples, options).
        if T::output_path().is_none() {
            return;
        }
        let name = T::ident(self.cfg);
        if self.decls.contains_key(&name) {
            return;
        }
        let mut out = T::docs().unwrap_or_default();
        out.push_str("export ");
        out.push_str(&T::decl(self.cfg));
        self.decls.insert(name, out);
        T::visit_dependencies(self);
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain values serialize")
}

fn const_list<T: serde::Serialize>(doc: &str, name: &str, ty: &str, items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(json).collect();
    format!(
        "/** {doc} */\nexport const {name} = [{}] as const satisfies readonly {ty}[];\n",
        items.join(", ")
    )
}

/// The whole generated module, deterministic (types in name order).
pub fn typescript() -> String {
    let cfg = Config::new();
    let mut c = Collector {
        cfg: &cfg,
        decls: BTreeMap::new(),
    };
    c.visit::<ExecRequest>();
    c.visit::<TtySize>();
    c.visit::<FsOp>();
    c.visit::<FsEntry>();
    c.visit::<MetricsReport>();
    c.visit::<SessionEvent>();
    c.visit::<RuntimeConfig>();
    c.visit::<ErrorCode>();
    c.visit::<SandboxStatus>();

    let mut out = String::from(
        "// Generated from the Rust types by crates/contract: do not edit.\n\
         // Regenerate with `MSB_BLESS=1 cargo test -p msb-contract`; the test fails while\n\
         // this file differs from what the types give.\n\n",
    );
    for decl in c.decls.values() {
        out.push_str(decl);
        out.push_str("\n\n");
    }
    out.push_str(&const_list(
        "Every error code of the native side.",
        "ERROR_CODES",
        "ErrorCode",
        &ErrorCode::ALL,
    ));
    out.push_str(&const_list(
        "Every status a sandbox can have.",
        "SANDBOX_STATUSES",
        "SandboxStatus",
        &SandboxStatus::ALL,
    ));
    out.push_str(&const_list(
        "The address groups a network rule can name.",
        "GROUPS",
        "Group",
        &Group::ALL,
    ));
    out.push_str(&const_list(
        "The volume kinds msb-runtime mounts.",
        "MOUNT_KINDS",
        "MountKind",
        &MountKind::ALL,
    ));
    out.push_str(&const_list(
        "The verbosity levels of msb-runtime's log.",
        "LOG_LEVELS",
        "NonNullable<RuntimeConfig[\"logLevel\"]>",
        &LOG_LEVELS,
    ));
    out.push_str(&const_list(
        "The resource limits an exec request may set (setrlimit's RLIMIT_*, lower case).",
        "RLIMIT_RESOURCES",
        "string",
        &RLIMIT_NAMES,
    ));
    out.push_str(&const_list(
        "What a secret violation does.",
        "VIOLATION_KINDS",
        "ViolationKind",
        &ViolationKind::ALL,
    ));
    out.push_str(&const_list(
        "Ports whose TLS is intercepted when `tls.interceptedPorts` is not given.",
        "DEFAULT_INTERCEPTED_PORTS",
        "number",
        &DEFAULT_INTERCEPTED_PORTS,
    ));
    out.push_str(&format!(
        "/** Longest secret placeholder, in bytes. */\n\
         export const MAX_PLACEHOLDER_LEN = {MAX_PLACEHOLDER_LEN};\n\
         /** Longest secret value, in bytes. */\n\
         export const MAX_SECRET_VALUE_LEN = {MAX_SECRET_VALUE_LEN};\n\
         /** Most secrets per sandbox. */\n\
         export const MAX_SECRETS = {MAX_SECRETS};\n",
    ));
    out.push_str(&format!(
        "/** Boot timeout msb-runtime applies when the config gives none. */\n\
         export const DEFAULT_BOOT_TIMEOUT_MS = {DEFAULT_BOOT_TIMEOUT_MS};\n\
         /** Smallest guest memory msb-runtime accepts, in MiB. */\n\
         export const MIN_MEMORY_MIB = {MIN_MEMORY_MIB};\n\
         /** Version of the host <-> guest protocol of this build. */\n\
         export const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True when `indices` (one per list entry) are exactly 0..n: every variant once.
    fn covers(indices: impl Iterator<Item = usize>, n: usize) -> bool {
        let mut seen: Vec<usize> = indices.collect();
        seen.sort();
        seen == (0..n).collect::<Vec<_>>()
    }

    /// The value lists rendered above hold every variant exactly once. The index matches
    /// are exhaustive: a new variant does not compile until it has an index here, and
    /// the test then fails until its list has it.
    #[test]
    fn value_lists_hold_every_variant_once() {
        let group = |g: &Group| match g {
            Group::Public => 0,
            Group::Private => 1,
            Group::Loopback => 2,
            Group::LinkLocal => 3,
            Group::Metadata => 4,
            Group::Host => 5,
            Group::Any => 6,
        };
        assert!(covers(Group::ALL.iter().map(group), 7));
        let status = |s: &SandboxStatus| match s {
            SandboxStatus::Starting => 0,
            SandboxStatus::Running => 1,
            SandboxStatus::Draining => 2,
            SandboxStatus::Stopped => 3,
            SandboxStatus::Crashed => 4,
            SandboxStatus::Paused => 5,
        };
        assert!(covers(SandboxStatus::ALL.iter().map(status), 6));
        let kind = |k: &MountKind| match k {
            MountKind::Bind => 0,
            MountKind::Named => 1,
            MountKind::Tmpfs => 2,
        };
        assert!(covers(MountKind::ALL.iter().map(kind), 3));
        let vk = |k: &ViolationKind| match k {
            ViolationKind::Block => 0,
            ViolationKind::BlockAndLog => 1,
            ViolationKind::BlockAndTerminate => 2,
        };
        assert!(covers(ViolationKind::ALL.iter().map(vk), 3));
        // as_str is the serde name
        for s in SandboxStatus::ALL {
            assert_eq!(json(&s), format!("\"{}\"", s.as_str()));
        }
        for k in MountKind::ALL {
            assert_eq!(json(&k), format!("\"{}\"", k.as_str()));
        }
    }

    #[test]
    fn the_module_declares_every_root_type_once() {
        let ts = typescript();
        for name in [
            "ExecRequest",
            "TtySize",
            "FsOp",
            "FsEntry",
            "MetricsReport",
            "SessionEvent",
            "RuntimeConfig",
            "MountConfig",
            "NetConfig",
            "Policy",
            "Rule",
            "Target",
            "ErrorCode",
            "SandboxStatus",
        ] {
            let decl = format!("export type {name} = ");
            assert_eq!(ts.matches(&decl).count(), 1, "{name}");
        }
    }
}
