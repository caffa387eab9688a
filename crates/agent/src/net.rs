//! eth0 set up with ioctls (the image may have no `ip` tool): address, netmask, MTU, up,
//! default route; then resolv.conf and /etc/hosts inside the new root.

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use msb_protocol::GuestNetwork;

const IFNAMSIZ: usize = 16;

/// A `struct ifreq` as bytes: name, then the union (a sockaddr_in, an int or a short).
fn ifreq(name: &str) -> [u8; 40] {
    let mut r = [0u8; 40];
    r[..name.len().min(IFNAMSIZ - 1)]
        .copy_from_slice(&name.as_bytes()[..name.len().min(IFNAMSIZ - 1)]);
    r
}

fn put_addr(r: &mut [u8; 40], ip: Ipv4Addr) {
    r[16..18].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    r[20..24].copy_from_slice(&ip.octets());
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: `arg` points at a buffer of the size the request expects.
    if unsafe { libc::ioctl(fd, req as _, arg) } != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_up(fd: i32, name: &str) -> Result<(), String> {
    let mut r = ifreq(name);
    ioctl(fd, libc::SIOCGIFFLAGS, r.as_mut_ptr().cast(), "get flags")?;
    let flags = i16::from_ne_bytes([r[16], r[17]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    r[16..18].copy_from_slice(&flags.to_ne_bytes());
    ioctl(fd, libc::SIOCSIFFLAGS, r.as_mut_ptr().cast(), "set flags")
}

/// Whether eth0 configured as `a` is configured as `b` (address, prefix, gateway, MTU).
pub fn same_nic(a: &GuestNetwork, b: &GuestNetwork) -> bool {
    (a.ip, a.prefix_len, a.gateway, a.mtu) == (b.ip, b.prefix_len, b.gateway, b.mtu)
}

/// Configure eth0 again, configured as another sandbox's already (a memory template's
/// restore, crate::boot::prepare_root): its default route goes first (a new address
/// drops the routes of the old one's subnet, not a gateway's that is still reachable).
pub fn reconfigure(n: &GuestNetwork) -> Result<(), String> {
    with_socket(|fd| {
        let mut rt = default_route(Ipv4Addr::UNSPECIFIED);
        // SAFETY: `rt` is a valid rtentry. Missing already: fine.
        unsafe { libc::ioctl(fd, libc::SIOCDELRT as _, &mut rt as *mut libc::rtentry) };
        Ok(())
    })?;
    configure(n)
}

/// Takes eth0 down (configured in a template, for a sandbox without a network).
pub fn down() -> Result<(), String> {
    with_socket(|fd| {
        let mut r = ifreq("eth0");
        ioctl(fd, libc::SIOCGIFFLAGS, r.as_mut_ptr().cast(), "get flags")?;
        let flags = i16::from_ne_bytes([r[16], r[17]]) & !(libc::IFF_UP as i16);
        r[16..18].copy_from_slice(&flags.to_ne_bytes());
        ioctl(fd, libc::SIOCSIFFLAGS, r.as_mut_ptr().cast(), "set flags")
    })
}

fn with_socket(f: impl FnOnce(i32) -> Result<(), String>) -> Result<(), String> {
    // SAFETY: plain socket for interface ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let r = f(fd);
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    r
}

/// Configure eth0 (and lo), after the NIC's module loaded. Configuring it again as it
/// is changes nothing.
pub fn configure(n: &GuestNetwork) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if Instant::now() > deadline {
            return Err("the network interface eth0 did not appear".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The host's network stack carries IPv4 only (it drops IPv6 frames): without this,
    // bringing eth0 up starts IPv6 autoconfiguration (link-local address, duplicate
    // address detection, router solicitations), work and frames for nothing. Loopback
    // keeps ::1. A kernel without IPv6 has no such file.
    let _ = fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1");
    with_socket(|fd| {
        set_up(fd, "lo")?;
        let mut r = ifreq("eth0");
        put_addr(&mut r, n.ip);
        ioctl(fd, libc::SIOCSIFADDR, r.as_mut_ptr().cast(), "set address")?;
        let mask = if n.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - n.prefix_len.min(32) as u32)
        };
        let mut r = ifreq("eth0");
        put_addr(&mut r, Ipv4Addr::from(mask));
        ioctl(
            fd,
            libc::SIOCSIFNETMASK,
            r.as_mut_ptr().cast(),
            "set netmask",
        )?;
        let mut r = ifreq("eth0");
        r[16..20].copy_from_slice(&(n.mtu as i32).to_ne_bytes());
        ioctl(fd, libc::SIOCSIFMTU, r.as_mut_ptr().cast(), "set mtu")?;
        set_up(fd, "eth0")?;
        let mut rt = default_route(n.gateway);
        // SAFETY: `rt` is a valid rtentry.
        if unsafe { libc::ioctl(fd, libc::SIOCADDRT as _, &mut rt as *mut libc::rtentry) } != 0 {
            let e = std::io::Error::last_os_error();
            // There already (configured before, see `reconfigure`).
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("add default route: {e}"));
            }
        }
        Ok(())
    })
}

/// The default route through `gateway` (UNSPECIFIED: any gateway, to delete it).
fn default_route(gateway: Ipv4Addr) -> libc::rtentry {
    let sin = |ip: Ipv4Addr| {
        // SAFETY: sockaddr_in is plain data.
        let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        s.sin_family = libc::AF_INET as u16;
        s.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(s) }
    };
    // SAFETY: rtentry is plain data; zeroed is a valid start.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sin(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sin(Ipv4Addr::UNSPECIFIED);
    rt.rt_flags = libc::RTF_UP;
    if !gateway.is_unspecified() {
        rt.rt_gateway = sin(gateway);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt
}

/// Name resolution files in the (new) root.
pub fn write_files(n: &GuestNetwork) {
    let _ = fs::create_dir_all("/etc");
    if n.dns {
        let _ = fs::write("/etc/resolv.conf", format!("nameserver {}\n", n.gateway));
    }
    let hosts =
        fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
    if let Some(out) = with_host_line(&hosts, n.host_ip) {
        let _ = fs::write("/etc/hosts", out);
    }
}

const HOST_NAME: &str = "host.microsandbox.internal";

/// `hosts` with one `host.microsandbox.internal` line, naming `ip` (another one, written
/// in a template for another address, goes); None when it has that line already.
fn with_host_line(hosts: &str, ip: Ipv4Addr) -> Option<String> {
    let line = format!("{ip}\t{HOST_NAME}");
    if hosts.lines().any(|l| l.trim() == line) {
        return None;
    }
    let mut out: String = hosts
        .lines()
        .filter(|l| !l.trim_end().ends_with(&format!("\t{HOST_NAME}")))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(&line);
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nic_settings_decide_a_reconfiguration() {
        let n = GuestNetwork {
            ip: "10.0.2.15".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.2.2".parse().unwrap(),
            mtu: 1500,
            host_ip: "10.0.2.2".parse().unwrap(),
            dns: true,
        };
        let files_only = GuestNetwork {
            host_ip: "10.0.2.3".parse().unwrap(),
            dns: false,
            ..n.clone()
        };
        assert!(same_nic(&n, &files_only));
        for other in [
            GuestNetwork {
                mtu: 9000,
                ..n.clone()
            },
            GuestNetwork {
                ip: "10.0.2.16".parse().unwrap(),
                ..n.clone()
            },
            GuestNetwork {
                gateway: "10.0.2.1".parse().unwrap(),
                ..n.clone()
            },
            GuestNetwork {
                prefix_len: 16,
                ..n.clone()
            },
        ] {
            assert!(!same_nic(&n, &other));
        }
    }

    #[test]
    fn the_host_line_is_added_once_and_replaced_for_another_address() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let base = "127.0.0.1\tlocalhost";
        let once = with_host_line(base, ip("10.0.2.2")).unwrap();
        assert_eq!(
            once,
            "127.0.0.1\tlocalhost\n10.0.2.2\thost.microsandbox.internal\n"
        );
        assert_eq!(with_host_line(&once, ip("10.0.2.2")), None);
        assert_eq!(
            with_host_line(&once, ip("10.0.2.3")).unwrap(),
            "127.0.0.1\tlocalhost\n10.0.2.3\thost.microsandbox.internal\n"
        );
    }
}
