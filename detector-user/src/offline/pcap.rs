//! Reading pcap and pcapng captures (pure Rust, no libpcap).

use std::{fs::File, io::Read, path::Path};

use detector_common::packet::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6};
use pcap_parser::{create_reader, pcapng::Block, Linktype, PcapBlockOwned, PcapError};

const READ_BUFFER: usize = 1 << 20;
/// A block larger than this is corruption, not a packet.
const MAX_READ_BUFFER: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is neither pcap nor pcapng.
    #[error("{path} is not a pcap or pcapng capture")]
    NotACapture { path: String },
    /// The file is empty.
    #[error("{path} is empty")]
    Empty { path: String },
}

/// Where the network layer starts in a frame of some link type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer3 {
    /// An Ethernet frame: parse from its first byte.
    Ethernet,
    /// The IP header starts at this offset.
    Ip(usize),
    /// Not IP, or a link type we do not read.
    None,
}

/// One frame, with its capture time.
pub struct Frame<'a> {
    pub ts_ns: u64,
    pub data: &'a [u8],
    pub wire_len: u32,
    pub layer3: Layer3,
}

/// What went wrong part-way through a capture; frames before it were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file ends in the middle of a block.
    Truncated { after_frames: u64 },
    /// A block could not be parsed.
    Corrupt { after_frames: u64, detail: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated { after_frames } => {
                write!(f, "capture is truncated: results cover the first {after_frames} frames")
            }
            Damage::Corrupt { after_frames, detail } => write!(
                f,
                "capture is corrupt after frame {after_frames} ({detail}): results cover the frames before it"
            ),
        }
    }
}

/// Summary of a read.
#[derive(Debug, Default)]
pub struct ReadSummary {
    pub frames: u64,
    pub unsupported_link_frames: u64,
    pub damage: Option<Damage>,
}

struct Interface {
    linktype: Linktype,
    /// Units per second of the interface's timestamps.
    resolution: u64,
    offset: i64,
}

/// Reads every frame of `path`, calling `on_frame` for each. A damaged file
/// yields what came before the damage and says so in the summary.
pub fn read_capture(
    path: &Path,
    mut on_frame: impl FnMut(&Frame<'_>),
) -> Result<ReadSummary, CaptureError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| CaptureError::Io {
        path: shown.clone(),
        source,
    })?;
    read_from(file, &shown, &mut on_frame)
}

fn read_from(
    reader: impl Read + Send,
    shown: &str,
    on_frame: &mut dyn FnMut(&Frame<'_>),
) -> Result<ReadSummary, CaptureError> {
    let mut reader = match create_reader(READ_BUFFER, reader) {
        Ok(r) => r,
        Err(PcapError::Eof) => {
            return Err(CaptureError::Empty {
                path: shown.to_string(),
            })
        }
        Err(_) => {
            return Err(CaptureError::NotACapture {
                path: shown.to_string(),
            })
        }
    };
    let mut summary = ReadSummary::default();
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut legacy: Option<(Linktype, bool)> = None;
    let mut buffer = READ_BUFFER;
    loop {
        match reader.next() {
            Ok((consumed, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        // 0xa1b23c4d (either byte order): nanosecond timestamps.
                        let nanos = h.magic_number == 0xa1b2_3c4d || h.magic_number == 0x4d3c_b2a1;
                        legacy = Some((h.network, nanos));
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (linktype, nanos) = legacy.unwrap_or((Linktype::ETHERNET, false));
                        let frac = if nanos {
                            u64::from(b.ts_usec)
                        } else {
                            u64::from(b.ts_usec) * 1000
                        };
                        let ts_ns = u64::from(b.ts_sec) * 1_000_000_000 + frac;
                        emit(&mut summary, on_frame, linktype, ts_ns, b.data, b.origlen);
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match interfaces.get(epb.if_id as usize) {
                            Some(ifc) => {
                                let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let ts_ns = units_to_ns(units, ifc.resolution, ifc.offset);
                                emit(
                                    &mut summary,
                                    on_frame,
                                    ifc.linktype,
                                    ts_ns,
                                    epb.data,
                                    epb.origlen,
                                );
                            }
                            None => summary.unsupported_link_frames += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        // Simple packets carry no timestamp; they belong to interface 0.
                        match interfaces.first() {
                            Some(ifc) => emit(
                                &mut summary,
                                on_frame,
                                ifc.linktype,
                                0,
                                spb.data,
                                spb.origlen,
                            ),
                            None => summary.unsupported_link_frames += 1,
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(consumed);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    summary.damage = Some(Damage::Truncated {
                        after_frames: summary.frames,
                    });
                    break;
                }
                if reader.refill().is_err() {
                    summary.damage = Some(Damage::Truncated {
                        after_frames: summary.frames,
                    });
                    break;
                }
            }
            Err(PcapError::BufferTooSmall) => {
                buffer *= 2;
                if buffer > MAX_READ_BUFFER || !reader.grow(buffer) {
                    summary.damage = Some(Damage::Corrupt {
                        after_frames: summary.frames,
                        detail: "block larger than 64 MiB".into(),
                    });
                    break;
                }
                if reader.refill().is_err() {
                    summary.damage = Some(Damage::Truncated {
                        after_frames: summary.frames,
                    });
                    break;
                }
            }
            Err(PcapError::UnexpectedEof) => {
                summary.damage = Some(Damage::Truncated {
                    after_frames: summary.frames,
                });
                break;
            }
            Err(e) => {
                summary.damage = Some(Damage::Corrupt {
                    after_frames: summary.frames,
                    detail: describe(&e),
                });
                break;
            }
        }
    }
    Ok(summary)
}

fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) => format!("unparseable block: {kind:?}"),
        PcapError::OwnedNomError(_, kind) => format!("unparseable block: {kind:?}"),
        PcapError::ReadError => "read error".into(),
        PcapError::HeaderNotRecognized => "unrecognised section header".into(),
        other => format!("{other:?}"),
    }
}

fn units_to_ns(units: u64, resolution: u64, offset_s: i64) -> u64 {
    let resolution = resolution.max(1);
    let secs = units / resolution;
    let frac = units % resolution;
    let frac_ns = (u128::from(frac) * 1_000_000_000 / u128::from(resolution)) as u64;
    let secs = secs.saturating_add_signed(offset_s);
    secs.saturating_mul(1_000_000_000).saturating_add(frac_ns)
}

fn emit(
    summary: &mut ReadSummary,
    on_frame: &mut dyn FnMut(&Frame<'_>),
    linktype: Linktype,
    ts_ns: u64,
    data: &[u8],
    origlen: u32,
) {
    summary.frames += 1;
    let layer3 = layer3_of(linktype, data);
    if layer3 == Layer3::None && !matches!(linktype, Linktype::ETHERNET) {
        summary.unsupported_link_frames += 1;
    }
    on_frame(&Frame {
        ts_ns,
        data,
        wire_len: origlen,
        layer3,
    });
}

/// Finds the network header for the link types captures of VoIP use.
pub fn layer3_of(linktype: Linktype, data: &[u8]) -> Layer3 {
    let be16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match linktype {
        Linktype::ETHERNET => Layer3::Ethernet,
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => Layer3::Ip(0),
        // Linux cooked v1: protocol at 14, header 16 bytes.
        Linktype::LINUX_SLL => skip_vlans(data, be16(14), 16),
        // Linux cooked v2: protocol at 0, header 20 bytes.
        Linktype::LINUX_SLL2 => skip_vlans(data, be16(0), 20),
        // BSD loopback: a 4-byte address family (host order for NULL,
        // network order for LOOP); 2 is IPv4, 24/28/30 IPv6 on the BSDs.
        Linktype::NULL | Linktype::LOOP => {
            let Some(b) = data.get(..4) else {
                return Layer3::None;
            };
            let family = if linktype == Linktype::LOOP {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            } else {
                let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if le > 0xFFFF {
                    le.swap_bytes()
                } else {
                    le
                }
            };
            match family {
                2 | 24 | 28 | 30 => Layer3::Ip(4),
                _ => Layer3::None,
            }
        }
        _ => Layer3::None,
    }
}

fn skip_vlans(data: &[u8], ethertype: Option<u16>, mut offset: usize) -> Layer3 {
    let Some(mut ethertype) = ethertype else {
        return Layer3::None;
    };
    for _ in 0..detector_common::packet::MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = data.get(offset + 2..offset + 4) else {
            return Layer3::None;
        };
        ethertype = u16::from_be_bytes([tag[0], tag[1]]);
        offset += 4;
    }
    if ethertype == ETH_P_IPV4 || ethertype == ETH_P_IPV6 {
        Layer3::Ip(offset)
    } else {
        Layer3::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_header(linktype: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&linktype.to_le_bytes());
        h
    }

    fn record(ts_sec: u32, data: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&ts_sec.to_le_bytes());
        r.extend_from_slice(&500_000u32.to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(data);
        r
    }

    fn read(bytes: Vec<u8>) -> Result<(Vec<(u64, usize)>, ReadSummary), CaptureError> {
        let mut frames = Vec::new();
        let summary = read_from(std::io::Cursor::new(bytes), "test", &mut |f| {
            frames.push((f.ts_ns, f.data.len()));
        })?;
        Ok((frames, summary))
    }

    #[test]
    fn reads_legacy_pcap() {
        let mut file = pcap_header(1);
        file.extend(record(10, &[0u8; 60]));
        file.extend(record(11, &[0u8; 70]));
        let (frames, summary) = read(file).unwrap();
        assert_eq!(frames, vec![(10_500_000_000, 60), (11_500_000_000, 70)]);
        assert!(summary.damage.is_none());
    }

    #[test]
    fn truncated_capture_keeps_what_came_before() {
        let mut file = pcap_header(1);
        file.extend(record(10, &[0u8; 60]));
        let mut second = record(11, &[0u8; 70]);
        second.truncate(40);
        file.extend(second);
        let (frames, summary) = read(file).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(summary.damage, Some(Damage::Truncated { after_frames: 1 }));
    }

    #[test]
    fn not_a_capture() {
        let err = read(b"this is a text file, not a capture at all".to_vec()).unwrap_err();
        assert!(matches!(err, CaptureError::NotACapture { .. }), "{err}");
        assert!(matches!(
            read(Vec::new()).unwrap_err(),
            CaptureError::Empty { .. }
        ));
    }

    #[test]
    fn link_types() {
        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(layer3_of(Linktype::LINUX_SLL, &sll), Layer3::Ip(16));
        let mut sll2 = vec![0u8; 20];
        sll2[0..2].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(layer3_of(Linktype::LINUX_SLL2, &sll2), Layer3::Ip(20));
        assert_eq!(layer3_of(Linktype::NULL, &[2, 0, 0, 0]), Layer3::Ip(4));
        assert_eq!(layer3_of(Linktype::LOOP, &[0, 0, 0, 30]), Layer3::Ip(4));
        assert_eq!(layer3_of(Linktype::RAW, &[0x45]), Layer3::Ip(0));
        assert_eq!(layer3_of(Linktype(147), &[0; 10]), Layer3::None);
    }
}
