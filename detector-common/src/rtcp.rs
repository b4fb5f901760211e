//! RTCP compound packets (RFC 3550 section 6, RFC 3611 for XR), parsed in
//! place: no allocation, no panic, every read bounds-checked.
//!
//! [`Compound::parse`] validates a whole UDP payload as RFC 3550 A.2 does
//! (version 2 throughout, every packet type an RTCP one, lengths that add
//! up to the payload exactly, padding only on the last packet) before any
//! packet is handed out, so a payload that merely starts like RTCP is
//! refused as a whole. That is also what keeps SRTCP out: its index and
//! authentication tag trail the compound (RFC 3711 3.4), so the lengths do
//! not add up, and everything past its first 8 bytes is ciphertext anyway.
//! SRTCP is therefore counted for liveness only, never read.

/// The ring buffer the kernel copies RTCP frames into for the agent: apart
/// from SIP's, so a burst of RTCP can never cost a SIP message its place.
pub const RTCP_RING_MAP: &str = "RTCP_RING";
/// 1 MiB: about 1,000 frames (RTCP is one packet every few seconds per stream).
pub const RTCP_RING_BYTES: u32 = 1 << 20;
/// Room for frame bytes in each ring entry: a compound with SR, SDES and an
/// XR block is about 200 bytes.
pub const RTCP_DATA_LEN: usize = 1024;
/// Bytes of each frame copied, from the start of the Ethernet header. One
/// less than a power of two so the kernel can bound the copy with a mask.
pub const RTCP_SNAPLEN: u32 = (RTCP_DATA_LEN - 1) as u32;

/// One captured RTCP frame, as the kernel hands it to the agent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RtcpFrame {
    /// `bpf_ktime_get_ns` at capture.
    pub ts_ns: u64,
    /// The frame's length on the wire.
    pub wire_len: u32,
    /// Bytes of `data` that are valid.
    pub captured_len: u32,
    /// `counters::HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 7],
    pub data: [u8; RTCP_DATA_LEN],
}
crate::assert_size!(RtcpFrame, 1048);

#[cfg(feature = "user")]
unsafe impl aya::Pod for RtcpFrame {}

/// Packet types (RFC 3550 12.1, RFC 3611 2).
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
pub const PT_XR: u8 = 207;
/// RFC 5761 4: the packet types RTCP may use (so RTP payload types 64-95 never collide).
pub const PT_RANGE: core::ops::RangeInclusive<u8> = 192..=223;

/// SDES item types (RFC 3550 6.5).
pub const SDES_END: u8 = 0;
pub const SDES_CNAME: u8 = 1;

/// XR block type of the VoIP metrics report block (RFC 3611 4.7).
pub const XR_VOIP_METRICS: u8 = 7;

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
/// Sender info after the SR's SSRC: NTP (8), RTP timestamp, packets, octets.
const SENDER_INFO_LEN: usize = 20;
const VOIP_METRICS_LEN: usize = 36;

/// Why a payload is not a valid RTCP compound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpError {
    /// Fewer bytes than a header, or than a packet's length says.
    Truncated,
    /// A version other than 2.
    Version,
    /// A packet type outside RTCP's range (192-223).
    PacketType,
    /// The packets' lengths do not add up to the payload (SRTCP's trailer
    /// shows this way), or padding on a packet other than the last.
    Length,
    /// A packet's count field promises more than its length holds.
    Count,
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// A validated compound packet.
///
/// Fewer than 4 zero bytes after the last packet are tolerated (see
/// [`Compound::parse`]).
#[derive(Clone, Copy, Debug)]
pub struct Compound<'a> {
    data: &'a [u8],
}

impl<'a> Compound<'a> {
    /// Validates `data` (a UDP payload) as one compound packet.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtcpError> {
        let mut rest = data;
        let mut packets = 0;
        while !rest.is_empty() {
            if rest.len() < HEADER_LEN && rest.iter().all(|&b| b == 0) {
                // Seen from a real sender (the corpus's sip_call_rtp_g711):
                // zeros after its last packet, too few to be SRTCP's trailer
                // (index and tag: 8 bytes at least). Wireshark accepts it too.
                break;
            }
            let (packet, tail) = split_packet(rest)?;
            if packet[0] & 0x20 != 0 && !tail.is_empty() {
                return Err(RtcpError::Length);
            }
            // Parsing checks the count fields against the length.
            Packet::decode(packet)?;
            packets += 1;
            rest = tail;
        }
        if packets == 0 {
            return Err(RtcpError::Truncated);
        }
        Ok(Self { data })
    }

    /// The packets, in order.
    pub fn packets(&self) -> Packets<'a> {
        Packets { rest: self.data }
    }

    /// Every report block of every SR and RR, with the reporter's SSRC.
    pub fn report_blocks(&self) -> impl Iterator<Item = (u32, ReportBlock)> + 'a {
        self.packets().flat_map(|p| {
            let (reporter, blocks) = match p {
                Packet::SenderReport(sr) => (sr.ssrc, sr.reports),
                Packet::ReceiverReport(rr) => (rr.ssrc, rr.reports),
                _ => (0, ReportBlocks::EMPTY),
            };
            blocks.map(move |b| (reporter, b))
        })
    }
}

/// Splits the first packet (without its padding check) off `data`.
fn split_packet(data: &[u8]) -> Result<(&[u8], &[u8]), RtcpError> {
    let first = *data.first().ok_or(RtcpError::Truncated)?;
    let packet_type = *data.get(1).ok_or(RtcpError::Truncated)?;
    let words = be16(data, 2).ok_or(RtcpError::Truncated)?;
    if first >> 6 != 2 {
        return Err(RtcpError::Version);
    }
    if !PT_RANGE.contains(&packet_type) {
        return Err(RtcpError::PacketType);
    }
    let len = (usize::from(words) + 1) * 4;
    if len > data.len() {
        return Err(RtcpError::Truncated);
    }
    Ok(data.split_at(len))
}

/// Iterates a validated compound's packets.
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Packets<'a> {
    type Item = Packet<'a>;

    fn next(&mut self) -> Option<Packet<'a>> {
        let (packet, tail) = split_packet(self.rest).ok()?;
        self.rest = tail;
        if packet[0] & 0x20 != 0 {
            self.rest = &[];
        }
        Packet::decode(packet).ok()
    }
}

/// One RTCP packet of a compound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    SourceDescription(Chunks<'a>),
    Bye(Bye<'a>),
    ExtendedReport(ExtendedReport<'a>),
    /// APP and types this parser does not read.
    Other {
        packet_type: u8,
    },
}

impl<'a> Packet<'a> {
    /// Decodes one packet: `packet` is exactly its length field's bytes.
    fn decode(packet: &'a [u8]) -> Result<Self, RtcpError> {
        let count = usize::from(packet[0] & 0x1F);
        let body = unpadded(packet)?.get(HEADER_LEN..).unwrap_or_default();
        Ok(match packet[1] {
            PT_SR => {
                let ssrc = be32(body, 0).ok_or(RtcpError::Truncated)?;
                let info = body
                    .get(4..4 + SENDER_INFO_LEN)
                    .ok_or(RtcpError::Truncated)?;
                let blocks = &body[4 + SENDER_INFO_LEN..];
                Packet::SenderReport(SenderReport {
                    ssrc,
                    ntp_msw: be32(info, 0).unwrap_or_default(),
                    ntp_lsw: be32(info, 4).unwrap_or_default(),
                    rtp_timestamp: be32(info, 8).unwrap_or_default(),
                    packet_count: be32(info, 12).unwrap_or_default(),
                    octet_count: be32(info, 16).unwrap_or_default(),
                    reports: ReportBlocks::new(blocks, count)?,
                })
            }
            PT_RR => Packet::ReceiverReport(ReceiverReport {
                ssrc: be32(body, 0).ok_or(RtcpError::Truncated)?,
                reports: ReportBlocks::new(&body[4..], count)?,
            }),
            PT_SDES => Packet::SourceDescription(Chunks::new(body, count)?),
            PT_BYE => {
                let ids = body.get(..count * 4).ok_or(RtcpError::Count)?;
                let rest = &body[count * 4..];
                let reason = rest
                    .first()
                    .and_then(|&len| rest.get(1..1 + usize::from(len)));
                Packet::Bye(Bye { ids, reason })
            }
            PT_XR => Packet::ExtendedReport(ExtendedReport {
                ssrc: be32(body, 0).ok_or(RtcpError::Truncated)?,
                blocks: XrBlocks { rest: &body[4..] },
            }),
            packet_type => Packet::Other { packet_type },
        })
    }
}

/// The packet without its padding (RFC 3550 6.4.1: the last octet counts
/// the padding octets, itself included).
fn unpadded(packet: &[u8]) -> Result<&[u8], RtcpError> {
    if packet[0] & 0x20 == 0 {
        return Ok(packet);
    }
    let pad = usize::from(*packet.last().ok_or(RtcpError::Truncated)?);
    if pad == 0 || pad + HEADER_LEN > packet.len() {
        return Err(RtcpError::Length);
    }
    Ok(&packet[..packet.len() - pad])
}

/// Sender report (RFC 3550 6.4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: u32,
    pub ntp_msw: u32,
    pub ntp_lsw: u32,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: ReportBlocks<'a>,
}

impl SenderReport<'_> {
    /// The middle 32 bits of the NTP timestamp: what a later report's LSR
    /// carries to name this SR.
    pub const fn ntp_middle(&self) -> u32 {
        (self.ntp_msw << 16) | (self.ntp_lsw >> 16)
    }
}

/// Receiver report (RFC 3550 6.4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    pub reports: ReportBlocks<'a>,
}

/// What a receiver says about one source it hears (RFC 3550 6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The reportee: the SSRC of the stream this block is about.
    pub ssrc: u32,
    /// Lost over the interval since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Expected minus received since the start: signed, 24 bits on the wire.
    pub cumulative_lost: i32,
    /// Sequence cycles << 16 | highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR received from the
    /// reportee (0: none yet).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn decode(b: &[u8]) -> Self {
        let word = be32(b, 4).unwrap_or_default();
        // Sign-extend the 24-bit cumulative count.
        let cumulative_lost = ((word << 8) as i32) >> 8;
        Self {
            ssrc: be32(b, 0).unwrap_or_default(),
            fraction_lost: (word >> 24) as u8,
            cumulative_lost,
            highest_seq: be32(b, 8).unwrap_or_default(),
            jitter: be32(b, 12).unwrap_or_default(),
            lsr: be32(b, 16).unwrap_or_default(),
            dlsr: be32(b, 20).unwrap_or_default(),
        }
    }

    /// The fraction lost in percent.
    pub fn fraction_lost_pct(&self) -> f64 {
        f64::from(self.fraction_lost) * 100.0 / 256.0
    }
}

/// The report blocks of an SR or RR. Profile-specific extensions after the
/// blocks (RFC 3550 6.4.3) are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
}

impl<'a> ReportBlocks<'a> {
    const EMPTY: ReportBlocks<'static> = ReportBlocks { rest: &[] };

    fn new(body: &'a [u8], count: usize) -> Result<Self, RtcpError> {
        let rest = body
            .get(..count * REPORT_BLOCK_LEN)
            .ok_or(RtcpError::Count)?;
        Ok(Self { rest })
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let block = self.rest.get(..REPORT_BLOCK_LEN)?;
        self.rest = &self.rest[REPORT_BLOCK_LEN..];
        Some(ReportBlock::decode(block))
    }
}

/// The chunks of an SDES packet: each an SSRC and its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Chunks<'a> {
    fn new(body: &'a [u8], count: usize) -> Result<Self, RtcpError> {
        // Walk once so the count is known to fit.
        let mut check = Self {
            rest: body,
            left: count,
        };
        for _ in 0..count {
            check.next_chunk().ok_or(RtcpError::Count)?;
        }
        Ok(Self {
            rest: body,
            left: count,
        })
    }

    fn next_chunk(&mut self) -> Option<Chunk<'a>> {
        if self.left == 0 {
            return None;
        }
        let ssrc = be32(self.rest, 0)?;
        let items = self.rest.get(4..)?;
        // Items run to an END octet; the chunk is then padded to 32 bits.
        let mut at = 0;
        loop {
            match *items.get(at)? {
                SDES_END => break,
                _ => at += 2 + usize::from(*items.get(at + 1)?),
            }
        }
        let items_len = at;
        let chunk_len = (4 + items_len + 1).div_ceil(4) * 4;
        let items = items.get(..items_len)?;
        self.rest = self.rest.get(chunk_len..)?;
        self.left -= 1;
        Some(Chunk { ssrc, items })
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        self.next_chunk()
    }
}

/// One SDES chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub ssrc: u32,
    items: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// The items as (type, value).
    pub fn items(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let mut rest = self.items;
        core::iter::from_fn(move || {
            let kind = *rest.first()?;
            let len = usize::from(*rest.get(1)?);
            let value = rest.get(2..2 + len)?;
            rest = &rest[2 + len..];
            Some((kind, value))
        })
    }

    /// The canonical name (CNAME), if the chunk has one.
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items()
            .find(|&(kind, _)| kind == SDES_CNAME)
            .map(|(_, value)| value)
    }
}

/// BYE: the sources leaving, and an optional reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bye<'a> {
    ids: &'a [u8],
    pub reason: Option<&'a [u8]>,
}

impl<'a> Bye<'a> {
    pub fn sources(&self) -> impl Iterator<Item = u32> + 'a {
        self.ids
            .chunks_exact(4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    }
}

/// Extended report (RFC 3611).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendedReport<'a> {
    /// The reporter.
    pub ssrc: u32,
    pub blocks: XrBlocks<'a>,
}

/// The report blocks of an XR packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XrBlocks<'a> {
    rest: &'a [u8],
}

/// One XR report block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XrBlock {
    VoipMetrics(VoipMetrics),
    /// A block type this parser does not read (or a VoIP metrics block of
    /// the wrong length).
    Other {
        block_type: u8,
    },
}

impl Iterator for XrBlocks<'_> {
    type Item = XrBlock;

    fn next(&mut self) -> Option<XrBlock> {
        let block_type = *self.rest.first()?;
        let words = be16(self.rest, 2)?;
        let len = (usize::from(words) + 1) * 4;
        let Some(block) = self.rest.get(..len) else {
            self.rest = &[];
            return None;
        };
        self.rest = &self.rest[len..];
        Some(match block_type {
            XR_VOIP_METRICS if len == VOIP_METRICS_LEN => {
                XrBlock::VoipMetrics(VoipMetrics::decode(block))
            }
            _ => XrBlock::Other { block_type },
        })
    }
}

/// RFC 3611 4.7: a receiver's own call-quality figures about one source.
/// Rates are in 1/256, delays in ms, R factors 0-100 (127: unavailable),
/// MOS in tenths (127: unavailable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoipMetrics {
    pub ssrc: u32,
    pub loss_rate: u8,
    pub discard_rate: u8,
    pub burst_density: u8,
    pub gap_density: u8,
    pub burst_duration_ms: u16,
    pub gap_duration_ms: u16,
    pub round_trip_delay_ms: u16,
    pub end_system_delay_ms: u16,
    pub signal_level: u8,
    pub noise_level: u8,
    pub rerl: u8,
    pub gmin: u8,
    pub r_factor: u8,
    pub ext_r_factor: u8,
    pub mos_lq: u8,
    pub mos_cq: u8,
    pub rx_config: u8,
    pub jb_nominal_ms: u16,
    pub jb_maximum_ms: u16,
    pub jb_abs_max_ms: u16,
}

impl VoipMetrics {
    fn decode(b: &[u8]) -> Self {
        let byte = |at: usize| b.get(at).copied().unwrap_or_default();
        let half = |at: usize| be16(b, at).unwrap_or_default();
        Self {
            ssrc: be32(b, 4).unwrap_or_default(),
            loss_rate: byte(8),
            discard_rate: byte(9),
            burst_density: byte(10),
            gap_density: byte(11),
            burst_duration_ms: half(12),
            gap_duration_ms: half(14),
            round_trip_delay_ms: half(16),
            end_system_delay_ms: half(18),
            signal_level: byte(20),
            noise_level: byte(21),
            rerl: byte(22),
            gmin: byte(23),
            r_factor: byte(24),
            ext_r_factor: byte(25),
            mos_lq: byte(26),
            mos_cq: byte(27),
            rx_config: byte(28),
            jb_nominal_ms: half(30),
            jb_maximum_ms: half(32),
            jb_abs_max_ms: half(34),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// sip_call_rtp_g711.pcap frame 529: SR (one block), RR (one block), SDES.
    const SR_RR_SDES: &str = "81c8000cd2bd4e3ec59286d4f645a1cb000002800000000400000280d2bd4e3e00000000000400040000000086d4f6450000000181c90007d2bd4e3e58f33dea0000000000002c440000000086d4f6450000000181ca0007d2bd4e3e0114756e6b6e6f776e403230302e35372e372e32303400000000";
    /// aaa.pcap frame 633: SR without blocks, SDES (CNAME and TOOL), BYE with a reason.
    const SR_SDES_BYE: &str = "80c800063796cb7142c907ca5efac603000024c3000000090000060c81ca000b3796cb71011d31313839343239372d3434333261396638403139322e3136382e312e3206055349505053000081cb00063796cb711073657373696f6e2073687574646f776e000000";

    #[test]
    fn sender_and_receiver_reports_as_tshark_decodes_them() {
        let bytes = hex(SR_RR_SDES);
        let compound = Compound::parse(&bytes).unwrap();
        let packets: Vec<Packet<'_>> = compound.packets().collect();
        assert_eq!(packets.len(), 3);
        let Packet::SenderReport(sr) = &packets[0] else {
            panic!("{:?}", packets[0]);
        };
        assert_eq!(
            (sr.ssrc, sr.ntp_msw, sr.ntp_lsw, sr.rtp_timestamp),
            (0xd2bd_4e3e, 3_314_714_324, 4_131_758_539, 640)
        );
        assert_eq!((sr.packet_count, sr.octet_count), (4, 640));
        assert_eq!(sr.ntp_middle(), 0x86d4_f645);
        let blocks: Vec<(u32, ReportBlock)> = compound.report_blocks().collect();
        assert_eq!(
            blocks,
            [
                (
                    0xd2bd_4e3e,
                    ReportBlock {
                        ssrc: 0xd2bd_4e3e,
                        fraction_lost: 0,
                        cumulative_lost: 0,
                        highest_seq: 262_148,
                        jitter: 0,
                        lsr: 2_262_103_621,
                        dlsr: 1,
                    }
                ),
                (
                    0xd2bd_4e3e,
                    ReportBlock {
                        ssrc: 0x58f3_3dea,
                        fraction_lost: 0,
                        cumulative_lost: 0,
                        highest_seq: 11332,
                        jitter: 0,
                        lsr: 2_262_103_621,
                        dlsr: 1,
                    }
                )
            ]
        );
        let Packet::SourceDescription(chunks) = &packets[2] else {
            panic!("{:?}", packets[2]);
        };
        let chunks: Vec<Chunk<'_>> = chunks.clone().collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ssrc, 0xd2bd_4e3e);
        assert_eq!(chunks[0].cname(), Some(&b"unknown@200.57.7.204"[..]));
    }

    #[test]
    fn sdes_items_and_bye_reason() {
        let bytes = hex(SR_SDES_BYE);
        let compound = Compound::parse(&bytes).unwrap();
        let packets: Vec<Packet<'_>> = compound.packets().collect();
        assert_eq!(packets.len(), 3);
        assert_eq!(compound.report_blocks().count(), 0);
        let Packet::SourceDescription(chunks) = &packets[1] else {
            panic!("{:?}", packets[1]);
        };
        let chunk = chunks.clone().next().unwrap();
        let items: Vec<(u8, &[u8])> = chunk.items().collect();
        assert_eq!(
            items,
            [
                (SDES_CNAME, &b"11894297-4432a9f8@192.168.1.2"[..]),
                (6, &b"SIPPS"[..])
            ]
        );
        let Packet::Bye(bye) = &packets[2] else {
            panic!("{:?}", packets[2]);
        };
        assert_eq!(bye.sources().collect::<Vec<_>>(), [0x3796_cb71]);
        assert_eq!(bye.reason, Some(&b"session shutdown"[..]));
    }

    #[test]
    fn cumulative_lost_is_signed_24_bits() {
        // An RR with one block: fraction 0x40 (25 %), cumulative -3 (0xFFFFFD),
        // then one with the largest positive count 0x7FFFFF.
        for (word, fraction, cumulative) in [
            ([0x40, 0xFF, 0xFF, 0xFD], 0x40, -3),
            ([0x00, 0x7F, 0xFF, 0xFF], 0, 0x7F_FFFF),
            ([0xFF, 0x80, 0x00, 0x00], 0xFF, -0x80_0000),
        ] {
            let mut rr = hex("81c9000700000001000000aa");
            rr.extend_from_slice(&word);
            rr.extend_from_slice(&[0; 16]);
            let compound = Compound::parse(&rr).unwrap();
            let (reporter, block) = compound.report_blocks().next().unwrap();
            assert_eq!(reporter, 1);
            assert_eq!(block.ssrc, 0xaa);
            assert_eq!(
                (block.fraction_lost, block.cumulative_lost),
                (fraction, cumulative)
            );
        }
        let mut rr = hex("81c9000700000001000000aa40000000");
        rr.extend_from_slice(&[0; 16]);
        let (_, block) = Compound::parse(&rr)
            .unwrap()
            .report_blocks()
            .next()
            .unwrap();
        assert!((block.fraction_lost_pct() - 25.0).abs() < 1e-9);
    }

    #[test]
    fn xr_voip_metrics_block() {
        // RFC 3611 4.7 layout: XR header, reporter SSRC, then a type 7 block
        // (length 8) and an unknown type 99 block (length 0).
        let bytes = hex(concat!(
            "80cf000b", "11111111", "07000008", "22222222", "0a0b0c0d", "00140028", "0032003c",
            "f0e0d0c0", "5d5e2a26", "01000064", "00c80190", "63000000",
        ));
        let compound = Compound::parse(&bytes).unwrap();
        let Some(Packet::ExtendedReport(xr)) = compound.packets().next() else {
            panic!("no XR");
        };
        assert_eq!(xr.ssrc, 0x1111_1111);
        let blocks: Vec<XrBlock> = xr.blocks.collect();
        assert_eq!(
            blocks,
            [
                XrBlock::VoipMetrics(VoipMetrics {
                    ssrc: 0x2222_2222,
                    loss_rate: 10,
                    discard_rate: 11,
                    burst_density: 12,
                    gap_density: 13,
                    burst_duration_ms: 20,
                    gap_duration_ms: 40,
                    round_trip_delay_ms: 50,
                    end_system_delay_ms: 60,
                    signal_level: 0xf0,
                    noise_level: 0xe0,
                    rerl: 0xd0,
                    gmin: 0xc0,
                    r_factor: 93,
                    ext_r_factor: 94,
                    mos_lq: 42,
                    mos_cq: 38,
                    rx_config: 1,
                    jb_nominal_ms: 100,
                    jb_maximum_ms: 200,
                    jb_abs_max_ms: 400,
                }),
                XrBlock::Other { block_type: 99 }
            ]
        );
    }

    #[test]
    fn padding_on_the_last_packet() {
        // An RR without blocks, padded by 4 octets (P bit, last octet 4).
        let bytes = hex("a0c900020000000100000004");
        let compound = Compound::parse(&bytes).unwrap();
        assert_eq!(
            compound.packets().collect::<Vec<_>>(),
            [Packet::ReceiverReport(ReceiverReport {
                ssrc: 1,
                reports: ReportBlocks { rest: &[] }
            })]
        );
    }

    #[test]
    fn refused() {
        let rr_one_block = "81c9000700000001000000aa0000000000000000000000000000000000000000";
        // SRTCP: the compound followed by E||index and an 80-bit tag.
        let srtcp = [rr_one_block, "80000001", "0102030405060708090a"].concat();
        let cases: &[(&str, &str, RtcpError)] = &[
            ("empty", "", RtcpError::Truncated),
            ("zeros only", "000000", RtcpError::Truncated),
            (
                "a non-zero trailer",
                "80c900010000000101",
                RtcpError::Truncated,
            ),
            ("header only", "81c9", RtcpError::Truncated),
            (
                "length past the payload",
                "80c90002000000010000",
                RtcpError::Truncated,
            ),
            ("version 1", "41c9000100000001", RtcpError::Version),
            (
                "RTP payload type",
                "80080001000000010000",
                RtcpError::PacketType,
            ),
            ("srtcp trailer", &srtcp, RtcpError::PacketType),
            (
                "blocks beyond the length",
                "82c9000700000001000000aa0000000000000000000000000000000000000000",
                RtcpError::Count,
            ),
            (
                "SR without sender info",
                "80c8000100000001",
                RtcpError::Truncated,
            ),
            (
                "padding not last",
                "a0c900010000000181c9000100000002",
                RtcpError::Length,
            ),
            ("padding count 0", "a0c9000100000000", RtcpError::Length),
            (
                "padding past the header",
                "a0c9000100000010",
                RtcpError::Length,
            ),
            (
                "sdes chunk without END",
                "81ca00020000000101020000",
                RtcpError::Count,
            ),
            (
                "bye with too many sources",
                "83cb000100000001",
                RtcpError::Count,
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(Compound::parse(&hex(bytes)).err(), Some(*want), "{name}");
        }
    }

    #[test]
    fn never_panics_on_any_prefix_or_corruption() {
        let full = hex(SR_RR_SDES);
        for cut in 0..full.len() {
            if let Ok(c) = Compound::parse(&full[..cut]) {
                let _ = c.packets().count() + c.report_blocks().count();
            }
        }
        for i in 0..full.len() {
            for bit in 0..8 {
                let mut bytes = full.clone();
                bytes[i] ^= 1 << bit;
                if let Ok(c) = Compound::parse(&bytes) {
                    for p in c.packets() {
                        if let Packet::SourceDescription(chunks) = p {
                            for chunk in chunks {
                                let _ = chunk.items().count();
                            }
                        }
                    }
                }
            }
        }
    }
}
