//! `detector analyze`: the kernel's per-packet logic run over a capture, with
//! capture timestamps as the clock, feeding the agent's [`Engine`] (SIP as
//! it comes, the flow table at every poll instant of capture time), so the
//! analyser and the agent cannot drift apart.

use std::{collections::HashMap, path::Path};

use detector_common::{
    config::{DetectorConfig, CONFIG_F_WATCHED},
    counters::{self, HOOK_XDP},
    flow::{
        inspect_ethernet, inspect_fast_rtp, inspect_ip, EndpointKey, FlowKey, FlowStats,
        Inspection, WatchedEndpoint,
    },
    packet::{addr_bytes, parse_ethernet, parse_ip, IpPacket},
    rtp::stream_clock_rate,
    seq::SeqEvent,
};
use serde::Serialize;

use crate::{
    calls::{
        correlate::endpoint,
        detect::DetectConfig,
        engine::{Engine, Retention},
        records::CallReport,
        streams::{StreamRecord, TimeBase},
        FastMap, FastSet, DEFAULT_MAX_DIALOG_AGE_S,
    },
    sip::{self, sdp},
};

pub mod pcap;

/// A gap between two frames of a capture longer than this is a
/// discontinuity (a capture stopped and resumed, files merged, a clock
/// reset), not silence: no dialog is allowed to stay quiet that long, so
/// the gap would otherwise expire every dialog at once. Capture time stops
/// across it: dialogs' quiet time counts from the frame after it, and
/// detection resumes there.
pub const CAPTURE_DISCONTINUITY_S: f64 = DEFAULT_MAX_DIALOG_AGE_S;

use pcap::{read_capture, CaptureError, Frame, Layer3};

/// How to look for RTP in a capture.
#[derive(Clone, Debug)]
pub struct AnalyzeOptions {
    /// Only these ports (either end) are RTP, as in the kernel. `None`: every
    /// UDP port, with a stream kept only once its sequence numbers agree.
    pub rtp_ports: Option<(u16, u16)>,
    pub sip_ports: Vec<u16>,
    pub detect: DetectConfig,
    /// Detection runs this often in capture time, as the agent polls.
    pub poll_interval_s: f64,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            rtp_ports: None,
            sip_ports: vec![detector_common::config::DEFAULT_SIP_PORT],
            detect: DetectConfig::default(),
            poll_interval_s: 1.0,
        }
    }
}

/// What `detector analyze --json` prints.
#[derive(Debug, Serialize)]
pub struct Analysis {
    pub streams: Vec<StreamRecord>,
    pub calls: Vec<CallReport>,
    pub frames: u64,
    /// SIP messages that could not be parsed (counted and skipped).
    pub sip_parse_errors: u64,
    /// Per-outcome frame counts (the kernel's counter names).
    pub outcomes: HashMap<&'static str, u64>,
    /// Damage to the capture and other things a reader must know.
    pub warnings: Vec<String>,
}

struct Tracked {
    stats: FlowStats,
    /// Kept in the output: in the configured port range, announced by SDP,
    /// or two packets in sequence seen.
    confirmed: bool,
}

/// Accounts frames one at a time.
pub struct Analyzer {
    cfg: DetectorConfig,
    needs_confirmation: bool,
    flows: FastMap<FlowKey, Tracked>,
    outcomes: [u64; counters::COUNTERS_PER_HOOK as usize],
    announced: FastSet<EndpointKey>,
    /// Endpoints whose latest SDP offered something other than RTP (T.38's
    /// udptl): like Wireshark, their packets are no longer read as RTP.
    not_rtp: FastSet<EndpointKey>,
    /// The clock rates the latest SDP of each endpoint declared, as the
    /// agent gives them to the kernel, and their generation (bumped when
    /// they change, as the kernel's config's).
    declared_rates: FastMap<EndpointKey, WatchedEndpoint>,
    rates_generation: u8,
    engine: Engine,
    poll_ns: u64,
    next_poll_ns: Option<u64>,
    last_ts_ns: u64,
    frames: u64,
}

impl Analyzer {
    pub fn new(opts: &AnalyzeOptions) -> Self {
        let mut cfg = DetectorConfig::default();
        let (lo, hi) = opts.rtp_ports.unwrap_or((1, u16::MAX));
        cfg.rtp_port_min = lo;
        cfg.rtp_port_max = hi;
        let n = opts.sip_ports.len().min(cfg.sip_ports.len());
        cfg.sip_ports = [0; detector_common::config::MAX_SIP_PORTS];
        cfg.sip_ports[..n].copy_from_slice(&opts.sip_ports[..n]);
        cfg.sip_port_count = n as u8;
        Self {
            cfg,
            needs_confirmation: opts.rtp_ports.is_none(),
            flows: FastMap::default(),
            outcomes: [0; counters::COUNTERS_PER_HOOK as usize],
            announced: FastSet::default(),
            not_rtp: FastSet::default(),
            declared_rates: FastMap::default(),
            rates_generation: 0,
            engine: Engine::new(
                opts.detect.clone(),
                DEFAULT_MAX_DIALOG_AGE_S,
                Retention::KeepAll,
            ),
            poll_ns: (opts.poll_interval_s.max(0.001) * 1e9) as u64,
            next_poll_ns: None,
            last_ts_ns: 0,
            frames: 0,
        }
    }

    /// Tells the analyser what an SDP announced for an endpoint: RTP is
    /// tracked there whatever the port; anything else (T.38) is not RTP.
    pub fn announce(&mut self, endpoint: EndpointKey, is_rtp: bool) {
        if is_rtp {
            self.not_rtp.remove(&endpoint);
            self.announced.insert(endpoint);
            self.cfg.flags |= CONFIG_F_WATCHED;
        } else {
            self.announced.remove(&endpoint);
            self.not_rtp.insert(endpoint);
        }
        self.engine.set_not_rtp(endpoint, !is_rtp);
    }

    pub fn feed(&mut self, frame: &Frame<'_>) {
        self.frames += 1;
        if self.frames > 1
            && frame.ts_ns.saturating_sub(self.last_ts_ns) as f64 > CAPTURE_DISCONTINUITY_S * 1e9
        {
            self.engine.clock_resumed(frame.ts_ns as f64 / 1e9);
            self.next_poll_ns = Some(frame.ts_ns);
        }
        self.last_ts_ns = self.last_ts_ns.max(frame.ts_ns);
        self.poll_until(frame.ts_ns);
        // The kernel's order: the fast path (plain RTP over UDP, so never a
        // tunnel), then the full parser.
        let fast = match frame.layer3 {
            Layer3::Ethernet => inspect_fast_rtp(frame.data, HOOK_XDP, &self.cfg),
            Layer3::Ip(_) | Layer3::None => None,
        };
        if fast.is_none() {
            if let Some(inner) = decapsulate(frame) {
                // Mirrored traffic (ERSPAN, GRE-bridged Ethernet): analyse
                // what the tunnel carries, as Wireshark does.
                self.frames -= 1;
                self.feed(&inner);
                return;
            }
        }
        let announced = &self.announced;
        let watched = |k: &EndpointKey| announced.contains(k);
        let inspection = match (fast, frame.layer3) {
            (Some((key, header)), _) => Inspection::Rtp { key, header },
            (None, Layer3::Ethernet) => inspect_ethernet(frame.data, HOOK_XDP, &self.cfg, watched),
            (None, Layer3::Ip(offset)) => {
                inspect_ip(frame.data, offset, HOOK_XDP, &self.cfg, watched)
            }
            (None, Layer3::None) => Inspection::Skip(counters::NOT_IP),
        };
        let inspection = match inspection {
            Inspection::Rtp { key, .. } | Inspection::Rtcp { key } if self.switched_away(&key) => {
                Inspection::Skip(counters::UDP_OTHER)
            }
            Inspection::Sip | Inspection::LaterFragment => {
                self.signalling(frame, true);
                inspection
            }
            Inspection::Skip(counters::UDP_OTHER | counters::NOT_UDP | counters::FRAGMENT)
                if self.signalling(frame, false) =>
            {
                Inspection::Sip
            }
            other => other,
        };
        self.outcomes[inspection.outcome() as usize] += 1;
        match inspection {
            Inspection::Rtp { key, header } => {
                let is_announced = self.is_announced(&key);
                let needs_confirmation = self.needs_confirmation;
                let generation = self.rates_generation;
                let pt = header.payload_type;
                // As the kernel: the rate the receiver's SDP declared.
                let declared = || {
                    self.declared_rates
                        .get(&endpoint(key.dst_addr, key.dst_port))
                        .map_or(0, |w| w.declared_rate(pt))
                };
                self.flows
                    .entry(key)
                    .and_modify(|t| {
                        let stale = t.stats.rates_stale(pt, generation);
                        let event = t.stats.record_rtp(&header, frame.wire_len, frame.ts_ns);
                        if stale {
                            t.stats
                                .take_clock_rate(stream_clock_rate(pt, declared()), generation);
                        }
                        t.confirmed |= event == SeqEvent::InOrder;
                    })
                    .or_insert_with(|| {
                        let rate = stream_clock_rate(pt, declared());
                        let mut stats =
                            FlowStats::first_rtp(&header, frame.wire_len, frame.ts_ns, rate);
                        stats.rates_generation = generation;
                        Tracked {
                            stats,
                            confirmed: !needs_confirmation || is_announced,
                        }
                    });
            }
            Inspection::Rtcp { key } => {
                if let Some((ip, _)) = parse_frame(frame) {
                    let end = (ip.payload_offset + ip.payload_len).min(frame.data.len());
                    if let Some(payload) = frame.data.get(ip.payload_offset..end) {
                        let ts = (frame.ts_ns / 1000) as f64 / 1e6;
                        self.engine.on_rtcp(key.src_addr, payload, ts);
                    }
                }
                self.flows
                    .entry(key)
                    .and_modify(|t| t.stats.record_rtcp(frame.wire_len, frame.ts_ns))
                    .or_insert_with(|| Tracked {
                        stats: FlowStats::first_rtcp(frame.wire_len, frame.ts_ns),
                        confirmed: true,
                    });
            }
            Inspection::Sip | Inspection::LaterFragment | Inspection::Skip(_) => {}
        }
    }

    /// The stream's destination (else its source) was last announced as
    /// something other than RTP.
    fn switched_away(&self, key: &FlowKey) -> bool {
        if self.not_rtp.is_empty() {
            return false;
        }
        let dst = endpoint(key.dst_addr, key.dst_port);
        if self.announced.contains(&dst) {
            return false;
        }
        self.not_rtp.contains(&dst) || self.not_rtp.contains(&endpoint(key.src_addr, key.src_port))
    }

    /// Follows signalling: SIP (reassembled from IP fragments and TCP
    /// segments, on the SIP ports or recognised by content) into the call
    /// tracker, and the SDP of SIP or H.248/Megaco into the endpoint tables.
    /// Returns whether the frame was signalling.
    fn signalling(&mut self, frame: &Frame<'_>, on_sip_port: bool) -> bool {
        let Some((ip, l3)) = parse_frame(frame) else {
            return false;
        };
        let end = (ip.payload_offset + ip.payload_len).min(frame.data.len());
        let payload = frame.data.get(ip.payload_offset..end).unwrap_or_default();
        let sip_like = on_sip_port
            || ip.fragment != detector_common::packet::Fragment::Whole
            || self.engine.reassembler().follows(&ip)
            || sip::looks_like_sip(payload);
        if sip_like {
            // Microseconds, as captures and tshark print them.
            let ts = (frame.ts_ns / 1000) as f64 / 1e6;
            for message in self.engine.reassembler_mut().push(frame.data, l3, ts) {
                self.on_sip(&message.bytes, ts);
            }
            return on_sip_port
                || sip::looks_like_sip(payload)
                || self.engine.reassembler().follows(&ip);
        }
        let blocks = sdp::megaco_sdp_blocks(payload);
        for block in &blocks {
            if let Ok(sdp) = sdp::parse(block) {
                self.learn_endpoints(&sdp);
            }
        }
        !blocks.is_empty()
    }

    fn on_sip(&mut self, bytes: &[u8], ts: f64) {
        let Ok((msg, _)) = sip::parse_message(bytes) else {
            self.engine.sip_parse_errors += 1;
            return;
        };
        if let Some(Ok(sdp)) = msg.sdp_body().map(sdp::parse) {
            self.learn_endpoints(&sdp);
        }
        self.engine.on_sip(&msg, ts);
    }

    fn learn_endpoints(&mut self, sdp: &sdp::SessionDescription) {
        for m in &sdp.media {
            let Some(addr) = sdp.address_of(m) else {
                continue;
            };
            if m.port == 0 || addr.is_unspecified() {
                continue;
            }
            let addr = addr_bytes(addr);
            let at = endpoint(addr, m.port);
            self.announce(at, m.is_rtp());
            if m.is_rtp() {
                let rates = m.rtpmaps.iter().map(|r| (r.payload_type, r.clock_rate));
                let declared = WatchedEndpoint::new(0, rates);
                let before = self.declared_rates.insert(at, declared).unwrap_or_default();
                if before.rates != declared.rates {
                    // Streams already seen take the declared rates again.
                    self.rates_generation = self.rates_generation.wrapping_add(1);
                }
            }
        }
    }

    fn is_announced(&self, key: &FlowKey) -> bool {
        self.announced
            .contains(&endpoint(key.dst_addr, key.dst_port))
            || self
                .announced
                .contains(&endpoint(key.src_addr, key.src_port))
    }

    /// Runs detection at every poll instant before `ts_ns`, with the state
    /// the streams had then.
    fn poll_until(&mut self, ts_ns: u64) {
        let next = *self.next_poll_ns.get_or_insert(ts_ns);
        if ts_ns < next {
            return;
        }
        // Long gaps in a capture: evaluate each instant (bounded, so a
        // capture spanning years cannot stall the analysis).
        let mut at = next;
        let mut steps = 0u32;
        while at <= ts_ns && steps < 100_000 {
            self.detect_at(at);
            at += self.poll_ns;
            steps += 1;
        }
        self.next_poll_ns = Some(at.max(ts_ns + 1));
    }

    /// One poll of the engine, as the agent's: the flow table as it is.
    fn detect_at(&mut self, at_ns: u64) {
        // With no dialog there is nothing to evaluate or expire.
        if self.engine.active_calls() == 0 {
            return;
        }
        let flows = self.flow_table();
        self.engine
            .poll(&flows, TimeBase::Capture, at_ns as f64 / 1e9);
    }

    /// The confirmed flows (RTP and RTCP), as the kernel's table would hold them.
    fn flow_table(&self) -> Vec<(FlowKey, FlowStats)> {
        self.flows
            .iter()
            .filter(|(_, t)| t.confirmed)
            .map(|(k, t)| (*k, t.stats))
            .collect()
    }

    /// The confirmed RTP streams, oldest first.
    pub fn streams(&self) -> Vec<StreamRecord> {
        self.records(detector_common::flow::KIND_RTP)
    }

    /// The confirmed flows of one kind (RTP or RTCP), oldest first.
    fn records(&self, kind: u8) -> Vec<StreamRecord> {
        let mut flows: Vec<(&FlowKey, &Tracked)> = self
            .flows
            .iter()
            .filter(|(k, t)| k.kind == kind && t.confirmed)
            .collect();
        flows.sort_by_key(|(k, t)| (t.stats.first_seen_ns, **k));
        flows
            .into_iter()
            .map(|(k, t)| StreamRecord::new(k, &t.stats, TimeBase::Capture))
            .collect()
    }

    pub fn finish(mut self, warnings: Vec<String>) -> Analysis {
        let outcomes = counters::OUTCOMES
            .iter()
            .map(|&(i, name)| (name, self.outcomes[i as usize]))
            .collect();
        if let Some(last) = self.next_poll_ns {
            self.poll_until(last);
        }
        let streams = self.streams();
        let flows = self.flow_table();
        let sip_parse_errors = self.engine.sip_parse_errors;
        // Calls still up are summarised at the capture's end.
        let end = self.last_ts_ns as f64 / 1e9;
        let reports = self.engine.finish(&flows, end);
        Analysis {
            streams,
            calls: reports,
            frames: self.frames,
            sip_parse_errors,
            outcomes,
            warnings,
        }
    }
}

/// GRE protocol types that carry a mirrored Ethernet frame.
const GRE_TRANSPARENT_ETHERNET: u16 = 0x6558;
const GRE_ERSPAN_II: u16 = 0x88BE;
const GRE_ERSPAN_III: u16 = 0x22EB;
const IPPROTO_GRE: u8 = 47;

/// The Ethernet frame inside a GRE/ERSPAN tunnel, if `frame` is one.
fn decapsulate<'a>(frame: &Frame<'a>) -> Option<Frame<'a>> {
    let (ip, _) = parse_frame(frame)?;
    if ip.protocol != IPPROTO_GRE || ip.fragment != detector_common::packet::Fragment::Whole {
        return None;
    }
    let gre = frame.data.get(ip.l4_offset..)?;
    let flags = u16::from_be_bytes([*gre.first()?, *gre.get(1)?]);
    let protocol = u16::from_be_bytes([*gre.get(2)?, *gre.get(3)?]);
    let mut offset = 4;
    for bit in [0x8000u16, 0x2000, 0x1000] {
        // Checksum, key and sequence number, each 4 bytes when flagged.
        if flags & bit != 0 {
            offset += 4;
        }
    }
    offset += match protocol {
        GRE_TRANSPARENT_ETHERNET => 0,
        GRE_ERSPAN_II => 8,
        GRE_ERSPAN_III => {
            // 12 bytes, plus an 8-byte platform subheader when O is set.
            let o_flag = gre.get(offset + 11).is_some_and(|b| b & 0x01 != 0);
            12 + if o_flag { 8 } else { 0 }
        }
        _ => return None,
    };
    let data = gre.get(offset..)?;
    let wire_len = u32::try_from(data.len()).ok()?;
    Some(Frame {
        ts_ns: frame.ts_ns,
        data,
        wire_len,
        layer3: Layer3::Ethernet,
    })
}

fn parse_frame(frame: &Frame<'_>) -> Option<(IpPacket, usize)> {
    let data: &[u8] = frame.data;
    let l3 = match frame.layer3 {
        Layer3::Ethernet => parse_ethernet(data).ok()?.1,
        Layer3::Ip(offset) => offset,
        Layer3::None => return None,
    };
    parse_ip(data, l3).ok().map(|ip| (ip, l3))
}

/// Analyses a capture file.
pub fn analyze_file(path: &Path, opts: &AnalyzeOptions) -> Result<Analysis, CaptureError> {
    let mut analyzer = Analyzer::new(opts);
    let summary = read_capture(path, |frame| analyzer.feed(frame))?;
    let mut warnings = Vec::new();
    if let Some(damage) = summary.damage {
        warnings.push(damage.to_string());
    }
    if summary.unsupported_link_frames > 0 {
        warnings.push(format!(
            "{} frames of an unsupported link type were skipped",
            summary.unsupported_link_frames
        ));
    }
    Ok(analyzer.finish(warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP frame.
    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = u16::try_from(20 + 8 + payload.len()).unwrap();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&(total - 20).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// An RTP packet: header and `payload_len` bytes.
    fn rtp(seq: u16, timestamp: u32, pt: u8, marker: bool, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&0x5EED_0001u32.to_be_bytes());
        p.resize(12 + payload_len, 0xD5);
        p
    }

    fn feed(analyzer: &mut Analyzer, ts_s: f64, frame: &[u8]) {
        analyzer.feed(&Frame {
            ts_ns: (ts_s * 1e9) as u64,
            data: frame,
            wire_len: u32::try_from(frame.len()).unwrap(),
            layer3: Layer3::Ethernet,
        });
    }

    /// A SIP message of dialog `call_id` between the phone and the server
    /// (the callee's tag on all but the first INVITE).
    fn sip(analyzer: &mut Analyzer, ts_s: f64, call_id: &str, first_line: &str, extra: &str) {
        sip_with_body(analyzer, ts_s, call_id, first_line, extra, "");
    }

    fn sip_with_body(
        analyzer: &mut Analyzer,
        ts_s: f64,
        call_id: &str,
        first_line: &str,
        extra: &str,
        body: &str,
    ) {
        let to_tag = if first_line.starts_with("INVITE") && !extra.contains("re-INVITE") {
            ""
        } else {
            ";tag=b"
        };
        let (cseq, from_phone) = match first_line.split(' ').next() {
            Some("INVITE") => ("1 INVITE", true),
            Some("ACK") => ("1 ACK", true),
            Some("BYE") => ("2 BYE", true),
            _ => ("1 INVITE", false),
        };
        let text = format!(
            "{first_line}\r\nVia: SIP/2.0/UDP 192.168.1.20;branch=z9hG4bK{cseq_n}\r\n\
             Call-ID: {call_id}\r\nFrom: <sip:a@x>;tag=a\r\nTo: <sip:b@x>{to_tag}\r\n\
             CSeq: {cseq}\r\n{extra}{content_type}Content-Length: {len}\r\n\r\n{body}",
            cseq_n = cseq.len(),
            content_type = if body.is_empty() {
                ""
            } else {
                "Content-Type: application/sdp\r\n"
            },
            len = body.len(),
        );
        let (src, dst) = if from_phone {
            (PHONE, SERVER)
        } else {
            (SERVER, PHONE)
        };
        feed(
            analyzer,
            ts_s,
            &udp_frame(src, dst, 5060, 5060, text.as_bytes()),
        );
    }

    fn answered(analyzer: &mut Analyzer, ts_s: f64, call_id: &str, extra: &str) {
        sip(analyzer, ts_s, call_id, "INVITE sip:b@x SIP/2.0", extra);
        sip(analyzer, ts_s + 1.0, call_id, "SIP/2.0 200 OK", extra);
        sip(analyzer, ts_s + 1.1, call_id, "ACK sip:b@x SIP/2.0", "");
    }

    /// Issue 11: offline, a dialog that goes quiet ends as expired once the
    /// capture ran on past twice its Session-Expires (here 90 s), as live.
    #[test]
    fn quiet_dialogs_expire_in_capture_time() {
        let mut analyzer = Analyzer::new(&AnalyzeOptions::default());
        answered(&mut analyzer, 1000.0, "zombie", "Session-Expires: 90\r\n");
        answered(&mut analyzer, 1000.0, "alive", "");
        // The capture runs on: another dialog's re-INVITEs every minute.
        for minute in 1..=10 {
            let at = 1000.0 + 60.0 * f64::from(minute);
            let reinvite = "Subject: re-INVITE\r\n";
            sip(
                &mut analyzer,
                at,
                "alive",
                "INVITE sip:b@x SIP/2.0",
                reinvite,
            );
        }
        let analysis = analyzer.finish(Vec::new());
        let zombie = analysis
            .calls
            .iter()
            .find(|c| c.call.call_id == "zombie")
            .unwrap();
        assert_eq!(zombie.call.end.as_ref().unwrap().method, "EXPIRED");
        assert_eq!(zombie.bucket, Some("ended_without_bye"));
        // Expired at the first poll past 2 x 90 s after its last SIP (1001.1).
        let end = zombie.call.end_epoch.unwrap();
        assert!((1181.1..1182.2).contains(&end), "{end}");
        let alive = analysis
            .calls
            .iter()
            .find(|c| c.call.call_id == "alive")
            .unwrap();
        assert_eq!((alive.call.end.as_ref(), alive.bucket), (None, None));
    }

    /// A jump of the capture's clock longer than any dialog may stay quiet
    /// (`sip_ipv6_udp_nortp.pcap` jumps years between messages of one
    /// dialog) is a discontinuity: the dialog is not expired for it, and
    /// its BYE after the jump ends it.
    #[test]
    fn a_jump_of_the_capture_clock_is_not_silence() {
        let mut analyzer = Analyzer::new(&AnalyzeOptions::default());
        answered(&mut analyzer, 1000.0, "jumpy", "");
        let years = 1000.0 + 3.0 * 365.0 * 86400.0;
        sip(&mut analyzer, years, "jumpy", "BYE sip:b@x SIP/2.0", "");
        let analysis = analyzer.finish(Vec::new());
        let call = &analysis.calls[0];
        assert_eq!(call.call.end.as_ref().unwrap().method, "BYE");
        assert_eq!(call.bucket, Some("caller_hung_up_after_answer"));
    }

    /// Issue 11: `analyze` uses the clock rate the receiver's SDP declared
    /// (Opus at 48 kHz here), also for a stream that began before the SDP
    /// was seen. Perfectly paced 20 ms packets have no jitter at 48 kHz; at
    /// the 8 kHz assumed for an undeclared dynamic type they have 100 ms.
    #[test]
    fn streams_take_the_clock_rate_their_sdp_declares() {
        let opus = "v=0\r\nc=IN IP4 192.168.1.1\r\nm=audio 20000 RTP/AVP 111 101\r\n\
                    a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        let jitter_after = |sdp_after_packets: u16| {
            let mut analyzer = Analyzer::new(&AnalyzeOptions::default());
            for i in 0..200u16 {
                if i == sdp_after_packets {
                    analyzer.learn_endpoints(&sdp::parse(opus).unwrap());
                }
                let payload = rtp(i, 960 * u32::from(i), 111, false, 80);
                let frame = udp_frame(PHONE, SERVER, 4000, 20000, &payload);
                feed(&mut analyzer, 100.0 + f64::from(i) * 0.02, &frame);
            }
            analyzer.streams()[0].jitter_ms
        };
        assert_eq!(jitter_after(0), 0.0, "SDP first");
        assert_eq!(jitter_after(50), 0.0, "SDP after 50 packets");
        assert!(jitter_after(1000) > 90.0, "no SDP: 8 kHz assumed");
    }

    /// Issue 11's missed one-way call, through `analyze`: a PBX re-INVITEd
    /// both phones to send media directly. The phone repeats its first
    /// packet with the marker, marks the second too, sends 0.6 s of audio,
    /// then nothing, while the server side talks for 19 s until the BYE.
    /// Its markers are no evidence of silence suppression: one-way audio.
    #[test]
    fn a_phone_that_goes_quiet_after_marked_packets_is_one_way() {
        let sdp = |addr: &str, port: u16| {
            format!("v=0\r\nc=IN IP4 {addr}\r\nm=audio {port} RTP/AVP 0\r\na=sendrecv\r\n")
        };
        let mut analyzer = Analyzer::new(&AnalyzeOptions::default());
        let invite = "INVITE sip:b@x SIP/2.0";
        sip_with_body(
            &mut analyzer,
            10.0,
            "pbx",
            invite,
            "",
            &sdp("192.168.1.20", 4000),
        );
        let ok = "SIP/2.0 200 OK";
        sip_with_body(
            &mut analyzer,
            11.0,
            "pbx",
            ok,
            "",
            &sdp("192.168.1.1", 20000),
        );
        sip(&mut analyzer, 11.1, "pbx", "ACK sip:b@x SIP/2.0", "");
        let mut phone = vec![
            (11.20, rtp(1, 0, 0, true, 160)),
            (11.21, rtp(1, 0, 0, true, 160)),
        ];
        phone.push((11.22, rtp(2, 160, 0, true, 160)));
        for i in 3..33u16 {
            let at = 11.22 + f64::from(i - 2) * 0.02;
            phone.push((at, rtp(i, 160 * u32::from(i - 1), 0, false, 160)));
        }
        let mut frames: Vec<(f64, Vec<u8>)> = phone
            .into_iter()
            .map(|(at, p)| (at, udp_frame(PHONE, SERVER, 4000, 20000, &p)))
            .collect();
        for i in 0..950u16 {
            let at = 11.2 + f64::from(i) * 0.02;
            let payload = rtp(i, 160 * u32::from(i), 0, false, 160);
            frames.push((at, udp_frame(SERVER, PHONE, 20000, 4000, &payload)));
        }
        frames.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, frame) in &frames {
            feed(&mut analyzer, *at, frame);
        }
        sip(&mut analyzer, 30.2, "pbx", "BYE sip:b@x SIP/2.0", "");
        let analysis = analyzer.finish(Vec::new());
        let call = &analysis.calls[0];
        let flags: Vec<_> = call.flags.iter().map(|f| (f.kind, f.direction)).collect();
        assert_eq!(
            flags,
            [(
                crate::calls::detect::FlagKind::OneWay,
                crate::calls::detect::FlagDirection::CallerToCallee
            )]
        );
        assert_eq!(call.bucket, Some("one_way_audio"));
    }

    const PHONE: [u8; 4] = [192, 168, 1, 20];
    const SERVER: [u8; 4] = [192, 168, 1, 1];

    /// Issue 11: a softphone's first packet (payload type 77, a 1-byte
    /// payload, a valid header) toward the port its SDP announced, then
    /// its PCMU stream: counted as tshark counts it, 986 packets.
    #[test]
    fn the_first_one_byte_packet_of_an_announced_stream_counts() {
        let mut analyzer = Analyzer::new(&AnalyzeOptions::default());
        let server = endpoint(addr_bytes(SERVER.into()), 20000);
        analyzer.announce(server, true);
        feed(
            &mut analyzer,
            100.0,
            &udp_frame(PHONE, SERVER, 4000, 20000, &rtp(1, 0, 77, false, 1)),
        );
        for i in 1..986u16 {
            let payload = rtp(1 + i, 160 * u32::from(i), 0, false, 160);
            let frame = udp_frame(PHONE, SERVER, 4000, 20000, &payload);
            feed(&mut analyzer, 100.0 + f64::from(i) * 0.02, &frame);
        }
        let streams = analyzer.streams();
        assert_eq!(streams.len(), 1, "{streams:?}");
        assert_eq!(
            (streams[0].packets, streams[0].expected, streams[0].lost),
            (986, 986, 0)
        );
    }
}
