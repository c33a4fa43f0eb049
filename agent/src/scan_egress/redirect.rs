//! The port-445 redirect of an egress route, as an nf_tables rule set through netlink (no
//! `nft` or `iptables` binary): the reference's
//! `iptables -t nat -A PREROUTING -d <vip> -p tcp --dport 445 -j REDIRECT --to-ports <port>`.
//! SMB clients (scanners) cannot be told another port, and the host's own smbd often holds
//! `0.0.0.0:445`, so the listener sits on the high port and this rule sends VIP:445 there.
//!
//! Each route gets its own table, `gatelet_egress_<id>` (family ip), with one nat chain on
//! prerouting (priority −100, dstnat) and one rule:
//! `ip daddr <vip> meta l4proto tcp tcp dport 445 redirect to :<port>`. Installing replaces
//! the table (delete, then add, in one batch); removing deletes it. Needs `CAP_NET_ADMIN`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

/// The SMB port redirected.
pub const SMB_PORT: u16 = 445;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u8 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NF_ACCEPT: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_META_L4PROTO: u32 = 16;
const IPPROTO_TCP: u8 = 6;

/// The table name of route `id`.
pub fn table_name(id: u64) -> String {
    format!("gatelet_egress_{id}")
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One netlink message of the nf_tables subsystem: header, nfgenmsg, attributes.
fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    res_id: u16,
    attrs: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version, res_id (big endian)
    m.push(AF_INET);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    attrs(&mut m);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn nft(kind: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | kind
}

fn expr(buf: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    // NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    nested(buf, 1, |b| {
        attr(b, 1, &cstr(name));
        nested(b, 2, data);
    });
}

fn payload(buf: &mut Vec<u8>, base: u32, offset: u32, len: u32) {
    expr(buf, "payload", |b| {
        attr(b, 1, &NFT_REG_1.to_be_bytes()); // NFTA_PAYLOAD_DREG
        attr(b, 2, &base.to_be_bytes()); // NFTA_PAYLOAD_BASE
        attr(b, 3, &offset.to_be_bytes()); // NFTA_PAYLOAD_OFFSET
        attr(b, 4, &len.to_be_bytes()); // NFTA_PAYLOAD_LEN
    });
}

fn cmp_eq(buf: &mut Vec<u8>, value: &[u8]) {
    expr(buf, "cmp", |b| {
        attr(b, 1, &NFT_REG_1.to_be_bytes()); // NFTA_CMP_SREG
        attr(b, 2, &NFT_CMP_EQ.to_be_bytes()); // NFTA_CMP_OP
        nested(b, 3, |d| attr(d, 1, value)); // NFTA_CMP_DATA { NFTA_DATA_VALUE }
    });
}

/// The batch that (re)installs route `id`'s table: delete it (if `replace`), add the table,
/// the chain and the rule. Sequence numbers from `seq`; every message but the batch ends asks
/// for an acknowledgement. Returns the messages and the acknowledged sequence numbers.
pub fn install_batch(
    id: u64,
    vip: Ipv4Addr,
    port: u16,
    replace: bool,
    seq: u32,
) -> (Vec<u8>, Vec<u32>) {
    let table = table_name(id);
    let mut out = Vec::new();
    let mut acked = Vec::new();
    let mut s = seq;
    out.extend(message(
        NFNL_MSG_BATCH_BEGIN,
        0,
        s,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    ));
    if replace {
        s += 1;
        out.extend(message(nft(NFT_MSG_DELTABLE), NLM_F_ACK, s, 0, |b| {
            attr(b, 1, &cstr(&table)) // NFTA_TABLE_NAME
        }));
        acked.push(s);
    }
    s += 1;
    out.extend(message(
        nft(NFT_MSG_NEWTABLE),
        NLM_F_ACK | NLM_F_CREATE,
        s,
        0,
        |b| attr(b, 1, &cstr(&table)),
    ));
    acked.push(s);
    s += 1;
    out.extend(message(
        nft(NFT_MSG_NEWCHAIN),
        NLM_F_ACK | NLM_F_CREATE,
        s,
        0,
        |b| {
            attr(b, 1, &cstr(&table)); // NFTA_CHAIN_TABLE
            attr(b, 3, &cstr("prerouting")); // NFTA_CHAIN_NAME
            nested(b, 4, |h| {
                attr(h, 1, &NF_INET_PRE_ROUTING.to_be_bytes()); // NFTA_HOOK_HOOKNUM
                attr(h, 2, &NF_IP_PRI_NAT_DST.to_be_bytes()); // NFTA_HOOK_PRIORITY
            });
            attr(b, 5, &NF_ACCEPT.to_be_bytes()); // NFTA_CHAIN_POLICY
            attr(b, 7, &cstr("nat")); // NFTA_CHAIN_TYPE
        },
    ));
    acked.push(s);
    s += 1;
    out.extend(message(
        nft(NFT_MSG_NEWRULE),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        s,
        0,
        |b| {
            attr(b, 1, &cstr(&table)); // NFTA_RULE_TABLE
            attr(b, 2, &cstr("prerouting")); // NFTA_RULE_CHAIN
            nested(b, 4, |e| {
                // NFTA_RULE_EXPRESSIONS
                payload(e, NFT_PAYLOAD_NETWORK_HEADER, 16, 4); // ip daddr
                cmp_eq(e, &vip.octets());
                expr(e, "meta", |m| {
                    attr(m, 2, &NFT_META_L4PROTO.to_be_bytes()); // NFTA_META_KEY
                    attr(m, 1, &NFT_REG_1.to_be_bytes()); // NFTA_META_DREG
                });
                cmp_eq(e, &[IPPROTO_TCP]);
                payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2); // tcp dport
                cmp_eq(e, &SMB_PORT.to_be_bytes());
                expr(e, "immediate", |i| {
                    attr(i, 1, &NFT_REG_1.to_be_bytes()); // NFTA_IMMEDIATE_DREG
                    nested(i, 2, |d| attr(d, 1, &port.to_be_bytes())); // NFTA_IMMEDIATE_DATA
                });
                expr(e, "redir", |r| {
                    attr(r, 1, &NFT_REG_1.to_be_bytes()); // NFTA_REDIR_REG_PROTO_MIN
                });
            });
        },
    ));
    acked.push(s);
    s += 1;
    out.extend(message(
        NFNL_MSG_BATCH_END,
        0,
        s,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    ));
    (out, acked)
}

/// The batch that deletes route `id`'s table.
pub fn remove_batch(id: u64, seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = message(NFNL_MSG_BATCH_BEGIN, 0, seq, NFNL_SUBSYS_NFTABLES, |_| {});
    out.extend(message(nft(NFT_MSG_DELTABLE), NLM_F_ACK, seq + 1, 0, |b| {
        attr(b, 1, &cstr(&table_name(id)))
    }));
    out.extend(message(
        NFNL_MSG_BATCH_END,
        0,
        seq + 2,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    ));
    (out, vec![seq + 1])
}

/// The errors of the acknowledgements in `buf`, by sequence number (0: success).
pub fn parse_acks(buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        if kind == NLMSG_ERROR && len >= 20 {
            let b = off + 16;
            let err = i32::from_ne_bytes([buf[b], buf[b + 1], buf[b + 2], buf[b + 3]]);
            out.push((seq, -err));
        }
        off += (len + 3) & !3;
    }
    out
}

/// An nf_tables netlink socket.
#[derive(Debug)]
pub struct Nftables {
    fd: OwnedFd,
    seq: u32,
}

impl Nftables {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        let fd = crate::sys::netlink::open_netfilter(std::time::Duration::from_secs(5))?;
        Ok(Nftables { fd, seq: 1 })
    }

    /// Installs (or replaces) route `id`'s redirect of `vip`:445 to `port`.
    pub fn install(&mut self, id: u64, vip: Ipv4Addr, port: u16) -> io::Result<()> {
        // Replace a leftover table (a crash before removal); a missing one fails the delete,
        // so try replacing first and fall back to a plain add.
        self.seq += 10;
        let (batch, acked) = install_batch(id, vip, port, true, self.seq);
        match self.send(&batch, &acked) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.seq += 10;
                let (batch, acked) = install_batch(id, vip, port, false, self.seq);
                self.send(&batch, &acked)
            }
            r => r,
        }
    }

    /// Removes route `id`'s redirect (no error when it is not there).
    pub fn remove(&mut self, id: u64) -> io::Result<()> {
        self.seq += 10;
        let (batch, acked) = remove_batch(id, self.seq);
        match self.send(&batch, &acked) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    fn send(&mut self, batch: &[u8], acked: &[u32]) -> io::Result<()> {
        crate::sys::netlink::send_to_kernel(&self.fd, batch)?;
        let mut pending: Vec<u32> = acked.to_vec();
        let mut buf = vec![0u8; 8192];
        let mut first_error = None;
        for _ in 0..16 {
            if pending.is_empty() {
                break;
            }
            let n = crate::sys::netlink::recv(&self.fd, &mut buf)?;
            for (seq, errno) in parse_acks(&buf[..n]) {
                pending.retain(|s| *s != seq);
                if errno != 0 && first_error.is_none() {
                    first_error = Some(errno);
                    // After an error the kernel aborts the batch: no further answers.
                    pending.clear();
                }
            }
        }
        match first_error {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None if pending.is_empty() => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no acknowledgement from nf_tables",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the netlink messages of a batch: (type, flags, seq, total length).
    fn headers(b: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < b.len() {
            let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
            assert!(
                len >= 20 && len.is_multiple_of(4) && off + len <= b.len(),
                "bad length {len}"
            );
            out.push((
                u16::from_ne_bytes(b[off + 4..off + 6].try_into().unwrap()),
                u16::from_ne_bytes(b[off + 6..off + 8].try_into().unwrap()),
                u32::from_ne_bytes(b[off + 8..off + 12].try_into().unwrap()),
            ));
            off += len;
        }
        out
    }

    #[test]
    fn an_install_batch_is_begin_delete_table_chain_rule_end() {
        let (b, acked) = install_batch(7, Ipv4Addr::new(192, 168, 1, 250), 14450, true, 100);
        let h = headers(&b);
        let kinds: Vec<u16> = h.iter().map(|x| x.0).collect();
        assert_eq!(
            kinds,
            vec![0x10, 0x0a02, 0x0a00, 0x0a03, 0x0a06, 0x11],
            "begin, deltable, newtable, newchain, newrule, end"
        );
        assert_eq!(acked, vec![101, 102, 103, 104]);
        assert!(h[1..5].iter().all(|x| x.1 & NLM_F_ACK != 0));
        assert!(h.iter().all(|x| x.1 & NLM_F_REQUEST != 0));
        // The VIP and the ports are in the rule as the kernel compares them.
        assert!(b.windows(4).any(|w| w == [192, 168, 1, 250]));
        assert!(b.windows(2).any(|w| w == 445u16.to_be_bytes()));
        assert!(b.windows(2).any(|w| w == 14450u16.to_be_bytes()));
        assert!(b.windows(16).any(|w| w == b"gatelet_egress_7"));
        let (_, acked) = install_batch(7, Ipv4Addr::new(192, 168, 1, 250), 14450, false, 100);
        assert_eq!(acked, vec![101, 102, 103]);
        let (r, acked) = remove_batch(7, 5);
        assert_eq!(
            headers(&r).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0x10, 0x0a02, 0x11]
        );
        assert_eq!(acked, vec![6]);
    }

    #[test]
    fn acks_are_read_by_sequence_with_their_errno() {
        let mut b = Vec::new();
        for (seq, err) in [(5u32, 0i32), (6, -2)] {
            b.extend_from_slice(&36u32.to_ne_bytes());
            b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&err.to_ne_bytes());
            b.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_acks(&b), vec![(5, 0), (6, 2)]);
        assert_eq!(
            parse_acks(&b[..30]),
            vec![(5, 0)].into_iter().take(0).collect::<Vec<_>>()
        );
    }
}
