//! Building test frames, katran-style: small functions that return bytes.

/// An RTP packet (header and `payload_len` bytes of PCMA silence).
pub fn rtp_payload(pt: u8, seq: u16, timestamp: u32, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload_len);
    p.push(0x80);
    p.push(pt & 0x7F);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(12 + payload_len, 0xD5);
    p
}

/// An RTCP receiver report with no report blocks.
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// An RTCP receiver report from `reporter` with one report block about
/// `reportee`: `fraction_lost` in 1/256, the cumulative count, the extended
/// highest sequence number; no jitter, no SR received yet (LSR 0).
pub fn rtcp_rr_block(
    reporter: u32,
    reportee: u32,
    fraction_lost: u8,
    cumulative_lost: u32,
    highest_seq: u32,
) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    let lost = (u32::from(fraction_lost) << 24) | (cumulative_lost & 0x00FF_FFFF);
    for word in [reporter, reportee, lost, highest_seq, 0, 0, 0] {
        p.extend_from_slice(&word.to_be_bytes());
    }
    p
}

fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() > 1 {
            0x88A8
        } else {
            0x8100
        };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet/IPv4 frame carrying `l4` with `protocol`; `frag` is the raw
/// flags/fragment-offset field.
pub fn ipv4(
    vlans: &[u16],
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(vlans, 0x0800);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, protocol, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    f
}

/// A UDP header and payload (checksum 0).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A TCP segment with a 20-byte header.
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// An Ethernet/IPv4/UDP frame.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv4(&[], src, dst, 17, 0, &udp(sport, dport, payload))
}

/// An Ethernet/IPv6/UDP frame.
pub fn ipv6_udp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(&[], 0x86DD);
    let l4 = udp(sport, dport, payload);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&l4);
    f
}

/// An ARP request (not IP).
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(&[], 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.resize(60, 0);
    f
}

/// A classic pcap file header: microsecond timestamps, snap length 65535.
pub fn pcap_header(linktype: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&65535u32.to_le_bytes());
    h.extend_from_slice(&linktype.to_le_bytes());
    h
}

/// The pcap record header of a whole frame of `len` bytes captured at
/// `ts_ns` (since the epoch).
pub fn pcap_record_header(ts_ns: u64, len: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&((ts_ns % 1_000_000_000 / 1000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    h
}
