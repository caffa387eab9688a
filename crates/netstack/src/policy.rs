//! Policy evaluation: address groups, rule matching, DNS name decisions and the per-sandbox
//! map of addresses the sandbox resolved through our DNS.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{prefix_mask, Action, Group, Policy, Proto, Rule, Target};

/// Addresses that are special for one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Special {
    /// Stands for the host's loopback.
    pub host_ip: Ipv4Addr,
}

fn in_cidr(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let m = prefix_mask(len);
    u32::from(ip) & m == u32::from(net) & m
}

pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The one group an address belongs to (besides `any`), or `None` for addresses that are
/// in no named group (unspecified `0/8`, multicast `224/4`, reserved `240/4`, broadcast):
/// those only match `any`, `ip` and `cidr` targets.
///
/// - `host`: the sandbox's host address (`host_ip`), nothing else;
/// - `metadata`: 169.254.169.254 (not also `link-local`: allowing link-local does not open
///   the cloud metadata service);
/// - `loopback`: 127.0.0.0/8;
/// - `link-local`: 169.254.0.0/16;
/// - `private`: 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT);
/// - `public`: every other unicast address.
pub fn classify(ip: Ipv4Addr, sp: &Special) -> Option<Group> {
    if ip == sp.host_ip {
        return Some(Group::Host);
    }
    if ip == METADATA_IP {
        return Some(Group::Metadata);
    }
    if ip.is_loopback() {
        return Some(Group::Loopback);
    }
    if ip.is_link_local() {
        return Some(Group::LinkLocal);
    }
    if ip.is_private() || in_cidr(ip, Ipv4Addr::new(100, 64, 0, 0), 10) {
        return Some(Group::Private);
    }
    if in_cidr(ip, Ipv4Addr::new(0, 0, 0, 0), 8)
        || ip.is_multicast()
        || in_cidr(ip, Ipv4Addr::new(240, 0, 0, 0), 4)
    {
        return None;
    }
    Some(Group::Public)
}

/// `name` matches suffix `s` when it is `s` or ends in `.s`.
pub fn suffix_matches(name: &str, s: &str) -> bool {
    name == s
        || (name.len() > s.len()
            && name.ends_with(s)
            && name.as_bytes()[name.len() - s.len() - 1] == b'.')
}

fn target_matches(t: &Target, ip: Ipv4Addr, names: &[String], sp: &Special) -> bool {
    match t {
        Target::Ip(a) => *a == ip,
        Target::Cidr(n, l) => in_cidr(ip, *n, *l),
        Target::Domain(d) => names.iter().any(|n| n == d),
        Target::DomainSuffix(s) => names.iter().any(|n| suffix_matches(n, s)),
        Target::Group(Group::Any) => true,
        Target::Group(g) => classify(ip, sp) == Some(*g),
    }
}

fn proto_port_match(r: &Rule, proto: Proto, port: Option<u16>) -> bool {
    if let Some(p) = r.protocol {
        if p != proto {
            return false;
        }
    }
    if let Some((a, b)) = r.ports {
        match (proto, port) {
            (Proto::Tcp | Proto::Udp, Some(p)) => return a <= p && p <= b,
            _ => return false,
        }
    }
    true
}

/// First-match evaluation of `rules` for a flow to `ip` (port for TCP/UDP), where `names`
/// are the names this sandbox resolved to `ip`. `None`: no rule matched.
pub fn first_match(
    rules: &[Rule],
    ip: Ipv4Addr,
    proto: Proto,
    port: Option<u16>,
    names: &[String],
    sp: &Special,
) -> Option<Action> {
    rules
        .iter()
        .find(|r| proto_port_match(r, proto, port) && target_matches(&r.target, ip, names, sp))
        .map(|r| r.action)
}

/// The egress verdict for a new flow.
pub fn egress(
    p: &Policy,
    ip: Ipv4Addr,
    proto: Proto,
    port: Option<u16>,
    names: &[String],
    sp: &Special,
) -> Action {
    first_match(&p.egress, ip, proto, port, names, sp).unwrap_or(p.default_action)
}

/// The ingress verdict for a published-port connection from `peer` to `guest_port`.
/// No matching rule: allowed (publishing the port is the opt-in).
pub fn ingress(p: &Policy, peer: Ipv4Addr, proto: Proto, guest_port: u16, sp: &Special) -> Action {
    first_match(&p.ingress, peer, proto, Some(guest_port), &[], sp).unwrap_or(Action::Allow)
}

/// May the guest learn `name` at all? A name is denied (NXDOMAIN) when the first domain
/// rule naming it is an unrestricted deny (no protocol, no ports), or when no domain rule
/// allows it and nothing else could be allowed either (default deny and no allow rule
/// with an address or group target).
pub fn name_allowed(p: &Policy, name: &str) -> bool {
    for r in &p.egress {
        let hit = match &r.target {
            Target::Domain(d) => d == name,
            Target::DomainSuffix(s) => suffix_matches(name, s),
            _ => false,
        };
        if !hit {
            continue;
        }
        match r.action {
            Action::Allow => return true,
            Action::Deny if r.protocol.is_none() && r.ports.is_none() => return false,
            Action::Deny => continue,
        }
    }
    p.default_action == Action::Allow
        || p.egress.iter().any(|r| {
            r.action == Action::Allow
                && !matches!(r.target, Target::Domain(_) | Target::DomainSuffix(_))
        })
}

/// Rebinding protection: may a DNS answer for `name` carry `ip`? Public addresses always
/// may. Any other address is kept only when the policy could allow a flow to it (for some
/// protocol and port) given the name: first target-matching rule wins, a deny restricted
/// to some protocol or ports does not decide, no match falls back to the default action.
pub fn answer_allowed(p: &Policy, name: &str, ip: Ipv4Addr, sp: &Special) -> bool {
    if classify(ip, sp) == Some(Group::Public) {
        return true;
    }
    let names = [name.to_string()];
    for r in &p.egress {
        if !target_matches(&r.target, ip, &names, sp) {
            continue;
        }
        match r.action {
            Action::Allow => return true,
            Action::Deny if r.protocol.is_none() && r.ports.is_none() => return false,
            Action::Deny => continue,
        }
    }
    p.default_action == Action::Allow
}

/// Grace period a resolved address keeps its names after the answer's TTL ran out (guest
/// programs often cache answers longer than the TTL).
pub const DNS_MAP_GRACE: Duration = Duration::from_secs(300);
const DNS_MAP_MAX_IPS: usize = 8192;
const DNS_MAP_MAX_NAMES_PER_IP: usize = 16;

/// ip -> names this sandbox resolved through our DNS, each with an expiry. Bounded.
#[derive(Default)]
pub struct DnsMap {
    map: HashMap<Ipv4Addr, Vec<(String, Instant)>>,
}

impl DnsMap {
    pub fn record(&mut self, name: &str, ip: Ipv4Addr, ttl: Duration, now: Instant) {
        let exp = now + ttl + DNS_MAP_GRACE;
        if !self.map.contains_key(&ip) && self.map.len() >= DNS_MAP_MAX_IPS {
            self.purge(now);
            if self.map.len() >= DNS_MAP_MAX_IPS {
                // Evict the entry that expires first.
                if let Some(k) = self
                    .map
                    .iter()
                    .min_by_key(|(_, v)| v.iter().map(|e| e.1).max())
                    .map(|(k, _)| *k)
                {
                    self.map.remove(&k);
                }
            }
        }
        let v = self.map.entry(ip).or_default();
        if let Some(e) = v.iter_mut().find(|e| e.0 == name) {
            e.1 = e.1.max(exp);
            return;
        }
        if v.len() >= DNS_MAP_MAX_NAMES_PER_IP {
            v.sort_by_key(|e| e.1);
            v.remove(0);
        }
        v.push((name.to_string(), exp));
    }

    pub fn names(&self, ip: Ipv4Addr, now: Instant) -> Vec<String> {
        self.map
            .get(&ip)
            .map(|v| {
                v.iter()
                    .filter(|e| e.1 > now)
                    .map(|e| e.0.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn purge(&mut self, now: Instant) {
        self.map.retain(|_, v| {
            v.retain(|e| e.1 > now);
            !v.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;

    fn sp() -> Special {
        Special {
            host_ip: Ipv4Addr::new(10, 0, 2, 254),
        }
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn groups() {
        let s = sp();
        assert_eq!(classify(ip("10.0.2.254"), &s), Some(Group::Host));
        assert_eq!(classify(ip("169.254.169.254"), &s), Some(Group::Metadata));
        assert_eq!(classify(ip("169.254.1.1"), &s), Some(Group::LinkLocal));
        assert_eq!(classify(ip("127.0.0.1"), &s), Some(Group::Loopback));
        assert_eq!(classify(ip("127.255.0.9"), &s), Some(Group::Loopback));
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "10.0.2.2",
        ] {
            assert_eq!(classify(ip(p), &s), Some(Group::Private), "{p}");
        }
        for p in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "93.184.216.34",
        ] {
            assert_eq!(classify(ip(p), &s), Some(Group::Public), "{p}");
        }
        for p in [
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert_eq!(classify(ip(p), &s), None, "{p}");
        }
    }

    #[test]
    fn default_policy() {
        let p = Policy::default();
        let s = sp();
        assert_eq!(
            egress(&p, ip("8.8.8.8"), Proto::Tcp, Some(443), &[], &s),
            Action::Allow
        );
        assert_eq!(
            egress(&p, ip("8.8.8.8"), Proto::Udp, Some(53), &[], &s),
            Action::Allow
        );
        for d in [
            "10.0.2.254",
            "127.0.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "169.254.3.3",
            "224.0.0.251",
        ] {
            assert_eq!(
                egress(&p, ip(d), Proto::Tcp, Some(80), &[], &s),
                Action::Deny,
                "{d}"
            );
        }
        assert!(name_allowed(&p, "example.com"));
        assert!(answer_allowed(&p, "example.com", ip("93.184.216.34"), &s));
        assert!(!answer_allowed(&p, "localhost", ip("127.0.0.1"), &s));
        assert!(!answer_allowed(&p, "evil.com", ip("10.0.0.1"), &s));
        assert!(!answer_allowed(&p, "evil.com", ip("169.254.169.254"), &s));
    }

    #[test]
    fn first_match_wins_with_protocols_and_ports() {
        let s = sp();
        let p = Policy {
            default_action: Action::Deny,
            egress: vec![
                Rule::deny(Target::Ip(ip("1.2.3.4"))),
                Rule::allow(Target::Group(Group::Host))
                    .protocol(Proto::Tcp)
                    .ports(8000, 8100),
                Rule::allow(Target::Cidr(ip("1.2.0.0"), 16)).protocol(Proto::Udp),
                Rule::allow(Target::Group(Group::Public)).ports(443, 443),
            ],
            ingress: vec![],
        };
        assert_eq!(
            egress(&p, ip("1.2.3.4"), Proto::Udp, Some(53), &[], &s),
            Action::Deny
        );
        assert_eq!(
            egress(&p, ip("1.2.3.5"), Proto::Udp, Some(53), &[], &s),
            Action::Allow
        );
        assert_eq!(
            egress(&p, ip("1.2.3.5"), Proto::Tcp, Some(53), &[], &s),
            Action::Deny
        );
        assert_eq!(
            egress(&p, ip("1.2.3.5"), Proto::Tcp, Some(443), &[], &s),
            Action::Allow
        );
        assert_eq!(
            egress(&p, ip("10.0.2.254"), Proto::Tcp, Some(8050), &[], &s),
            Action::Allow
        );
        assert_eq!(
            egress(&p, ip("10.0.2.254"), Proto::Tcp, Some(8101), &[], &s),
            Action::Deny
        );
        assert_eq!(
            egress(&p, ip("10.0.2.254"), Proto::Udp, Some(8050), &[], &s),
            Action::Deny
        );
        // A port-restricted rule never matches ICMP.
        assert_eq!(
            egress(&p, ip("9.9.9.9"), Proto::Icmp, None, &[], &s),
            Action::Deny
        );
    }

    #[test]
    fn domain_rules_use_resolved_names() {
        let s = sp();
        let p = Policy {
            default_action: Action::Deny,
            egress: vec![
                Rule::deny(Target::Domain("bad.example.com".into())),
                Rule::allow(Target::DomainSuffix("example.com".into())),
                Rule::allow(Target::Domain("intranet.corp".into())),
            ],
            ingress: vec![],
        };
        let none: Vec<String> = vec![];
        let names = vec!["www.example.com".to_string()];
        assert_eq!(
            egress(&p, ip("93.184.216.34"), Proto::Tcp, Some(443), &none, &s),
            Action::Deny
        );
        assert_eq!(
            egress(&p, ip("93.184.216.34"), Proto::Tcp, Some(443), &names, &s),
            Action::Allow
        );
        assert_eq!(
            egress(
                &p,
                ip("93.184.216.34"),
                Proto::Tcp,
                Some(443),
                &["bad.example.com".into()],
                &s
            ),
            Action::Deny
        );
        assert!(name_allowed(&p, "example.com"));
        assert!(name_allowed(&p, "a.b.example.com"));
        assert!(!name_allowed(&p, "badexample.com"));
        assert!(!name_allowed(&p, "bad.example.com"));
        assert!(!name_allowed(&p, "other.org"));
        // An explicitly allowed name may resolve to a private address.
        assert!(answer_allowed(&p, "intranet.corp", ip("10.1.1.1"), &s));
        assert!(!answer_allowed(&p, "other.org", ip("10.1.1.1"), &s));
        assert!(suffix_matches("example.com", "example.com"));
        assert!(suffix_matches("x.example.com", "example.com"));
        assert!(!suffix_matches("xexample.com", "example.com"));
    }

    #[test]
    fn rebinding_follows_allow_rules() {
        let s = sp();
        let mut p = Policy::default();
        assert!(!answer_allowed(&p, "localhost", ip("127.0.0.1"), &s));
        p.egress.push(Rule::allow(Target::Group(Group::Loopback)));
        assert!(answer_allowed(&p, "localhost", ip("127.0.0.1"), &s));
        let mut p = Policy::default();
        p.egress.insert(
            0,
            Rule::allow(Target::Domain("localhost".into())).protocol(Proto::Tcp),
        );
        assert!(answer_allowed(&p, "localhost", ip("127.0.0.1"), &s));
        assert!(answer_allowed(
            &Policy::allow_all(),
            "x",
            ip("10.0.0.1"),
            &s
        ));
        assert!(!name_allowed(&Policy::deny_all(), "example.com"));
        // A port-restricted deny does not hide a name.
        let p = Policy {
            default_action: Action::Deny,
            egress: vec![
                Rule::deny(Target::Domain("a.com".into())).ports(80, 80),
                Rule::allow(Target::Domain("a.com".into())),
            ],
            ingress: vec![],
        };
        assert!(name_allowed(&p, "a.com"));
    }

    #[test]
    fn ingress_defaults_to_allow() {
        let s = sp();
        let mut p = Policy::default();
        assert_eq!(
            ingress(&p, ip("127.0.0.1"), Proto::Tcp, 80, &s),
            Action::Allow
        );
        p.ingress
            .push(Rule::deny(Target::Group(Group::Any)).ports(22, 22));
        assert_eq!(
            ingress(&p, ip("127.0.0.1"), Proto::Tcp, 22, &s),
            Action::Deny
        );
        assert_eq!(
            ingress(&p, ip("127.0.0.1"), Proto::Tcp, 80, &s),
            Action::Allow
        );
    }

    #[test]
    fn dns_map_expires_and_is_bounded() {
        let mut m = DnsMap::default();
        let t0 = Instant::now();
        m.record("a.com", ip("1.1.1.1"), Duration::from_secs(10), t0);
        m.record("b.com", ip("1.1.1.1"), Duration::from_secs(10), t0);
        assert_eq!(m.names(ip("1.1.1.1"), t0).len(), 2);
        assert!(m
            .names(ip("1.1.1.1"), t0 + Duration::from_secs(10) + DNS_MAP_GRACE)
            .is_empty());
        for i in 0..(DNS_MAP_MAX_IPS as u32 + 100) {
            m.record(
                "x.com",
                Ipv4Addr::from(0x0b00_0000 + i),
                Duration::from_secs(1),
                t0,
            );
        }
        assert!(m.len() <= DNS_MAP_MAX_IPS);
        for i in 0..40 {
            m.record(
                &format!("n{i}.com"),
                ip("2.2.2.2"),
                Duration::from_secs(1),
                t0,
            );
        }
        assert!(m.names(ip("2.2.2.2"), t0).len() <= DNS_MAP_MAX_NAMES_PER_IP);
        m.purge(t0 + Duration::from_secs(1000));
        assert!(m.is_empty());
    }
}
