//! The secret substitution and violation engine: pure functions over bytes, no I/O and
//! no HTTP types, so the TLS/hyper data path decides *where* (which header, target,
//! body) and this file decides *what* (substitute, leave, or block).
//!
//! Per request the data path builds a [`Plan`] from the request's [`Gates`]. Every secret
//! is then in one of three states:
//! - *eligible*: its placeholder is replaced by its value in the scopes its `injection`
//!   enables and left as is elsewhere;
//! - *passthrough*: not eligible, but the host is one of its `on_violation` passthrough
//!   hosts: left as is everywhere;
//! - *blocked*: its placeholder anywhere in the request is a [`Violation`]; it is also
//!   looked for after percent-decoding and JSON-unescaping (and inside Basic
//!   credentials).
//!
//! A "placeholder occurrence" is a match of one Aho-Corasick pass with leftmost-longest
//! semantics over all placeholders at once: `$MSB_API` is not found inside
//! `$MSB_API_KEY`. Values are only ever written where such a match of an eligible secret
//! was, so a value never reaches a host that may not have it.

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::secrets_config::{host_pattern_matches, SecretRule, SecretValue, ViolationKind};

/// The request's facts the gates need, decided by the data path per request.
#[derive(Debug, Clone)]
pub struct Gates {
    /// SNI of the guest's ClientHello, lower case, no trailing dot ("" when plain HTTP / none).
    pub sni: String,
    /// The destination address was resolved by this sandbox for `sni` (DNS pin), or is the
    /// host alias for host.microsandbox.internal.
    pub dns_pinned: bool,
    /// The upstream's certificate was verified for `sni`.
    pub upstream_verified: bool,
    /// The request's Host / :authority (port stripped, lower case, no trailing dot) equals `sni`.
    pub authority_matches: bool,
    /// The flow is TLS that we terminated (false for plain HTTP).
    pub intercepted_tls: bool,
}

/// Where in a request a placeholder was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A header value.
    Header,
    /// A header name (never substituted).
    HeaderName,
    /// Inside decoded `Authorization: Basic` / `Proxy-Authorization: Basic` credentials.
    BasicAuth,
    /// The query part of the request target.
    Query,
    /// The body.
    Body,
    /// The request target before the query (path, or an absolute-form URL; never
    /// substituted).
    Target,
}

impl Scope {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Header => "header",
            Scope::HeaderName => "header name",
            Scope::BasicAuth => "basic auth credentials",
            Scope::Query => "query",
            Scope::Body => "body",
            Scope::Target => "request path",
        })
    }
}

/// Why a secret's placeholder may not go where it was found (the first gate that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not TLS that we terminated (plain HTTP).
    NotInterceptedTls,
    /// The SNI is not among the secret's allowed hosts.
    NotAllowedHost,
    /// The destination was not resolved by this sandbox for the SNI.
    NotDnsPinned,
    /// Host / :authority differs from the SNI.
    AuthorityMismatch,
    /// The secret requires TLS identity and the upstream certificate was not verified.
    UpstreamUnverified,
    /// The sandbox was started without this secret's value.
    NoValue,
    /// Eligible, but the value holds bytes a header value may not carry (CR, LF, NUL,
    /// other controls but HTAB, DEL): substituting it would corrupt or inject headers.
    UnsafeHeaderValue,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotInterceptedTls => "not intercepted TLS",
            Reason::NotAllowedHost => "not an allowed host",
            Reason::NotDnsPinned => "destination not resolved by this sandbox for that name",
            Reason::AuthorityMismatch => "Host/:authority differs from the TLS server name",
            Reason::UpstreamUnverified => "upstream certificate not verified",
            Reason::NoValue => "no value given to this sandbox run",
            Reason::UnsafeHeaderValue => "value has bytes a header may not carry",
        })
    }
}

/// A placeholder found where it may not go. Its Display/Debug names the env var and the
/// scope, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub env_var: String,
    pub action: ViolationKind,
    pub scope: Scope,
    /// The SNI of the request ("" when none).
    pub host: String,
    pub reason: Reason,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.is_empty() {
            "<no TLS server name>"
        } else {
            &self.host
        };
        write!(
            f,
            "secret {}: placeholder in {} to {} ({})",
            self.env_var, self.scope, host, self.reason
        )
    }
}

impl std::error::Error for Violation {}

/// One secret: its rule and, when the sandbox was given it, its value.
struct Entry {
    rule: SecretRule,
    value: Option<Zeroizing<String>>,
    /// The value percent-encoded for the query (every byte but RFC 3986 unreserved).
    query_value: Option<Zeroizing<String>>,
    /// The value may stand in a header value as is.
    header_safe: bool,
}

struct Inner {
    entries: Vec<Entry>,
    /// Leftmost-longest over every non-empty placeholder.
    ac: AhoCorasick,
    /// Pattern id -> index into `entries`.
    pattern_entry: Vec<usize>,
    max_len: usize,
}

/// The secrets of a sandbox: rules, zeroized values, and the placeholder matcher.
pub struct Secrets {
    inner: Arc<Inner>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct E<'a>(&'a Entry);
        impl fmt::Debug for E<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Secret")
                    .field("env_var", &self.0.rule.env_var)
                    .field("placeholder", &self.0.rule.placeholder)
                    .field("value", &self.0.value.as_ref().map(|_| "<redacted>"))
                    .finish()
            }
        }
        f.debug_struct("Secrets")
            .field(
                "secrets",
                &self.inner.entries.iter().map(E).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Base64 of Basic credentials: standard alphabet, padding optional on input.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A byte a header value may carry (the `http` crate's rule: visible ASCII, SP, HTAB,
/// obs-text).
fn header_byte_ok(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Percent-encode every byte but the RFC 3986 unreserved ones, so that the upstream's
/// query decoding yields exactly the value (`+`, `&`, `=`, `#` would otherwise change
/// the query's meaning). Sized once, so no partial copy of the value is left in a freed
/// buffer.
fn query_encode(v: &str) -> Zeroizing<String> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let len = v.bytes().map(|b| if keep(b) { 1 } else { 3 }).sum();
    let mut out = Zeroizing::new(String::with_capacity(len));
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in v.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

impl Secrets {
    /// Rules with their values joined by env var. A rule without a value is kept: its
    /// placeholder is never substituted and is a violation everywhere (except passthrough
    /// hosts) — a restarted sandbox without its values.
    pub fn new(rules: &[SecretRule], values: &[SecretValue]) -> Secrets {
        let entries: Vec<Entry> = rules
            .iter()
            .map(|rule| {
                let value = values
                    .iter()
                    .find(|v| v.env_var == rule.env_var)
                    .map(|v| v.value.clone());
                Entry {
                    rule: rule.clone(),
                    query_value: value.as_deref().map(|v| query_encode(v)),
                    header_safe: value
                        .as_deref()
                        .is_none_or(|v| v.bytes().all(header_byte_ok)),
                    value,
                }
            })
            .collect();
        // An empty pattern would match everywhere; config validation forbids it, and
        // here such a rule simply never matches.
        let (patterns, pattern_entry): (Vec<&[u8]>, Vec<usize>) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.rule.placeholder.is_empty())
            .map(|(i, e)| (e.rule.placeholder.as_bytes(), i))
            .unzip();
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        // Bounded by MAX_SECRETS * MAX_PLACEHOLDER_LEN (64 KiB), far below the
        // automaton's limits.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("placeholder automaton within size limits");
        Secrets {
            inner: Arc::new(Inner {
                entries,
                ac,
                pattern_entry,
                max_len,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Env vars of rules that have no value (the runtime logs them at start).
    pub fn missing_values(&self) -> Vec<String> {
        self.inner
            .entries
            .iter()
            .filter(|e| e.value.is_none())
            .map(|e| e.rule.env_var.clone())
            .collect()
    }

    /// Longest placeholder length in bytes (streaming carry = this - 1).
    pub fn max_placeholder_len(&self) -> usize {
        self.inner.max_len
    }

    /// What one request may do with each secret.
    pub fn plan(&self, gates: &Gates) -> Plan {
        let host = gates.sni.trim_end_matches('.').to_ascii_lowercase();
        let states: Arc<[State]> = self
            .inner
            .entries
            .iter()
            .map(|e| state(e, gates, &host))
            .collect();
        let mut blocked = false;
        let mut subst = 0u8;
        for (e, s) in self.inner.entries.iter().zip(states.iter()) {
            match s {
                State::Blocked(_) => blocked = true,
                State::Passthrough => {}
                State::Eligible => {
                    for scope in [Scope::Header, Scope::BasicAuth, Scope::Query, Scope::Body] {
                        if injects(&e.rule, scope) {
                            subst |= scope.bit();
                        }
                    }
                }
            }
        }
        Plan {
            inner: self.inner.clone(),
            states,
            host: host.into(),
            blocked,
            subst,
        }
    }
}

/// A secret's state in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Eligible,
    Passthrough,
    Blocked(Reason),
}

fn state(e: &Entry, g: &Gates, host: &str) -> State {
    let r = &e.rule;
    let allowed = !host.is_empty()
        && (r.allow_any_host
            || r.allowed_hosts.iter().any(|h| h == host)
            || r.allowed_host_patterns
                .iter()
                .any(|p| host_pattern_matches(p, host)));
    let reason = if !g.intercepted_tls {
        Some(Reason::NotInterceptedTls)
    } else if !allowed {
        Some(Reason::NotAllowedHost)
    } else if !g.dns_pinned {
        Some(Reason::NotDnsPinned)
    } else if !g.authority_matches {
        Some(Reason::AuthorityMismatch)
    } else if r.require_tls_identity && !g.upstream_verified {
        Some(Reason::UpstreamUnverified)
    } else if e.value.is_none() {
        Some(Reason::NoValue)
    } else {
        None
    };
    let Some(reason) = reason else {
        return State::Eligible;
    };
    let v = &r.on_violation;
    let passthrough = v.passthrough_all_hosts
        || (!host.is_empty()
            && (v.passthrough_hosts.iter().any(|h| h == host)
                || v.passthrough_host_patterns
                    .iter()
                    .any(|p| host_pattern_matches(p, host))));
    if passthrough {
        State::Passthrough
    } else {
        State::Blocked(reason)
    }
}

/// The rule lets an eligible secret be substituted in `scope`.
fn injects(r: &SecretRule, scope: Scope) -> bool {
    match scope {
        Scope::Header => r.injection.headers,
        Scope::BasicAuth => r.injection.basic_auth,
        Scope::Query => r.injection.query_params,
        Scope::Body => r.injection.body,
        Scope::HeaderName | Scope::Target => false,
    }
}

/// Scope of a match by where it starts: `before` below `split`, `after` from it on (the
/// target's path and query).
#[derive(Clone, Copy)]
struct Scopes {
    split: usize,
    before: Scope,
    after: Scope,
}

impl Scopes {
    fn one(s: Scope) -> Scopes {
        Scopes {
            split: 0,
            before: s,
            after: s,
        }
    }
    fn at(&self, pos: usize) -> Scope {
        if pos < self.split {
            self.before
        } else {
            self.after
        }
    }
}

/// A placeholder to replace: `text[start..end]` becomes entry `entry`'s value for `scope`.
struct Rep {
    start: usize,
    end: usize,
    entry: usize,
    scope: Scope,
}

/// What one request may do with each secret (computed once per request from [`Gates`]).
/// Cheap to clone.
#[derive(Clone)]
pub struct Plan {
    inner: Arc<Inner>,
    states: Arc<[State]>,
    host: Arc<str>,
    /// Some secret is blocked: every scope must be scanned, decoded forms too.
    blocked: bool,
    /// `Scope::bit`s in which some eligible secret is substituted.
    subst: u8,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states: Vec<(&str, State)> = self
            .inner
            .entries
            .iter()
            .map(|e| e.rule.env_var.as_str())
            .zip(self.states.iter().copied())
            .collect();
        f.debug_struct("Plan")
            .field("host", &self.host)
            .field("secrets", &states)
            .finish()
    }
}

impl Plan {
    /// True when no secret can be substituted in this request and none can be a
    /// violation (e.g. no secrets) — lets the data path skip work.
    pub fn is_noop(&self) -> bool {
        !self.blocked && self.subst == 0
    }

    /// The body must go through [`Plan::body`] or [`Plan::body_stream`]: some secret is
    /// eligible with body scope, or some secret is blocked (the body is scanned for it).
    pub fn wants_body(&self) -> bool {
        self.needs(Scope::Body)
    }

    fn needs(&self, scope: Scope) -> bool {
        self.blocked || self.subst & scope.bit() != 0
    }

    /// Rewrite one header value. `Ok(None)`: unchanged; `Ok(Some(new))`: substituted.
    /// The name is checked too (never substituted). For `Authorization` /
    /// `Proxy-Authorization: Basic <base64>` the credentials are decoded, substituted with
    /// basic-auth scope and re-encoded (standard alphabet, padded); the base64 text itself
    /// is only checked.
    pub fn header(&self, name: &str, value: &[u8]) -> Result<Option<Vec<u8>>, Violation> {
        if self.is_noop() {
            return Ok(None);
        }
        self.rewrite(name.as_bytes(), Scopes::one(Scope::HeaderName), false)?;
        self.check_name_any_case(name)?;
        if name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            if let Some(b) = parse_basic(value) {
                return self.basic(value, b);
            }
        }
        self.rewrite(value, Scopes::one(Scope::Header), true)
    }

    /// Header names arrive lower-cased (hyper's HTTP/1 parser; HTTP/2 by rule), so the
    /// exact match above never sees an upper-case placeholder such as `$MSB_API_KEY`
    /// there: a blocked placeholder in a name is also looked for ignoring ASCII case.
    fn check_name_any_case(&self, name: &str) -> Result<(), Violation> {
        if !self.blocked {
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        for (i, e) in self.inner.entries.iter().enumerate() {
            if let State::Blocked(reason) = self.states[i] {
                let p = e.rule.placeholder.to_ascii_lowercase();
                if !p.is_empty() && name.contains(&p) {
                    return Err(self.violation(i, Scope::HeaderName, reason));
                }
            }
        }
        Ok(())
    }

    fn basic(&self, value: &[u8], b: Basic) -> Result<Option<Vec<u8>>, Violation> {
        self.rewrite(value, Scopes::one(Scope::Header), false)?;
        let Some(new) = self.rewrite(&b.decoded, Scopes::one(Scope::BasicAuth), true)? else {
            return Ok(None);
        };
        let new = Zeroizing::new(new);
        let enc = base64::encoded_len(new.len(), true).expect("credentials length");
        let mut out = Vec::with_capacity(value.len() - (b.end - b.start) + enc);
        out.extend_from_slice(&value[..b.start]);
        out.resize(b.start + enc, 0);
        STANDARD
            .encode_slice(&new[..], &mut out[b.start..])
            .expect("buffer sized for the encoding");
        out.extend_from_slice(&value[b.end..]);
        Ok(Some(out))
    }

    /// Rewrite the request target (origin-form `path?query`, or absolute-form). Only the
    /// query (after the first `?`) is substituted, for secrets with `query_params`, and
    /// with the value percent-encoded (RFC 3986 unreserved bytes kept), so the upstream's
    /// decoded parameter is exactly the value. A blocked secret's placeholder anywhere in
    /// the target is a violation.
    pub fn target(&self, target: &str) -> Result<Option<String>, Violation> {
        if self.is_noop() {
            return Ok(None);
        }
        let split = target.find('?').map_or(target.len(), |i| i + 1);
        let scopes = Scopes {
            split,
            before: Scope::Target,
            after: Scope::Query,
        };
        let Some(out) = self.rewrite(target.as_bytes(), scopes, true)? else {
            return Ok(None);
        };
        // Matches of UTF-8 placeholders in UTF-8 text lie on char boundaries and the
        // replacements are ASCII, so this cannot fail; the error (which holds the bytes)
        // is dropped unprinted.
        match String::from_utf8(out) {
            Ok(s) => Ok(Some(s)),
            Err(_) => unreachable!("query substitution keeps UTF-8"),
        }
    }

    /// Rewrite a whole identity body (the data path buffers Content-Length bodies up to
    /// `MAX_BODY_SCAN_BYTES`). `Ok(None)` when unchanged or when the body need not be
    /// looked at ([`Plan::wants_body`] false).
    pub fn body(&self, body: &[u8]) -> Result<Option<Vec<u8>>, Violation> {
        if !self.wants_body() {
            return Ok(None);
        }
        self.rewrite(body, Scopes::one(Scope::Body), true)
    }

    /// Streaming body rewriter for chunked / HTTP/2 bodies: the same output as
    /// [`Plan::body`] on the concatenation of the chunks, whatever their split.
    pub fn body_stream(&self) -> BodyStream {
        let active = self.wants_body();
        let carry = self.inner.max_len.saturating_sub(1);
        // With a blocked secret the raw bytes are held back long enough that an encoded
        // placeholder (up to 6 raw bytes per decoded byte, `\u0024`) is seen decoded
        // before any of it is released, plus the decoder's pending escape (< 12 bytes).
        let hold = if self.blocked {
            6 * self.inner.max_len + 24
        } else {
            carry
        };
        BodyStream {
            plan: self.clone(),
            active,
            hold,
            raw: Vec::new(),
            pending: Vec::new(),
            decoded: Vec::new(),
            failed: None,
        }
    }

    fn violation(&self, entry: usize, scope: Scope, reason: Reason) -> Violation {
        let r = &self.inner.entries[entry].rule;
        Violation {
            env_var: r.env_var.clone(),
            action: r.on_violation.action,
            scope,
            host: self.host.to_string(),
            reason,
        }
    }

    /// Decide one placeholder occurrence: `Ok(true)` to substitute it, `Ok(false)` to
    /// leave it.
    fn decide(&self, entry: usize, scope: Scope, substitute: bool) -> Result<bool, Violation> {
        match self.states[entry] {
            State::Blocked(reason) => Err(self.violation(entry, scope, reason)),
            State::Passthrough => Ok(false),
            State::Eligible => {
                let e = &self.inner.entries[entry];
                if !substitute || !injects(&e.rule, scope) {
                    Ok(false)
                } else if scope == Scope::Header && !e.header_safe {
                    Err(self.violation(entry, scope, Reason::UnsafeHeaderValue))
                } else {
                    Ok(true)
                }
            }
        }
    }

    fn replacement(&self, rep: &Rep) -> &[u8] {
        let e = &self.inner.entries[rep.entry];
        let v = if rep.scope == Scope::Query {
            e.query_value.as_deref()
        } else {
            e.value.as_deref()
        };
        // Only eligible secrets, which have values, are substituted.
        v.map_or(&[][..], |v| v.as_bytes())
    }

    /// `text` with the replacements applied, allocated once at its final size.
    fn splice(&self, text: &[u8], reps: &[Rep]) -> Vec<u8> {
        let len = reps.iter().fold(text.len(), |n, r| {
            n - (r.end - r.start) + self.replacement(r).len()
        });
        let mut out = Vec::with_capacity(len);
        let mut at = 0;
        for r in reps {
            out.extend_from_slice(&text[at..r.start]);
            out.extend_from_slice(self.replacement(r));
            at = r.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }

    /// One whole text: substitute (when `substitute`) and check the raw text, then check
    /// its decoded form.
    fn rewrite(
        &self,
        text: &[u8],
        scopes: Scopes,
        substitute: bool,
    ) -> Result<Option<Vec<u8>>, Violation> {
        if !self.needs(scopes.before) && !self.needs(scopes.after) {
            return Ok(None);
        }
        let mut reps = Vec::new();
        for m in self.inner.ac.find_iter(text) {
            let entry = self.inner.pattern_entry[m.pattern().as_usize()];
            let scope = scopes.at(m.start());
            if self.decide(entry, scope, substitute)? {
                reps.push(Rep {
                    start: m.start(),
                    end: m.end(),
                    entry,
                    scope,
                });
            }
        }
        self.check_decoded(text, scopes)?;
        Ok((!reps.is_empty()).then(|| self.splice(text, &reps)))
    }

    /// A blocked secret's placeholder in `text` after percent-decoding / JSON-unescaping.
    fn check_decoded(&self, text: &[u8], scopes: Scopes) -> Result<(), Violation> {
        // Without an escape the decoded text is the raw text, already checked.
        if !self.blocked || !text.iter().any(|&b| b == b'%' || b == b'\\') {
            return Ok(());
        }
        let split = scopes.split.min(text.len());
        let mut d = Vec::with_capacity(text.len());
        decode_escapes(&text[..split], true, &mut d);
        let dsplit = d.len();
        decode_escapes(&text[split..], true, &mut d);
        for m in self.inner.ac.find_iter(&d) {
            let entry = self.inner.pattern_entry[m.pattern().as_usize()];
            if let State::Blocked(reason) = self.states[entry] {
                let scope = if m.start() < dsplit {
                    scopes.before
                } else {
                    scopes.after
                };
                return Err(self.violation(entry, scope, reason));
            }
        }
        Ok(())
    }

    /// The leftmost-longest matches of `buf` that more input cannot change, given that
    /// at least `hold + 1 >= max_len` bytes after a match start must be known (unless
    /// `last`). Calls `f` on each; returns how many bytes of `buf` are decided.
    fn decided(
        &self,
        buf: &[u8],
        hold: usize,
        last: bool,
        mut f: impl FnMut(aho_corasick::Match) -> Result<(), Violation>,
    ) -> Result<usize, Violation> {
        // No match can start before `safe` and still grow or be overtaken by one that
        // starts earlier: every pattern starting there fits in the known bytes.
        let safe = if last {
            buf.len()
        } else {
            buf.len().saturating_sub(hold)
        };
        let mut end = 0;
        for m in self.inner.ac.find_iter(buf) {
            if !last && m.start() >= safe {
                break;
            }
            f(m)?;
            end = m.end();
        }
        Ok(safe.max(end))
    }
}

/// `Basic <token68>`: where the token is, and its decoding.
struct Basic {
    start: usize,
    end: usize,
    decoded: Zeroizing<Vec<u8>>,
}

fn parse_basic(value: &[u8]) -> Option<Basic> {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let lead = value.iter().take_while(|b| ws(b)).count();
    let v = &value[lead..];
    if !v.get(..5)?.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let gap = v[5..].iter().take_while(|b| ws(b)).count();
    if gap == 0 {
        return None;
    }
    let start = lead + 5 + gap;
    let end = start + value[start..].iter().take_while(|b| !ws(b)).count();
    if end == start || !value[end..].iter().all(ws) {
        return None;
    }
    let decoded = Zeroizing::new(BASIC_B64.decode(&value[start..end]).ok()?);
    Some(Basic {
        start,
        end,
        decoded,
    })
}

fn hex(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// `s` is a prefix of `\u` followed by hex digits (so more input could complete it).
fn is_u_escape_prefix(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &b)| match i {
        0 => b == b'\\',
        1 => b == b'u',
        _ => b.is_ascii_hexdigit(),
    })
}

/// One escape at the start of `s`: `Some((decoded bytes, input used))`, or `None` when
/// `s` may be a cut-off escape and more input is to come (`!last`). A `%` or `\` that
/// starts no escape is a literal byte.
fn decode_one(s: &[u8], last: bool, out: &mut Vec<u8>) -> Option<usize> {
    match s[0] {
        b'%' => {
            if s.len() < 3 && !last && s[1..].iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            match (
                s.get(1).copied().and_then(hex),
                s.get(2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h << 4 | l) as u8);
                    Some(3)
                }
                _ => {
                    out.push(b'%');
                    Some(1)
                }
            }
        }
        b'\\' => {
            if s.len() < 2 && !last {
                return None;
            }
            match s.get(1) {
                Some(b'/') | Some(b'"') => {
                    out.push(s[1]);
                    return Some(2);
                }
                Some(b'u') => {}
                _ => {
                    out.push(b'\\');
                    return Some(1);
                }
            }
            if s.len() < 6 && !last && is_u_escape_prefix(s) {
                return None;
            }
            let cp = |t: &[u8]| -> Option<u32> {
                if t.len() < 6 || !t.starts_with(b"\\u") {
                    return None;
                }
                t[2..6].iter().try_fold(0, |a, &b| Some(a << 4 | hex(b)?))
            };
            let literal = |out: &mut Vec<u8>| {
                out.push(b'\\');
                Some(1)
            };
            let Some(hi) = cp(s) else {
                return literal(out);
            };
            let c = match hi {
                0xD800..=0xDBFF => {
                    if s.len() < 12 && !last && is_u_escape_prefix(&s[6..]) {
                        return None;
                    }
                    match cp(&s[6..]) {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            let c = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
                            let c = c.expect("surrogate pair is a scalar value");
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                            return Some(12);
                        }
                        _ => return literal(out),
                    }
                }
                // A lone low surrogate is no character.
                0xDC00..=0xDFFF => return literal(out),
                c => char::from_u32(c).expect("BMP non-surrogate is a scalar value"),
            };
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            Some(6)
        }
        b => {
            out.push(b);
            Some(1)
        }
    }
}

/// Decode `%XX` (hex either case; `+` stays) and JSON `\uXXXX` (surrogate pairs joined),
/// `\/` and `\"` in one left-to-right pass, appending to `out`. Returns how much of
/// `input` was used: all of it when `last`, else all but a cut-off escape at the end.
/// Decoding in pieces this way gives the same bytes as decoding the whole.
fn decode_escapes(input: &[u8], last: bool, out: &mut Vec<u8>) -> usize {
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest[0] != b'%' && rest[0] != b'\\' {
            // Fast path: copy up to the next possible escape.
            let n = rest
                .iter()
                .position(|&b| b == b'%' || b == b'\\')
                .unwrap_or(rest.len());
            out.extend_from_slice(&rest[..n]);
            i += n;
            continue;
        }
        match decode_one(rest, last, out) {
            Some(n) => i += n,
            None => break,
        }
    }
    i
}

/// Streaming body rewriter (see [`Plan::body_stream`]). After a violation every call
/// returns it again.
pub struct BodyStream {
    plan: Plan,
    /// The plan wants the body; otherwise chunks pass through untouched.
    active: bool,
    /// Raw bytes held back after the last decided position (>= max placeholder - 1).
    hold: usize,
    /// Raw input not yet released.
    raw: Vec<u8>,
    /// Raw input the decoder has not consumed (a cut-off escape).
    pending: Vec<u8>,
    /// Decoded input not yet decided.
    decoded: Vec<u8>,
    failed: Option<Violation>,
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyStream")
            .field("active", &self.active)
            .field("held", &self.raw.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl BodyStream {
    /// Feed a chunk, get the bytes that are final (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Violation> {
        self.step(chunk, false)
    }

    /// End of body: the rest.
    pub fn finish(&mut self) -> Result<Vec<u8>, Violation> {
        self.step(&[], true)
    }

    fn step(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        if !self.active {
            return Ok(chunk.to_vec());
        }
        let r = self.advance(chunk, last);
        if let Err(v) = &r {
            self.failed = Some(v.clone());
            self.raw = Vec::new();
            self.pending = Vec::new();
            self.decoded = Vec::new();
        }
        r
    }

    fn advance(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, Violation> {
        let plan = &self.plan;
        if plan.blocked {
            // The decoded view, checked first so that nothing of an encoded placeholder
            // is released (the raw hold covers it).
            self.pending.extend_from_slice(chunk);
            let used = decode_escapes(&self.pending, last, &mut self.decoded);
            self.pending.drain(..used);
            let carry = plan.inner.max_len.saturating_sub(1);
            let done = plan.decided(&self.decoded, carry, last, |m| {
                let entry = plan.inner.pattern_entry[m.pattern().as_usize()];
                match plan.states[entry] {
                    State::Blocked(reason) => Err(plan.violation(entry, Scope::Body, reason)),
                    _ => Ok(()),
                }
            })?;
            self.decoded.drain(..done);
        }
        self.raw.extend_from_slice(chunk);
        let mut reps = Vec::new();
        let done = plan.decided(&self.raw, self.hold, last, |m| {
            let entry = plan.inner.pattern_entry[m.pattern().as_usize()];
            if plan.decide(entry, Scope::Body, true)? {
                reps.push(Rep {
                    start: m.start(),
                    end: m.end(),
                    entry,
                    scope: Scope::Body,
                });
            }
            Ok(())
        })?;
        let out = plan.splice(&self.raw[..done], &reps);
        self.raw.drain(..done);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets_config::{SecretInjection, ViolationAction};

    /// A distinctive value: no output or message may hold it unless substituted.
    const V: &str = "S3cr3t-Zq9-value";

    fn rule(env: &str, hosts: &[&str]) -> SecretRule {
        SecretRule {
            env_var: env.into(),
            placeholder: format!("$MSB_{env}"),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_host_patterns: vec![],
            allow_any_host: false,
            require_tls_identity: true,
            injection: SecretInjection::default(),
            on_violation: ViolationAction::default(),
        }
    }

    fn val(env: &str, v: &str) -> SecretValue {
        SecretValue {
            env_var: env.into(),
            value: Zeroizing::new(v.into()),
        }
    }

    fn gates(sni: &str) -> Gates {
        Gates {
            sni: sni.into(),
            dns_pinned: true,
            upstream_verified: true,
            authority_matches: true,
            intercepted_tls: true,
        }
    }

    const OK: &str = "api.allowed.test";
    const EVIL: &str = "api.evil.test";

    /// One secret K = V allowed to OK, with `f` applied to its rule.
    fn one(f: impl FnOnce(&mut SecretRule)) -> Secrets {
        let mut r = rule("K", &[OK]);
        f(&mut r);
        Secrets::new(&[r], &[val("K", V)])
    }

    fn s(b: Option<Vec<u8>>) -> Option<String> {
        b.map(|b| String::from_utf8(b).unwrap())
    }

    fn stream_all(plan: &Plan, chunks: &[&[u8]]) -> Result<Vec<u8>, Violation> {
        let mut st = plan.body_stream();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(st.feed(c)?);
        }
        out.extend(st.finish()?);
        Ok(out)
    }

    /// `body()` as the bytes that go upstream.
    fn whole(plan: &Plan, body: &[u8]) -> Result<Vec<u8>, Violation> {
        plan.body(body).map(|o| o.unwrap_or_else(|| body.to_vec()))
    }

    /// Every split of `body` into 2 and 3 chunks streams to what `body()` gives.
    fn assert_stream_matches(plan: &Plan, body: &[u8]) {
        let want = whole(plan, body);
        for i in 0..=body.len() {
            let got = stream_all(plan, &[&body[..i], &body[i..]]);
            assert_eq!(got, want, "2 chunks split at {i}");
            for j in i..=body.len() {
                let got = stream_all(plan, &[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(got, want, "3 chunks split at {i},{j}");
            }
        }
        // Byte by byte.
        let chunks: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(stream_all(plan, &chunks), want, "byte by byte");
    }

    #[test]
    fn send_sync_clone() {
        fn check<T: Send + Sync>() {}
        check::<Secrets>();
        check::<Plan>();
        check::<BodyStream>();
        let p = one(|_| {}).plan(&gates(OK));
        let _cheap: Plan = p.clone();
    }

    #[test]
    fn leftmost_longest() {
        let mut a = rule("API", &[OK]);
        let mut k = rule("API_KEY", &[OK]);
        a.injection.body = true;
        k.injection.body = true;
        let sec = Secrets::new(&[a, k], &[val("API", "v-api"), val("API_KEY", "v-key")]);
        assert_eq!(sec.max_placeholder_len(), "$MSB_API_KEY".len());
        let p = sec.plan(&gates(OK));
        assert_eq!(
            s(p.header("x", b"a $MSB_API_KEY b $MSB_API c $MSB_API_KEYS")
                .unwrap())
            .as_deref(),
            Some("a v-key b v-api c v-keyS")
        );
        let body = b"{\"k\":\"$MSB_API_KEY\",\"a\":\"$MSB_API\",\"x\":\"$MSB_API_KE\"}";
        assert_eq!(
            s(p.body(body).unwrap()).as_deref(),
            Some("{\"k\":\"v-key\",\"a\":\"v-api\",\"x\":\"v-api_KE\"}")
        );
        assert_stream_matches(&p, body);

        // The shorter one blocked here: the longer one's placeholder is not a violation
        // of the shorter.
        let a = rule("API", &[EVIL]);
        let k = rule("API_KEY", &[OK]);
        let sec = Secrets::new(&[a, k], &[val("API", "v-api"), val("API_KEY", "v-key")]);
        let p = sec.plan(&gates(OK));
        assert_eq!(
            s(p.header("x", b"Bearer $MSB_API_KEY").unwrap()).as_deref(),
            Some("Bearer v-key")
        );
        assert_eq!(p.header("x", b"$MSB_API").unwrap_err().env_var, "API");
    }

    #[test]
    fn stream_split_everywhere() {
        let sec = one(|r| r.injection.body = true);
        let p = sec.plan(&gates(OK));
        assert!(p.wants_body());
        let body = b"ab$MSB_K$MSB_Kc$MSB_$MSB_K";
        assert_eq!(
            s(p.body(body).unwrap()).unwrap(),
            format!("ab{V}{V}c$MSB_{V}")
        );
        assert_stream_matches(&p, body);
        assert_stream_matches(&p, b"$MSB_K");
        assert_stream_matches(&p, b"");
        assert_stream_matches(&p, b"no placeholder here at all");

        // With a blocked secret around, the longer hold must not change the output.
        let k = {
            let mut r = rule("K", &[OK]);
            r.injection.body = true;
            r
        };
        let sec = Secrets::new(
            &[k, rule("OTHER", &[EVIL])],
            &[val("K", V), val("OTHER", "o")],
        );
        let p = sec.plan(&gates(OK));
        assert_stream_matches(&p, b"x=%24MSB_K&y=$MSB_K\\u0024MSB_K$MSB_K");
        // ... and a violation is found at every split, raw or encoded.
        for body in [
            &b"data $MSB_OTHER tail"[..],
            b"data %24MSB%5fOTHER tail",
            b"{\"a\":\"\\u0024MSB_OTHER\"}",
            b"\\u0024MSB\\u005fOTHER",
        ] {
            let v = p.body(body).unwrap_err();
            assert_eq!((v.env_var.as_str(), v.scope), ("OTHER", Scope::Body));
            assert_stream_matches(&p, body);
        }
    }

    /// Random texts built from placeholder pieces and escapes, split at random: the stream
    /// gives what `body()` gives (placeholders that overlap without being prefixes of each
    /// other, too).
    #[test]
    fn stream_equals_body_random() {
        let eligible = |env: &str, ph: &str| {
            let mut r = rule(env, &[OK]);
            r.placeholder = ph.into();
            r.injection.body = true;
            r
        };
        let blocked = |env: &str, ph: &str| SecretRule {
            placeholder: ph.into(),
            ..rule(env, &[EVIL])
        };
        let rules = [
            eligible("A", "$MSB_A"),
            eligible("AB", "$MSB_AB"),
            eligible("X", "ABCDE"),
            blocked("Y", "BC"),
            blocked("Z", "$MSB_ABC"),
        ];
        let values: Vec<SecretValue> = ["va", "vab", "vx", "vy", "vz"]
            .iter()
            .zip(&rules)
            .map(|(v, r)| val(&r.env_var, v))
            .collect();
        let sec = Secrets::new(&rules, &values);
        let only_eligible = Secrets::new(&rules[..3], &values[..3]);
        let pieces: [&[u8]; 12] = [
            b"$MSB_", b"A", b"B", b"C", b"DE", b"%24", b"%4", b"\\u0024", b"\\u00", b"\\", b"x",
            b"%42",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for secrets in [&sec, &only_eligible] {
            let p = secrets.plan(&gates(OK));
            for _ in 0..400 {
                let text: Vec<u8> = (0..rnd(12))
                    .flat_map(|_| pieces[rnd(pieces.len())].to_vec())
                    .collect();
                let want = whole(&p, &text);
                for _ in 0..8 {
                    let mut cuts: Vec<usize> = (0..rnd(4)).map(|_| rnd(text.len() + 1)).collect();
                    cuts.sort();
                    let mut chunks = Vec::new();
                    let mut at = 0;
                    for c in cuts.into_iter().chain([text.len()]) {
                        chunks.push(&text[at..c]);
                        at = c;
                    }
                    let got = stream_all(&p, &chunks);
                    // With several blocked secrets present, which one is reported first
                    // may differ; that one is, does not.
                    match (&got, &want) {
                        (Ok(g), Ok(w)) => assert_eq!(g, w, "{:?}", String::from_utf8_lossy(&text)),
                        (Err(_), Err(_)) => {}
                        _ => panic!(
                            "{got:?} != {want:?} for {:?}",
                            String::from_utf8_lossy(&text)
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn stream_releases_early_and_sticks_on_violation() {
        let sec = one(|r| r.injection.body = true);
        let p = sec.plan(&gates(OK));
        let mut st = p.body_stream();
        // Only max_len - 1 bytes are held back.
        let out = st.feed(b"0123456789").unwrap();
        assert_eq!(out, b"01234");
        assert_eq!(st.feed(b"$MSB_K!").unwrap(), format!("56789{V}").as_bytes());
        assert_eq!(st.finish().unwrap(), b"!");

        let p = sec.plan(&gates(EVIL));
        let mut st = p.body_stream();
        assert_eq!(st.feed(b"hello ").unwrap(), b"");
        assert_eq!(st.feed(b"world, and a longer tail").unwrap(), b"");
        assert!(st.feed(b" %24MSB").is_ok());
        let v = st.feed(b"_K").unwrap_err();
        assert_eq!(v.reason, Reason::NotAllowedHost);
        assert_eq!(st.feed(b"more").unwrap_err(), v);
        assert_eq!(st.finish().unwrap_err(), v);
    }

    #[test]
    fn stream_inactive_passes_through() {
        // Eligible, no body scope, nothing blocked: the body is not looked at.
        let p = one(|_| {}).plan(&gates(OK));
        assert!(!p.wants_body());
        assert_eq!(p.body(b"$MSB_K").unwrap(), None);
        let mut st = p.body_stream();
        assert_eq!(st.feed(b"$MSB").unwrap(), b"$MSB");
        assert_eq!(st.feed(b"_K").unwrap(), b"_K");
        assert_eq!(st.finish().unwrap(), b"");
    }

    #[test]
    fn basic_auth() {
        let sec = one(|_| {});
        let p = sec.plan(&gates(OK));
        let hdr = format!("Basic {}", STANDARD.encode("user:$MSB_K"));
        let want = format!("Basic {}", STANDARD.encode(format!("user:{V}")));
        assert_eq!(
            s(p.header("Authorization", hdr.as_bytes()).unwrap()).unwrap(),
            want
        );
        let lower = format!("basic  {}", STANDARD.encode("$MSB_K:x"));
        assert_eq!(
            s(p.header("proxy-authorization", lower.as_bytes()).unwrap()).unwrap(),
            format!("basic  {}", STANDARD.encode(format!("{V}:x")))
        );
        // Unpadded input is accepted; the output is padded.
        let unpadded = format!(
            "Basic {}",
            STANDARD.encode("u:$MSB_K").trim_end_matches('=')
        );
        assert_eq!(
            s(p.header("AUTHORIZATION", unpadded.as_bytes()).unwrap()).unwrap(),
            format!("Basic {}", STANDARD.encode(format!("u:{V}")))
        );
        // No placeholder inside: unchanged.
        let plain = format!("Basic {}", STANDARD.encode("user:pw"));
        assert_eq!(p.header("Authorization", plain.as_bytes()).unwrap(), None);
        // Basic credentials under another header name are just a header value.
        assert_eq!(p.header("X-Auth", hdr.as_bytes()).unwrap(), None);

        // basic_auth off: left as is (the host is allowed).
        let p2 = one(|r| r.injection.basic_auth = false).plan(&gates(OK));
        assert_eq!(p2.header("Authorization", hdr.as_bytes()).unwrap(), None);

        // Not eligible: a violation, in the decoded credentials.
        let v = sec
            .plan(&gates(EVIL))
            .header("Authorization", hdr.as_bytes())
            .unwrap_err();
        assert_eq!(v.scope, Scope::BasicAuth);
        assert_eq!(v.env_var, "K");
        // Percent-encoded inside the credentials, too.
        let enc = format!("Basic {}", STANDARD.encode("user:%24MSB_K"));
        let v = sec
            .plan(&gates(EVIL))
            .header("Authorization", enc.as_bytes())
            .unwrap_err();
        assert_eq!(v.scope, Scope::BasicAuth);
    }

    #[test]
    fn bearer_header_and_scope_off() {
        let sec = one(|_| {});
        let p = sec.plan(&gates(OK));
        assert!(!p.is_noop());
        assert_eq!(
            s(p.header("Authorization", b"Bearer $MSB_K").unwrap()).unwrap(),
            format!("Bearer {V}")
        );
        assert_eq!(p.header("x", b"nothing").unwrap(), None);
        let p = one(|r| r.injection.headers = false).plan(&gates(OK));
        assert_eq!(p.header("Authorization", b"Bearer $MSB_K").unwrap(), None);
        // Encoded forms to the allowed host are left as is, not substituted.
        let p = sec.plan(&gates(OK));
        assert_eq!(p.header("x", b"%24MSB_K").unwrap(), None);
    }

    #[test]
    fn encoded_placeholders_to_other_hosts() {
        let sec = one(|_| {});
        let p = sec.plan(&gates(EVIL));
        assert!(p.wants_body());
        for (what, text) in [
            ("raw", &b"Bearer $MSB_K"[..]),
            ("percent", b"Bearer %24MSB_K"),
            ("percent lower hex", b"%24MSB%5fK"),
            ("percent all", b"%24%4D%53%42%5F%4B"),
            ("json", b"\\u0024MSB_K"),
            ("json upper hex", b"\\u0024MSB\\u005FK"),
            ("mixed", b"\\u0024MSB%5FK"),
        ] {
            let v = p.header("x-api", text).unwrap_err();
            assert_eq!(v.scope, Scope::Header, "{what}");
            assert_eq!(v.reason, Reason::NotAllowedHost, "{what}");
            let v = p.body(text).unwrap_err();
            assert_eq!(v.scope, Scope::Body, "{what}");
            assert_stream_matches(&p, text);
        }
        // `+` is not a space; a broken escape is literal.
        assert_eq!(p.header("x", b"+24MSB_K %2 \\u00").unwrap(), None);
        assert_eq!(p.header("x", b"%2x4MSB_K").unwrap(), None);
        // A JSON-escaped slash inside a placeholder.
        let sec = Secrets::new(
            &[SecretRule {
                placeholder: "{{a/b}}".into(),
                ..rule("S", &[OK])
            }],
            &[val("S", V)],
        );
        let v = sec
            .plan(&gates(EVIL))
            .body(br#"{"x":"{{a\/b}}"}"#)
            .unwrap_err();
        assert_eq!(v.env_var, "S");
        // Header names are checked too.
        let v = p.header("X-$MSB_K", b"v").unwrap_err();
        assert_eq!(v.scope, Scope::HeaderName);
        let v = p.header("x-%24MSB_K", b"v").unwrap_err();
        assert_eq!(v.scope, Scope::HeaderName);
    }

    #[test]
    fn json_surrogates_decode() {
        let mut out = Vec::new();
        assert_eq!(decode_escapes(br"\ud83d\ude00 \u00e9", true, &mut out), 19);
        assert_eq!(out, "😀 é".as_bytes());
        out.clear();
        // Lone surrogates stay literal.
        decode_escapes(br"\ud83d \ude00", true, &mut out);
        assert_eq!(out, br"\ud83d \ude00");
        // A cut-off escape waits for more unless last.
        out.clear();
        assert_eq!(decode_escapes(br"ab\ud83d\ude0", false, &mut out), 2);
        assert_eq!(decode_escapes(b"ab%2", false, &mut Vec::new()), 2);
        assert_eq!(decode_escapes(b"ab%2", true, &mut Vec::new()), 4);
        // Placeholder with a non-ASCII character, JSON-escaped with a surrogate pair.
        let sec = Secrets::new(
            &[SecretRule {
                placeholder: "$MSB_😀".into(),
                ..rule("E", &[OK])
            }],
            &[val("E", V)],
        );
        let p = sec.plan(&gates(EVIL));
        let body = br#"{"k":"$MSB_\ud83d\ude00"}"#;
        assert_eq!(p.body(body).unwrap_err().env_var, "E");
        assert_stream_matches(&p, body);
    }

    #[test]
    fn each_gate() {
        let sec = one(|_| {});
        let hdr = b"Bearer $MSB_K";
        type Tweak = fn(&mut Gates);
        let cases: [(Tweak, Reason); 5] = [
            (|g| g.intercepted_tls = false, Reason::NotInterceptedTls),
            (|g| g.sni = EVIL.into(), Reason::NotAllowedHost),
            (|g| g.dns_pinned = false, Reason::NotDnsPinned),
            (|g| g.authority_matches = false, Reason::AuthorityMismatch),
            (|g| g.upstream_verified = false, Reason::UpstreamUnverified),
        ];
        for (tweak, reason) in cases {
            let mut g = gates(OK);
            tweak(&mut g);
            let p = sec.plan(&g);
            assert!(!p.is_noop());
            let v = p.header("Authorization", hdr).unwrap_err();
            assert_eq!(v.reason, reason);
            assert_eq!(v.action, ViolationKind::BlockAndLog);
            assert_eq!(p.target("/x?k=$MSB_K").unwrap_err().reason, reason);
            assert_eq!(p.body(hdr).unwrap_err().reason, reason);
        }
        // Plain HTTP: no SNI at all.
        let mut g = gates("");
        g.intercepted_tls = false;
        let v = sec.plan(&g).header("a", hdr).unwrap_err();
        assert_eq!(v.reason, Reason::NotInterceptedTls);
        assert!(v.to_string().contains("<no TLS server name>"));
        // An SNI in another case or with a trailing dot is the same host.
        let p = sec.plan(&gates("API.Allowed.Test."));
        assert!(p.header("a", hdr).unwrap().is_some());
        // No TLS identity required: an unverified upstream still gets the value.
        let p = one(|r| r.require_tls_identity = false).plan(&Gates {
            upstream_verified: false,
            ..gates(OK)
        });
        assert_eq!(
            s(p.header("a", hdr).unwrap()).unwrap(),
            format!("Bearer {V}")
        );
    }

    #[test]
    fn host_patterns_and_any_host() {
        let p = one(|r| {
            r.allowed_hosts.clear();
            r.allowed_host_patterns = vec!["*.allowed.test".into()];
        });
        assert!(p
            .plan(&gates("allowed.test"))
            .header("a", b"$MSB_K")
            .unwrap()
            .is_some());
        assert!(p
            .plan(&gates("x.y.allowed.test"))
            .header("a", b"$MSB_K")
            .unwrap()
            .is_some());
        assert!(p
            .plan(&gates("notallowed.test"))
            .header("a", b"$MSB_K")
            .is_err());
        let any = one(|r| {
            r.allowed_hosts.clear();
            r.allow_any_host = true;
        });
        assert!(any
            .plan(&gates(EVIL))
            .header("a", b"$MSB_K")
            .unwrap()
            .is_some());
    }

    #[test]
    fn passthrough_hosts() {
        type Tweak = fn(&mut ViolationAction);
        let cases: [Tweak; 3] = [
            |v| v.passthrough_hosts = vec![EVIL.into()],
            |v| v.passthrough_host_patterns = vec!["*.evil.test".into()],
            |v| v.passthrough_all_hosts = true,
        ];
        for tweak in cases {
            let sec = one(|r| tweak(&mut r.on_violation));
            let p = sec.plan(&gates(EVIL));
            assert!(p.is_noop() && !p.wants_body());
            assert_eq!(p.header("Authorization", b"Bearer $MSB_K").unwrap(), None);
            assert_eq!(p.target("/$MSB_K?q=$MSB_K").unwrap(), None);
            assert_eq!(p.body(b"%24MSB_K $MSB_K").unwrap(), None);
            let mut st = p.body_stream();
            assert_eq!(st.feed(b"$MSB_K").unwrap(), b"$MSB_K");
            // The allowed host still gets the value.
            assert!(sec
                .plan(&gates(OK))
                .header("a", b"$MSB_K")
                .unwrap()
                .is_some());
        }
        // Passthrough of another host does not cover this one.
        let sec = one(|r| r.on_violation.passthrough_hosts = vec!["other.test".into()]);
        assert!(sec.plan(&gates(EVIL)).header("a", b"$MSB_K").is_err());
    }

    #[test]
    fn missing_value() {
        let sec = Secrets::new(&[rule("K", &[OK]), rule("L", &[OK])], &[val("L", V)]);
        assert_eq!(sec.missing_values(), vec!["K".to_string()]);
        assert!(!sec.is_empty());
        let p = sec.plan(&gates(OK));
        let v = p.header("a", b"$MSB_K").unwrap_err();
        assert_eq!((v.env_var.as_str(), v.reason), ("K", Reason::NoValue));
        assert_eq!(s(p.header("a", b"$MSB_L").unwrap()).unwrap(), V.to_string());
        // ... unless passthrough.
        let mut r = rule("K", &[OK]);
        r.on_violation.passthrough_all_hosts = true;
        let p = Secrets::new(&[r], &[]).plan(&gates(OK));
        assert_eq!(p.header("a", b"$MSB_K").unwrap(), None);
    }

    #[test]
    fn query_and_path() {
        let sec = one(|_| {});
        let p = sec.plan(&gates(OK));
        // No query_params: left as is (the host is allowed), path too.
        assert_eq!(p.target("/v1/$MSB_K?key=$MSB_K").unwrap(), None);

        let sec = one(|r| r.injection.query_params = true);
        let p = sec.plan(&gates(OK));
        assert_eq!(
            p.target("/v1/$MSB_K?key=$MSB_K&b=2").unwrap().unwrap(),
            format!("/v1/$MSB_K?key={V}&b=2")
        );
        assert_eq!(p.target("/no/query").unwrap(), None);
        assert_eq!(
            p.target("https://api.allowed.test/x?$MSB_K")
                .unwrap()
                .unwrap(),
            format!("https://api.allowed.test/x?{V}")
        );
        // The value is percent-encoded for the query.
        let mut r = rule("Q", &[OK]);
        r.injection.query_params = true;
        let sec = Secrets::new(&[r], &[val("Q", "a+b/c=d&é ~")]);
        assert_eq!(
            sec.plan(&gates(OK)).target("/?k=$MSB_Q").unwrap().unwrap(),
            "/?k=a%2Bb%2Fc%3Dd%26%C3%A9%20~"
        );

        // To another host: the path and the query are violations, encoded too.
        let p = one(|r| r.injection.query_params = true).plan(&gates(EVIL));
        assert_eq!(p.target("/a/$MSB_K").unwrap_err().scope, Scope::Target);
        assert_eq!(p.target("/a?x=$MSB_K").unwrap_err().scope, Scope::Query);
        assert_eq!(p.target("/a?x=%24MSB_K").unwrap_err().scope, Scope::Query);
        assert_eq!(p.target("/%24MSB_K?x=1").unwrap_err().scope, Scope::Target);
        assert_eq!(p.target("/a?x=1").unwrap(), None);
    }

    #[test]
    fn unsafe_header_value() {
        let mut r = rule("P", &[OK]);
        r.injection.body = true;
        let pem = "-----BEGIN KEY-----\r\nX-Injected: 1\r\n";
        let sec = Secrets::new(&[r], &[val("P", pem)]);
        let p = sec.plan(&gates(OK));
        let v = p.header("a", b"$MSB_P").unwrap_err();
        assert_eq!(v.reason, Reason::UnsafeHeaderValue);
        // Basic credentials are base64: fine. So is the body.
        let hdr = format!("Basic {}", STANDARD.encode("u:$MSB_P"));
        assert!(p.header("Authorization", hdr.as_bytes()).unwrap().is_some());
        assert_eq!(s(p.body(b"$MSB_P").unwrap()).unwrap(), pem);
    }

    #[test]
    fn noop_and_empty() {
        let sec = Secrets::new(&[], &[]);
        assert!(sec.is_empty());
        assert_eq!(sec.max_placeholder_len(), 0);
        let p = sec.plan(&gates(OK));
        assert!(p.is_noop() && !p.wants_body());
        assert_eq!(p.header("a", b"$MSB_K").unwrap(), None);
        assert_eq!(p.target("/?$MSB_K").unwrap(), None);
        let mut st = p.body_stream();
        assert_eq!(st.feed(b"abc").unwrap(), b"abc");
        // Eligible with headers only: not a noop, but no body.
        let p = one(|_| {}).plan(&gates(OK));
        assert!(!p.is_noop() && !p.wants_body());
        // Eligible with nothing enabled at all: noop.
        let p = one(|r| {
            r.injection = SecretInjection {
                headers: false,
                basic_auth: false,
                query_params: false,
                body: false,
            }
        })
        .plan(&gates(OK));
        assert!(p.is_noop());
    }

    #[test]
    fn value_never_printed() {
        let sec = one(|_| {});
        assert!(!format!("{sec:?}").contains(V));
        assert!(format!("{sec:?}").contains("$MSB_K"));
        let p = sec.plan(&gates(OK));
        assert!(!format!("{p:?}").contains(V));
        let mut st = p.body_stream();
        st.feed(b"$MSB_K").unwrap();
        assert!(!format!("{st:?}").contains(V));
        let v = sec.plan(&gates(EVIL)).header("a", b"$MSB_K").unwrap_err();
        for text in [format!("{v:?}"), v.to_string()] {
            assert!(!text.contains(V), "{text}");
            assert!(text.contains('K') && text.contains(EVIL), "{text}");
        }
        assert_eq!(
            v.to_string(),
            "secret K: placeholder in header to api.evil.test (not an allowed host)"
        );
        // Nothing sent to the other host holds the value.
        let p = sec.plan(&gates(EVIL));
        assert!(p.header("a", b"nothing").unwrap().is_none());
    }
}
