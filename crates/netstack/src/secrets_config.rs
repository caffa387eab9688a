//! Configuration of secrets and TLS interception (`NetConfig.tls`, `NetConfig.secrets`)
//! and the secret values, which travel apart from it (`RuntimeConfig.secretValues`, on
//! msb-runtime's stdin only) so that the stored configuration never holds them.

use serde::{Deserialize, Deserializer, Serialize};
use ts_rs::TS;
use zeroize::Zeroizing;

/// Default of [`TlsConfig::intercepted_ports`].
pub const DEFAULT_INTERCEPTED_PORTS: [u16; 1] = [443];
/// Longest placeholder accepted, in bytes.
pub const MAX_PLACEHOLDER_LEN: usize = 1024;
/// Longest secret value accepted, in bytes.
pub const MAX_SECRET_VALUE_LEN: usize = 64 * 1024;
/// Most secrets per sandbox.
pub const MAX_SECRETS: usize = 64;
/// Largest Content-Length body buffered for substitution or scanning (16 MiB).
pub const MAX_BODY_SCAN_BYTES: usize = 16 * 1024 * 1024;

fn default_true() -> bool {
    true
}
fn default_ports() -> Vec<u16> {
    DEFAULT_INTERCEPTED_PORTS.to_vec()
}

/// TLS interception. Present (`Some`) exactly when the sandbox has secrets or asked for
/// `tls(...)`; absent, every flow is spliced as before and nothing of this runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Host names (exact, or `*.suffix`, which also matches `suffix`) whose TLS is never
    /// terminated: spliced through untouched (certificate-pinning clients).
    #[serde(default)]
    pub bypass: Vec<String>,
    /// Verify the upstream's certificate (host roots plus `upstreamCaCertPaths`).
    /// Substitution additionally needs a verified upstream when a secret requires TLS
    /// identity.
    #[serde(default = "default_true")]
    pub verify_upstream: bool,
    /// Destination ports whose TLS is intercepted (default `[443]`).
    #[serde(default = "default_ports")]
    pub intercepted_ports: Vec<u16>,
    /// Drop UDP to intercepted ports (QUIC), so that clients fall back to TCP.
    #[serde(default = "default_true")]
    pub block_quic: bool,
    /// Extra trust anchors for upstream verification: PEM files on the host.
    #[serde(default)]
    pub upstream_ca_cert_paths: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            bypass: vec![],
            verify_upstream: true,
            intercepted_ports: default_ports(),
            block_quic: true,
            upstream_ca_cert_paths: vec![],
        }
    }
}

/// Where in a request a secret may be substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretInjection {
    /// Header values (HTTP/1 header lines, HTTP/2 header blocks).
    #[serde(default = "default_true")]
    pub headers: bool,
    /// Inside `Authorization: Basic` credentials (decoded, substituted, re-encoded).
    #[serde(default = "default_true")]
    pub basic_auth: bool,
    /// The query part of the request target.
    #[serde(default)]
    pub query_params: bool,
    /// Identity-encoded request bodies (Content-Length up to 16 MiB, or chunked).
    #[serde(default)]
    pub body: bool,
}

impl Default for SecretInjection {
    fn default() -> Self {
        SecretInjection {
            headers: true,
            basic_auth: true,
            query_params: false,
            body: false,
        }
    }
}

/// What happens when a placeholder is headed to a host that may not receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// Answer 403 and close the stream, silently.
    Block,
    /// Block and write a line to runtime.log naming the env var (never the value).
    #[default]
    BlockAndLog,
    /// Block, log, and stop the sandbox.
    BlockAndTerminate,
}

impl ViolationKind {
    /// Every kind (the TypeScript `VIOLATION_KINDS` list is generated from it).
    pub const ALL: [ViolationKind; 3] = [
        ViolationKind::Block,
        ViolationKind::BlockAndLog,
        ViolationKind::BlockAndTerminate,
    ];
}

/// A violation action: what to do, and the hosts that may receive the placeholder as
/// is (unsubstituted) without it being a violation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ViolationAction {
    #[serde(default)]
    pub action: ViolationKind,
    #[serde(default)]
    pub passthrough_hosts: Vec<String>,
    /// `*.suffix` patterns (also matching `suffix`).
    #[serde(default)]
    pub passthrough_host_patterns: Vec<String>,
    #[serde(default)]
    pub passthrough_all_hosts: bool,
}

/// One secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRule {
    /// The guest environment variable that holds the placeholder.
    pub env_var: String,
    /// What the guest sees instead of the value (default `$MSB_<envVar>`).
    pub placeholder: String,
    /// Exact host names that receive the value.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `*.suffix` patterns (also matching `suffix`) that receive the value.
    #[serde(default)]
    pub allowed_host_patterns: Vec<String>,
    /// Every host receives the value (dangerous).
    #[serde(default)]
    pub allow_any_host: bool,
    /// Substitute only over an upstream whose certificate was verified.
    #[serde(default = "default_true")]
    pub require_tls_identity: bool,
    #[serde(default)]
    pub injection: SecretInjection,
    #[serde(default)]
    pub on_violation: ViolationAction,
}

/// A secret's value, by env var. Held zeroized; `Debug` never prints it; it is never
/// serialized back (TypeScript writes it, only msb-runtime reads it).
#[derive(Clone, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretValue {
    pub env_var: String,
    #[serde(deserialize_with = "zeroizing_string")]
    #[ts(type = "string")]
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("env_var", &self.env_var)
            .field("value", &"<redacted>")
            .finish()
    }
}

fn zeroizing_string<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// A host pattern matches `name`: `*.example.com` matches `example.com` and every name
/// below it; anything else matches exactly. Both sides lower case, no trailing dot.
pub fn host_pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name == suffix
                || (name.len() > suffix.len()
                    && name.ends_with(suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
        }
        None => pattern == name,
    }
}

fn valid_host(h: &str) -> bool {
    h.len() <= 253
        && !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// A host name or `*.suffix` pattern as the config must hold it (lower case, no port,
/// no scheme, no trailing dot; a pattern's suffix has at least two labels).
pub fn valid_host_pattern(p: &str) -> bool {
    match p.strip_prefix("*.") {
        Some(s) => valid_host(s) && s.contains('.'),
        None => valid_host(p),
    }
}

/// Check secrets and TLS against each other (called from `NetConfig::validate`).
pub fn validate(tls: Option<&TlsConfig>, secrets: &[SecretRule]) -> Result<(), String> {
    if !secrets.is_empty() && tls.is_none() {
        return Err("secrets need tls (interception) to be configured".into());
    }
    if secrets.len() > MAX_SECRETS {
        return Err(format!("at most {MAX_SECRETS} secrets"));
    }
    if let Some(t) = tls {
        if t.intercepted_ports.is_empty() || t.intercepted_ports.contains(&0) {
            return Err("tls.interceptedPorts must be non-empty ports 1..=65535".into());
        }
        for b in &t.bypass {
            if !valid_host_pattern(b) {
                return Err(format!("tls.bypass {b:?} is not a host name or *.suffix"));
            }
        }
    }
    let mut envs = std::collections::HashSet::new();
    let mut placeholders = std::collections::HashSet::new();
    for (i, s) in secrets.iter().enumerate() {
        let f = |m: &str| format!("secrets[{i}].{m}");
        if s.env_var.is_empty() || s.env_var.contains(['=', '\0']) {
            return Err(f("envVar must be non-empty without '=' or NUL"));
        }
        if !envs.insert(s.env_var.as_str()) {
            return Err(f("envVar is a duplicate"));
        }
        let p = &s.placeholder;
        if p.is_empty() || p.len() > MAX_PLACEHOLDER_LEN || p.contains(['\0', '\r', '\n']) {
            return Err(f(
                "placeholder must be 1..=1024 bytes without NUL, CR or LF",
            ));
        }
        if !placeholders.insert(p.as_str()) {
            return Err(f("placeholder is a duplicate"));
        }
        for h in s
            .allowed_hosts
            .iter()
            .chain(&s.on_violation.passthrough_hosts)
        {
            if !valid_host(h) {
                return Err(f(&format!("host {h:?} is not a host name")));
            }
        }
        for h in s
            .allowed_host_patterns
            .iter()
            .chain(&s.on_violation.passthrough_host_patterns)
        {
            if !valid_host_pattern(h) {
                return Err(f(&format!("pattern {h:?} is not *.suffix or a host name")));
            }
        }
        if s.allowed_hosts.is_empty() && s.allowed_host_patterns.is_empty() && !s.allow_any_host {
            return Err(f("needs at least one allowed host"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(host_pattern_matches("*.example.com", "example.com"));
        assert!(host_pattern_matches("*.example.com", "a.b.example.com"));
        assert!(!host_pattern_matches("*.example.com", "badexample.com"));
        assert!(host_pattern_matches("api.x.test", "api.x.test"));
        assert!(!host_pattern_matches("api.x.test", "b.api.x.test"));
        assert!(valid_host_pattern("*.openai.com"));
        assert!(!valid_host_pattern("*.com"));
        assert!(!valid_host_pattern("*"));
        assert!(!valid_host_pattern("x:443"));
        assert!(!valid_host_pattern("https://x"));
        assert!(!valid_host_pattern("Upper.com"));
    }

    #[test]
    fn value_debug_is_redacted() {
        let v: SecretValue = serde_json::from_str(r#"{"envVar":"K","value":"S3cr3t"}"#).unwrap();
        assert_eq!(v.value.as_str(), "S3cr3t");
        assert!(!format!("{v:?}").contains("S3cr3t"));
    }

    #[test]
    fn defaults_and_checks() {
        let s: SecretRule = serde_json::from_str(
            r#"{"envVar":"K","placeholder":"$MSB_K","allowedHosts":["api.x.test"]}"#,
        )
        .unwrap();
        assert!(s.require_tls_identity && s.injection.headers && s.injection.basic_auth);
        assert!(!s.injection.query_params && !s.injection.body);
        assert_eq!(s.on_violation.action, ViolationKind::BlockAndLog);
        let tls = TlsConfig::default();
        assert_eq!(tls.intercepted_ports, vec![443]);
        assert!(validate(Some(&tls), std::slice::from_ref(&s)).is_ok());
        assert!(validate(None, std::slice::from_ref(&s)).is_err());
        let mut two = vec![s.clone(), s.clone()];
        assert!(validate(Some(&tls), &two)
            .unwrap_err()
            .contains("duplicate"));
        two[1].env_var = "L".into();
        assert!(validate(Some(&tls), &two)
            .unwrap_err()
            .contains("placeholder"));
    }
}
