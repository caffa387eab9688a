//! Configuration: addresses, policy and published ports.
//!
//! Everything here deserializes from the camelCase JSON that the TypeScript side produces
//! (unknown fields are rejected so that a typo on either side is caught early). See the
//! crate README for the full schema.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use ts_rs::TS;

/// Default cap on concurrent TCP flows per sandbox (guest-initiated and published together).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on concurrent UDP flows per sandbox.
pub const DEFAULT_MAX_UDP_FLOWS: usize = 256;
/// The stack's own MAC address (locally administered, unicast).
pub const DEFAULT_GATEWAY_MAC: [u8; 6] = [0x02, 0x4d, 0x53, 0x42, 0x00, 0x01];
/// The name the agent writes into the guest's /etc/hosts for `host_ip`; the DNS server
/// answers it too.
pub const HOST_NAME: &str = "host.microsandbox.internal";

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff` in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("invalid MAC address {s:?}"));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            out[i] = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// Address groups. See [`crate::policy::classify`] for the exact ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
pub enum Group {
    #[serde(rename = "public")]
    Public,
    #[serde(rename = "private")]
    Private,
    #[serde(rename = "loopback")]
    Loopback,
    #[serde(rename = "link-local", alias = "linkLocal", alias = "link_local")]
    LinkLocal,
    #[serde(rename = "metadata")]
    Metadata,
    #[serde(rename = "host")]
    Host,
    #[serde(rename = "any")]
    Any,
}

impl Group {
    /// Every group (the TypeScript `GROUPS` list is generated from it).
    pub const ALL: [Group; 7] = [
        Group::Public,
        Group::Private,
        Group::Loopback,
        Group::LinkLocal,
        Group::Metadata,
        Group::Host,
        Group::Any,
    ];
}

/// What a rule matches. JSON: `{"ip":"1.2.3.4"}`, `{"cidr":"10.0.0.0/8"}`,
/// `{"domain":"example.com"}`, `{"domainSuffix":"example.com"}`, `{"group":"public"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(Ipv4Addr),
    /// Network address and prefix length (host bits are ignored).
    Cidr(Ipv4Addr, u8),
    /// Exact name (lower case, no trailing dot).
    Domain(String),
    /// The name itself and every name below it (`example.com` matches `example.com` and
    /// `a.b.example.com`, not `badexample.com`). A leading `.` or `*.` is ignored.
    DomainSuffix(String),
    Group(Group),
}

/// `Target` as JSON (and, generated from this, as TypeScript).
#[derive(Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[ts(rename = "Target")]
pub(crate) enum TargetJson {
    Ip(Ipv4Addr),
    Cidr(String),
    Domain(String),
    DomainSuffix(String),
    Group(Group),
}

/// Lower-case a DNS name and strip one trailing dot.
pub fn normalize_name(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    s.to_ascii_lowercase()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parse `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid CIDR {s:?}"))?;
    let ip: Ipv4Addr = a.parse().map_err(|_| format!("invalid CIDR {s:?}"))?;
    let len: u8 = p.parse().map_err(|_| format!("invalid CIDR {s:?}"))?;
    if len > 32 {
        return Err(format!("invalid CIDR {s:?}: prefix longer than 32"));
    }
    Ok((ip, len))
}

impl Target {
    fn from_json(t: TargetJson) -> Result<Target, String> {
        Ok(match t {
            TargetJson::Ip(ip) => Target::Ip(ip),
            TargetJson::Cidr(s) => {
                let (ip, len) = parse_cidr(&s)?;
                Target::Cidr(ip, len)
            }
            TargetJson::Domain(d) => {
                let n = normalize_name(&d);
                if !valid_name(&n) {
                    return Err(format!("invalid domain {d:?}"));
                }
                Target::Domain(n)
            }
            TargetJson::DomainSuffix(d) => {
                let n = normalize_name(&d);
                let n = n
                    .strip_prefix("*.")
                    .or_else(|| n.strip_prefix('.'))
                    .unwrap_or(&n)
                    .to_string();
                if !valid_name(&n) {
                    return Err(format!("invalid domain suffix {d:?}"));
                }
                Target::DomainSuffix(n)
            }
            TargetJson::Group(g) => Target::Group(g),
        })
    }
    fn to_json(&self) -> TargetJson {
        match self {
            Target::Ip(ip) => TargetJson::Ip(*ip),
            Target::Cidr(ip, len) => TargetJson::Cidr(format!("{ip}/{len}")),
            Target::Domain(d) => TargetJson::Domain(d.clone()),
            Target::DomainSuffix(d) => TargetJson::DomainSuffix(d.clone()),
            Target::Group(g) => TargetJson::Group(*g),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}
impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Target::from_json(TargetJson::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// One policy rule. JSON: `{"action":"allow","protocol":"tcp","ports":[80,443],
/// "target":{"group":"public"}}`; `protocol` and `ports` are optional (any). A rule with
/// `ports` only matches TCP and UDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    #[serde(default)]
    #[ts(optional)]
    pub protocol: Option<Proto>,
    /// Inclusive port range.
    #[serde(default)]
    #[ts(optional)]
    pub ports: Option<(u16, u16)>,
    #[ts(as = "TargetJson")]
    pub target: Target,
}

impl Rule {
    pub fn new(action: Action, target: Target) -> Rule {
        Rule {
            action,
            protocol: None,
            ports: None,
            target,
        }
    }
    pub fn allow(target: Target) -> Rule {
        Rule::new(Action::Allow, target)
    }
    pub fn deny(target: Target) -> Rule {
        Rule::new(Action::Deny, target)
    }
    pub fn protocol(mut self, p: Proto) -> Rule {
        self.protocol = Some(p);
        self
    }
    pub fn ports(mut self, a: u16, b: u16) -> Rule {
        self.ports = Some((a, b));
        self
    }
}

/// Egress and ingress rules. Ordered, first match wins; `default_action` applies to egress
/// when no rule matches. Ingress rules filter published ports (no match: allowed, since
/// publishing a port is itself the opt-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub default_action: Action,
    #[serde(default)]
    pub egress: Vec<Rule>,
    #[serde(default)]
    pub ingress: Vec<Rule>,
}

impl Default for Policy {
    /// Public internet allowed, everything else denied (DNS at the gateway is always
    /// served, subject to the same rules for names).
    fn default() -> Self {
        Policy {
            default_action: Action::Deny,
            egress: vec![Rule::allow(Target::Group(Group::Public))],
            ingress: vec![],
        }
    }
}

impl Policy {
    /// Everything allowed.
    pub fn allow_all() -> Policy {
        Policy {
            default_action: Action::Allow,
            egress: vec![],
            ingress: vec![],
        }
    }
    /// Nothing allowed (DNS answers NXDOMAIN for every name).
    pub fn deny_all() -> Policy {
        Policy {
            default_action: Action::Deny,
            egress: vec![],
            ingress: vec![],
        }
    }
}

/// A port published on the host's loopback and carried into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedPort {
    #[serde(default = "default_tcp")]
    pub protocol: Proto,
    /// Port on 127.0.0.1; 0 picks a free one (see [`crate::NetStack::published`]).
    pub host_port: u16,
    pub guest_port: u16,
}

fn default_tcp() -> Proto {
    Proto::Tcp
}
fn default_true() -> bool {
    true
}
/// A virtual link: a large MTU costs nothing outside and saves the guest per-packet work.
fn default_mtu() -> u16 {
    65520
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_udp_flows() -> usize {
    DEFAULT_MAX_UDP_FLOWS
}
fn default_gateway_mac() -> MacAddr {
    MacAddr(DEFAULT_GATEWAY_MAC)
}

/// One sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetConfig {
    /// The guest NIC's MAC (QEMU `-device virtio-net-device,mac=`). Used as the
    /// destination of frames until the guest has sent one.
    #[ts(type = "string")]
    pub guest_mac: MacAddr,
    /// The stack's own MAC (what the guest sees for every address it reaches).
    #[serde(default = "default_gateway_mac")]
    #[ts(as = "Option<String>", optional)]
    pub gateway_mac: MacAddr,
    pub guest_ip: Ipv4Addr,
    /// The guest's default gateway and DNS server.
    pub gateway_ip: Ipv4Addr,
    /// The address that stands for the host's loopback (`host.microsandbox.internal`).
    /// Default: the last usable address of the subnet (`.254` in a /24).
    #[serde(default)]
    #[ts(optional)]
    pub host_ip: Option<Ipv4Addr>,
    pub prefix_len: u8,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Answer DNS at `gateway_ip:53` (UDP).
    #[serde(default = "default_true")]
    pub dns: bool,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// Cap on concurrent TCP flows (guest-initiated, pending connects and published
    /// connections together). A SYN beyond it gets a RST; a published connection beyond
    /// it is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Cap on concurrent UDP flows; datagrams for new flows beyond it are dropped.
    #[serde(default = "default_max_udp_flows")]
    #[ts(as = "Option<usize>", optional)]
    pub max_udp_flows: usize,
    /// TLS interception (secrets need it); None: no flow is ever terminated.
    #[serde(default)]
    #[ts(optional)]
    pub tls: Option<crate::secrets_config::TlsConfig>,
    /// Secrets substituted into intercepted requests (their values travel apart, in
    /// `RuntimeConfig.secretValues`).
    #[serde(default)]
    #[ts(as = "Option<Vec<crate::secrets_config::SecretRule>>", optional)]
    pub secrets: Vec<crate::secrets_config::SecretRule>,
}

impl NetConfig {
    /// A config with the given addresses and defaults elsewhere.
    pub fn new(
        guest_mac: [u8; 6],
        guest_ip: Ipv4Addr,
        gateway_ip: Ipv4Addr,
        prefix_len: u8,
    ) -> NetConfig {
        NetConfig {
            guest_mac: MacAddr(guest_mac),
            gateway_mac: default_gateway_mac(),
            guest_ip,
            gateway_ip,
            host_ip: None,
            prefix_len,
            mtu: default_mtu(),
            dns: true,
            policy: Policy::default(),
            ports: vec![],
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_udp_flows: DEFAULT_MAX_UDP_FLOWS,
            tls: None,
            secrets: vec![],
        }
    }

    pub fn from_json(s: &str) -> Result<NetConfig, crate::NetError> {
        let cfg: NetConfig =
            serde_json::from_str(s).map_err(|e| crate::NetError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The host address in effect (explicit, or the subnet's last usable address).
    pub fn effective_host_ip(&self) -> Ipv4Addr {
        if let Some(h) = self.host_ip {
            return h;
        }
        let mask = prefix_mask(self.prefix_len);
        let bcast = u32::from(self.gateway_ip) | !mask;
        Ipv4Addr::from(bcast.wrapping_sub(1))
    }

    pub fn validate(&self) -> Result<(), crate::NetError> {
        let err = |m: String| Err(crate::NetError::Config(m));
        if !(8..=30).contains(&self.prefix_len) {
            return err(format!("prefixLen {} out of range 8..=30", self.prefix_len));
        }
        if !(576..=65521).contains(&self.mtu) {
            return err(format!("mtu {} out of range 576..=65521", self.mtu));
        }
        let mask = prefix_mask(self.prefix_len);
        let net = u32::from(self.gateway_ip) & mask;
        let in_net = |ip: Ipv4Addr| u32::from(ip) & mask == net;
        let host_part = |ip: Ipv4Addr| u32::from(ip) & !mask;
        for (name, ip) in [
            ("guestIp", self.guest_ip),
            ("gatewayIp", self.gateway_ip),
            ("hostIp", self.effective_host_ip()),
        ] {
            if !in_net(ip) {
                return err(format!(
                    "{name} {ip} is not in {}/{}",
                    Ipv4Addr::from(net),
                    self.prefix_len
                ));
            }
            if host_part(ip) == 0 || host_part(ip) == !mask {
                return err(format!("{name} {ip} is the network or broadcast address"));
            }
            if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
                return err(format!("{name} {ip} is not a unicast address"));
            }
        }
        if self.guest_ip == self.gateway_ip {
            return err("guestIp and gatewayIp are the same".into());
        }
        if self.effective_host_ip() == self.guest_ip {
            return err("hostIp and guestIp are the same".into());
        }
        let unicast = |m: MacAddr| m.0[0] & 1 == 0 && m.0 != [0; 6];
        if !unicast(self.guest_mac) {
            return err(format!(
                "guestMac {} is not a unicast address",
                self.guest_mac
            ));
        }
        if !unicast(self.gateway_mac) || self.gateway_mac == self.guest_mac {
            return err(format!(
                "gatewayMac {} is not a usable unicast address",
                self.gateway_mac
            ));
        }
        if self.max_connections == 0 {
            return err("maxConnections must be at least 1".into());
        }
        crate::secrets_config::validate(self.tls.as_ref(), &self.secrets).or_else(err)?;
        for (i, r) in self
            .policy
            .egress
            .iter()
            .chain(self.policy.ingress.iter())
            .enumerate()
        {
            if let Some((a, b)) = r.ports {
                if a == 0 || a > b {
                    return err(format!("rule {i}: invalid port range {a}-{b}"));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if p.protocol == Proto::Icmp {
                return err("published ports are tcp or udp".into());
            }
            if p.guest_port == 0 {
                return err("published guestPort must not be 0".into());
            }
            if p.host_port != 0 && !seen.insert((p.protocol, p.host_port)) {
                return err(format!("host port {} published twice", p.host_port));
            }
        }
        Ok(())
    }
}

pub(crate) fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camel_case_json() {
        let j = r#"{
            "guestMac": "02:00:00:00:00:02", "guestIp": "10.0.2.15", "gatewayIp": "10.0.2.2",
            "prefixLen": 24, "mtu": 1500, "dns": true, "maxConnections": 10,
            "policy": {"defaultAction": "deny", "egress": [
                {"action": "allow", "target": {"group": "public"}},
                {"action": "allow", "protocol": "tcp", "ports": [8000, 8100], "target": {"group": "host"}},
                {"action": "deny", "target": {"cidr": "10.0.0.0/8"}},
                {"action": "allow", "target": {"domainSuffix": "*.Example.COM."}},
                {"action": "deny", "target": {"group": "link-local"}}
            ], "ingress": []},
            "ports": [{"protocol": "tcp", "hostPort": 8080, "guestPort": 80}, {"protocol": "udp", "hostPort": 5353, "guestPort": 53}]
        }"#;
        let c = NetConfig::from_json(j).unwrap();
        assert_eq!(c.effective_host_ip(), Ipv4Addr::new(10, 0, 2, 254));
        assert_eq!(c.policy.egress[1].ports, Some((8000, 8100)));
        assert_eq!(
            c.policy.egress[2].target,
            Target::Cidr(Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert_eq!(
            c.policy.egress[3].target,
            Target::DomainSuffix("example.com".into())
        );
        assert_eq!(c.policy.egress[4].target, Target::Group(Group::LinkLocal));
        assert_eq!(c.ports[1].protocol, Proto::Udp);
        assert_eq!(c.max_connections, 10);
        // Round trip.
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn defaults_and_errors() {
        let j = r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24}"#;
        let c = NetConfig::from_json(j).unwrap();
        assert_eq!(c.mtu, 65520);
        assert!(c.dns);
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        for bad in [
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.3.15","gatewayIp":"10.0.2.2","prefixLen":24}"#,
            r#"{"guestMac":"01:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24}"#,
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,"bogus":1}"#,
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,
                "policy":{"defaultAction":"deny","egress":[{"action":"allow","target":{"cidr":"10.0.0.0/33"}}]}}"#,
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,
                "policy":{"defaultAction":"deny","egress":[{"action":"allow","target":{"group":"intranet"}}]}}"#,
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,
                "policy":{"defaultAction":"deny","egress":[{"action":"allow","ports":[0,5],"target":{"group":"any"}}]}}"#,
            r#"{"guestMac":"02:00:00:00:00:02","guestIp":"10.0.2.15","gatewayIp":"10.0.2.2","prefixLen":24,"hostIp":"10.0.2.15"}"#,
        ] {
            assert!(NetConfig::from_json(bad).is_err(), "{bad}");
        }
    }
}
