//! Frames the stack writes itself (outside smoltcp): TCP resets, ICMP errors, proxied
//! ICMP echo replies and UDP datagrams (fragmented when larger than the MTU).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4DstUnreachable, Icmpv4Packet,
    Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket,
};

pub const ETH_HDR: usize = 14;
pub const IPV4_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
/// Largest UDP payload in one IPv4 datagram.
pub const MAX_UDP_PAYLOAD: usize = 65535 - IPV4_HDR - UDP_HDR;

/// Link-layer endpoints of the frames we write: our MAC to the guest's.
#[derive(Clone, Copy)]
pub struct Link {
    pub src: EthernetAddress,
    pub dst: EthernetAddress,
}

fn eth_ipv4(
    link: Link,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    ident: u16,
    frag: Option<(u16, bool)>,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HDR + IPV4_HDR + payload.len()];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src_addr(link.src);
        eth.set_dst_addr(link.dst);
        eth.set_ethertype(EthernetProtocol::Ipv4);
    }
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH_HDR..]);
        ip.set_version(4);
        ip.set_header_len(IPV4_HDR as u8);
        ip.set_dscp(0);
        ip.set_ecn(0);
        ip.set_total_len((IPV4_HDR + payload.len()) as u16);
        ip.set_ident(ident);
        ip.clear_flags();
        match frag {
            None => {
                ip.set_dont_frag(false);
                ip.set_more_frags(false);
                ip.set_frag_offset(0);
            }
            Some((offset, more)) => {
                ip.set_more_frags(more);
                ip.set_frag_offset(offset);
            }
        }
        ip.set_hop_limit(64);
        ip.set_next_header(proto);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
    }
    buf[ETH_HDR + IPV4_HDR..].copy_from_slice(payload);
    buf
}

/// A UDP datagram from `src` to `dst`, as one frame or as IPv4 fragments that each fit
/// `mtu` (the IP MTU).
pub fn udp_frames(
    link: Link,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: &[u8],
    mtu: usize,
    ident: u16,
) -> Vec<Vec<u8>> {
    if data.len() > MAX_UDP_PAYLOAD {
        return vec![];
    }
    let mut dgram = vec![0u8; UDP_HDR + data.len()];
    {
        let mut u = UdpPacket::new_unchecked(&mut dgram[..]);
        u.set_src_port(src.port());
        u.set_dst_port(dst.port());
        u.set_len((UDP_HDR + data.len()) as u16);
        u.payload_mut().copy_from_slice(data);
        u.fill_checksum(&IpAddress::Ipv4(*src.ip()), &IpAddress::Ipv4(*dst.ip()));
    }
    if IPV4_HDR + dgram.len() <= mtu {
        return vec![eth_ipv4(
            link,
            *src.ip(),
            *dst.ip(),
            IpProtocol::Udp,
            ident,
            None,
            &dgram,
        )];
    }
    let step = ((mtu - IPV4_HDR) / 8) * 8;
    let mut out = Vec::with_capacity(dgram.len() / step + 1);
    let mut off = 0;
    while off < dgram.len() {
        let end = (off + step).min(dgram.len());
        let more = end < dgram.len();
        out.push(eth_ipv4(
            link,
            *src.ip(),
            *dst.ip(),
            IpProtocol::Udp,
            ident,
            Some(((off / 8) as u16 * 8, more)),
            &dgram[off..end],
        ));
        off = end;
    }
    out
}

/// The fields of a TCP segment we answer with a reset.
#[derive(Debug, Clone, Copy)]
pub struct SegInfo {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload_len: usize,
}

/// The reset RFC 793 prescribes for a segment that reaches no connection (from the
/// segment's destination back to its source).
pub fn tcp_rst(link: Link, seg: &SegInfo) -> Option<Vec<u8>> {
    if seg.rst {
        return None;
    }
    let (seq, ack) = match seg.ack {
        Some(a) => (a, None),
        None => {
            let len = seg.payload_len as u32 + seg.syn as u32 + seg.fin as u32;
            (0, Some(seg.seq.wrapping_add(len)))
        }
    };
    let repr = TcpRepr {
        src_port: seg.dst.port(),
        dst_port: seg.src.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut tcp = vec![0u8; repr.buffer_len()];
    let (s, d) = (
        IpAddress::Ipv4(*seg.dst.ip()),
        IpAddress::Ipv4(*seg.src.ip()),
    );
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut tcp[..]),
        &s,
        &d,
        &ChecksumCapabilities::default(),
    );
    Some(eth_ipv4(
        link,
        *seg.dst.ip(),
        *seg.src.ip(),
        IpProtocol::Tcp,
        0,
        None,
        &tcp,
    ))
}

/// An ICMP destination-unreachable about `orig` (an IPv4 packet the guest sent), from
/// `from` (usually the packet's destination or the gateway).
pub fn icmp_unreachable(
    link: Link,
    from: Ipv4Addr,
    orig: &[u8],
    reason: Icmpv4DstUnreachable,
) -> Option<Vec<u8>> {
    let pkt = Ipv4Packet::new_checked(orig).ok()?;
    let hdr = Ipv4Repr::parse(&pkt, &ChecksumCapabilities::ignored()).ok()?;
    let data = pkt.payload();
    let data = &data[..data.len().min(8)];
    let repr = Icmpv4Repr::DstUnreachable {
        reason,
        header: hdr,
        data,
    };
    let mut icmp = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut icmp[..]),
        &ChecksumCapabilities::default(),
    );
    Some(eth_ipv4(
        link,
        from,
        hdr.src_addr,
        IpProtocol::Icmp,
        0,
        None,
        &icmp,
    ))
}

/// An ICMP echo reply from `from` (the pinged address) to `to` (the guest), carrying the
/// guest's identifier, sequence number and data. The request fit the MTU, so the reply does.
pub fn icmp_echo_reply(
    link: Link,
    from: Ipv4Addr,
    to: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
    ip_ident: u16,
) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    let mut icmp = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut icmp[..]),
        &ChecksumCapabilities::default(),
    );
    eth_ipv4(link, from, to, IpProtocol::Icmp, ip_ident, None, &icmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::UdpRepr;

    fn link() -> Link {
        Link {
            src: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
        }
    }

    #[test]
    fn udp_single_and_fragmented() {
        let src = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 53);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 4000);
        let f = udp_frames(link(), src, dst, b"hello", 1500, 7);
        assert_eq!(f.len(), 1);
        let eth = EthernetFrame::new_checked(&f[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        UdpRepr::parse(
            &udp,
            &IpAddress::Ipv4(*src.ip()),
            &IpAddress::Ipv4(*dst.ip()),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!(udp.payload(), b"hello");

        let big = vec![7u8; 4000];
        let f = udp_frames(link(), src, dst, &big, 1500, 9);
        assert_eq!(f.len(), 3);
        let mut total = 0;
        for (i, fr) in f.iter().enumerate() {
            assert!(fr.len() <= 1514);
            let ip = Ipv4Packet::new_checked(&fr[ETH_HDR..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.more_frags(), i < 2);
            assert_eq!(ip.frag_offset() as usize, total);
            total += ip.payload().len();
        }
        assert_eq!(total, 4008);
        assert!(udp_frames(link(), src, dst, &vec![0; 70000], 1500, 1).is_empty());
    }

    #[test]
    fn echo_reply() {
        let from = Ipv4Addr::new(127, 0, 0, 1);
        let to = Ipv4Addr::new(10, 0, 2, 15);
        let data = [0xa5u8; 56];
        let f = icmp_echo_reply(link(), from, to, 0x1234, 7, &data, 3);
        assert_eq!(f.len(), ETH_HDR + IPV4_HDR + 8 + 56);
        let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (from, to));
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq_no: 7,
                data: &data
            }
        );
    }

    #[test]
    fn rst_answers() {
        let seg = SegInfo {
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 40000),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 254), 80),
            seq: 1000,
            ack: None,
            syn: true,
            fin: false,
            rst: false,
            payload_len: 0,
        };
        let f = tcp_rst(link(), &seg).unwrap();
        let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        assert_eq!(tcp.dst_port(), 40000);
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert!(tcp_rst(link(), &SegInfo { rst: true, ..seg }).is_none());
        let f = tcp_rst(
            link(),
            &SegInfo {
                syn: false,
                ack: Some(555),
                ..seg
            },
        )
        .unwrap();
        let ip = Ipv4Packet::new_checked(&f[ETH_HDR..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.rst() && !tcp.ack());
        assert_eq!(tcp.seq_number(), TcpSeqNumber(555));
    }
}
