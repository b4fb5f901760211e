//! Turns captured frames into whole SIP messages: IP fragments of large UDP
//! messages are reassembled, SIP over TCP is followed per connection (several
//! messages in one segment, one message across segments). Used by the agent
//! on frames from the kernel's ring buffer and by `detector analyze`.
//!
//! Bounded: at most [`MAX_PENDING`] datagrams in reassembly and
//! [`MAX_CONNECTIONS`] connections, each with [`MAX_BUFFER`] bytes; the oldest
//! is dropped (and counted) when a bound is hit; state idle for
//! [`IDLE_S`] is dropped.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use detector_common::packet::{ip_addr, parse_ip, Fragment, IpPacket, IPPROTO_TCP, IPPROTO_UDP};

pub const MAX_PENDING: usize = 256;
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_BUFFER: usize = 256 * 1024;
pub const IDLE_S: f64 = 30.0;

/// How a SIP message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One SIP message's bytes and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipPayload {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    pub bytes: Vec<u8>,
}

/// What was thrown away, so capture loss is visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub fragments_dropped: u64,
    pub tcp_bytes_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    protocol: u8,
}

#[derive(Debug)]
struct Datagram {
    /// (offset in the datagram, bytes) as they came.
    pieces: Vec<(usize, Vec<u8>)>,
    /// Length once the last fragment (MF clear) arrived.
    total: Option<usize>,
    last_seen: f64,
    ip_version: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    src: SocketAddr,
    dst: SocketAddr,
}

#[derive(Debug)]
struct Connection {
    next_seq: u32,
    buffer: Vec<u8>,
    last_seen: f64,
}

/// Reassembles SIP from frames.
#[derive(Debug, Default)]
pub struct SipReassembler {
    pending: HashMap<FragKey, Datagram>,
    connections: HashMap<ConnKey, Connection>,
    pub stats: ReassemblyStats,
}

impl SipReassembler {
    /// Whether a TCP segment belongs to a connection already carrying SIP.
    pub fn follows(&self, ip: &IpPacket) -> bool {
        ip.protocol == IPPROTO_TCP && self.connections.contains_key(&conn_key(ip))
    }

    /// Feeds one IP packet (`frame[l3..]` is its IP header). Returns the SIP
    /// payloads it completes.
    pub fn push(&mut self, frame: &[u8], l3: usize, ts: f64) -> Vec<SipPayload> {
        let Ok(ip) = parse_ip(frame, l3) else {
            return Vec::new();
        };
        match ip.fragment {
            Fragment::Whole => self.whole(frame, &ip, ts),
            Fragment::First | Fragment::Later => self.fragment(frame, &ip, ts),
        }
    }

    /// Drops state idle longer than [`IDLE_S`].
    pub fn expire(&mut self, now: f64) {
        let before = self.pending.len();
        self.pending.retain(|_, d| now - d.last_seen <= IDLE_S);
        self.stats.fragments_dropped += (before - self.pending.len()) as u64;
        self.connections.retain(|_, c| now - c.last_seen <= IDLE_S);
    }

    fn whole(&mut self, frame: &[u8], ip: &IpPacket, ts: f64) -> Vec<SipPayload> {
        let end = (ip.payload_offset + ip.payload_len).min(frame.len());
        let Some(payload) = frame.get(ip.payload_offset..end) else {
            return Vec::new();
        };
        match ip.protocol {
            IPPROTO_UDP if !payload.is_empty() => vec![SipPayload {
                src: socket(ip.src, ip.ip_version, ip.src_port),
                dst: socket(ip.dst, ip.ip_version, ip.dst_port),
                transport: Transport::Udp,
                bytes: payload.to_vec(),
            }],
            IPPROTO_TCP => {
                let seq = frame
                    .get(ip.l4_offset + 4..ip.l4_offset + 8)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.tcp(ip, seq, payload, ts)
            }
            _ => Vec::new(),
        }
    }

    fn tcp(&mut self, ip: &IpPacket, seq: u32, payload: &[u8], ts: f64) -> Vec<SipPayload> {
        let key = conn_key(ip);
        if !self.connections.contains_key(&key) {
            if !crate::sip::looks_like_sip(payload) {
                return Vec::new();
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                self.evict_oldest_connection();
            }
            self.connections.insert(
                key,
                Connection {
                    next_seq: seq,
                    buffer: Vec::new(),
                    last_seen: ts,
                },
            );
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            return Vec::new();
        };
        conn.last_seen = ts;
        let ahead = seq.wrapping_sub(conn.next_seq) as i32;
        if ahead > 0 {
            // A gap: the bytes in between are lost; resynchronise on a message start.
            self.stats.tcp_bytes_dropped += conn.buffer.len() as u64 + ahead as u64;
            conn.buffer.clear();
            conn.next_seq = seq;
            if !crate::sip::looks_like_sip(payload) {
                conn.next_seq = seq.wrapping_add(payload.len() as u32);
                return Vec::new();
            }
        }
        // Skip what a retransmission repeats.
        let skip = (-ahead).max(0) as usize;
        if skip < payload.len() {
            conn.buffer.extend_from_slice(&payload[skip..]);
            conn.next_seq = seq.wrapping_add(payload.len() as u32);
        }
        if conn.buffer.len() > MAX_BUFFER {
            self.stats.tcp_bytes_dropped += conn.buffer.len() as u64;
            conn.buffer.clear();
        }
        let mut out = Vec::new();
        while let Some(len) = crate::sip::message_len(&conn.buffer) {
            let bytes: Vec<u8> = conn.buffer.drain(..len).collect();
            out.push(SipPayload {
                src: key.src,
                dst: key.dst,
                transport: Transport::Tcp,
                bytes,
            });
        }
        // Keep-alive CRLFs between messages.
        while conn
            .buffer
            .first()
            .is_some_and(|b| *b == b'\r' || *b == b'\n')
        {
            conn.buffer.remove(0);
        }
        out
    }

    fn evict_oldest_connection(&mut self) {
        if let Some(oldest) = self
            .connections
            .iter()
            .min_by(|a, b| a.1.last_seen.total_cmp(&b.1.last_seen))
            .map(|(k, _)| *k)
        {
            if let Some(c) = self.connections.remove(&oldest) {
                self.stats.tcp_bytes_dropped += c.buffer.len() as u64;
            }
        }
    }

    fn fragment(&mut self, frame: &[u8], ip: &IpPacket, ts: f64) -> Vec<SipPayload> {
        let key = FragKey {
            src: ip.src,
            dst: ip.dst,
            id: ip.ip_id,
            protocol: ip.protocol,
        };
        // The fragment's data starts at the transport header (first) or right
        // after the IP header (later ones).
        let start = ip.l4_offset;
        let data_len = match ip.fragment {
            Fragment::First => ip.payload_len + (ip.payload_offset - ip.l4_offset),
            _ => ip.payload_len,
        };
        let Some(data) = frame.get(start..(start + data_len).min(frame.len())) else {
            return Vec::new();
        };
        if !self.pending.contains_key(&key) && self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by(|a, b| a.1.last_seen.total_cmp(&b.1.last_seen))
                .map(|(k, _)| *k)
            {
                self.pending.remove(&oldest);
                self.stats.fragments_dropped += 1;
            }
        }
        let dgram = self.pending.entry(key).or_insert_with(|| Datagram {
            pieces: Vec::new(),
            total: None,
            last_seen: ts,
            ip_version: ip.ip_version,
        });
        dgram.last_seen = ts;
        if !ip.more_fragments {
            dgram.total = Some(ip.fragment_offset + data.len());
        }
        if ip.fragment_offset + data.len() > MAX_BUFFER {
            self.pending.remove(&key);
            self.stats.fragments_dropped += 1;
            return Vec::new();
        }
        dgram.pieces.push((ip.fragment_offset, data.to_vec()));
        let Some(total) = dgram.total else {
            return Vec::new();
        };
        let mut assembled = vec![0u8; total];
        let mut covered = vec![false; total];
        for (offset, bytes) in &dgram.pieces {
            let end = (offset + bytes.len()).min(total);
            if *offset < end {
                assembled[*offset..end].copy_from_slice(&bytes[..end - offset]);
                covered[*offset..end].iter_mut().for_each(|c| *c = true);
            }
        }
        if !covered.iter().all(|c| *c) {
            return Vec::new();
        }
        let version = dgram.ip_version;
        self.pending.remove(&key);
        if key.protocol != IPPROTO_UDP || assembled.len() < 8 {
            return Vec::new();
        }
        let sport = u16::from_be_bytes([assembled[0], assembled[1]]);
        let dport = u16::from_be_bytes([assembled[2], assembled[3]]);
        vec![SipPayload {
            src: socket(key.src, version, sport),
            dst: socket(key.dst, version, dport),
            transport: Transport::Udp,
            bytes: assembled[8..].to_vec(),
        }]
    }
}

fn conn_key(ip: &IpPacket) -> ConnKey {
    ConnKey {
        src: socket(ip.src, ip.ip_version, ip.src_port),
        dst: socket(ip.dst, ip.ip_version, ip.dst_port),
    }
}

fn socket(addr: [u8; 16], version: u8, port: u16) -> SocketAddr {
    let ip: IpAddr = ip_addr(addr, version);
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x45, 0];
        f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(l4);
        f
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0x13, 0xC4, 0x13, 0xC4];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn tcp(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0x13, 0xC4, 0x9C, 0x40];
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0]);
        t.extend_from_slice(payload);
        t
    }

    fn invite(body_len: usize) -> Vec<u8> {
        let mut m =
            format!("INVITE sip:b@x SIP/2.0\r\nCall-ID: big\r\nContent-Length: {body_len}\r\n\r\n")
                .into_bytes();
        m.extend(std::iter::repeat_n(b'v', body_len));
        m
    }

    #[test]
    fn fragments_in_any_order() {
        let message = invite(3000);
        let datagram = udp(&message);
        // Three fragments of 1480, 1480 and the rest (offsets in 8-byte units).
        let pieces: Vec<(usize, &[u8])> = vec![
            (0, &datagram[..1480]),
            (1480, &datagram[1480..2960]),
            (2960, &datagram[2960..]),
        ];
        let frame = |i: usize| {
            let (offset, bytes) = pieces[i];
            let more = if i < 2 { 0x2000 } else { 0 };
            ipv4(17, 77, more | (offset / 8) as u16, bytes)
        };
        let mut r = SipReassembler::default();
        assert!(r.push(&frame(2), 0, 1.0).is_empty());
        assert!(r.push(&frame(0), 0, 1.0).is_empty());
        let out = r.push(&frame(1), 0, 1.0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, message);
        assert_eq!(out[0].dst.port(), 5060);
        assert!(r.pending.is_empty());
    }

    #[test]
    fn tcp_messages_split_and_joined() {
        let mut r = SipReassembler::default();
        let two = [invite(10), invite(20)].concat();
        let (a, b) = two.split_at(30);
        let first = ipv4(6, 1, 0, &tcp(1000, a));
        assert!(r.push(&first, 0, 1.0).is_empty(), "half a message");
        // A retransmission of the first segment changes nothing.
        assert!(r.push(&first, 0, 1.1).is_empty());
        let out = r.push(&ipv4(6, 2, 0, &tcp(1000 + a.len() as u32, b)), 0, 1.2);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, invite(10));
        assert_eq!(out[1].bytes, invite(20));
        assert_eq!(out[0].transport, Transport::Tcp);
    }

    #[test]
    fn tcp_gap_resynchronises() {
        let mut r = SipReassembler::default();
        let m = invite(100);
        assert!(r.push(&ipv4(6, 1, 0, &tcp(1, &m[..50])), 0, 1.0).is_empty());
        // The rest never comes; the next message starts further on.
        let out = r.push(&ipv4(6, 2, 0, &tcp(500, &invite(5))), 0, 2.0);
        assert_eq!(
            out,
            vec![SipPayload {
                src: "10.0.0.1:5060".parse().unwrap(),
                dst: "10.0.0.2:40000".parse().unwrap(),
                transport: Transport::Tcp,
                bytes: invite(5),
            }]
        );
        assert!(r.stats.tcp_bytes_dropped > 0);
    }

    #[test]
    fn pending_fragments_are_bounded_and_expire() {
        let mut r = SipReassembler::default();
        for id in 0..(MAX_PENDING as u16 + 10) {
            r.push(&ipv4(17, id, 0x2000, &udp(&[b'x'; 100])), 0, 1.0);
        }
        assert_eq!(r.pending.len(), MAX_PENDING);
        assert_eq!(r.stats.fragments_dropped, 10);
        r.expire(100.0);
        assert!(r.pending.is_empty());
    }
}
