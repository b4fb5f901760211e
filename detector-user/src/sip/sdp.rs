//! SDP (RFC 4566/8866) as far as media monitoring needs it: where each m-line
//! receives, in which direction, with which payload types.
//!
//! No crate fits: the SDP crates on crates.io (webrtc-sdp, sdp-rs) reject the
//! sloppy SDP real SBCs and phones send, or pull in a WebRTC stack. This
//! parser is lenient line by line and fuzzed (`fuzz/`).

use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// The body has no `v=` line: not SDP.
    #[error("not an SDP body (no v= line)")]
    NotSdp,
}

/// Media direction attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaDirection {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl MediaDirection {
    fn from_attr(attr: &str) -> Option<Self> {
        match attr {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }
}

/// `a=rtpmap:PT ENCODING/RATE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
}

/// One m-line with its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// audio, video, image, application, ...
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// Media-level `c=`, if any.
    pub connection: Option<IpAddr>,
    /// Media-level direction attribute, if any.
    pub direction: Option<MediaDirection>,
    pub rtpmaps: Vec<RtpMap>,
    pub rtcp_mux: bool,
    pub crypto: bool,
}

impl Media {
    /// Carries RTP (RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVPF, ...), unlike T.38's udptl.
    pub fn is_rtp(&self) -> bool {
        self.proto.to_ascii_uppercase().contains("RTP")
    }
}

/// A parsed session description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<MediaDirection>,
    pub media: Vec<Media>,
}

impl SessionDescription {
    /// Where `m` receives: its own `c=` or the session's.
    pub fn address_of(&self, m: &Media) -> Option<IpAddr> {
        m.connection.or(self.connection)
    }

    /// `m`'s direction: its own, else the session's, else sendrecv.
    pub fn direction_of(&self, m: &Media) -> MediaDirection {
        m.direction
            .or(self.direction)
            .unwrap_or(MediaDirection::SendRecv)
    }

    /// On hold the old way: `c=0.0.0.0` (RFC 2543).
    pub fn is_hold_address(&self, m: &Media) -> bool {
        self.address_of(m).is_some_and(|a| a.is_unspecified())
    }
}

/// Parses an SDP body. Unknown or malformed lines are skipped, as real
/// endpoints send plenty of both.
pub fn parse(body: &str) -> Result<SessionDescription, SdpError> {
    let mut sdp = SessionDescription::default();
    let mut seen_version = false;
    for raw in body.lines() {
        let line = raw.trim_end_matches('\r').trim();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match kind.trim() {
            "v" => seen_version = true,
            "c" => {
                let addr = parse_connection(value);
                match sdp.media.last_mut() {
                    Some(m) => m.connection = addr.or(m.connection),
                    None => sdp.connection = addr,
                }
            }
            "m" => {
                if let Some(m) = parse_media(value) {
                    sdp.media.push(m);
                } else {
                    // Keep attribute lines of a broken m-line away from the previous one.
                    sdp.media.push(Media {
                        kind: String::new(),
                        port: 0,
                        proto: String::new(),
                        formats: Vec::new(),
                        connection: None,
                        direction: None,
                        rtpmaps: Vec::new(),
                        rtcp_mux: false,
                        crypto: false,
                    });
                }
            }
            "a" => parse_attribute(&mut sdp, value),
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NotSdp);
    }
    sdp.media.retain(|m| !m.kind.is_empty());
    Ok(sdp)
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1[/ttl[/n]]
    let mut parts = value.split_whitespace();
    let (_net, _family, addr) = (parts.next()?, parts.next()?, parts.next()?);
    let addr = addr.split('/').next()?;
    addr.parse().ok()
}

fn parse_media(value: &str) -> Option<Media> {
    // m=audio 49170[/2] RTP/AVP 0 8 97
    let mut parts = value.split_whitespace();
    let kind = parts.next()?.to_ascii_lowercase();
    let port = parts.next()?.split('/').next()?.parse().ok()?;
    let proto = parts.next()?.to_string();
    Some(Media {
        kind,
        port,
        proto,
        formats: parts.map(str::to_string).collect(),
        connection: None,
        direction: None,
        rtpmaps: Vec::new(),
        rtcp_mux: false,
        crypto: false,
    })
}

fn parse_attribute(sdp: &mut SessionDescription, value: &str) {
    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
    let name = name.trim().to_ascii_lowercase();
    if let Some(direction) = MediaDirection::from_attr(&name) {
        match sdp.media.last_mut() {
            Some(m) => m.direction = Some(direction),
            None => sdp.direction = Some(direction),
        }
        return;
    }
    let Some(m) = sdp.media.last_mut() else {
        return;
    };
    match name.as_str() {
        "rtcp-mux" => m.rtcp_mux = true,
        "crypto" => m.crypto = true,
        "rtpmap" => {
            if let Some(map) = parse_rtpmap(arg) {
                m.rtpmaps.push(map);
            }
        }
        _ => {}
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    // 97 opus/48000/2
    let (pt, rest) = arg.trim().split_once(char::is_whitespace)?;
    let payload_type: u8 = pt.parse().ok().filter(|pt| *pt < 128)?;
    let mut fields = rest.trim().split('/');
    let encoding = fields.next()?.to_string();
    let clock_rate = fields.next()?.trim().parse().ok().filter(|r| *r > 0)?;
    Some(RtpMap {
        payload_type,
        encoding,
        clock_rate,
    })
}

/// The SDP blocks inside an H.248/Megaco text message (its Local and Remote
/// descriptors), which media gateways use instead of SIP.
pub fn megaco_sdp_blocks(payload: &[u8]) -> Vec<&str> {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Vec::new();
    };
    if !(text.starts_with("MEGACO/") || text.starts_with("!/")) {
        return Vec::new();
    }
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("v=0") {
        let block = &rest[start..];
        let end = block.find('}').unwrap_or(block.len());
        blocks.push(&block[..end]);
        rest = &block[end..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n\
        m=image 40002 udptl t38\r\nc=IN IP4 10.0.0.2\r\n";

    #[test]
    fn offer_with_audio_and_t38() {
        let sdp = parse(OFFER).unwrap();
        assert_eq!(sdp.media.len(), 2);
        let audio = &sdp.media[0];
        assert_eq!((audio.kind.as_str(), audio.port), ("audio", 40000));
        assert!(audio.is_rtp());
        assert_eq!(sdp.address_of(audio), "10.0.0.1".parse().ok());
        assert_eq!(sdp.direction_of(audio), MediaDirection::SendOnly);
        assert_eq!(audio.rtpmaps[0].clock_rate, 8000);
        let image = &sdp.media[1];
        assert!(!image.is_rtp());
        assert_eq!(sdp.address_of(image), "10.0.0.2".parse().ok());
        assert_eq!(sdp.direction_of(image), MediaDirection::SendRecv);
    }

    #[test]
    fn hold_and_session_direction() {
        let sdp = parse("v=0\nc=IN IP4 0.0.0.0\na=inactive\nm=audio 5000 RTP/AVP 0\n").unwrap();
        let m = &sdp.media[0];
        assert!(sdp.is_hold_address(m));
        assert_eq!(sdp.direction_of(m), MediaDirection::Inactive);
    }

    #[test]
    fn megaco_local_and_remote() {
        let msg = b"MEGACO/1 [10.0.0.1]:2944\nReply = 1 { Context = 2 { Modify = A { Media { Stream = 1 {\n\
            Local {\nv=0\nc=IN IP4 10.0.0.1\nm=image 16756 udptl t38\n}, Remote {\nv=0\nc=IN IP4 10.0.0.2\nm=audio 15580 RTP/AVP 8\n} } } } } }";
        let blocks = megaco_sdp_blocks(msg);
        assert_eq!(blocks.len(), 2);
        assert!(!parse(blocks[0]).unwrap().media[0].is_rtp());
        assert_eq!(parse(blocks[1]).unwrap().media[0].port, 15580);
        assert!(megaco_sdp_blocks(b"INVITE sip:a SIP/2.0").is_empty());
    }

    #[test]
    fn lenient_with_garbage() {
        let sdp = parse("v=0\nm=audio notaport RTP/AVP 0\na=rtpmap:x\nm=audio 7078 RTP/AVP 8\nc=IN IP6 ::1\njunk\n").unwrap();
        assert_eq!(sdp.media.len(), 1);
        assert_eq!(sdp.media[0].port, 7078);
        assert_eq!(parse("hello"), Err(SdpError::NotSdp));
    }
}
