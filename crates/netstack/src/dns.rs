//! A minimal DNS message parser and answer builder (RFC 1035), enough for the gateway's
//! stub resolver: one question per query, A answers, NXDOMAIN / SERVFAIL / NOTIMP.

use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Opcode and RD bits of the query, echoed back.
    pub flags: u16,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as it was on the wire (echoed in the answer).
    pub question: Vec<u8>,
}

impl Query {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
}

/// Parse a query. `None`: not worth an answer (too short, a response, garbage). A query we
/// cannot handle but can answer (several questions, compression in the question) gives
/// `Err(id)` so that the caller answers FORMERR.
pub fn parse_query(msg: &[u8]) -> Option<Result<Query, (u16, u16)>> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    if qd != 1 {
        return Some(Err((id, flags)));
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Some(Err((id, flags)));
        }
        let l = msg.get(pos..pos + len)?;
        total += len + 1;
        if total > 255 {
            return Some(Err((id, flags)));
        }
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        pos += len;
    }
    let t = msg.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([t[0], t[1]]);
    let qclass = u16::from_be_bytes([t[2], t[3]]);
    let question = msg[12..pos + 4].to_vec();
    Some(Ok(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question,
    }))
}

/// Build a response: header, the question echoed, one A record per address.
pub fn response(q: &Query, rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + q.question.len() + addrs.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, opcode echoed, AA=0, TC=0, RD echoed, RA=1, rcode.
    let flags: u16 = 0x8000 | (q.flags & 0x7900) | 0x0080 | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&q.question);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// A bare error response for a query we could not parse fully (no question echoed).
pub fn error_response(id: u16, qflags: u16, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    let flags: u16 = 0x8000 | (qflags & 0x7900) | 0x0080 | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// Build a query (used by tests and handy for health checks).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    for l in name.trim_end_matches('.').split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// Parse a response into (id, rcode, A addresses). For tests and diagnostics; follows
/// compression pointers in answer names.
pub fn parse_response(msg: &[u8]) -> Option<(u16, u8, Vec<Ipv4Addr>)> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = msg[3] & 0xf;
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let mut pos = 12;
    fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let l = *msg.get(pos)? as usize;
            if l == 0 {
                return Some(pos + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Some(pos + 2);
            }
            pos += 1 + l;
        }
    }
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let h = msg.get(pos..pos + 10)?;
        let ty = u16::from_be_bytes([h[0], h[1]]);
        let rdlen = u16::from_be_bytes([h[8], h[9]]) as usize;
        pos += 10;
        let rd = msg.get(pos..pos + rdlen)?;
        if ty == TYPE_A && rdlen == 4 {
            addrs.push(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]));
        }
        pos += rdlen;
    }
    Some((id, rcode, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let q = build_query(0x1234, "WWW.Example.com.", TYPE_A);
        let p = parse_query(&q).unwrap().unwrap();
        assert_eq!(p.name, "www.example.com");
        assert_eq!(p.qtype, TYPE_A);
        assert_eq!(p.id, 0x1234);
        let r = response(
            &p,
            RCODE_NOERROR,
            &[Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8)],
            60,
        );
        let (id, rc, a) = parse_response(&r).unwrap();
        assert_eq!((id, rc), (0x1234, 0));
        assert_eq!(
            a,
            vec![Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8)]
        );
        let r = response(&p, RCODE_NXDOMAIN, &[], 60);
        assert_eq!(parse_response(&r).unwrap().1, RCODE_NXDOMAIN);
    }

    #[test]
    fn garbage_is_ignored() {
        assert!(parse_query(&[]).is_none());
        assert!(parse_query(&[0; 11]).is_none());
        let mut q = build_query(1, "a.b", TYPE_A);
        q.truncate(q.len() - 2);
        assert!(parse_query(&q).is_none());
        // Label running past the end.
        let mut q = build_query(1, "abc", TYPE_A);
        q[12] = 60;
        assert!(parse_query(&q).is_none());
        // Compression pointer in a question: FORMERR.
        let mut q = build_query(1, "abc", TYPE_A);
        q[12] = 0xc0;
        assert!(matches!(parse_query(&q), Some(Err(_))));
        // Two questions: FORMERR.
        let mut q = build_query(1, "abc", TYPE_A);
        q[5] = 2;
        assert!(matches!(parse_query(&q), Some(Err(_))));
        // Random bytes never panic.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                b.push((x >> 16) as u8);
            }
            let _ = parse_query(&b);
            let _ = parse_response(&b);
        }
    }
}
