//! Telling RTP and RTCP apart from other UDP, by header alone.

/// Fixed RTP header length.
pub const RTP_HEADER_LEN: usize = 12;
/// The smallest RTCP packet: header and sender SSRC (an empty RR).
pub const RTCP_MIN_LEN: usize = 8;
/// RFC 3389 comfort noise.
pub const PT_COMFORT_NOISE: u8 = 13;
/// Clock rate assumed for dynamic payload types until SDP says otherwise.
pub const DEFAULT_DYNAMIC_CLOCK_RATE: u32 = 8000;

/// The fields of an RTP header the detector accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// What the first bytes of a UDP payload are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// An RTP header is plausible; read 12 bytes with [`rtp_header`].
    Rtp,
    /// RTCP (packet types 200-204), possibly muxed on the RTP port.
    Rtcp {
        ssrc: u32,
    },
    /// A valid RTP header whose payload type is neither static nor in the
    /// dynamic range: RTP only where SDP announced RTP (as Wireshark counts
    /// every packet of a stream SDP set up), else not.
    RtpUnlistedType,
    NotRtp,
}

/// With the marker bit set, payload types 64-95 read as RTCP packet types
/// 192-223 (RFC 5761 4): never RTP, even where SDP announced RTP.
const RTCP_CONFLICT_TYPES: core::ops::RangeInclusive<u8> = 64..=95;

/// Classifies a UDP payload from its first 8 bytes and its length.
///
/// RTCP is recognised first: its packet type byte (200-204) would read as an
/// RTP marker bit plus payload type 72-76, a range RTP never uses (RFC 5761).
#[inline(always)]
pub fn classify(head: [u8; 8], payload_len: usize) -> PayloadKind {
    if head[0] >> 6 != 2 {
        return PayloadKind::NotRtp;
    }
    if (200..=204).contains(&head[1]) {
        let words = u16::from_be_bytes([head[2], head[3]]) as usize + 1;
        if payload_len >= RTCP_MIN_LEN && words * 4 <= payload_len {
            return PayloadKind::Rtcp {
                ssrc: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            };
        }
        return PayloadKind::NotRtp;
    }
    let csrc_count = (head[0] & 0x0F) as usize;
    if payload_len < RTP_HEADER_LEN + 4 * csrc_count {
        return PayloadKind::NotRtp;
    }
    let payload_type = head[1] & 0x7F;
    if is_plausible_payload_type(payload_type) {
        PayloadKind::Rtp
    } else if head[1] & 0x80 != 0 && RTCP_CONFLICT_TYPES.contains(&payload_type) {
        PayloadKind::NotRtp
    } else {
        PayloadKind::RtpUnlistedType
    }
}

/// Static (RFC 3551) and dynamic payload types; the unassigned ranges and the
/// RTCP-conflict range 72-76 are not RTP.
#[inline(always)]
pub const fn is_plausible_payload_type(pt: u8) -> bool {
    pt <= 34 || pt >= 96
}

/// Decodes the fixed RTP header from its first 8 bytes (as [`classify`]
/// saw them) and the SSRC behind them.
#[inline(always)]
pub fn rtp_header(head: [u8; 8], ssrc: u32) -> RtpHeader {
    RtpHeader {
        marker: head[1] & 0x80 != 0,
        payload_type: head[1] & 0x7F,
        seq: u16::from_be_bytes([head[2], head[3]]),
        timestamp: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        ssrc,
    }
}

/// RFC 3551's clock rates for static payload types.
pub const fn static_clock_rate(pt: u8) -> Option<u32> {
    match pt {
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => Some(8000),
        6 => Some(16000),
        10 | 11 => Some(44100),
        16 => Some(11025),
        17 => Some(22050),
        14 | 25 | 26 | 28 | 31 | 32 | 33 | 34 => Some(90000),
        _ => None,
    }
}

/// The clock rate of a stream of payload type `pt`: the one place it is
/// derived, for the kernel, the agent and `analyze` alike. The rate the
/// receiver's SDP declared for `pt` in an `a=rtpmap` (`declared`, 0 when it
/// declared none), else RFC 3551's for a static type, else
/// [`DEFAULT_DYNAMIC_CLOCK_RATE`].
#[inline(always)]
pub const fn stream_clock_rate(pt: u8, declared: u32) -> u32 {
    if declared != 0 {
        declared
    } else {
        default_clock_rate(pt)
    }
}

/// The clock rate used for `pt` when nothing better is known.
pub const fn default_clock_rate(pt: u8) -> u32 {
    match static_clock_rate(pt) {
        Some(rate) => rate,
        None => DEFAULT_DYNAMIC_CLOCK_RATE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> [u8; 8] {
        let mut h = [0; 8];
        h.copy_from_slice(&bytes[..8]);
        h
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[u8], usize, PayloadKind)] = &[
            (
                "pcma",
                &[0x80, 0x08, 0, 1, 0, 0, 0, 160],
                172,
                PayloadKind::Rtp,
            ),
            (
                "marker + dynamic",
                &[0x80, 0xE0, 0, 1, 0, 0, 0, 0],
                60,
                PayloadKind::Rtp,
            ),
            (
                "rtcp sr",
                &[0x80, 200, 0, 6, 0xDE, 0xAD, 0xBE, 0xEF],
                28,
                PayloadKind::Rtcp { ssrc: 0xDEAD_BEEF },
            ),
            (
                "rtcp rr muxed",
                &[0x81, 201, 0, 7, 0, 0, 0, 1],
                32,
                PayloadKind::Rtcp { ssrc: 1 },
            ),
            (
                "rtcp length beyond packet",
                &[0x80, 200, 0, 60, 0, 0, 0, 1],
                28,
                PayloadKind::NotRtp,
            ),
            (
                "version 1 (SIP text)",
                b"INVITE s",
                500,
                PayloadKind::NotRtp,
            ),
            (
                "version 0 (STUN)",
                &[0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42],
                20,
                PayloadKind::NotRtp,
            ),
            (
                "too short",
                &[0x80, 0x08, 0, 1, 0, 0, 0, 0],
                11,
                PayloadKind::NotRtp,
            ),
            (
                "csrc beyond packet",
                &[0x8F, 0x08, 0, 1, 0, 0, 0, 0],
                40,
                PayloadKind::NotRtp,
            ),
            (
                "unassigned pt 50",
                &[0x80, 50, 0, 1, 0, 0, 0, 0],
                40,
                PayloadKind::RtpUnlistedType,
            ),
            (
                "pt 72 without marker",
                &[0x80, 72, 0, 1, 0, 0, 0, 0],
                40,
                PayloadKind::RtpUnlistedType,
            ),
            (
                "pt 77 with marker (RTCP feedback, 205)",
                &[0x80, 205, 0, 1, 0, 0, 0, 0],
                40,
                PayloadKind::NotRtp,
            ),
            (
                "pt 50 with marker",
                &[0x80, 0x80 | 50, 0, 1, 0, 0, 0, 0],
                40,
                PayloadKind::RtpUnlistedType,
            ),
            (
                "header and a 1-byte payload",
                &[0x80, 0x80 | 111, 0, 1, 0, 0, 0, 0],
                13,
                PayloadKind::Rtp,
            ),
        ];
        for (name, bytes, len, want) in cases {
            assert_eq!(classify(head(bytes), *len), *want, "{name}");
        }
    }

    #[test]
    fn decodes_header() {
        let h = rtp_header([0x80, 0x88, 0xFF, 0xFE, 0, 0, 1, 0], 0x1234_5678);
        assert_eq!(
            h,
            RtpHeader {
                marker: true,
                payload_type: 8,
                seq: 65534,
                timestamp: 256,
                ssrc: 0x1234_5678
            }
        );
    }

    #[test]
    fn clock_rates() {
        assert_eq!(default_clock_rate(0), 8000);
        assert_eq!(default_clock_rate(9), 8000); // G.722's famous RFC 3551 quirk
        assert_eq!(default_clock_rate(34), 90000);
        assert_eq!(default_clock_rate(111), DEFAULT_DYNAMIC_CLOCK_RATE);
    }

    #[test]
    fn declared_rates_win() {
        // Opus and video as SDP declares them; nothing declared: RFC 3551's
        // rate, or 8000 Hz for a dynamic type.
        assert_eq!(stream_clock_rate(111, 48000), 48000);
        assert_eq!(stream_clock_rate(96, 90000), 90000);
        assert_eq!(stream_clock_rate(111, 0), 8000);
        assert_eq!(stream_clock_rate(34, 0), 90000);
        assert_eq!(stream_clock_rate(0, 0), 8000);
    }
}
