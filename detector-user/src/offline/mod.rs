//! `detector analyze`: the kernel's per-packet logic run over a capture, with
//! capture timestamps as the clock, feeding the agent's [`Engine`] (SIP as
//! it comes, the flow table at every poll instant of capture time), so the
//! analyser and the agent cannot drift apart.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use detector_common::{
    config::{DetectorConfig, CONFIG_F_WATCHED},
    counters::{self, HOOK_XDP},
    flow::{
        inspect_ethernet, inspect_fast_rtp, inspect_ip, EndpointKey, FlowKey, FlowStats, Inspection,
    },
    packet::{parse_ethernet, parse_ip, IpPacket},
    rtp::default_clock_rate,
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
        DEFAULT_MAX_DIALOG_AGE_S,
    },
    sip::{self, sdp},
};

pub mod pcap;

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
    flows: HashMap<FlowKey, Tracked>,
    outcomes: [u64; counters::COUNTERS_PER_HOOK as usize],
    announced: HashSet<EndpointKey>,
    /// Endpoints whose latest SDP offered something other than RTP (T.38's
    /// udptl): like Wireshark, their packets are no longer read as RTP.
    not_rtp: HashSet<EndpointKey>,
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
            flows: HashMap::new(),
            outcomes: [0; counters::COUNTERS_PER_HOOK as usize],
            announced: HashSet::new(),
            not_rtp: HashSet::new(),
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
        self.last_ts_ns = self.last_ts_ns.max(frame.ts_ns);
        self.poll_until(frame.ts_ns);
        if let Some(inner) = decapsulate(frame) {
            // Mirrored traffic (ERSPAN, GRE-bridged Ethernet): analyse what
            // the tunnel carries, as Wireshark does.
            self.frames -= 1;
            self.feed(&inner);
            return;
        }
        let announced = &self.announced;
        let watched = |k: &EndpointKey| announced.contains(k);
        let inspection = match frame.layer3 {
            // The kernel's order: the fast path, then the full parser.
            Layer3::Ethernet => match inspect_fast_rtp(frame.data, HOOK_XDP, &self.cfg) {
                Some((key, header)) => Inspection::Rtp { key, header },
                None => inspect_ethernet(frame.data, HOOK_XDP, &self.cfg, watched),
            },
            Layer3::Ip(offset) => inspect_ip(frame.data, offset, HOOK_XDP, &self.cfg, watched),
            Layer3::None => Inspection::Skip(counters::NOT_IP),
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
                self.flows
                    .entry(key)
                    .and_modify(|t| {
                        let event = t.stats.record_rtp(&header, frame.wire_len, frame.ts_ns);
                        t.confirmed |= event == SeqEvent::InOrder;
                    })
                    .or_insert_with(|| Tracked {
                        stats: FlowStats::first_rtp(
                            &header,
                            frame.wire_len,
                            frame.ts_ns,
                            default_clock_rate(header.payload_type),
                        ),
                        confirmed: !needs_confirmation || is_announced,
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
            let addr = detector_common::packet::addr_bytes(addr);
            self.announce(endpoint(addr, m.port), m.is_rtp());
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
