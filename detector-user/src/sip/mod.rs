//! SIP message framing: start line, headers, body (RFC 3261 section 7).
//!
//! Tolerant of real traffic: compact header names, any case, folded
//! whitespace, a missing Content-Length on UDP. Fuzzed (`fuzz/`).
//!
//! Hand-written on purpose: the maintained SIP crate (rsip) builds a strict
//! typed tree of every header and rejects messages real SBCs and phones
//! send; a monitor needs a handful of headers from whatever arrives, and to
//! count, not crash on, the rest.

pub mod reassembly;
pub mod sdp;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SipError {
    /// The first line is neither a request line nor a status line.
    #[error("not a SIP message")]
    NotSip,
    /// The header section never ends.
    #[error("sip headers are incomplete")]
    Incomplete,
}

/// Request or response line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { status: u16, reason: String },
}

/// A parsed SIP message; header names are lowercased and compact forms
/// expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// RFC 3261 compact forms (and RFC 3515/4028 ones seen in the wild).
fn expand_compact(name: &str) -> &str {
    match name {
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "v" => "via",
        "c" => "content-type",
        "l" => "content-length",
        "m" => "contact",
        "e" => "content-encoding",
        "k" => "supported",
        "s" => "subject",
        "r" => "refer-to",
        "x" => "session-expires",
        _ => name,
    }
}

impl SipMessage {
    /// The first value of header `name` (lowercase, full form).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, comma-joined values split apart.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| split_commas(v))
    }

    /// The SDP body, directly or as a part of a multipart body.
    pub fn sdp_body(&self) -> Option<&str> {
        let content_type = self.header("content-type").unwrap_or("application/sdp");
        let lower = content_type.to_ascii_lowercase();
        let body = std::str::from_utf8(&self.body).ok()?;
        if lower.starts_with("application/sdp") {
            return Some(body).filter(|b| !b.trim().is_empty());
        }
        if lower.starts_with("multipart/") {
            let boundary = param(content_type, "boundary")?;
            return multipart_sdp(body, boundary);
        }
        None
    }
}

/// A parsed `Reason` header (RFC 3326): `SIP;cause=408;text="RTP Timeout"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reason {
    pub protocol: String,
    pub cause: Option<u16>,
    pub text: Option<String>,
}

impl SipMessage {
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
            .map(str::trim)
            .filter(|c| !c.is_empty())
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let mut parts = self.header("cseq")?.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        Some((number, parts.next()?.to_ascii_uppercase()))
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.header("from").and_then(tag_param)
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.header("to").and_then(tag_param)
    }

    /// Every Reason header value.
    pub fn reasons(&self) -> Vec<Reason> {
        self.header_values("reason")
            .filter_map(parse_reason)
            .collect()
    }

    /// Session-Expires in seconds (RFC 4028).
    pub fn session_expires(&self) -> Option<u32> {
        self.header("session-expires")?
            .split(';')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// The `tag` parameter of a From/To value (after the URI's closing `>`).
fn tag_param(value: &str) -> Option<&str> {
    let params = value.rfind('>').map_or(value, |i| &value[i + 1..]);
    params
        .split(';')
        .skip(usize::from(!value.contains('>')))
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("tag")
                .then(|| v.trim())
                .filter(|v| !v.is_empty())
        })
}

fn parse_reason(value: &str) -> Option<Reason> {
    let mut parts = value.split(';');
    let protocol = parts.next()?.trim().to_string();
    if protocol.is_empty() {
        return None;
    }
    let mut reason = Reason {
        protocol,
        cause: None,
        text: None,
    };
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "cause" => reason.cause = v.trim().parse().ok(),
            "text" => reason.text = Some(v.trim().trim_matches('"').to_string()),
            _ => {}
        }
    }
    Some(reason)
}

/// Splits on commas outside quotes and angle brackets.
fn split_commas(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut depth_angle, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, ch) in v.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => depth_angle += 1,
            '>' if !quoted => depth_angle -= 1,
            ',' if !quoted && depth_angle <= 0 => {
                parts.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(v[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

fn multipart_sdp<'a>(body: &'a str, boundary: &str) -> Option<&'a str> {
    let delimiter = format!("--{boundary}");
    for part in body.split(delimiter.as_str()) {
        let Some((headers, content)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        if headers.to_ascii_lowercase().contains("application/sdp") {
            return Some(content.trim_end_matches("\r\n"));
        }
    }
    None
}

/// Whether `payload` starts like a SIP message (request or response line).
pub fn looks_like_sip(payload: &[u8]) -> bool {
    let head = &payload[..payload.len().min(64)];
    if head.starts_with(b"SIP/2.0 ") {
        return true;
    }
    let Some(space) = head.iter().position(|&b| b == b' ') else {
        return false;
    };
    space > 0
        && head[..space].iter().all(u8::is_ascii_uppercase)
        && (head[space + 1..].starts_with(b"sip:")
            || head[space + 1..].starts_with(b"sips:")
            || head[space + 1..].starts_with(b"tel:"))
}

/// The length of the first complete message in a stream (TCP): headers plus
/// the Content-Length body (required on streams; absent means 0). `None`
/// until all of it is there.
pub fn message_len(data: &[u8]) -> Option<usize> {
    let header_end = find(data, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| find(data, b"\n\n").map(|i| i + 2))?;
    let head = std::str::from_utf8(&data[..header_end]).ok()?;
    let body = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| {
            let name = name.trim();
            name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let total = header_end.checked_add(body)?;
    (data.len() >= total).then_some(total)
}

/// Parses one SIP message from the start of `data`; returns it and the bytes
/// it used (for streams carrying several messages).
pub fn parse_message(data: &[u8]) -> Result<(SipMessage, usize), SipError> {
    let header_end = find(data, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(data, b"\n\n").map(|i| (i, i + 2)))
        .ok_or(SipError::Incomplete)?;
    let head = String::from_utf8_lossy(&data[..header_end.0]);
    let mut lines = unfold(&head).into_iter();
    let first = lines.next().ok_or(SipError::NotSip)?;
    let start = parse_start_line(&first)?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        headers.push((expand_compact(&name).to_string(), value.trim().to_string()));
    }
    let rest = &data[header_end.1..];
    let declared = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    // On UDP the datagram bounds the message; Content-Length may be absent.
    let body_len = declared.map_or(rest.len(), |n| n.min(rest.len()));
    let body = rest[..body_len].to_vec();
    Ok((
        SipMessage {
            start,
            headers,
            body,
        },
        header_end.1 + body_len,
    ))
}

fn unfold(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in head.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        lines.push(line.to_string());
    }
    lines
}

fn parse_start_line(line: &str) -> Result<StartLine, SipError> {
    let mut parts = line.splitn(3, ' ');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if a == "SIP/2.0" {
        let status = b.parse().map_err(|_| SipError::NotSip)?;
        if !(100..700).contains(&status) {
            return Err(SipError::NotSip);
        }
        return Ok(StartLine::Response {
            status,
            reason: c.to_string(),
        });
    }
    if c.trim() == "SIP/2.0" && !a.is_empty() && a.bytes().all(|ch| ch.is_ascii_alphabetic()) {
        return Ok(StartLine::Request {
            method: a.to_ascii_uppercase(),
            uri: b.to_string(),
        });
    }
    Err(SipError::NotSip)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_with_compact_headers_and_sdp() {
        let msg = b"INVITE sip:bob@b.example SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\ni: abc@host\r\n\
            f: <sip:alice@a>;tag=1\r\nt: <sip:bob@b>\r\nc: application/sdp\r\nl: 8\r\n\r\nv=0\r\nm=xEXTRA";
        let (m, used) = parse_message(msg).unwrap();
        assert_eq!(
            m.start,
            StartLine::Request {
                method: "INVITE".into(),
                uri: "sip:bob@b.example".into()
            }
        );
        assert_eq!(m.header("call-id"), Some("abc@host"));
        assert_eq!(m.sdp_body(), Some("v=0\r\nm=x"));
        assert_eq!(used, msg.len() - 5);
    }

    #[test]
    fn response_and_comma_joined() {
        let msg = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a, SIP/2.0/UDP b\r\nReason: SIP;cause=408;text=\"RTP, Timeout\"\r\n\r\n";
        let (m, _) = parse_message(msg).unwrap();
        assert_eq!(
            m.start,
            StartLine::Response {
                status: 200,
                reason: "OK".into()
            }
        );
        assert_eq!(m.header_values("via").count(), 2);
        assert_eq!(m.header_values("reason").count(), 1);
    }

    #[test]
    fn dialog_fields() {
        let msg = b"BYE sip:a SIP/2.0\r\nFrom: \"Bob\" <sip:bob@b;transport=udp>;tag=99\r\nTo: sip:alice@a;tag=11\r\n\
            i: cid-1\r\nCSeq: 2 bye\r\nReason: SIP;cause=408;text=\"RTP Timeout\", Q.850;cause=102\r\nx: 1800;refresher=uac\r\n\r\n";
        let (m, _) = parse_message(msg).unwrap();
        assert_eq!(
            (m.method(), m.call_id(), m.cseq()),
            (Some("BYE"), Some("cid-1"), Some((2, "BYE".into())))
        );
        assert_eq!((m.from_tag(), m.to_tag()), (Some("99"), Some("11")));
        assert_eq!(
            m.reasons(),
            vec![
                Reason {
                    protocol: "SIP".into(),
                    cause: Some(408),
                    text: Some("RTP Timeout".into())
                },
                Reason {
                    protocol: "Q.850".into(),
                    cause: Some(102),
                    text: None
                },
            ]
        );
        assert_eq!(m.session_expires(), Some(1800));
        assert_eq!(tag_param("<sip:x@y;tag=notme>"), None);
    }

    #[test]
    fn multipart_sdp() {
        let msg = b"INVITE sip:x SIP/2.0\r\nContent-Type: multipart/mixed;boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n--b1\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b1--\r\n";
        let (m, _) = parse_message(msg).unwrap();
        assert_eq!(m.sdp_body(), Some("v=0\r\nm=audio 1 RTP/AVP 0"));
    }

    #[test]
    fn rejects_non_sip() {
        assert_eq!(
            parse_message(b"HTTP/1.1 200 OK\r\n\r\n").unwrap_err(),
            SipError::NotSip
        );
        assert_eq!(
            parse_message(b"INVITE sip:x SIP/2.0\r\nVia: x").unwrap_err(),
            SipError::Incomplete
        );
        assert!(looks_like_sip(b"OPTIONS sip:a@b SIP/2.0\r\n"));
        assert!(looks_like_sip(b"SIP/2.0 180 Ringing\r\n"));
        assert!(!looks_like_sip(b"\x80\x08\x00\x01"));
    }
}
