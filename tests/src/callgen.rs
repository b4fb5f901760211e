//! The call load generator's model, shared by `loadgen` (live, through
//! AF_PACKET sockets, see [`crate::afpacket`]) and the benchmark (into a
//! pcap): N SIP calls between a remote caller and the media server, RTP both
//! ways, faults chosen by call index, every frame an Ethernet/IPv4/UDP frame
//! built here and paced by a timer wheel.
//!
//! A call, all times from its INVITE: the caller's INVITE with SDP, 50 ms
//! later the server's 200 OK with SDP, then the caller's ACK; RTP both ways
//! from the answer for `hold` seconds; `bye_gap` later a BYE and its 200 OK.
//! Caller-side frames enter the server's interface (its XDP hook); server
//! frames leave it (its TC egress hook).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use serde_json::{json, Value};

/// One tick of the timer wheel.
pub const TICK_NS: u64 = 2_000_000;
/// Ticks the wheel holds (8 s); later events wait in a heap.
const WHEEL_TICKS: u64 = 4096;
/// The media server's address (the `Link` helper's server end) and its SIP port.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The caller's SIP address (the `Link` helper's peer end).
pub const CALLER_SIP_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SIP_PORT: u16 = 5060;
/// RTP ports are even ports from here, 25,000 of them (10000-59998).
const RTP_PORT_BASE: u16 = 10000;
const RTP_PORTS: u32 = 25_000;
/// Callers' media addresses: one per call from 198.19.0.1 (RFC 2544's
/// benchmarking range, like the rest of the tests' addresses).
const CALLER_MEDIA_BASE: u32 = u32::from_be_bytes([198, 19, 0, 1]);
/// Flood sources: 198.18.128.0/17, never a call's address.
const FLOOD_SOURCE_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
/// At most this many calls (distinct caller media addresses in 198.19/16).
pub const MAX_CALLS: u32 = 60_000;
/// G.711 mu-law: payload type 0, 8000 Hz, 20 ms = 160 bytes per packet.
const PT_PCMU: u8 = 0;
const PCMU_HZ: u64 = 8000;
const PAYLOAD_BYTES: usize = 160;
/// Ethernet, IPv4, UDP and RTP headers and the payload.
const RTP_FRAME_LEN: usize = 14 + 20 + 8 + 12 + PAYLOAD_BYTES;
/// Answer 50 ms and ACK 100 ms after the INVITE; the BYE's 200 OK 20 ms
/// after the BYE.
const ANSWER_DELAY_NS: u64 = 50_000_000;
const ACK_DELAY_NS: u64 = 100_000_000;
const BYE_OK_DELAY_NS: u64 = 20_000_000;
/// Frames carry MAC addresses no interface has, so the receiving stack
/// drops them right after the hooks (no ICMP, no sockets involved).
const CALLER_MAC: [u8; 6] = [0x02, 0xde, 0x7e, 0xc7, 0x00, 0x02];
const SERVER_MAC: [u8; 6] = [0x02, 0xde, 0x7e, 0xc7, 0x00, 0x01];

/// Which end of the veth pair a frame is sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The remote caller's end: the frame enters the server (XDP).
    Caller,
    /// The media server's end: the frame leaves it (TC egress).
    Server,
}

/// A media direction, named as the detector names them: the caller is the
/// remote side, the callee the media server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    CallerToCallee,
    CalleeToCaller,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::CallerToCallee, Direction::CalleeToCaller];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::CallerToCallee => "caller_to_callee",
            Direction::CalleeToCaller => "callee_to_caller",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::CallerToCallee => 0,
            Direction::CalleeToCaller => 1,
        }
    }

    fn sender(self) -> Side {
        match self {
            Direction::CallerToCallee => Side::Caller,
            Direction::CalleeToCaller => Side::Server,
        }
    }
}

/// What goes wrong in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    /// This direction stops sending `fault_after` seconds after the answer.
    OneWay(Direction),
    /// Both directions stop `fault_after` seconds after the answer; the
    /// server ends the call with `Reason: SIP;cause=408;text="RTP Timeout"`.
    Silent,
    /// This direction skips sequence numbers (`loss_percent` of them).
    Loss(Direction),
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Healthy => "healthy",
            Fault::OneWay(_) => "one_way",
            Fault::Silent => "silent",
            Fault::Loss(_) => "loss",
        }
    }

    /// The direction affected: `both` for a silent call.
    pub fn direction(self) -> Option<&'static str> {
        match self {
            Fault::Healthy => None,
            Fault::OneWay(d) | Fault::Loss(d) => Some(d.as_str()),
            Fault::Silent => Some("both"),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrent calls.
    pub calls: u32,
    /// RTP packets per second per stream (at least 2: a gap of a second or
    /// more reads as silence suppression).
    pub rate: f64,
    /// Seconds of media per call, from its answer.
    pub hold_s: f64,
    /// Calls set up per second.
    pub ramp: f64,
    pub one_way_caller_to_callee: u32,
    pub one_way_callee_to_caller: u32,
    pub silent: u32,
    /// Lossy calls, alternately caller_to_callee and callee_to_caller.
    pub loss: u32,
    /// Share of sequence numbers the lossy direction skips.
    pub loss_percent: u32,
    /// Packet rate of lossy calls (both directions): loss is judged once
    /// 100 packets were expected in a 5 s window, so a lossy call sends at
    /// G.711's real 50 packets/s.
    pub loss_rate: f64,
    /// When one-way and silent calls stop sending, after the answer.
    pub fault_after_s: f64,
    /// From the last RTP packet to the BYE, so the agent has read the final
    /// counts before the call ends (it reads the maps once a second).
    pub bye_gap_s: f64,
    /// Distinct random RTP 5-tuples sent once each toward the server.
    pub flood: u32,
    /// When the flood starts (seconds from the start).
    pub flood_at_s: f64,
    /// The flood's packets per second.
    pub flood_pps: u32,
    pub seed: u64,
    /// Prefix of every Call-ID, so runs are told apart.
    pub tag: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            calls: 100,
            rate: 2.0,
            hold_s: 30.0,
            ramp: 1000.0,
            one_way_caller_to_callee: 0,
            one_way_callee_to_caller: 0,
            silent: 0,
            loss: 0,
            loss_percent: 10,
            loss_rate: 50.0,
            fault_after_s: 3.0,
            bye_gap_s: 1.5,
            flood: 0,
            flood_at_s: 5.0,
            flood_pps: 100_000,
            seed: 1,
            tag: "lg".into(),
        }
    }
}

impl Options {
    pub fn faults(&self) -> u32 {
        self.one_way_caller_to_callee + self.one_way_callee_to_caller + self.silent + self.loss
    }

    /// Why these options cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.calls == 0 || self.calls > MAX_CALLS {
            return Err(format!("--calls must be 1-{MAX_CALLS}"));
        }
        if self.faults() > self.calls {
            return Err("more faulty calls than calls".into());
        }
        if !(self.rate >= 2.0 && self.rate <= 500.0 && self.loss_rate >= 2.0) {
            return Err("--rate and --loss-rate must be 2-500 packets/s (a gap of 1 s or more reads as silence suppression)".into());
        }
        if self.ramp <= 0.0 || self.hold_s <= 0.0 || self.bye_gap_s < 0.0 {
            return Err("--ramp and --hold must be positive, --bye-gap not negative".into());
        }
        if !(1..=50).contains(&self.loss_percent) {
            return Err("--loss-percent must be 1-50".into());
        }
        if self.flood > 0 && self.flood_pps == 0 {
            return Err("--flood-pps must be positive".into());
        }
        Ok(())
    }

    /// The fault of every call: faulty calls spread evenly over the calls
    /// (so over the ramp), kinds taken in turn.
    fn fault_plan(&self) -> Vec<Fault> {
        let mut kinds = Vec::new();
        let mut left = [
            (
                self.one_way_caller_to_callee,
                Fault::OneWay(Direction::CallerToCallee),
            ),
            (
                self.one_way_callee_to_caller,
                Fault::OneWay(Direction::CalleeToCaller),
            ),
            (self.silent, Fault::Silent),
            (self.loss, Fault::Loss(Direction::CallerToCallee)),
        ];
        let mut lossy = 0u32;
        while left.iter().any(|(n, _)| *n > 0) {
            for (n, fault) in &mut left {
                if *n > 0 {
                    *n -= 1;
                    kinds.push(match *fault {
                        Fault::Loss(_) => {
                            lossy += 1;
                            Fault::Loss(Direction::BOTH[(lossy as usize + 1) % 2])
                        }
                        f => f,
                    });
                }
            }
        }
        let mut plan = vec![Fault::Healthy; self.calls as usize];
        let n = kinds.len() as u64;
        for (j, fault) in kinds.into_iter().enumerate() {
            let calls = u64::from(self.calls);
            let index = (j as u64 * calls + calls / 2) / n;
            plan[index as usize] = fault;
        }
        plan
    }
}

/// A call's fixed facts.
#[derive(Clone, Debug)]
pub struct CallSpec {
    pub call_id: String,
    pub fault: Fault,
    /// The caller's RTP endpoint (its SDP) and the server's (its answer).
    pub caller_rtp: SocketAddrV4,
    pub callee_rtp: SocketAddrV4,
    /// Per direction ([`Direction::CallerToCallee`] first).
    pub ssrc: [u32; 2],
}

/// The RTP endpoints of call `index`: a caller address of its own, and an
/// even port on the server (further server addresses past 25,000 calls).
pub fn endpoints(index: u32) -> (SocketAddrV4, SocketAddrV4) {
    let port = RTP_PORT_BASE + (2 * (index % RTP_PORTS)) as u16;
    let caller = Ipv4Addr::from(CALLER_MEDIA_BASE + index);
    let server = match index / RTP_PORTS {
        0 => SERVER_IP,
        n => Ipv4Addr::new(198, 18, 1, n as u8),
    };
    (
        SocketAddrV4::new(caller, port),
        SocketAddrV4::new(server, port),
    )
}

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    seq: u16,
    first_seq: u16,
    ts: u32,
    /// Sequence numbers used (sent or skipped).
    used: u32,
    sent: u32,
    interval_ticks: u64,
    ts_step: u32,
    /// Skip every `skip_every`th sequence number (0: none).
    skip_every: u32,
    /// The first tick this stream sends no more.
    stop_tick: u64,
}

#[derive(Clone, Debug)]
struct CallState {
    spec: CallSpec,
    streams: [Stream; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Invite,
    Answer,
    Ack,
    Rtp(Direction),
    Bye,
    ByeOk,
    Flood,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    call: u32,
    kind: Kind,
}

/// Where frames go: AF_PACKET sockets, or a capture file.
pub trait Sink {
    /// One frame, to be sent from `side`, due at `time_ns` from the start.
    fn frame(&mut self, side: Side, time_ns: u64, frame: &[u8]);
    /// The end of a tick: send what was batched.
    fn end_tick(&mut self) {}
}

/// Counts so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub answered: u32,
    /// Calls whose BYE was sent.
    pub hung_up: u32,
    /// Calls whose BYE's 200 OK was sent.
    pub ended: u32,
    pub sip: u64,
    pub rtp: u64,
    pub flood: u64,
    pub caller_frames: u64,
    pub server_frames: u64,
}

/// The generator: call state, the timer wheel and a frame buffer.
pub struct Generator {
    opts: Options,
    calls: Vec<CallState>,
    wheel: Vec<Vec<Event>>,
    later: BinaryHeap<Reverse<(u64, Event)>>,
    /// The next tick to process.
    tick: u64,
    pending: u64,
    frame: Vec<u8>,
    text: String,
    ip_id: u16,
    rng: u64,
    /// Every stream's RTP frame, built at its first packet.
    templates: Vec<u8>,
    flood_seen: HashSet<(u32, u16, u16)>,
    call_ports: HashSet<u16>,
    /// The live sender is behind its clock: the flood yields to the calls.
    behind: bool,
    counts: Counts,
}

fn ticks(seconds: f64) -> u64 {
    (seconds * 1e9 / TICK_NS as f64).round() as u64
}

/// splitmix64: a small, good PRNG step.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Generator {
    pub fn new(opts: Options) -> Result<Self, String> {
        opts.check()?;
        let plan = opts.fault_plan();
        let mut rng = opts.seed;
        let mut calls = Vec::with_capacity(plan.len());
        let mut call_ports = HashSet::new();
        for (i, fault) in plan.into_iter().enumerate() {
            let i = i as u32;
            let (caller_rtp, callee_rtp) = endpoints(i);
            if *callee_rtp.ip() == SERVER_IP {
                call_ports.insert(callee_rtp.port());
            }
            let spec = CallSpec {
                call_id: format!("{}-{i:05}@{CALLER_SIP_IP}", opts.tag),
                fault,
                caller_rtp,
                callee_rtp,
                ssrc: [0x5000_0000 + 2 * i, 0x5000_0001 + 2 * i],
            };
            let rate = if matches!(fault, Fault::Loss(_)) {
                opts.loss_rate
            } else {
                opts.rate
            };
            let interval_ticks = ticks(1.0 / rate).max(1);
            let mut streams = [Stream::default(); 2];
            for (d, stream) in Direction::BOTH.iter().zip(&mut streams) {
                let r = splitmix(&mut rng);
                *stream = Stream {
                    seq: r as u16,
                    first_seq: r as u16,
                    ts: (r >> 32) as u32,
                    interval_ticks,
                    ts_step: (interval_ticks * TICK_NS * PCMU_HZ / 1_000_000_000) as u32,
                    skip_every: match fault {
                        Fault::Loss(lossy) if lossy == *d => 100 / opts.loss_percent,
                        _ => 0,
                    },
                    ..Stream::default()
                };
            }
            calls.push(CallState { spec, streams });
        }
        let mut generator = Self {
            wheel: vec![Vec::new(); WHEEL_TICKS as usize],
            later: BinaryHeap::new(),
            tick: 0,
            pending: 0,
            frame: Vec::with_capacity(2048),
            text: String::with_capacity(2048),
            ip_id: 0,
            rng,
            templates: vec![0; calls.len() * 2 * RTP_FRAME_LEN],
            flood_seen: HashSet::new(),
            call_ports,
            behind: false,
            counts: Counts::default(),
            calls,
            opts,
        };
        for call in 0..generator.opts.calls {
            let at = ticks(f64::from(call) / generator.opts.ramp);
            generator.schedule(
                at,
                Event {
                    call,
                    kind: Kind::Invite,
                },
            );
        }
        if generator.opts.flood > 0 {
            let at = ticks(generator.opts.flood_at_s);
            generator.schedule(
                at,
                Event {
                    call: 0,
                    kind: Kind::Flood,
                },
            );
        }
        Ok(generator)
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Nothing left to send.
    pub fn finished(&self) -> bool {
        self.pending == 0
    }

    /// The next tick to process.
    pub fn next_tick(&self) -> u64 {
        self.tick
    }

    /// Tells the generator its sender is behind the clock: until it catches
    /// up, the flood sends an eighth of its rate, so the calls' media keeps
    /// its pace (a gap of a second would read as silence suppression).
    pub fn set_behind(&mut self, behind: bool) {
        self.behind = behind;
    }

    fn schedule(&mut self, at: u64, event: Event) {
        let at = at.max(self.tick);
        self.pending += 1;
        if at < self.tick + WHEEL_TICKS {
            self.wheel[(at % WHEEL_TICKS) as usize].push(event);
        } else {
            self.later.push(Reverse((at, event)));
        }
    }

    /// Processes every tick up to and including `until`.
    pub fn advance(&mut self, until: u64, sink: &mut impl Sink) {
        while self.tick <= until && !self.finished() {
            let tick = self.tick;
            let slot = (tick % WHEEL_TICKS) as usize;
            let mut due = std::mem::take(&mut self.wheel[slot]);
            while let Some(Reverse((at, event))) = self.later.peek().copied() {
                if at > tick {
                    break;
                }
                self.later.pop();
                due.push(event);
            }
            // Events scheduled now land in later ticks (at least tick + 1).
            self.tick += 1;
            for event in due.drain(..) {
                self.pending -= 1;
                self.fire(event, tick, sink);
            }
            // Keep the slot's allocation.
            if self.wheel[slot].is_empty() {
                self.wheel[slot] = due;
            }
            sink.end_tick();
        }
    }

    fn fire(&mut self, event: Event, tick: u64, sink: &mut impl Sink) {
        let time_ns = tick * TICK_NS;
        let call = event.call;
        let c = call as usize;
        match event.kind {
            Kind::Invite => {
                self.sip(sink, Side::Caller, time_ns, call, Message::Invite);
                self.schedule(
                    tick + ANSWER_DELAY_NS / TICK_NS,
                    Event {
                        call,
                        kind: Kind::Answer,
                    },
                );
            }
            Kind::Answer => {
                self.sip(sink, Side::Server, time_ns, call, Message::InviteOk);
                self.counts.answered += 1;
                let hold_end = tick + ticks(self.opts.hold_s);
                let fault_at = tick + ticks(self.opts.fault_after_s);
                let fault = self.calls[c].spec.fault;
                for d in Direction::BOTH {
                    let stops = match fault {
                        Fault::Silent => true,
                        Fault::OneWay(stopped) => stopped == d,
                        _ => false,
                    };
                    self.calls[c].streams[d.index()].stop_tick = if stops {
                        fault_at.min(hold_end)
                    } else {
                        hold_end
                    };
                    self.schedule(
                        tick,
                        Event {
                            call,
                            kind: Kind::Rtp(d),
                        },
                    );
                }
                self.schedule(
                    tick + (ACK_DELAY_NS - ANSWER_DELAY_NS) / TICK_NS,
                    Event {
                        call,
                        kind: Kind::Ack,
                    },
                );
                self.schedule(
                    hold_end + ticks(self.opts.bye_gap_s),
                    Event {
                        call,
                        kind: Kind::Bye,
                    },
                );
            }
            Kind::Ack => self.sip(sink, Side::Caller, time_ns, call, Message::Ack),
            Kind::Rtp(d) => {
                let stream = &mut self.calls[c].streams[d.index()];
                if tick >= stream.stop_tick {
                    return;
                }
                let (seq, ts, marker) = (stream.seq, stream.ts, stream.used == 0);
                // Never skip the first packet (it starts the stream).
                let skip = stream.skip_every > 0
                    && stream.used % stream.skip_every == stream.skip_every / 2
                    && stream.used > 0;
                stream.used += 1;
                stream.seq = stream.seq.wrapping_add(1);
                stream.ts = stream.ts.wrapping_add(stream.ts_step);
                let next = tick + stream.interval_ticks;
                if !skip {
                    stream.sent += 1;
                    self.rtp(sink, c, d, time_ns, seq, ts, marker);
                }
                self.schedule(
                    next,
                    Event {
                        call,
                        kind: Kind::Rtp(d),
                    },
                );
            }
            Kind::Bye => {
                let from = if self.calls[c].spec.fault == Fault::Silent {
                    Side::Server
                } else {
                    Side::Caller
                };
                self.sip(sink, from, time_ns, call, Message::Bye);
                self.counts.hung_up += 1;
                self.schedule(
                    tick + BYE_OK_DELAY_NS / TICK_NS,
                    Event {
                        call,
                        kind: Kind::ByeOk,
                    },
                );
            }
            Kind::ByeOk => {
                let from = if self.calls[c].spec.fault == Fault::Silent {
                    Side::Caller
                } else {
                    Side::Server
                };
                self.sip(sink, from, time_ns, call, Message::ByeOk);
                self.counts.ended += 1;
            }
            Kind::Flood => {
                let mut per_tick =
                    (u64::from(self.opts.flood_pps) * TICK_NS).div_ceil(1_000_000_000);
                if self.behind {
                    per_tick /= 8;
                }
                let per_tick = per_tick.max(1);
                let left = u64::from(self.opts.flood) - self.counts.flood;
                for _ in 0..per_tick.min(left) {
                    self.flood_packet(sink, time_ns);
                }
                if self.counts.flood < u64::from(self.opts.flood) {
                    self.schedule(tick + 1, event);
                }
            }
        }
    }

    /// One RTP packet of call `c` in direction `d`: the stream's frame,
    /// built once, copied and patched (IP id and checksum, marker, sequence
    /// number, timestamp), so a packet costs a copy even in a debug build.
    #[expect(clippy::too_many_arguments, reason = "one RTP packet's fields")]
    fn rtp(
        &mut self,
        sink: &mut impl Sink,
        c: usize,
        d: Direction,
        time_ns: u64,
        seq: u16,
        ts: u32,
        marker: bool,
    ) {
        const IP: usize = 14;
        const RTP: usize = 42;
        let at = (c * 2 + d.index()) * RTP_FRAME_LEN;
        if self.templates[at + 12] == 0 {
            // Not built yet (an Ethernet type is never 0x00..).
            let spec = &self.calls[c].spec;
            let (src, dst) = match d {
                Direction::CallerToCallee => (spec.caller_rtp, spec.callee_rtp),
                Direction::CalleeToCaller => (spec.callee_rtp, spec.caller_rtp),
            };
            let ssrc = spec.ssrc[d.index()];
            build_udp_frame(&mut self.frame, d.sender(), 0, src, dst, |p| {
                rtp_header(p, PT_PCMU, false, 0, 0, ssrc);
                p.resize(p.len() + PAYLOAD_BYTES, 0xFF);
            });
            self.templates[at..at + RTP_FRAME_LEN].copy_from_slice(&self.frame);
        }
        let mut frame = [0u8; RTP_FRAME_LEN];
        frame.copy_from_slice(&self.templates[at..at + RTP_FRAME_LEN]);
        self.ip_id = self.ip_id.wrapping_add(1);
        frame[IP + 4..IP + 6].copy_from_slice(&self.ip_id.to_be_bytes());
        frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let checksum = ipv4_checksum(&frame[IP..IP + 20]);
        frame[IP + 10..IP + 12].copy_from_slice(&checksum.to_be_bytes());
        frame[RTP + 1] = PT_PCMU | if marker { 0x80 } else { 0 };
        frame[RTP + 2..RTP + 4].copy_from_slice(&seq.to_be_bytes());
        frame[RTP + 4..RTP + 8].copy_from_slice(&ts.to_be_bytes());
        self.counts.rtp += 1;
        self.emit(sink, d.sender(), time_ns, &frame);
    }

    fn flood_packet(&mut self, sink: &mut impl Sink, time_ns: u64) {
        let (src, dst) = loop {
            let r = splitmix(&mut self.rng);
            let ip = FLOOD_SOURCE_BASE + (r as u32 & 0x7FFF);
            let sport = RTP_PORT_BASE + 2 * ((r >> 16) as u32 % RTP_PORTS) as u16;
            let dport = RTP_PORT_BASE + 2 * ((r >> 40) as u32 % RTP_PORTS) as u16;
            if !self.call_ports.contains(&dport) && self.flood_seen.insert((ip, sport, dport)) {
                break (
                    SocketAddrV4::new(Ipv4Addr::from(ip), sport),
                    SocketAddrV4::new(SERVER_IP, dport),
                );
            }
        };
        let r = splitmix(&mut self.rng);
        let mut frame = std::mem::take(&mut self.frame);
        self.ip_id = self.ip_id.wrapping_add(1);
        build_udp_frame(&mut frame, Side::Caller, self.ip_id, src, dst, |p| {
            rtp_header(
                p,
                PT_PCMU,
                false,
                r as u16,
                (r >> 16) as u32,
                (r >> 32) as u32,
            );
            p.resize(p.len() + PAYLOAD_BYTES, 0xFF);
        });
        self.counts.flood += 1;
        self.emit(sink, Side::Caller, time_ns, &frame);
        self.frame = frame;
    }

    fn sip(&mut self, sink: &mut impl Sink, side: Side, time_ns: u64, call: u32, message: Message) {
        let mut text = std::mem::take(&mut self.text);
        let spec = &self.calls[call as usize].spec;
        sip_message(&mut text, spec, message);
        let (src, dst) = match side {
            Side::Caller => (
                SocketAddrV4::new(CALLER_SIP_IP, SIP_PORT),
                SocketAddrV4::new(SERVER_IP, SIP_PORT),
            ),
            Side::Server => (
                SocketAddrV4::new(SERVER_IP, SIP_PORT),
                SocketAddrV4::new(CALLER_SIP_IP, SIP_PORT),
            ),
        };
        let mut frame = std::mem::take(&mut self.frame);
        self.ip_id = self.ip_id.wrapping_add(1);
        build_udp_frame(&mut frame, side, self.ip_id, src, dst, |p| {
            p.extend_from_slice(text.as_bytes());
        });
        self.counts.sip += 1;
        self.emit(sink, side, time_ns, &frame);
        self.frame = frame;
        self.text = text;
    }

    fn emit(&mut self, sink: &mut impl Sink, side: Side, time_ns: u64, frame: &[u8]) {
        match side {
            Side::Caller => self.counts.caller_frames += 1,
            Side::Server => self.counts.server_frames += 1,
        }
        sink.frame(side, time_ns, frame);
    }

    /// The truth about every call, for the tests: Call-ID, fault, endpoints,
    /// SSRCs and, per direction, packets sent and sequence numbers used.
    pub fn manifest(&self) -> Value {
        let calls: Vec<Value> = self
            .calls
            .iter()
            .map(|c| {
                let per = |f: &dyn Fn(&Stream) -> Value| {
                    json!({
                        "caller_to_callee": f(&c.streams[0]),
                        "callee_to_caller": f(&c.streams[1]),
                    })
                };
                json!({
                    "call_id": c.spec.call_id,
                    "fault": c.spec.fault.name(),
                    "direction": c.spec.fault.direction(),
                    "caller_rtp": c.spec.caller_rtp.to_string(),
                    "callee_rtp": c.spec.callee_rtp.to_string(),
                    "ssrc": {
                        "caller_to_callee": format!("0x{:08X}", c.spec.ssrc[0]),
                        "callee_to_caller": format!("0x{:08X}", c.spec.ssrc[1]),
                    },
                    "sent": per(&|s| json!(s.sent)),
                    "expected": per(&|s| json!(s.used)),
                    "first_seq": per(&|s| json!(s.first_seq)),
                })
            })
            .collect();
        let c = self.counts;
        json!({
            "calls": calls,
            "answered": c.answered,
            "ended": c.ended,
            "sip": c.sip,
            "rtp": c.rtp,
            "flood": { "packets": c.flood, "distinct": self.flood_seen.len() },
            "frames": { "caller": c.caller_frames, "server": c.server_frames },
        })
    }
}

#[derive(Clone, Copy)]
enum Message {
    Invite,
    InviteOk,
    Ack,
    Bye,
    ByeOk,
}

fn sdp(out: &mut String, session: u32, rtp: SocketAddrV4) -> usize {
    let start = out.len();
    let ip = rtp.ip();
    let _ = write!(
        out,
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        rtp.port()
    );
    out.len() - start
}

/// The SIP text of one message of a call (UDP, one dialog per call; the
/// server's tag is `s`, the caller's `c`, followed by the call's number).
fn sip_message(out: &mut String, spec: &CallSpec, message: Message) {
    out.clear();
    let id = &spec.call_id;
    let n = spec.call_id.rsplit('@').nth(1).unwrap_or(id);
    let caller = format!("<sip:caller@{CALLER_SIP_IP}:{SIP_PORT}>;tag=c-{n}");
    let callee = format!("<sip:media@{SERVER_IP}:{SIP_PORT}>");
    let callee_tagged = format!("{callee};tag=s-{n}");
    let caller_via = format!("SIP/2.0/UDP {CALLER_SIP_IP}:{SIP_PORT};branch=z9hG4bK-{n}");
    let server_via = format!("SIP/2.0/UDP {SERVER_IP}:{SIP_PORT};branch=z9hG4bK-s{n}");
    let (head, via, from, to, cseq, extra, body) = match message {
        Message::Invite => (
            format!("INVITE sip:media@{SERVER_IP}:{SIP_PORT} SIP/2.0"),
            format!("{caller_via}-1"),
            caller.clone(),
            callee.clone(),
            "1 INVITE",
            format!("Contact: <sip:caller@{CALLER_SIP_IP}:{SIP_PORT}>\r\n"),
            Some(spec.caller_rtp),
        ),
        Message::InviteOk => (
            "SIP/2.0 200 OK".to_string(),
            format!("{caller_via}-1"),
            caller.clone(),
            callee_tagged.clone(),
            "1 INVITE",
            format!("Contact: <sip:media@{SERVER_IP}:{SIP_PORT}>\r\n"),
            Some(spec.callee_rtp),
        ),
        Message::Ack => (
            format!("ACK sip:media@{SERVER_IP}:{SIP_PORT} SIP/2.0"),
            format!("{caller_via}-2"),
            caller.clone(),
            callee_tagged.clone(),
            "1 ACK",
            String::new(),
            None,
        ),
        Message::Bye | Message::ByeOk if spec.fault == Fault::Silent => (
            if matches!(message, Message::Bye) {
                format!("BYE sip:caller@{CALLER_SIP_IP}:{SIP_PORT} SIP/2.0")
            } else {
                "SIP/2.0 200 OK".to_string()
            },
            format!("{server_via}-1"),
            callee_tagged.clone(),
            caller.clone(),
            "1 BYE",
            if matches!(message, Message::Bye) {
                "Reason: SIP;cause=408;text=\"RTP Timeout\"\r\n".to_string()
            } else {
                String::new()
            },
            None,
        ),
        Message::Bye | Message::ByeOk => (
            if matches!(message, Message::Bye) {
                format!("BYE sip:media@{SERVER_IP}:{SIP_PORT} SIP/2.0")
            } else {
                "SIP/2.0 200 OK".to_string()
            },
            format!("{caller_via}-3"),
            caller.clone(),
            callee_tagged.clone(),
            "2 BYE",
            String::new(),
            None,
        ),
    };
    let mut body_text = String::new();
    let body_len = body.map_or(0, |rtp| sdp(&mut body_text, spec.ssrc[0], rtp));
    let _ = write!(
        out,
        "{head}\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {id}\r\nCSeq: {cseq}\r\n{extra}"
    );
    if body_len > 0 {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n{body_text}");
}

/// A 12-byte RTP header.
fn rtp_header(out: &mut Vec<u8>, pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) {
    out.push(0x80);
    out.push(pt & 0x7F | if marker { 0x80 } else { 0 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// The IPv4 header checksum (RFC 791) of `header`.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame (IP checksum set, UDP checksum 0) into
/// `out`, the UDP payload written by `payload`.
pub fn build_udp_frame(
    out: &mut Vec<u8>,
    side: Side,
    ip_id: u16,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    const ETH: usize = 14;
    const IP: usize = 20;
    out.clear();
    let (src_mac, dst_mac) = match side {
        Side::Caller => (CALLER_MAC, SERVER_MAC),
        Side::Server => (SERVER_MAC, CALLER_MAC),
    };
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    // Version 4, IHL 5, DSCP EF (as media is marked); lengths and checksum
    // filled in once the payload is written; DF, TTL 64, UDP.
    out.extend_from_slice(&[0x45, 0xB8, 0, 0]);
    out.extend_from_slice(&ip_id.to_be_bytes());
    out.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    out.extend_from_slice(&src.ip().octets());
    out.extend_from_slice(&dst.ip().octets());
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    payload(out);
    let ip_len = (out.len() - ETH) as u16;
    out[ETH + 2..ETH + 4].copy_from_slice(&ip_len.to_be_bytes());
    let udp_len = ip_len - IP as u16;
    out[ETH + IP + 4..ETH + IP + 6].copy_from_slice(&udp_len.to_be_bytes());
    let checksum = ipv4_checksum(&out[ETH..ETH + IP]);
    out[ETH + 10..ETH + 12].copy_from_slice(&checksum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        frames: Vec<(Side, u64, Vec<u8>)>,
    }

    impl Sink for Collect {
        fn frame(&mut self, side: Side, time_ns: u64, frame: &[u8]) {
            self.frames.push((side, time_ns, frame.to_vec()));
        }
    }

    fn run(opts: Options) -> (Generator, Collect) {
        let mut g = Generator::new(opts).unwrap();
        let mut sink = Collect::default();
        g.advance(u64::MAX, &mut sink);
        assert!(g.finished());
        (g, sink)
    }

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[42..]
    }

    #[test]
    fn checksum_of_a_known_header() {
        // The example header of RFC 1071's usual walk-through (checksum b861).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn a_healthy_call_is_five_sip_messages_and_rtp_both_ways() {
        let (g, sink) = run(Options {
            calls: 1,
            hold_s: 5.0,
            ..Options::default()
        });
        let sip: Vec<String> = sink
            .frames
            .iter()
            .filter(|(_, _, f)| f[36..38] == SIP_PORT.to_be_bytes())
            .map(|(_, _, f)| String::from_utf8_lossy(payload(f)).into_owned())
            .collect();
        let first_lines: Vec<&str> = sip.iter().map(|m| m.lines().next().unwrap()).collect();
        assert_eq!(
            first_lines,
            [
                "INVITE sip:media@198.18.0.1:5060 SIP/2.0",
                "SIP/2.0 200 OK",
                "ACK sip:media@198.18.0.1:5060 SIP/2.0",
                "BYE sip:media@198.18.0.1:5060 SIP/2.0",
                "SIP/2.0 200 OK",
            ]
        );
        assert!(sip[0].contains("c=IN IP4 198.19.0.1\r\n") && sip[0].contains("m=audio 10000 "));
        assert!(sip[1].contains("c=IN IP4 198.18.0.1\r\n"));
        let body = sip[0].split("\r\n\r\n").nth(1).unwrap();
        assert!(sip[0].contains(&format!("Content-Length: {}\r\n", body.len())));
        // 2 packets/s for 5 s each way, sequence and timestamp advancing.
        let m = g.manifest();
        let call = &m["calls"][0];
        assert_eq!(call["sent"]["caller_to_callee"], 10);
        assert_eq!(call["sent"]["callee_to_caller"], 10);
        let rtp: Vec<&[u8]> = sink
            .frames
            .iter()
            .filter(|(side, _, f)| *side == Side::Caller && f[36..38] != SIP_PORT.to_be_bytes())
            .map(|(_, _, f)| payload(f))
            .collect();
        assert_eq!(rtp.len(), 10);
        let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
        let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(seq(rtp[1]), seq(rtp[0]).wrapping_add(1));
        assert_eq!(ts(rtp[1]).wrapping_sub(ts(rtp[0])), 4000);
        assert_eq!(rtp[0][1], 0x80, "marker on the first packet only");
        assert_eq!(rtp[1][1], 0x00);
        assert_eq!(rtp[0].len(), 12 + 160);
    }

    #[test]
    fn faults_by_index_and_what_they_send() {
        let (g, sink) = run(Options {
            calls: 40,
            hold_s: 10.0,
            one_way_caller_to_callee: 1,
            one_way_callee_to_caller: 1,
            silent: 1,
            loss: 2,
            ..Options::default()
        });
        let m = g.manifest();
        let calls = m["calls"].as_array().unwrap();
        let faulty: Vec<(&str, Option<&str>)> = calls
            .iter()
            .filter(|c| c["fault"] != "healthy")
            .map(|c| (c["fault"].as_str().unwrap(), c["direction"].as_str()))
            .collect();
        assert_eq!(
            faulty,
            [
                ("one_way", Some("caller_to_callee")),
                ("one_way", Some("callee_to_caller")),
                ("silent", Some("both")),
                ("loss", Some("caller_to_callee")),
                ("loss", Some("callee_to_caller")),
            ]
        );
        for c in calls {
            let (sent_cc, sent_ce) = (
                c["sent"]["caller_to_callee"].as_u64().unwrap(),
                c["sent"]["callee_to_caller"].as_u64().unwrap(),
            );
            let expected = c["expected"]["caller_to_callee"].as_u64().unwrap();
            match (c["fault"].as_str().unwrap(), c["direction"].as_str()) {
                ("healthy", _) => assert_eq!((sent_cc, sent_ce), (20, 20)),
                ("one_way", Some("caller_to_callee")) => assert_eq!((sent_cc, sent_ce), (6, 20)),
                ("one_way", _) => assert_eq!((sent_cc, sent_ce), (20, 6)),
                ("silent", _) => assert_eq!((sent_cc, sent_ce), (6, 6)),
                ("loss", Some("caller_to_callee")) => {
                    assert_eq!((expected, sent_cc, sent_ce), (500, 450, 500));
                }
                ("loss", _) => assert_eq!((expected, sent_cc, sent_ce), (500, 500, 450)),
                other => panic!("{other:?}"),
            }
        }
        // The silent call's BYE comes from the server with the 408 reason.
        let silent_id = calls.iter().find(|c| c["fault"] == "silent").unwrap()["call_id"]
            .as_str()
            .unwrap();
        let bye = sink
            .frames
            .iter()
            .map(|(side, _, f)| (side, String::from_utf8_lossy(payload(f))))
            .find(|(_, t)| t.starts_with("BYE ") && t.contains(silent_id))
            .unwrap();
        assert_eq!(*bye.0, Side::Server);
        assert!(bye
            .1
            .contains("Reason: SIP;cause=408;text=\"RTP Timeout\"\r\n"));
        // Every stream is a distinct 5-tuple.
        let tuples: HashSet<&[u8]> = sink
            .frames
            .iter()
            .filter(|(_, _, f)| f[36..38] != SIP_PORT.to_be_bytes())
            .map(|(_, _, f)| &f[26..38])
            .collect();
        assert_eq!(tuples.len(), 80);
    }

    #[test]
    fn the_flood_is_distinct_rtp_in_range_avoiding_the_calls() {
        let (g, sink) = run(Options {
            calls: 3,
            hold_s: 3.0,
            flood: 50_000,
            flood_at_s: 1.0,
            ..Options::default()
        });
        assert_eq!(g.counts().flood, 50_000);
        let flood: Vec<&Vec<u8>> = sink
            .frames
            .iter()
            .map(|(_, _, f)| f)
            .filter(|f| f[26] == 198 && f[27] == 18 && f[28] >= 128)
            .collect();
        assert_eq!(flood.len(), 50_000);
        let tuples: HashSet<&[u8]> = flood.iter().map(|f| &f[26..38]).collect();
        assert_eq!(tuples.len(), 50_000);
        for f in flood {
            let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
            assert!((10000..=60000).contains(&port(34)) && (10000..=60000).contains(&port(36)));
            assert!(![10000, 10002, 10004].contains(&port(36)));
            assert_eq!(f[42], 0x80, "RTP version 2");
        }
        // 100,000 packets/s: 50,000 take half a second.
        let times: Vec<u64> = sink
            .frames
            .iter()
            .filter(|(_, _, f)| f[28] >= 128)
            .map(|(_, t, _)| *t)
            .collect();
        let span = times.last().unwrap() - times.first().unwrap();
        assert!((490_000_000..=510_000_000).contains(&span), "{span}");
    }
}
