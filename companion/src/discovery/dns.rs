//! The little DNS the scan needs: a query, and the PTR, SRV and A records of an answer
//! (mDNS answers and unicast reverse lookups alike). Parsing is bounded: names are at most
//! 255 bytes, compression pointers must point backwards and at most [`MAX_JUMPS`] are
//! followed, at most [`MAX_RECORDS`] records are read; anything malformed ends the parse
//! with what was read so far.

use std::net::Ipv4Addr;

/// Compression pointers followed per name.
pub const MAX_JUMPS: usize = 16;
/// Records read per message.
pub const MAX_RECORDS: usize = 64;
/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type PTR.
pub const TYPE_PTR: u16 = 12;
/// Record type SRV.
pub const TYPE_SRV: u16 = 33;

/// A record's data, for the types we read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A PTR target.
    Ptr(String),
    /// An SRV port and target host.
    Srv(u16, String),
    /// An IPv4 address.
    A(Ipv4Addr),
}

/// One resource record: owner name and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner name, without the trailing dot, lowercase.
    pub name: String,
    /// The data.
    pub data: Data,
}

/// A query for `name` of type `qtype` with id `id` (0 for mDNS).
pub fn query(id: u16, questions: &[(&str, u16)], recursion: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(if recursion { 0x0100u16 } else { 0 }).to_be_bytes());
    m.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    for (name, qtype) in questions {
        for label in name.trim_end_matches('.').split('.') {
            let l = &label.as_bytes()[..label.len().min(63)];
            m.push(l.len() as u8);
            m.extend_from_slice(l);
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
    }
    m
}

/// The reverse-lookup name of `ip` (`4.3.2.1.in-addr.arpa`).
pub fn reverse_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
}

/// The message id and every A, PTR and SRV record of a response (answers and additional
/// sections alike). None when it is not a response.
pub fn parse(msg: &[u8]) -> Option<(u16, Vec<Record>)> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return None;
    }
    let be = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let id = be(0);
    let qd = be(4) as usize;
    let rr = be(6) as usize + be(8) as usize + be(10) as usize;
    let mut at = 12;
    for _ in 0..qd.min(MAX_RECORDS) {
        let (_, next) = name(msg, at)?;
        at = next + 4;
    }
    let mut out = Vec::new();
    for _ in 0..rr.min(MAX_RECORDS) {
        let Some((owner, next)) = name(msg, at) else {
            break;
        };
        if next + 10 > msg.len() {
            break;
        }
        let rtype = be(next);
        let len = be(next + 8) as usize;
        let data = next + 10;
        if data + len > msg.len() {
            break;
        }
        let parsed = match rtype {
            TYPE_A if len == 4 => Some(Data::A(Ipv4Addr::new(
                msg[data],
                msg[data + 1],
                msg[data + 2],
                msg[data + 3],
            ))),
            TYPE_PTR => name(msg, data).map(|(n, _)| Data::Ptr(n)),
            TYPE_SRV if len > 6 => name(msg, data + 6).map(|(n, _)| Data::Srv(be(data + 4), n)),
            _ => None,
        };
        if let Some(d) = parsed {
            out.push(Record {
                name: owner,
                data: d,
            });
        }
        at = data + len;
    }
    Some((id, out))
}

/// Reads a (possibly compressed) name at `at`: the name and the offset after it.
fn name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some((out.to_ascii_lowercase(), end.unwrap_or(at + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let target = ((len & 0x3f) << 8) | *msg.get(at + 1)? as usize;
            if target >= at || jumps >= MAX_JUMPS {
                return None;
            }
            jumps += 1;
            end.get_or_insert(at + 2);
            at = target;
            continue;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
        if out.len() > 255 {
            return None;
        }
        at += 1 + len;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response with `records` in the answer section (names uncompressed, except one
    /// pointer back to the first answer's name to test compression).
    pub(crate) fn response(id: u16, records: &[(&str, Data)]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&0x8400u16.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&(records.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        let put_name = |m: &mut Vec<u8>, n: &str| {
            for l in n.split('.') {
                m.push(l.len() as u8);
                m.extend_from_slice(l.as_bytes());
            }
            m.push(0);
        };
        for (n, d) in records {
            put_name(&mut m, n);
            let (t, rdata) = match d {
                Data::A(ip) => (TYPE_A, ip.octets().to_vec()),
                Data::Ptr(p) => {
                    let mut r = Vec::new();
                    put_name(&mut r, p);
                    (TYPE_PTR, r)
                }
                Data::Srv(port, host) => {
                    let mut r = vec![0, 0, 0, 0];
                    r.extend_from_slice(&port.to_be_bytes());
                    put_name(&mut r, host);
                    (TYPE_SRV, r)
                }
            };
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 120]);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rdata);
        }
        m
    }

    #[test]
    fn records_round_trip_and_compression_is_followed() {
        let msg = response(
            7,
            &[
                (
                    "_services._dns-sd._udp.local",
                    Data::Ptr("_ipp._tcp.local".into()),
                ),
                (
                    "Printer._ipp._tcp.local",
                    Data::Srv(631, "printer.local".into()),
                ),
                ("printer.local", Data::A(Ipv4Addr::new(10, 0, 0, 5))),
            ],
        );
        let (id, recs) = parse(&msg).unwrap();
        assert_eq!(id, 7);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].name, "printer._ipp._tcp.local");
        assert_eq!(recs[1].data, Data::Srv(631, "printer.local".into()));

        // A name that is a pointer to the first record's owner name (offset 12).
        let mut c = msg.clone();
        c.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        c[7] = 4;
        let (_, recs) = parse(&c).unwrap();
        assert_eq!(recs[3].name, "_services._dns-sd._udp.local");
    }

    #[test]
    fn hostile_messages_end_the_parse_without_panicking() {
        // A pointer loop, a forward pointer, truncation, a query (not a response).
        let mut looped = response(1, &[("a.local", Data::A(Ipv4Addr::LOCALHOST))]);
        looped.extend_from_slice(&[0xc0, 0x2a]);
        looped[7] = 2;
        assert_eq!(parse(&looped).unwrap().1.len(), 1);
        let msg = response(1, &[("a.local", Data::A(Ipv4Addr::LOCALHOST))]);
        for cut in 0..msg.len() {
            let _ = parse(&msg[..cut]);
        }
        assert!(parse(&query(1, &[("x.local", TYPE_A)], false)).is_none());
        let q = query(
            9,
            &[(&reverse_name(Ipv4Addr::new(192, 168, 1, 20)), TYPE_PTR)],
            true,
        );
        assert_eq!(&q[12..15], &[2, b'2', b'0']);
    }
}
