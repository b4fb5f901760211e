//! The flow map: one entry per RTP (or RTCP) stream and hook, and the pure
//! per-packet logic that decides what a packet is and updates its entry.
//!
//! # Concurrency
//! The kernel updates an entry in place through the pointer the map lookup
//! returns, without locks. RSS steers all packets of one 5-tuple to one RX
//! queue and so one CPU, and a sender's socket emits one stream serially, so
//! an entry is normally written by one CPU at a time. If two CPUs do process
//! packets of the same stream at once (RPS off and a misconfigured NIC, or a
//! sender writing one stream from several threads), an increment can be lost
//! and counts become inexact by at most the number of such collisions; the
//! entry itself stays well-formed because every field is a plain integer. A
//! `bpf_spin_lock` would make it exact at a cost on every packet; the
//! outcome counters, which every CPU touches, are per-CPU and always exact.

use crate::{
    config::DetectorConfig,
    counters,
    jitter::{JitterState, MAX_CLOCK_RATE},
    packet::{
        parse_ethernet, parse_ip, udp_payload_len, Fragment, Header, IpPacket, PacketBytes,
        ParseError, ETH_HEADER_LEN, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_MIN,
        UDP_HEADER_LEN,
    },
    rtp::{classify, rtp_header, PayloadKind, RtpHeader, PT_COMFORT_NOISE, RTP_HEADER_LEN},
    seq::{SeqEvent, SeqState},
};

/// The flow table proper: an array of [`FlowSlot`]s. A key's slot is found
/// by hashing it to a first slot and probing [`FLOW_PROBES`] slots from
/// there. Array lookups are inlined by the verifier, so an established flow
/// costs no helper call: on a kernel with return-thunk mitigations a hash map
/// lookup (a call into the kernel, hashing 48 bytes and a `memcmp`) costs
/// more than the rest of the packet's work together (see `cargo xtask bench`).
/// The map is mmap-able: the agent reads it without a syscall per flow.
///
/// Its size is set at load time from the flow table's capacity (see
/// [`FlowTableLayout`]), which the kernel reads from
/// [`DetectorConfig::flow_table_size`] to hash into it. The kernel never
/// evicts a flow from it: only the agent frees the slots of idle flows.
pub const FLOW_SLOTS_MAP: &str = "FLOW_SLOTS";
/// Slots probed per key, from its first slot onward. Eight at a load of at
/// most one half leave about 0.5 % of flows to the overflow maps (four
/// would leave 3 %); probes past the first cost only new flows (and flows
/// that collided), since an established flow is mostly found in its first.
pub const FLOW_PROBES: u32 = 8;
/// Slots per flow of capacity, as a power of two: the table is twice as
/// large as the flows it is sized for, so it is at most half full.
pub const FLOW_LOAD_SHIFT: u32 = 1;
/// Overflow for new flows of endpoints the agent watches (learnt from SDP)
/// whose probed slots are all taken: a plain hash map, which the kernel
/// never evicts from, allocated as it fills (`BPF_F_NO_PREALLOC`), as large
/// as the flow table's capacity. A flood of unrelated flows cannot take its
/// room; when it is full, such a flow goes to [`FLOWS_MAP`].
pub const WATCHED_FLOWS_MAP: &str = "WATCHED_FLOWS";
/// Overflow for every other new flow whose probed slots are all taken: an
/// LRU hash (when full, the least recently updated of its flows is evicted,
/// and the agent counts evictions), so flows there can only push out each
/// other. Sized at a fraction of the capacity ([`FlowTableLayout`]).
pub const FLOWS_MAP: &str = "FLOWS";
/// The flows the kernel tracks by default: 20,000 calls through a B2BUA (two
/// legs, each RTP and RTCP in both directions: 8 flows a call, 160,000),
/// rounded up to 160 Ki. The slots are twice that, so the table is half
/// full at capacity: flows beyond it (calls that ended within the idle
/// timeout, new SSRCs of live calls) still find slots, and those of
/// announced endpoints that do not go to [`WATCHED_FLOWS_MAP`]. The agent
/// maps the slots (60 MB at this size), so a larger default costs every
/// agent memory for calls few servers carry.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 163_840;
/// The largest capacity the agent accepts: 4 Mi flows take 1.4 GiB of
/// kernel memory for the slots alone.
pub const MAX_FLOW_TABLE_SIZE: u32 = 1 << 22;
/// The default flow table's capacity. A running agent's is the one it was
/// configured with (`Kernel::flow_table_capacity`).
pub const FLOW_TABLE_CAPACITY: u32 = DEFAULT_FLOW_TABLE_SIZE;

/// The maps of a flow table of a given capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTableLayout {
    /// Flows the table is sized for ([`DetectorConfig::flow_table_size`]).
    pub capacity: u32,
    /// Entries of [`FLOW_SLOTS_MAP`].
    pub slots: u32,
    /// Entries of [`FLOWS_MAP`] (the LRU overflow).
    pub overflow: u32,
    /// Entries of [`WATCHED_FLOWS_MAP`].
    pub watched_overflow: u32,
    /// Entries of [`WATCHED_MAP`]: a call announces half as many RTP
    /// endpoints as it has streams (through a B2BUA, 4 endpoints, each
    /// receiving RTP and RTCP and sending both: 8 streams).
    pub watched_endpoints: u32,
}

impl FlowTableLayout {
    /// The LRU overflow holds a sixteenth of the capacity, at least this
    /// many: at full capacity about 0.5 % of flows overflow, so it has
    /// room for ten times that, and for a flood's flows to churn in. The
    /// watched endpoints' map is no smaller either.
    pub const MIN_OVERFLOW: u32 = 1024;

    /// The layout for `capacity` flows; `None` for 0 or more than
    /// [`MAX_FLOW_TABLE_SIZE`].
    pub const fn new(capacity: u32) -> Option<Self> {
        if capacity == 0 || capacity > MAX_FLOW_TABLE_SIZE {
            return None;
        }
        let (overflow, endpoints) = (capacity / 16, capacity / 2);
        Some(Self {
            capacity,
            // First slots range over 0..capacity << FLOW_LOAD_SHIFT; the
            // last one's window needs FLOW_PROBES - 1 more, so no window
            // wraps (no mask per probe).
            slots: (capacity << FLOW_LOAD_SHIFT) + FLOW_PROBES - 1,
            overflow: if overflow < Self::MIN_OVERFLOW {
                Self::MIN_OVERFLOW
            } else {
                overflow
            },
            watched_overflow: capacity,
            watched_endpoints: if endpoints < Self::MIN_OVERFLOW {
                Self::MIN_OVERFLOW
            } else {
                endpoints
            },
        })
    }

    /// Bytes of kernel memory the slots take (the overflow maps' buckets
    /// and preallocated LRU entries add about a tenth).
    pub const fn slot_bytes(&self) -> u64 {
        self.slots as u64 * core::mem::size_of::<FlowSlot>() as u64
    }
}

/// [`FlowSlot::state`]: unused (or freed by the agent).
pub const SLOT_FREE: u64 = 0;
/// A CPU is writing a new flow into the slot.
pub const SLOT_CLAIMED: u64 = 1;
/// Key and stats are valid.
pub const SLOT_LIVE: u64 = 2;
/// Name of the map of endpoints learnt from SDP, tracked whatever their port
/// (sized by [`FlowTableLayout::watched_endpoints`]).
pub const WATCHED_MAP: &str = "WATCHED";

pub const KIND_RTP: u8 = 0;
pub const KIND_RTCP: u8 = 1;

/// Identifies one stream: 5-tuple, SSRC, what it is and where it was seen.
/// The hook is part of the key so a host that forwards media (seen on both
/// hooks) gets two entries instead of counting every packet twice.
///
/// Aligned to 8 so the key is copied a word at a time in the kernel (byte
/// arrays alone would be copied byte by byte).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Network byte order; IPv4 as IPv4-mapped IPv6.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    /// Host byte order. For RTCP, the sender's SSRC.
    pub ssrc: u32,
    pub ip_version: u8,
    /// `KIND_RTP` or `KIND_RTCP`.
    pub kind: u8,
    /// `counters::HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 5],
}
crate::assert_size!(FlowKey, 48);

impl FlowKey {
    /// Sets the last word (IP version, kind, hook and padding) in one store:
    /// field by field, LLVM merges the zero bytes of a constant kind and hook
    /// and the padding into a 7-byte memset, which the bpf target compiles
    /// to a function call.
    #[inline(always)]
    pub fn set_tail(&mut self, ip_version: u8, kind: u8, hook: u8) {
        self.words_mut()[5] = u64::from_ne_bytes([ip_version, kind, hook, 0, 0, 0, 0, 0]);
    }

    /// An IPv4 stream's key (addresses IPv4-mapped), built a word at a
    /// time: built field by field, its addresses' zero bytes become memset
    /// calls in the bpf target and its other bytes single-byte stores.
    #[inline(always)]
    pub fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        src_port: u16,
        dst_port: u16,
        ssrc: u32,
        kind: u8,
        hook: u8,
    ) -> Self {
        let mapped = |a: [u8; 4]| u64::from_ne_bytes([0, 0, 0xFF, 0xFF, a[0], a[1], a[2], a[3]]);
        let (s, d, x) = (
            src_port.to_ne_bytes(),
            dst_port.to_ne_bytes(),
            ssrc.to_ne_bytes(),
        );
        let words = [
            0,
            mapped(src),
            0,
            mapped(dst),
            u64::from_ne_bytes([s[0], s[1], d[0], d[1], x[0], x[1], x[2], x[3]]),
            u64::from_ne_bytes([4, kind, hook, 0, 0, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C, align(8)), 48 bytes of plain integers
        // (every bit pattern valid), laid out as the six words.
        unsafe { core::mem::transmute::<[u64; 6], Self>(words) }
    }

    #[inline(always)]
    fn words_mut(&mut self) -> &mut [u64; 6] {
        // SAFETY: as in `words`; any word value is a valid FlowKey.
        unsafe { &mut *(self as *mut Self).cast::<[u64; 6]>() }
    }

    /// The key as the six words it is made of (every byte is a named field
    /// or explicit padding, so all of them are initialised).
    #[inline(always)]
    pub fn words(&self) -> &[u64; 6] {
        // SAFETY: FlowKey is repr(C, align(8)), 48 bytes of plain integers.
        unsafe { &*(self as *const Self).cast::<[u64; 6]>() }
    }

    /// Equality a word at a time: six compares, where the derived
    /// `PartialEq` compares byte arrays through `memcmp`.
    #[inline(always)]
    pub fn same(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
    }

    /// The first slot of this key in a flow table of `flow_table_size`
    /// flows: in `0..flow_table_size << FLOW_LOAD_SHIFT` (the kernel runs
    /// this per packet, so it is three multiplies). The words that differ
    /// most between a media server's streams (the addresses' low words,
    /// ports and SSRC) are multiplied first so every bit of them reaches the
    /// top 32 bits of the hash; the rest is folded in before the second
    /// multiply. The third scales those 32 bits to the table's size
    /// (Lemire's multiply-shift reduction), so any size works, not only
    /// powers of two, with no division. Unkeyed on purpose: someone crafting
    /// colliding flows only pushes them into an overflow map, which a flood
    /// of distinct flows would fill anyway.
    #[inline(always)]
    pub fn slot_hash(&self, flow_table_size: u32) -> u32 {
        const K1: u64 = 0x9E37_79B9_7F4A_7C15;
        const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
        let w = self.words();
        let x = (w[1] ^ w[3].rotate_left(32) ^ w[4].rotate_left(16)).wrapping_mul(K1);
        let z = x ^ w[0] ^ w[2].rotate_left(8) ^ w[5].rotate_left(24);
        let h = (z ^ (z >> 32)).wrapping_mul(K2) >> 32;
        // h < 2^32, so h * size < size << 32, and this is < size << SHIFT.
        ((h * flow_table_size as u64) >> (32 - FLOW_LOAD_SHIFT)) as u32
    }
}

/// The `probe`th slot (0-based) for a key whose first slot is `hash`. The
/// table has `FLOW_PROBES - 1` slots past the last first slot, so a window
/// never wraps.
#[inline(always)]
pub const fn probe_slot(hash: u32, probe: u32) -> u32 {
    hash.wrapping_add(probe)
}

/// One entry of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// `SLOT_FREE`, `SLOT_CLAIMED` or `SLOT_LIVE`; changed atomically.
    pub state: u64,
    pub key: FlowKey,
    pub stats: FlowStats,
}
crate::assert_size!(FlowSlot, 184);

/// An endpoint (address and port) the agent asks the kernel to watch.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}
crate::assert_size!(EndpointKey, 20);

/// Clock rate of one payload type, as an SDP `a=rtpmap` declared it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtClockRate {
    pub payload_type: u8,
    pub _pad: [u8; 3],
    /// Hz; 0 marks an unused slot.
    pub clock_rate: u32,
}
crate::assert_size!(PtClockRate, 8);

/// Dynamic payload types per watched endpoint the kernel knows rates for.
pub const WATCHED_RATES: usize = 4;

/// What the agent knows of a watched endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedEndpoint {
    /// Opaque to the kernel: lets the agent find the call.
    pub cookie: u64,
    /// Clock rates of the dynamic payload types this endpoint receives
    /// (from its SDP), used for new streams toward it.
    pub rates: [PtClockRate; WATCHED_RATES],
}
crate::assert_size!(WatchedEndpoint, 40);

impl WatchedEndpoint {
    /// An endpoint's entry: `cookie`, and the clock rates its SDP declared
    /// (`a=rtpmap`: payload type, Hz) for dynamic payload types, as many as
    /// it holds (static types have RFC 3551's).
    pub fn new<I: IntoIterator<Item = (u8, u32)>>(cookie: u64, rtpmap: I) -> Self {
        let mut value = Self {
            cookie,
            ..Self::default()
        };
        let dynamic = rtpmap.into_iter().filter(|(pt, _)| *pt >= 96);
        for (slot, (payload_type, clock_rate)) in value.rates.iter_mut().zip(dynamic) {
            *slot = PtClockRate {
                payload_type,
                _pad: [0; 3],
                clock_rate,
            };
        }
        value
    }

    /// The rate declared for `pt`, 0 for none (what
    /// [`crate::rtp::stream_clock_rate`] takes; a plain integer rather than
    /// an Option for the kernel's sake, see its `Arrival`).
    #[inline(always)]
    pub fn declared_rate(&self, pt: u8) -> u32 {
        let mut i = 0;
        while i < WATCHED_RATES {
            let r = self.rates[i];
            if r.clock_rate != 0 && r.payload_type == pt {
                return r.clock_rate;
            }
            i += 1;
        }
        0
    }
}

/// Per-stream figures.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    /// Bytes on the wire, from the Ethernet header.
    pub bytes: u64,
    /// Largest time between two consecutive packets.
    pub max_gap_ns: u64,
    pub seq: SeqState,
    pub jitter: JitterState,
    pub markers: u32,
    /// Comfort noise packets (PT 13).
    pub comfort_noise: u32,
    /// The latest payload type.
    pub payload_type: u8,
    /// The [`DetectorConfig::rates_generation`] the clock rate was taken at.
    pub rates_generation: u8,
    /// Talkspurts that resumed after suppressed silence (saturating): see
    /// [`FlowStats::resumes_talkspurt`].
    pub resumed_talkspurts: u16,
    /// RTP timestamp units between the last two packets that followed each
    /// other in sequence with one payload type (a packet's duration); 0
    /// until known.
    pub timestamp_step: u32,
    /// Sequence gaps: runs of lost packets, whose mean length tells bursty
    /// loss from random loss (the E-model's BurstR).
    pub loss_runs: u32,
    pub _pad: u32,
}
crate::assert_size!(FlowStats, 128);

/// The shortest arrival gap that counts as a pause before a resumed
/// talkspurt: longer than the packet interval of a steady voice stream
/// (10-60 ms), shorter than any silence a sender suppresses.
pub const MIN_SILENCE_PAUSE_NS: u64 = 100_000_000;

impl FlowStats {
    /// A stream's entry after its first RTP packet.
    #[inline(always)]
    pub fn first_rtp(h: &RtpHeader, wire_len: u32, now_ns: u64, clock_rate: u32) -> Self {
        Self {
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            packets: 1,
            bytes: wire_len as u64,
            max_gap_ns: 0,
            seq: SeqState::new(h.seq),
            jitter: JitterState::new(now_ns, h.timestamp, clock_rate),
            markers: h.marker as u32,
            comfort_noise: (h.payload_type == PT_COMFORT_NOISE) as u32,
            payload_type: h.payload_type,
            rates_generation: 0,
            resumed_talkspurts: 0,
            timestamp_step: 0,
            loss_runs: 0,
            _pad: 0,
        }
    }

    /// Whether the stream must take its clock rate again after this packet
    /// of payload type `pt`: the rates SDP declared changed since it was set
    /// (`generation` is the config's [`DetectorConfig::rates_generation`]),
    /// so a stream that began before its SDP was known gets the announced
    /// rate. Asked before the packet is recorded: a packet of another
    /// payload type than the one before it (an event, comfort noise) leaves
    /// it to the next one.
    #[inline(always)]
    pub fn rates_stale(&self, pt: u8, generation: u8) -> bool {
        self.rates_generation != generation && pt == self.payload_type
    }

    /// The stream's clock rate is now `rate`, as of `generation` (see
    /// [`FlowStats::rates_stale`]); the jitter estimate restarts from the
    /// last packet when the rate changes.
    #[inline(always)]
    pub fn take_clock_rate(&mut self, rate: u32, generation: u8) {
        self.rates_generation = generation;
        // Compared before a new state is made: that takes a division, and
        // at scale every stream is asked again whenever any call's SDP
        // declares rates.
        let capped = if rate > MAX_CLOCK_RATE {
            MAX_CLOCK_RATE
        } else {
            rate
        };
        if capped != self.jitter.clock_rate {
            let (arrival, timestamp) = (self.jitter.last_arrival_ns, self.jitter.last_timestamp);
            self.jitter = JitterState::new(arrival, timestamp, rate);
        }
    }

    /// Accounts one more RTP packet.
    #[inline(always)]
    pub fn record_rtp(&mut self, h: &RtpHeader, wire_len: u32, now_ns: u64) -> SeqEvent {
        let gap_ns = self.touch(wire_len, now_ns);
        self.markers += h.marker as u32;
        self.comfort_noise += (h.payload_type == PT_COMFORT_NOISE) as u32;
        let event = self.seq.update(h.seq, gap_ns);
        self.loss_runs += matches!(event, SeqEvent::Gap(_)) as u32;
        if event != SeqEvent::Duplicate {
            // Timestamps of different payload types (DTMF events, comfort
            // noise, a new codec) are not comparable: restart the reference.
            if h.payload_type == self.payload_type {
                let sent = match event {
                    SeqEvent::InOrder => 1,
                    SeqEvent::Gap(missing) => missing.saturating_add(1),
                    _ => 0,
                };
                let advance = h.timestamp.wrapping_sub(self.jitter.last_timestamp);
                self.follow_timestamp(sent, advance, gap_ns);
                self.jitter.update(now_ns, h.timestamp);
            } else {
                self.jitter.reseed(now_ns, h.timestamp);
            }
        }
        self.payload_type = h.payload_type;
        event
    }

    /// Whether a packet that came `gap_ns` after the previous one, `sent`
    /// sequence numbers on, with the timestamp `advance` units on, resumes
    /// a talkspurt after suppressed silence (RFC 3551 4.1, RFC 3389): the
    /// stream paused, and the sender's clock ran on while it sent nothing,
    /// so the timestamp advanced by more than the packets sent account for
    /// (by at least one packet more). Loss advances both together; a burst
    /// that never resumes, a duplicate, or a marker bit alone are no
    /// evidence. The marker, which such a packet should carry, is not
    /// required: senders omit it.
    #[inline(always)]
    pub fn resumes_talkspurt(&self, sent: u32, advance: u32, gap_ns: u64) -> bool {
        let step = self.timestamp_step as u64;
        sent != 0
            && step != 0
            && gap_ns >= MIN_SILENCE_PAUSE_NS
            && (advance as i32) > 0
            && advance as u64 > (sent as u64 + 1) * step
    }

    /// Counts a resumed talkspurt, else learns the packet duration from
    /// two packets in sequence.
    #[inline(always)]
    fn follow_timestamp(&mut self, sent: u32, advance: u32, gap_ns: u64) {
        if self.resumes_talkspurt(sent, advance, gap_ns) {
            self.resumed_talkspurts = self.resumed_talkspurts.saturating_add(1);
        } else if sent == 1 && (advance as i32) > 0 {
            self.timestamp_step = advance;
        }
    }

    /// An RTCP stream's entry after its first packet.
    #[inline(always)]
    pub fn first_rtcp(wire_len: u32, now_ns: u64) -> Self {
        Self {
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            packets: 1,
            bytes: wire_len as u64,
            ..Self::default()
        }
    }

    /// Accounts one more packet of a stream without sequence numbers (RTCP).
    #[inline(always)]
    pub fn record_rtcp(&mut self, wire_len: u32, now_ns: u64) {
        self.touch(wire_len, now_ns);
    }

    #[inline(always)]
    fn touch(&mut self, wire_len: u32, now_ns: u64) -> u64 {
        let gap_ns = now_ns.saturating_sub(self.last_seen_ns);
        if gap_ns > self.max_gap_ns {
            self.max_gap_ns = gap_ns;
        }
        if now_ns > self.last_seen_ns {
            self.last_seen_ns = now_ns;
        }
        self.packets += 1;
        self.bytes += wire_len as u64;
        gap_ns
    }

    /// Wireshark's "expected".
    pub const fn expected(&self) -> u32 {
        self.seq.expected()
    }

    /// Wireshark's "lost": expected − received (negative with duplicates).
    pub const fn lost(&self) -> i64 {
        self.seq.expected() as i64 - self.packets as i64
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowStats {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowSlot {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WatchedEndpoint {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PtClockRate {}

/// What one frame is, as far as the detector cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// Nothing to track: count it under this outcome counter.
    Skip(u32),
    /// SIP over UDP or TCP: copy it to userspace.
    Sip,
    /// A non-first IP fragment: copied too, since it may belong to a large
    /// SIP message that userspace reassembles.
    LaterFragment,
    Rtp {
        key: FlowKey,
        header: RtpHeader,
    },
    Rtcp {
        key: FlowKey,
    },
}

impl Inspection {
    /// The outcome counter this inspection is counted under.
    pub const fn outcome(&self) -> u32 {
        match self {
            Inspection::Skip(c) => *c,
            Inspection::Sip => counters::SIP,
            Inspection::LaterFragment => counters::FRAGMENT,
            Inspection::Rtp { .. } => counters::RTP,
            Inspection::Rtcp { .. } => counters::RTCP,
        }
    }
}

/// What the common case needs: Ethernet without VLAN tags, IPv4 without
/// options, UDP and the fixed RTP header.
pub const FAST_RTP_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_MIN + UDP_HEADER_LEN + RTP_HEADER_LEN;
const FAST_IP: usize = ETH_HEADER_LEN;
const FAST_UDP: usize = FAST_IP + IPV4_HEADER_MIN;
const FAST_RTP: usize = FAST_UDP + UDP_HEADER_LEN;

/// The common case of [`inspect_ethernet`], an RTP packet in an untagged
/// IPv4 frame without options, decided from one checked header; `None` for
/// anything else, which [`inspect_ethernet`] then decides. Where this returns
/// a key and header, [`inspect_ethernet`] returns the same as
/// `Inspection::Rtp` (tested frame by frame, and fuzzed).
///
/// The kernel runs it first: one bounds check instead of six, constant
/// offsets, and no IPv6 path to merge with, so the key's words stay in
/// registers (`cargo xtask bench` shows the difference).
#[inline(always)]
pub fn inspect_fast_rtp<P: PacketBytes + ?Sized>(
    p: &P,
    hook: u8,
    cfg: &DetectorConfig,
) -> Option<(FlowKey, RtpHeader)> {
    let h = p.header::<FAST_RTP_LEN>(0)?;
    if h.be16_at(12) != ETH_P_IPV4 || h.u8_at(FAST_IP) != 0x45 {
        return None;
    }
    // Fragments (more-fragments flag or an offset) take the long way.
    if h.u8_at(FAST_IP + 9) != IPPROTO_UDP || h.be16_at(FAST_IP + 6) & 0x3FFF != 0 {
        return None;
    }
    let (src_port, dst_port) = (h.be16_at(FAST_UDP), h.be16_at(FAST_UDP + 2));
    if !(cfg.is_rtp_port(src_port) || cfg.is_rtp_port(dst_port)) || cfg.is_sip(src_port, dst_port) {
        return None;
    }
    let total_len = h.be16_at(FAST_IP + 2) as usize;
    let udp_len = h.be16_at(FAST_UDP + 4) as usize;
    if total_len < IPV4_HEADER_MIN + UDP_HEADER_LEN || udp_len < UDP_HEADER_LEN {
        return None;
    }
    let payload_len = udp_payload_len(total_len - IPV4_HEADER_MIN, udp_len);
    let head = payload_head(&h, FAST_RTP);
    if classify(head, payload_len) != PayloadKind::Rtp {
        return None;
    }
    let ssrc = h.be32_at(FAST_RTP + 8);
    let key = FlowKey::ipv4(
        h.quad_at(FAST_IP + 12),
        h.quad_at(FAST_IP + 16),
        src_port,
        dst_port,
        ssrc,
        KIND_RTP,
        hook,
    );
    Some((key, rtp_header(head, ssrc)))
}

/// Decides what an Ethernet frame is: the one classification the kernel
/// programs and the offline analyser share. `watched` says whether an
/// endpoint learnt from SDP is tracked regardless of the port range.
#[inline(always)]
pub fn inspect_ethernet<P, W>(p: &P, hook: u8, cfg: &DetectorConfig, watched: W) -> Inspection
where
    P: PacketBytes + ?Sized,
    W: Fn(&EndpointKey) -> bool,
{
    match parse_ethernet(p) {
        Ok((_, l3)) => inspect_ip(p, l3, hook, cfg, watched),
        Err(e) => Inspection::Skip(parse_error_counter(e)),
    }
}

/// As [`inspect_ethernet`], for a frame whose IP header starts at `l3_offset`.
#[inline(always)]
pub fn inspect_ip<P, W>(
    p: &P,
    l3_offset: usize,
    hook: u8,
    cfg: &DetectorConfig,
    watched: W,
) -> Inspection
where
    P: PacketBytes + ?Sized,
    W: Fn(&EndpointKey) -> bool,
{
    let ip = match parse_ip(p, l3_offset) {
        Ok(ip) => ip,
        Err(e) => return Inspection::Skip(parse_error_counter(e)),
    };
    if ip.fragment == Fragment::Later {
        return Inspection::LaterFragment;
    }
    if ip.protocol == IPPROTO_TCP {
        return if cfg.is_sip(ip.src_port, ip.dst_port) {
            Inspection::Sip
        } else {
            Inspection::Skip(counters::NOT_UDP)
        };
    }
    if ip.protocol != IPPROTO_UDP {
        return Inspection::Skip(counters::NOT_UDP);
    }
    if cfg.is_sip(ip.src_port, ip.dst_port) {
        return Inspection::Sip;
    }
    if ip.fragment == Fragment::First {
        // Media is never fragmented; a fragmented datagram off the SIP
        // ports is not ours to account.
        return Inspection::Skip(counters::FRAGMENT);
    }
    let in_range = cfg.is_rtp_port(ip.src_port) || cfg.is_rtp_port(ip.dst_port);
    let announced = || is_watched(&ip.src, ip.src_port, &ip.dst, ip.dst_port, cfg, &watched);
    if !in_range && !announced() {
        return Inspection::Skip(counters::UDP_OTHER);
    }
    // The first two words decide RTP or RTCP; an RTP header's third is read
    // only then.
    let at = ip.payload_offset;
    let Some(first) = p.header::<8>(at) else {
        return Inspection::Skip(counters::UDP_OTHER);
    };
    let head = payload_head(&first, 0);
    let kind = match classify(head, ip.payload_len) {
        // Where SDP announced RTP, every valid header counts, whatever its
        // payload type (checked last: the map lookup costs).
        PayloadKind::RtpUnlistedType if announced() => PayloadKind::Rtp,
        kind => kind,
    };
    match kind {
        PayloadKind::Rtp => {
            let Some(fixed) = p.header::<RTP_HEADER_LEN>(at) else {
                return Inspection::Skip(counters::TRUNCATED);
            };
            let ssrc = fixed.be32_at(8);
            let mut key = stream_key(&ip, ssrc);
            key.set_tail(ip.ip_version, KIND_RTP, hook);
            Inspection::Rtp {
                key,
                header: rtp_header(head, ssrc),
            }
        }
        PayloadKind::Rtcp { ssrc } => {
            let mut key = stream_key(&ip, ssrc);
            key.set_tail(ip.ip_version, KIND_RTCP, hook);
            Inspection::Rtcp { key }
        }
        PayloadKind::NotRtp | PayloadKind::RtpUnlistedType => Inspection::Skip(counters::UDP_OTHER),
    }
}

/// The first 8 bytes of a UDP payload at `at` in `h`, what [`classify`]
/// decides on: read as two words, not byte by byte (see the packet module).
#[inline(always)]
fn payload_head<H: Header>(h: &H, at: usize) -> [u8; 8] {
    let (w0, w1) = (h.be32_at(at).to_be_bytes(), h.be32_at(at + 4).to_be_bytes());
    [w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3]]
}

/// A stream's key without its last word (see [`FlowKey::set_tail`]).
#[inline(always)]
fn stream_key(ip: &IpPacket, ssrc: u32) -> FlowKey {
    FlowKey {
        src_addr: ip.src,
        dst_addr: ip.dst,
        src_port: ip.src_port,
        dst_port: ip.dst_port,
        ssrc,
        ip_version: 0,
        kind: 0,
        hook: 0,
        _pad: [0; 5],
    }
}

/// The flow is to or from an endpoint the agent watches (learnt from SDP):
/// it belongs to a call, and a new flow of it that finds no slot goes to
/// the overflow map that is never evicted from ([`WATCHED_FLOWS_MAP`]).
#[inline(always)]
pub fn flow_is_watched<W: Fn(&EndpointKey) -> bool>(
    key: &FlowKey,
    cfg: &DetectorConfig,
    watched: W,
) -> bool {
    is_watched(
        &key.src_addr,
        key.src_port,
        &key.dst_addr,
        key.dst_port,
        cfg,
        watched,
    )
}

#[inline(always)]
fn is_watched<W: Fn(&EndpointKey) -> bool>(
    src: &[u8; 16],
    src_port: u16,
    dst: &[u8; 16],
    dst_port: u16,
    cfg: &DetectorConfig,
    watched: W,
) -> bool {
    if cfg.flags & crate::config::CONFIG_F_WATCHED == 0 {
        return false;
    }
    watched(&EndpointKey {
        addr: *dst,
        port: dst_port,
        _pad: [0; 2],
    }) || watched(&EndpointKey {
        addr: *src,
        port: src_port,
        _pad: [0; 2],
    })
}

#[inline(always)]
pub const fn parse_error_counter(e: ParseError) -> u32 {
    match e {
        ParseError::NotIp => counters::NOT_IP,
        ParseError::Truncated | ParseError::Malformed => counters::TRUNCATED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{packet::testpkt::ipv4_udp, rtp::stream_clock_rate};

    fn rtp(seq: u16, pt: u8) -> [u8; 172] {
        let mut p = [0u8; 172];
        p[0] = 0x80;
        p[1] = pt;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&0xCAFE_F00Du32.to_be_bytes());
        p
    }

    /// Frames the fast path takes, and what it must give for them.
    fn fast_path_frames() -> std::vec::Vec<std::vec::Vec<u8>> {
        let mut with_csrc = rtp(7, 0).to_vec();
        with_csrc[0] = 0x82;
        let mut marker_dynamic = rtp(65535, 111).to_vec();
        marker_dynamic[1] |= 0x80;
        std::vec![
            ipv4_udp(&[], [10, 0, 0, 1], [10, 0, 0, 2], 30000, 20000, &rtp(1, 8)),
            ipv4_udp(&[], [1; 4], [2; 4], 5000, 10000, &with_csrc),
            ipv4_udp(&[], [1; 4], [2; 4], 60000, 5000, &marker_dynamic),
            // The smallest RTP packet: a header and nothing behind it.
            ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtp(9, 0)[..12]),
        ]
    }

    /// Where the fast path decides, it decides as the full parser does.
    fn assert_fast_agrees(frame: &[u8], cfg: &DetectorConfig) -> bool {
        let none = |_: &EndpointKey| false;
        let Some((key, header)) = inspect_fast_rtp(frame, 1, cfg) else {
            return false;
        };
        assert_eq!(
            inspect_ethernet(frame, 1, cfg, none),
            Inspection::Rtp { key, header },
            "{frame:02x?}"
        );
        true
    }

    #[test]
    fn fast_path_takes_plain_ipv4_rtp_as_the_full_parser_does() {
        let cfg = DetectorConfig::default();
        for frame in fast_path_frames() {
            assert!(assert_fast_agrees(&frame, &cfg), "not taken: {frame:02x?}");
        }
    }

    #[test]
    fn fast_path_leaves_everything_else_to_the_full_parser() {
        let cfg = DetectorConfig::default();
        let mut fragment = ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtp(1, 8));
        fragment[20] = 0x20; // more fragments
        let mut options = ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtp(1, 8));
        options[14] = 0x46;
        let mut rtcp = rtp(1, 8);
        rtcp[1] = 200;
        let cases: &[(&str, std::vec::Vec<u8>)] = &[
            (
                "vlan",
                ipv4_udp(&[5], [1; 4], [2; 4], 30000, 20000, &rtp(1, 0)),
            ),
            ("fragment", fragment),
            ("ip options", options),
            ("rtcp", ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtcp)),
            (
                "below range",
                ipv4_udp(&[], [1; 4], [2; 4], 4000, 6000, &rtp(1, 8)),
            ),
            (
                "sip port",
                ipv4_udp(&[], [1; 4], [2; 4], 5060, 20000, &rtp(1, 8)),
            ),
            (
                "short",
                ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtp(1, 8)[..11]),
            ),
        ];
        for (name, frame) in cases {
            assert_eq!(inspect_fast_rtp(frame.as_slice(), 0, &cfg), None, "{name}");
        }
    }

    /// Every one-byte change to the headers of the fast path's frames (each
    /// bit flipped, and the values 0 and 0xFF), with the default and an
    /// all-ports configuration: where the fast path still takes the frame,
    /// the full parser gives the same key and header.
    #[test]
    fn fast_path_agrees_with_the_full_parser_under_mutation() {
        let all_ports = DetectorConfig {
            rtp_port_min: 1,
            rtp_port_max: u16::MAX,
            ..DetectorConfig::default()
        };
        let (mut taken, mut tried) = (0, 0);
        for cfg in [DetectorConfig::default(), all_ports] {
            for base in fast_path_frames() {
                for at in 0..FAST_RTP_LEN {
                    let values = (0..8).map(|bit| base[at] ^ (1 << bit)).chain([0, 0xFF]);
                    for value in values {
                        let mut frame = base.clone();
                        frame[at] = value;
                        tried += 1;
                        taken += assert_fast_agrees(&frame, &cfg) as u32;
                    }
                }
            }
        }
        // Payload bytes, addresses and ports mostly keep a frame on the fast
        // path; the rest must leave it.
        assert!(taken > tried / 4 && taken < tried, "{taken} of {tried}");
    }

    #[test]
    fn ipv4_key_is_the_field_by_field_key() {
        let built = FlowKey::ipv4(
            [192, 0, 2, 1],
            [198, 51, 100, 7],
            30000,
            40002,
            0xDEAD_BEEF,
            KIND_RTP,
            1,
        );
        let mut fields = FlowKey {
            src_addr: crate::packet::ipv4_mapped([192, 0, 2, 1]),
            dst_addr: crate::packet::ipv4_mapped([198, 51, 100, 7]),
            src_port: 30000,
            dst_port: 40002,
            ssrc: 0xDEAD_BEEF,
            ..FlowKey::default()
        };
        fields.set_tail(4, KIND_RTP, 1);
        assert_eq!(built, fields);
        assert_eq!(built.ip_version, 4);
        assert_eq!(built.hook, 1);
    }

    #[test]
    fn inspection_table() {
        let cfg = DetectorConfig::default();
        let none = |_: &EndpointKey| false;
        let cases: &[(&str, std::vec::Vec<u8>, u32)] = &[
            (
                "rtp in range",
                ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &rtp(1, 8)),
                counters::RTP,
            ),
            (
                "rtp below range",
                ipv4_udp(&[], [1; 4], [2; 4], 4000, 6000, &rtp(1, 8)),
                counters::UDP_OTHER,
            ),
            (
                "sip",
                ipv4_udp(
                    &[],
                    [1; 4],
                    [2; 4],
                    5060,
                    5060,
                    b"OPTIONS sip:a SIP/2.0\r\n",
                ),
                counters::SIP,
            ),
            (
                "rtcp mux",
                ipv4_udp(
                    &[],
                    [1; 4],
                    [2; 4],
                    30000,
                    20000,
                    &[0x80, 201, 0, 1, 0, 0, 0, 1],
                ),
                counters::RTCP,
            ),
            (
                "junk in range",
                ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, b"hello world!"),
                counters::UDP_OTHER,
            ),
            (
                "vlan rtp",
                ipv4_udp(&[5], [1; 4], [2; 4], 30000, 20000, &rtp(1, 0)),
                counters::RTP,
            ),
            ("arp", std::vec![0u8; 60], counters::NOT_IP),
        ];
        for (name, frame, want) in cases {
            assert_eq!(
                inspect_ethernet(frame.as_slice(), 0, &cfg, none).outcome(),
                *want,
                "{name}"
            );
        }
    }

    /// Issue 11: a softphone's first packet, a valid RTP header with a
    /// 1-byte payload and a payload type outside the static and dynamic
    /// lists, toward an endpoint its SDP announced. Wireshark counts it in
    /// the stream; so do the kernel's parser and the analyser. Elsewhere the
    /// payload type still keeps stray UDP out of the flow table.
    #[test]
    fn an_announced_endpoint_counts_every_valid_rtp_header() {
        // Ethernet, IPv4, UDP 30000 -> 20000, RTP: V=2, no marker, PT 77,
        // seq 1, timestamp 0, SSRC 0xCAFEF00D, one payload byte.
        let golden: [u8; 55] = [
            0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, // Ethernet
            0x45, 0, 0, 41, 0, 1, 0, 0, 64, 17, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, // IPv4
            0x75, 0x30, 0x4E, 0x20, 0, 21, 0, 0, // UDP
            0x80, 77, 0, 1, 0, 0, 0, 0, 0xCA, 0xFE, 0xF0, 0x0D, // RTP
            0xD5, // payload
        ];
        assert_eq!(
            golden[..],
            ipv4_udp(&[], [1; 4], [2; 4], 30000, 20000, &golden[42..])[..]
        );
        let mut cfg = DetectorConfig::default();
        cfg.flags |= crate::config::CONFIG_F_WATCHED;
        let announced = |k: &EndpointKey| k.port == 20000;
        let nowhere = |_: &EndpointKey| false;
        assert_eq!(inspect_fast_rtp(&golden[..], 0, &cfg), None);
        match inspect_ethernet(&golden[..], 0, &cfg, announced) {
            Inspection::Rtp { key, header } => {
                assert_eq!(
                    (key.ssrc, header.payload_type, header.seq),
                    (0xCAFE_F00D, 77, 1)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            inspect_ethernet(&golden[..], 0, &cfg, nowhere).outcome(),
            counters::UDP_OTHER
        );
        // With the marker, PT 77 reads as RTCP type 205: never RTP.
        let mut feedback = golden;
        feedback[43] = 0x80 | 77;
        assert_eq!(
            inspect_ethernet(&feedback[..], 0, &cfg, announced).outcome(),
            counters::UDP_OTHER
        );
        // A listed payload type with a 1-byte payload: RTP anywhere in range.
        let mut dynamic = golden;
        dynamic[43] = 0x80 | 111;
        assert!(assert_fast_agrees(&dynamic, &cfg));
    }

    #[test]
    fn watched_endpoint_outside_range_is_tracked() {
        let mut cfg = DetectorConfig::default();
        let frame = ipv4_udp(&[], [1; 4], [2; 4], 4000, 6000, &rtp(1, 8));
        let watch = |k: &EndpointKey| k.port == 6000;
        assert_eq!(
            inspect_ethernet(frame.as_slice(), 0, &cfg, watch).outcome(),
            counters::UDP_OTHER
        );
        cfg.flags |= crate::config::CONFIG_F_WATCHED;
        assert_eq!(
            inspect_ethernet(frame.as_slice(), 0, &cfg, watch).outcome(),
            counters::RTP
        );
    }

    #[test]
    fn stats_follow_a_stream() {
        let ms = 1_000_000u64;
        let h = |seq: u16, pt: u8, ts: u32| RtpHeader {
            marker: seq == 1,
            payload_type: pt,
            seq,
            timestamp: ts,
            ssrc: 1,
        };
        let mut st = FlowStats::first_rtp(&h(1, 8, 0), 214, 0, 8000);
        st.record_rtp(&h(2, 8, 160), 214, 20 * ms);
        st.record_rtp(&h(4, 8, 480), 214, 60 * ms);
        st.record_rtp(&h(5, 13, 640), 60, 1060 * ms);
        assert_eq!((st.packets, st.expected(), st.lost()), (4, 5, 1));
        assert_eq!(st.max_gap_ns, 1000 * ms);
        assert_eq!((st.markers, st.comfort_noise, st.payload_type), (1, 1, 13));
        assert_eq!(st.bytes, 214 * 3 + 60);
    }

    /// A fresh stream's entry after PCMU packets given as (arrival ms,
    /// sequence number, timestamp, marker).
    fn stream_of(packets: &[(u64, u16, u32, bool)]) -> FlowStats {
        let ms = 1_000_000u64;
        let h = |seq: u16, ts: u32, marker: bool| RtpHeader {
            marker,
            payload_type: 0,
            seq,
            timestamp: ts,
            ssrc: 1,
        };
        let (t0, seq0, ts0, m0) = packets[0];
        let mut st = FlowStats::first_rtp(&h(seq0, ts0, m0), 214, t0 * ms, 8000);
        for &(t, seq, ts, marker) in &packets[1..] {
            st.record_rtp(&h(seq, ts, marker), 214, t * ms);
        }
        st
    }

    /// Evidence of silence suppression is a stream that resumes after a
    /// pause with its timestamp advanced past the packets sent; what the
    /// one-way phone of issue 11 did is not.
    #[test]
    fn talkspurts_resume_only_when_the_senders_clock_ran_while_silent() {
        let talk = |from_ms: u64, seq: u16, ts: u32, n: u16| {
            (0..n).map(move |i| {
                (
                    from_ms + u64::from(i) * 20,
                    seq + i,
                    ts + 160 * u32::from(i),
                    i == 0,
                )
            })
        };
        // 1 s of talk, 2 s of suppressed silence, talk again with the
        // timestamp 2 s on and the marker set: one resumption.
        let vad: std::vec::Vec<_> = talk(0, 1, 0, 50)
            .chain(talk(3000, 51, 24_000, 50))
            .collect();
        assert_eq!(stream_of(&vad).resumed_talkspurts, 1);
        // The same without the marker (senders omit it): still one.
        let mut unmarked = vad.clone();
        unmarked[50].3 = false;
        assert_eq!(stream_of(&unmarked).resumed_talkspurts, 1);
        // A 2 s outage: 100 packets lost, sequence and timestamp advance
        // together. Loss, not silence suppression.
        let outage: std::vec::Vec<_> = talk(0, 1, 0, 50)
            .chain(talk(3000, 151, 24_000, 50))
            .collect();
        let st = stream_of(&outage);
        assert_eq!((st.resumed_talkspurts, st.lost()), (0, 100));
        // The phone that went quiet: its first packet twice with the
        // marker, the second marked too, 0.6 s of audio, then nothing.
        let mut phone = std::vec![(0, 1, 0, true), (5, 1, 0, true), (20, 2, 160, true)];
        phone.extend(talk(40, 3, 320, 30).map(|(t, s, ts, _)| (t, s, ts, false)));
        let st = stream_of(&phone);
        assert!(st.markers > 1, "markers alone were the old evidence");
        assert_eq!(st.resumed_talkspurts, 0);
        // A timestamp jump without a pause (a new source behind a mixer)
        // is not silence either.
        let jump: std::vec::Vec<_> = talk(0, 1, 0, 50)
            .chain(talk(1000, 51, 90_000, 50))
            .collect();
        assert_eq!(stream_of(&jump).resumed_talkspurts, 0);
    }

    /// A stream that began before its SDP was known takes the declared
    /// rate once the rates change (a new generation), from its next packet
    /// of its own payload type; the jitter estimate restarts at that rate.
    #[test]
    fn a_stream_takes_the_rate_sdp_declared_when_it_becomes_known() {
        let ms = 1_000_000u64;
        let h = |seq: u16, pt: u8| RtpHeader {
            marker: false,
            payload_type: pt,
            seq,
            timestamp: u32::from(seq) * 960,
            ssrc: 1,
        };
        // What the kernel and the analyser do per packet.
        let packet = |st: &mut FlowStats, seq: u16, pt: u8, generation: u8, declared: u32| {
            let stale = st.rates_stale(pt, generation);
            st.record_rtp(&h(seq, pt), 100, u64::from(seq) * 20 * ms);
            if stale {
                st.take_clock_rate(stream_clock_rate(pt, declared), generation);
            }
        };
        // Opus at 48 kHz, 20 ms packets, read at 8 kHz: jitter grows.
        let mut st = FlowStats::first_rtp(&h(0, 111), 100, 0, stream_clock_rate(111, 0));
        for seq in 1..20u16 {
            packet(&mut st, seq, 111, 0, 48000);
        }
        assert_eq!(st.jitter.clock_rate, 8000);
        assert!(st.jitter.jitter_ms() > 20.0, "{}", st.jitter.jitter_ms());
        let endpoint = WatchedEndpoint::new(7, [(0, 8000), (101, 8000), (111, 48000)]);
        assert_eq!(
            (endpoint.declared_rate(111), endpoint.declared_rate(0)),
            (48000, 0)
        );
        // A telephone event when the rates change does not decide.
        packet(&mut st, 20, 101, 1, endpoint.declared_rate(101));
        assert_eq!((st.rates_generation, st.jitter.clock_rate), (0, 8000));
        for seq in 21..40u16 {
            packet(&mut st, seq, 111, 1, endpoint.declared_rate(111));
        }
        assert_eq!((st.rates_generation, st.jitter.clock_rate), (1, 48000));
        assert_eq!(
            st.jitter.jitter_ms(),
            0.0,
            "perfect pacing at the right rate"
        );
    }

    fn media_key(i: u32) -> FlowKey {
        FlowKey {
            src_addr: crate::packet::ipv4_mapped([10, 0, (i >> 8) as u8, i as u8]),
            dst_addr: crate::packet::ipv4_mapped([192, 0, 2, 1]),
            src_port: 20000 + 2 * (i % 512) as u16,
            dst_port: 40000 + 2 * (i % 1000) as u16,
            ssrc: i.wrapping_mul(7919),
            ip_version: 4,
            kind: KIND_RTP,
            hook: (i % 2) as u8,
            _pad: [0; 5],
        }
    }

    #[test]
    fn keys_compare_by_every_byte() {
        let key = media_key(7);
        assert!(key.same(&key.clone()));
        for byte in 0..43 {
            let mut other = key;
            // SAFETY: test only; FlowKey is plain bytes.
            unsafe {
                (&mut other as *mut FlowKey)
                    .cast::<u8>()
                    .add(byte)
                    .write(0xAA)
            };
            assert!(!key.same(&other) && key != other, "byte {byte}");
        }
    }

    /// Fills a model of the flow table as the kernel does (first free slot
    /// of the key's window, else overflow) with `flows` media keys; returns
    /// how many overflowed.
    fn fill(layout: &FlowTableLayout, flows: u32) -> u32 {
        let mut used = std::vec![false; layout.slots as usize];
        let mut overflow = 0;
        for i in 0..flows {
            let hash = media_key(i).slot_hash(layout.capacity);
            assert!(hash < layout.capacity << FLOW_LOAD_SHIFT, "{i}: {hash}");
            match (0..FLOW_PROBES)
                .map(|p| probe_slot(hash, p))
                .find(|&s| !used[s as usize])
            {
                Some(s) => used[s as usize] = true,
                None => overflow += 1,
            }
        }
        overflow
    }

    /// Media servers' flows differ in few bits (one address, ports in steps
    /// of two, the hook): filled to capacity, the table of any size keeps
    /// nearly all of them within their probe windows, and the rest fit in
    /// the overflow map many times over (so no insert fails).
    #[test]
    fn similar_flows_fill_the_table_to_capacity() {
        for capacity in [DEFAULT_FLOW_TABLE_SIZE, 100_000, 20_000, 4096] {
            let layout = FlowTableLayout::new(capacity).unwrap();
            let overflow = fill(&layout, capacity);
            // Uniform hashing into 8 probes at load 1/2 overflows ~0.5 %.
            assert!(
                overflow * 100 < capacity,
                "{capacity}: {overflow} overflowed"
            );
            assert!(overflow * 10 < layout.overflow, "{capacity}: {overflow}");
        }
    }

    /// The runtime size is a plain number, not a power of two: every first
    /// slot is reachable, none is past the last, and the last probe of the
    /// last window is the table's last slot.
    #[test]
    fn first_slots_cover_a_table_of_any_size() {
        for capacity in [1, 3, 7, 1000, 65_537] {
            let layout = FlowTableLayout::new(capacity).unwrap();
            let first_slots = capacity << FLOW_LOAD_SHIFT;
            let mut hit = std::vec![false; first_slots as usize];
            for i in 0..first_slots * 32 {
                let hash = media_key(i).slot_hash(capacity);
                assert!(hash < first_slots, "{capacity}: {hash}");
                hit[hash as usize] = true;
            }
            assert!(
                hit.iter().all(|&h| h),
                "{capacity}: a first slot is never hit"
            );
            assert_eq!(
                probe_slot(first_slots - 1, FLOW_PROBES - 1),
                layout.slots - 1
            );
        }
        // The largest capacity's hash stays in range (no overflow of the
        // product): a hash of all ones scales to the last first slot.
        let max = FlowTableLayout::new(MAX_FLOW_TABLE_SIZE).unwrap();
        assert_eq!(
            ((u64::from(u32::MAX) * u64::from(MAX_FLOW_TABLE_SIZE)) >> (32 - FLOW_LOAD_SHIFT))
                as u32,
            (MAX_FLOW_TABLE_SIZE << FLOW_LOAD_SHIFT) - 1
        );
        assert_eq!(
            max.slots,
            (MAX_FLOW_TABLE_SIZE << FLOW_LOAD_SHIFT) + FLOW_PROBES - 1
        );
    }

    /// One key's first slot moves with the size: userspace and the kernel
    /// must hash with the same one (it travels in the config map).
    #[test]
    fn the_slot_depends_on_the_size() {
        let key = media_key(12345);
        let slots: std::vec::Vec<u32> = [1000, 1001, DEFAULT_FLOW_TABLE_SIZE]
            .iter()
            .map(|&c| key.slot_hash(c))
            .collect();
        assert!(slots[0] != slots[1] || slots[1] != slots[2], "{slots:?}");
        assert_eq!(key.slot_hash(1000), slots[0], "deterministic");
    }

    #[test]
    fn layouts() {
        assert_eq!(FlowTableLayout::new(0), None);
        assert_eq!(FlowTableLayout::new(MAX_FLOW_TABLE_SIZE + 1), None);
        let default = FlowTableLayout::new(DEFAULT_FLOW_TABLE_SIZE).unwrap();
        assert_eq!(
            (
                default.slots,
                default.overflow,
                default.watched_overflow,
                default.watched_endpoints
            ),
            (327_687, 10_240, DEFAULT_FLOW_TABLE_SIZE, 81_920)
        );
        assert_eq!(default.slot_bytes(), 327_687 * 184);
        let small = FlowTableLayout::new(100).unwrap();
        assert_eq!(
            (small.slots, small.overflow, small.watched_endpoints),
            (207, 1024, 1024)
        );
        assert_eq!(
            DetectorConfig::default().flow_table_size,
            DEFAULT_FLOW_TABLE_SIZE
        );
    }

    #[test]
    fn watched_flows_are_those_of_a_watched_endpoint_either_way() {
        let mut cfg = DetectorConfig::default();
        let key = media_key(3);
        let server = EndpointKey {
            addr: key.dst_addr,
            port: key.dst_port,
            _pad: [0; 2],
        };
        let watch = |k: &EndpointKey| *k == server;
        assert!(
            !flow_is_watched(&key, &cfg, watch),
            "flag off: not consulted"
        );
        cfg.flags |= crate::config::CONFIG_F_WATCHED;
        assert!(flow_is_watched(&key, &cfg, watch));
        let mut reverse = key;
        (reverse.src_addr, reverse.dst_addr) = (key.dst_addr, key.src_addr);
        (reverse.src_port, reverse.dst_port) = (key.dst_port, key.src_port);
        assert!(flow_is_watched(&reverse, &cfg, watch));
        assert!(!flow_is_watched(&media_key(4), &cfg, watch));
    }
}
