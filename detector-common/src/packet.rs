//! Header parsing shared by the kernel programs and the offline analyser.
//!
//! Everything reads through [`PacketBytes`]: a header is checked once to
//! lie inside the packet, then its fields (a byte, a big-endian u16 or u32,
//! four raw bytes) are read where they are used. The kernel implements it
//! over the XDP/TC packet pointers (the one place that touches packet
//! memory) with one load instruction per field; userspace over a slice. A
//! header copied whole into a byte array would become, in the kernel build,
//! one load per byte, all live at once.
//! Every step returns the next header's offset or an error, in the manner of
//! xdp-tools' parsing helpers.

pub const ETH_HEADER_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ outer tag, still seen on carrier gear.
pub const ETH_P_QINQ_LEGACY: u16 = 0x9100;
/// VLAN tags skipped before giving up (802.1Q and 802.1ad QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPV6_FRAGMENT_HEADER: u8 = 44;
pub const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
pub const UDP_HEADER_LEN: usize = 8;
const TCP_HEADER_MIN: usize = 20;

/// A header known to lie inside the packet: its fields are read without
/// further checks. `at` is a constant offset inside the header; the kernel
/// build's verifier rejects the program if a read could leave it.
pub trait Header {
    fn u8_at(&self, at: usize) -> u8;
    /// A big-endian u16.
    fn be16_at(&self, at: usize) -> u16;
    /// A big-endian u32.
    fn be32_at(&self, at: usize) -> u32;
    /// Four bytes as they are (an IPv4 address, a quarter of an IPv6 one).
    fn quad_at(&self, at: usize) -> [u8; 4];
}

/// Bounds-checked access to a packet's bytes.
pub trait PacketBytes {
    type Header<const N: usize>: Header;

    /// The `N`-byte header at `offset`, checked once, or `None` past the
    /// end of the packet.
    fn header<const N: usize>(&self, offset: usize) -> Option<Self::Header<N>>;
}

/// A header copied out of a slice (userspace).
#[derive(Clone, Copy, Debug)]
pub struct HeaderBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> HeaderBytes<N> {
    #[inline(always)]
    fn bytes<const W: usize>(&self, at: usize) -> [u8; W] {
        let mut out = [0u8; W];
        if let Some(field) = self.0.get(at..at + W) {
            out.copy_from_slice(field);
        } else {
            debug_assert!(false, "field {at}+{W} outside a {N}-byte header");
        }
        out
    }
}

impl<const N: usize> Header for HeaderBytes<N> {
    #[inline(always)]
    fn u8_at(&self, at: usize) -> u8 {
        self.bytes::<1>(at)[0]
    }

    #[inline(always)]
    fn be16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes(self.bytes(at))
    }

    #[inline(always)]
    fn be32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bytes(at))
    }

    #[inline(always)]
    fn quad_at(&self, at: usize) -> [u8; 4] {
        self.bytes(at)
    }
}

impl PacketBytes for [u8] {
    type Header<const N: usize> = HeaderBytes<N>;

    #[inline]
    fn header<const N: usize>(&self, offset: usize) -> Option<HeaderBytes<N>> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(HeaderBytes(out))
    }
}

/// Why a packet could not be parsed down to its transport payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, LLDP, more VLAN tags than we skip, ...).
    NotIp,
    /// A header runs past the captured bytes.
    Truncated,
    /// A header field is impossible (IHL < 5, wrong IP version, ...).
    Malformed,
}

/// Where a packet sits in IP fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    Whole,
    /// Offset 0 with more to come: the transport header is present.
    First,
    /// Offset > 0: no transport header.
    Later,
}

/// An IP packet parsed down to its transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Addresses in network byte order; IPv4 as IPv4-mapped IPv6.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ip_version: u8,
    pub protocol: u8,
    pub fragment: Fragment,
    /// IPv4 identification (for reassembly), 0 for IPv6 without a fragment header.
    pub ip_id: u32,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the transport header (or of the fragment's data).
    pub l4_offset: usize,
    /// Transport ports, host byte order (0 when there is no UDP/TCP header).
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset and length of the UDP/TCP payload (of the fragment data for `Later`).
    pub payload_offset: usize,
    pub payload_len: usize,
    /// Byte offset of this fragment's data in the original datagram.
    pub fragment_offset: usize,
    /// More fragments follow.
    pub more_fragments: bool,
}

/// Skips the Ethernet header and up to [`MAX_VLAN_TAGS`] VLAN tags; returns
/// the ethertype and the offset of the network header.
#[inline(always)]
pub fn parse_ethernet<P: PacketBytes + ?Sized>(p: &P) -> Result<(u16, usize), ParseError> {
    let eth = p.header::<ETH_HEADER_LEN>(0).ok_or(ParseError::Truncated)?;
    let mut ethertype = eth.be16_at(12);
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let tag = p.header::<4>(offset).ok_or(ParseError::Truncated)?;
        ethertype = tag.be16_at(2);
        offset += 4;
    }
    if ethertype != ETH_P_IPV4 && ethertype != ETH_P_IPV6 {
        return Err(ParseError::NotIp);
    }
    Ok((ethertype, offset))
}

/// An IPv4 address as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[inline(always)]
const fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_LEGACY
}

/// Parses the IP header at `offset` (its version decides v4 or v6) and the
/// UDP/TCP header behind it.
#[inline(always)]
pub fn parse_ip<P: PacketBytes + ?Sized>(p: &P, offset: usize) -> Result<IpPacket, ParseError> {
    let first = p.header::<1>(offset).ok_or(ParseError::Truncated)?.u8_at(0);
    match first >> 4 {
        4 => parse_ipv4(p, offset, first),
        6 => parse_ipv6(p, offset),
        _ => Err(ParseError::Malformed),
    }
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(
    p: &P,
    offset: usize,
    version_ihl: u8,
) -> Result<IpPacket, ParseError> {
    let h = p
        .header::<IPV4_HEADER_MIN>(offset)
        .ok_or(ParseError::Truncated)?;
    let header_len = ((version_ihl & 0x0F) as usize) * 4;
    if header_len < IPV4_HEADER_MIN {
        return Err(ParseError::Malformed);
    }
    let total_len = h.be16_at(2) as usize;
    if total_len < header_len {
        return Err(ParseError::Malformed);
    }
    let frag = h.be16_at(6);
    let more_fragments = frag & 0x2000 != 0;
    let fragment_offset = ((frag & 0x1FFF) as usize) * 8;
    let fragment = match (fragment_offset, more_fragments) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let l4_offset = offset + header_len;
    let ip = IpPacket {
        src: ipv4_mapped(h.quad_at(12)),
        dst: ipv4_mapped(h.quad_at(16)),
        ip_version: 4,
        protocol: h.u8_at(9),
        fragment,
        ip_id: h.be16_at(4) as u32,
        l3_offset: offset,
        l4_offset,
        src_port: 0,
        dst_port: 0,
        payload_offset: l4_offset,
        payload_len: total_len - header_len,
        fragment_offset,
        more_fragments,
    };
    parse_transport(p, ip)
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(p: &P, offset: usize) -> Result<IpPacket, ParseError> {
    let h = p
        .header::<IPV6_HEADER_LEN>(offset)
        .ok_or(ParseError::Truncated)?;
    let address = |at: usize| -> [u8; 16] {
        let (a, b, c, d) = (
            h.quad_at(at),
            h.quad_at(at + 4),
            h.quad_at(at + 8),
            h.quad_at(at + 12),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    };
    let mut ip = IpPacket {
        src: address(8),
        dst: address(24),
        ip_version: 6,
        protocol: h.u8_at(6),
        fragment: Fragment::Whole,
        ip_id: 0,
        l3_offset: offset,
        l4_offset: offset + IPV6_HEADER_LEN,
        src_port: 0,
        dst_port: 0,
        payload_offset: offset + IPV6_HEADER_LEN,
        payload_len: h.be16_at(4) as usize,
        fragment_offset: 0,
        more_fragments: false,
    };
    if ip.protocol == IPV6_FRAGMENT_HEADER {
        let f = p.header::<8>(ip.l4_offset).ok_or(ParseError::Truncated)?;
        let frag = f.be16_at(2);
        ip.protocol = f.u8_at(0);
        ip.fragment_offset = ((frag >> 3) as usize) * 8;
        ip.more_fragments = frag & 1 != 0;
        ip.ip_id = f.be32_at(4);
        ip.fragment = match (ip.fragment_offset, ip.more_fragments) {
            (0, false) => Fragment::Whole,
            (0, true) => Fragment::First,
            _ => Fragment::Later,
        };
        ip.l4_offset += 8;
        ip.payload_offset = ip.l4_offset;
        ip.payload_len = ip.payload_len.checked_sub(8).ok_or(ParseError::Malformed)?;
    }
    parse_transport(p, ip)
}

#[inline(always)]
fn parse_transport<P: PacketBytes + ?Sized>(
    p: &P,
    mut ip: IpPacket,
) -> Result<IpPacket, ParseError> {
    if ip.fragment == Fragment::Later {
        return Ok(ip);
    }
    match ip.protocol {
        IPPROTO_UDP => {
            let u = p
                .header::<UDP_HEADER_LEN>(ip.l4_offset)
                .ok_or(ParseError::Truncated)?;
            let udp_len = u.be16_at(4) as usize;
            if udp_len < UDP_HEADER_LEN || ip.payload_len < UDP_HEADER_LEN {
                return Err(ParseError::Malformed);
            }
            ip.src_port = u.be16_at(0);
            ip.dst_port = u.be16_at(2);
            ip.payload_offset = ip.l4_offset + UDP_HEADER_LEN;
            ip.payload_len = udp_payload_len(ip.payload_len, udp_len);
        }
        IPPROTO_TCP => {
            let t = p
                .header::<TCP_HEADER_MIN>(ip.l4_offset)
                .ok_or(ParseError::Truncated)?;
            let header_len = ((t.u8_at(12) >> 4) as usize) * 4;
            if header_len < TCP_HEADER_MIN || ip.payload_len < header_len {
                return Err(ParseError::Malformed);
            }
            ip.src_port = t.be16_at(0);
            ip.dst_port = t.be16_at(2);
            ip.payload_offset = ip.l4_offset + header_len;
            ip.payload_len -= header_len;
        }
        _ => {}
    }
    Ok(ip)
}

/// The bytes of a UDP payload in this packet, given the IP payload's length
/// and the UDP header's length field (both at least a UDP header): a first
/// fragment's UDP length covers the whole datagram; the IP length is what
/// this packet holds.
#[inline(always)]
pub const fn udp_payload_len(ip_payload_len: usize, udp_len: usize) -> usize {
    let in_packet = ip_payload_len - UDP_HEADER_LEN;
    let in_datagram = udp_len - UDP_HEADER_LEN;
    if in_datagram < in_packet {
        in_datagram
    } else {
        in_packet
    }
}

/// The 16-byte form of an address (IPv4 as IPv4-mapped), as keys hold it:
/// the inverse of [`ip_addr`].
#[cfg(any(test, feature = "user"))]
pub fn addr_bytes(addr: core::net::IpAddr) -> [u8; 16] {
    match addr {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Renders a 16-byte address as text: IPv4-mapped addresses as dotted quads.
#[cfg(any(test, feature = "user"))]
pub fn ip_addr(bytes: [u8; 16], ip_version: u8) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from(bytes);
    if ip_version == 4 {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return core::net::IpAddr::V4(v4);
        }
    }
    core::net::IpAddr::V6(v6)
}

#[cfg(test)]
pub mod testpkt {
    //! A tiny builder for test frames (shared by this crate's tests).
    use std::vec::Vec;

    pub fn ipv4_udp(
        vlans: &[u16],
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for (i, vid) in vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && vlans.len() > 1 {
                0x88A8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }
}

#[cfg(test)]
mod tests {
    use std::{string::ToString, vec::Vec};

    use super::{testpkt::ipv4_udp, *};

    fn parse(frame: &[u8]) -> Result<IpPacket, ParseError> {
        let (_, off) = parse_ethernet(frame)?;
        parse_ip(frame, off)
    }

    #[test]
    fn plain_udp() {
        let f = ipv4_udp(&[], [10, 0, 0, 1], [10, 0, 0, 2], 4000, 20000, &[0x80; 172]);
        let ip = parse(&f).unwrap();
        assert_eq!(
            (ip.src_port, ip.dst_port, ip.payload_len),
            (4000, 20000, 172)
        );
        assert_eq!(ip.payload_offset, 42);
        assert_eq!(&ip.src[12..], &[10, 0, 0, 1]);
        assert_eq!(ip.fragment, Fragment::Whole);
    }

    #[test]
    fn one_and_two_vlan_tags() {
        for tags in [&[100u16][..], &[100, 200]] {
            let f = ipv4_udp(tags, [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, &[0; 4]);
            let ip = parse(&f).unwrap();
            assert_eq!(ip.l3_offset, 14 + 4 * tags.len());
        }
        let f = ipv4_udp(&[1, 2, 3], [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, &[0; 4]);
        assert_eq!(parse(&f), Err(ParseError::NotIp));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut f = ipv4_udp(&[], [1, 1, 1, 1], [2, 2, 2, 2], 5060, 5060, b"hello");
        // IHL 6: insert four option bytes and fix the lengths.
        f[14] = 0x46;
        let total = u16::from_be_bytes([f[16], f[17]]) + 4;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.splice(34..34, [1, 1, 1, 0]);
        let ip = parse(&f).unwrap();
        assert_eq!(ip.l4_offset, 38);
        assert_eq!(ip.payload_len, 5);
        assert_eq!(ip.dst_port, 5060);
    }

    #[test]
    fn fragments() {
        let mut f = ipv4_udp(&[], [1, 1, 1, 1], [2, 2, 2, 2], 5060, 5060, &[b'x'; 100]);
        f[20] = 0x20; // MF
        assert_eq!(parse(&f).unwrap().fragment, Fragment::First);
        f[20] = 0x00;
        f[21] = 0x10; // offset 128 bytes
        let ip = parse(&f).unwrap();
        assert_eq!(ip.fragment, Fragment::Later);
        assert_eq!(ip.fragment_offset, 128);
        assert_eq!((ip.src_port, ip.dst_port), (0, 0));
    }

    #[test]
    fn ipv6_udp() {
        let mut f: Vec<u8> = Vec::new();
        f.extend_from_slice(&[0; 12]);
        f.extend_from_slice(&0x86DDu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 12, 17, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x13, 0xC4, 0x4E, 0x20, 0, 12, 0, 0, 1, 2, 3, 4]);
        let ip = parse(&f).unwrap();
        assert_eq!(ip.ip_version, 6);
        assert_eq!((ip.src_port, ip.dst_port, ip.payload_len), (5060, 20000, 4));
        assert_eq!(ip_addr(ip.src, 6).to_string(), "2001:db8::1");
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let f = ipv4_udp(&[7], [1, 1, 1, 1], [2, 2, 2, 2], 1, 2, &[0x80; 20]);
        for cut in 0..f.len() {
            let _ = parse(&f[..cut]);
        }
        assert_eq!(parse(&f[..40]), Err(ParseError::Truncated));
        let mut bad = f.clone();
        bad[18] = 0x43; // IHL 3
        assert_eq!(parse(&bad), Err(ParseError::Malformed));
    }
}
