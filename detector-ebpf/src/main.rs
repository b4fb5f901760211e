//! XDP (ingress) and TC (egress) programs that account every RTP stream and
//! copy SIP and RTCP to userspace. Both always pass the packet: a monitor must never
//! harm media.
#![no_std]
#![no_main]
// Inline asm for the flow table's atomics (see atomic.rs); aya-ebpf enables
// the same feature.
#![feature(asm_experimental_arch)]

mod access;
mod atomic;

use access::{Frame, Tc, Xdp};
use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_PIPE},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use detector_common::{
    config::DetectorConfig,
    counters::{self, HOOK_TC, HOOK_XDP},
    flow::{
        flow_is_watched, inspect_ethernet, inspect_fast_rtp, probe_slot, EndpointKey, FlowKey,
        FlowSlot, FlowStats, FlowTableLayout, Inspection, WatchedEndpoint, DEFAULT_FLOW_TABLE_SIZE,
        FLOW_PROBES, SLOT_CLAIMED, SLOT_FREE, SLOT_LIVE,
    },
    rtcp::{RtcpFrame, RTCP_RING_BYTES, RTCP_SNAPLEN},
    rtp::{stream_clock_rate, RtpHeader},
    sip::{SipFrame, SIP_RING_BYTES, SIP_SNAPLEN},
};

const EEXIST: i32 = 17;
/// Where the benchmark's frame (Ethernet, IPv4 without options, UDP) has its
/// RTP header, and its timestamp step (20 ms at 8 kHz).
const BENCH_RTP_OFFSET: usize = 14 + 20 + 8;
const BENCH_RTP_TICKS: u32 = 160;

/// The flow maps' sizes in the object; the agent sets them for the
/// configured capacity when it loads the object (and writes that capacity
/// into the config map, which the programs hash with).
const DEFAULT_LAYOUT: FlowTableLayout = match FlowTableLayout::new(DEFAULT_FLOW_TABLE_SIZE) {
    Some(layout) => layout,
    None => panic!("the default flow table size is valid"),
};

// Map names must match the constants in detector_common (checked by a
// userspace test against the built object).
#[map(name = "FLOW_SLOTS")]
static FLOW_SLOTS: Array<FlowSlot> =
    Array::with_max_entries(DEFAULT_LAYOUT.slots, BPF_F_MMAPABLE as u32);

#[map(name = "WATCHED_FLOWS")]
static WATCHED_FLOWS: HashMap<FlowKey, FlowStats> =
    HashMap::with_max_entries(DEFAULT_LAYOUT.watched_overflow, BPF_F_NO_PREALLOC as u32);

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(DEFAULT_LAYOUT.overflow, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNTERS_LEN, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<DetectorConfig> = Array::with_max_entries(1, 0);

#[map(name = "WATCHED")]
static WATCHED: HashMap<EndpointKey, WatchedEndpoint> =
    HashMap::with_max_entries(DEFAULT_LAYOUT.watched_endpoints, BPF_F_NO_PREALLOC as u32);

#[map(name = "SIP_RING")]
static SIP_RING: RingBuf = RingBuf::with_byte_size(SIP_RING_BYTES, 0);

#[map(name = "RTCP_RING")]
static RTCP_RING: RingBuf = RingBuf::with_byte_size(RTCP_RING_BYTES, 0);

#[xdp]
pub fn detector_xdp(ctx: XdpContext) -> u32 {
    track(&Xdp::new(&ctx), HOOK_XDP);
    XDP_PASS
}

#[classifier]
pub fn detector_tc(ctx: TcContext) -> i32 {
    track(&Tc::new(&ctx), HOOK_TC);
    // PIPE hands the packet on to any other classifier, and then it leaves.
    TC_ACT_PIPE
}

/// Does nothing but pass: the baseline `cargo xtask bench` compares against.
#[xdp]
pub fn baseline_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// As [`baseline_xdp`], for TC.
#[classifier]
pub fn baseline_tc(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

/// Reads the clock and passes: shows in `cargo xtask bench` what the one
/// `bpf_ktime_get_ns` per RTP packet costs on this machine.
#[xdp]
pub fn baseline_ktime_xdp(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now == 0 {
        return XDP_PASS;
    }
    XDP_PASS
}

/// `cargo xtask bench` only: the detector's XDP program, then the frame's
/// RTP sequence number and timestamp advanced in place. BPF_PROG_TEST_RUN
/// repeats a program over one frame (changes persist), so the repeats are
/// successive packets of one stream, in order, instead of duplicates.
#[xdp]
pub fn bench_in_order_xdp(ctx: XdpContext) -> u32 {
    let frame = Xdp::new(&ctx);
    track(&frame, HOOK_XDP);
    frame.advance_rtp(BENCH_RTP_OFFSET, BENCH_RTP_TICKS);
    XDP_PASS
}

/// As [`bench_in_order_xdp`], for the TC program.
#[classifier]
pub fn bench_in_order_tc(ctx: TcContext) -> i32 {
    let frame = Tc::new(&ctx);
    track(&frame, HOOK_TC);
    frame.advance_rtp(BENCH_RTP_OFFSET, BENCH_RTP_TICKS);
    TC_ACT_PIPE
}

/// The baseline for [`bench_in_order_xdp`]: only advances the frame.
#[xdp]
pub fn bench_advance_xdp(ctx: XdpContext) -> u32 {
    Xdp::new(&ctx).advance_rtp(BENCH_RTP_OFFSET, BENCH_RTP_TICKS);
    XDP_PASS
}

/// The baseline for [`bench_in_order_tc`].
#[classifier]
pub fn bench_advance_tc(ctx: TcContext) -> i32 {
    Tc::new(&ctx).advance_rtp(BENCH_RTP_OFFSET, BENCH_RTP_TICKS);
    TC_ACT_PIPE
}

#[inline(always)]
fn track<F: Frame>(frame: &F, hook: u8) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    let size = cfg.flow_table_size;
    if let Some((key, header)) = inspect_fast_rtp(frame, hook, cfg) {
        count(hook, counters::RTP);
        return track_rtp(frame, &key, &header, hook, size);
    }
    // SAFETY: a plain lookup; the value is not kept.
    let watched = |k: &EndpointKey| unsafe { WATCHED.get(k).is_some() };
    let inspection = inspect_ethernet(frame, hook, cfg, watched);
    count(hook, inspection.outcome());
    match inspection {
        Inspection::Rtp { key, header } => track_rtp(frame, &key, &header, hook, size),
        Inspection::Rtcp { key } => {
            track_rtcp(&key, hook, frame.wire_len(), size);
            copy_rtcp(frame, hook);
        }
        Inspection::Sip | Inspection::LaterFragment => copy_sip(frame, hook),
        Inspection::Skip(_) => {}
    }
}

#[inline(always)]
fn track_rtp<F: Frame>(frame: &F, key: &FlowKey, header: &RtpHeader, hook: u8, size: u32) {
    let packet = RtpPacket {
        wire_len: frame.wire_len(),
        header: *header,
    };
    account(key, hook, &packet, size);
}

/// Not inlined: RTCP is one packet every few seconds per stream, and as a
/// path of its own LLVM cannot merge it with the RTP path (see [`Arrival`]).
#[inline(never)]
fn track_rtcp(key: &FlowKey, hook: u8, wire_len: u32, size: u32) {
    account(key, hook, &RtcpPacket { wire_len }, size);
}

/// A packet as its flow entry records it.
///
/// Two types rather than one with an optional RTP header: LLVM merges the
/// RTP and RTCP paths and fills the header RTCP does not use from whatever
/// register is at hand (a pointer, say), which the verifier rejects.
///
/// The arrival time is an argument, read only once the flow's slot is found:
/// then little is live across the clock helper call (which clobbers the
/// argument registers), so little is spilled to the stack around it.
trait Arrival: Copy {
    fn record(&self, key: &FlowKey, stats: &mut FlowStats, now: u64);
    /// The entry of a new flow that starts with this packet.
    fn first(&self, key: &FlowKey, now: u64) -> FlowStats;
}

#[derive(Clone, Copy)]
struct RtpPacket {
    wire_len: u32,
    header: RtpHeader,
}

impl Arrival for RtpPacket {
    #[inline(always)]
    fn record(&self, key: &FlowKey, stats: &mut FlowStats, now: u64) {
        // Read here, not carried from the start, and the rate taken after
        // the packet is recorded, so little is live across the parser or
        // the call (the programs' stack is at its limit).
        let pt = self.header.payload_type;
        let generation = rates_generation();
        let stale = stats.rates_stale(pt, generation);
        stats.record_rtp(&self.header, self.wire_len, now);
        if stale {
            // The destination's address as the key's words, not the key
            // by reference: that would keep the key in memory on the hot
            // path, where it lives in registers.
            let words = key.words();
            let pt_generation = u16::from_ne_bytes([pt, generation]);
            refresh_clock_rate(stats, words[2], words[3], key.dst_port, pt_generation);
        }
    }

    #[inline(always)]
    fn first(&self, key: &FlowKey, now: u64) -> FlowStats {
        let pt = self.header.payload_type;
        let dst = EndpointKey {
            addr: key.dst_addr,
            port: key.dst_port,
            _pad: [0; 2],
        };
        let rate = stream_clock_rate(pt, declared_rate(&dst, pt));
        let mut stats = FlowStats::first_rtp(&self.header, self.wire_len, now, rate);
        stats.rates_generation = rates_generation();
        stats
    }
}

#[derive(Clone, Copy)]
struct RtcpPacket {
    wire_len: u32,
}

impl Arrival for RtcpPacket {
    #[inline(always)]
    fn record(&self, _key: &FlowKey, stats: &mut FlowStats, now: u64) {
        stats.record_rtcp(self.wire_len, now);
    }

    #[inline(always)]
    fn first(&self, _key: &FlowKey, now: u64) -> FlowStats {
        FlowStats::first_rtcp(self.wire_len, now)
    }
}

/// The packet's arrival time.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The stream toward `dst_addr` (two words of the key) and `dst_port`
/// takes its clock rate again: the rates SDP declared changed since it was
/// set. `pt_generation` holds the payload type and the config's
/// `rates_generation` (a BPF function has five arguments). Not inlined: it
/// runs once per stream and change, and inlined its stack space would be
/// every packet's (the programs' stack is at its limit).
#[inline(never)]
fn refresh_clock_rate(
    stats: &mut FlowStats,
    dst_addr_high: u64,
    dst_addr_low: u64,
    dst_port: u16,
    pt_generation: u16,
) {
    let [pt, generation] = pt_generation.to_ne_bytes();
    let (high, low) = (dst_addr_high.to_ne_bytes(), dst_addr_low.to_ne_bytes());
    let dst = EndpointKey {
        addr: [
            high[0], high[1], high[2], high[3], high[4], high[5], high[6], high[7], low[0], low[1],
            low[2], low[3], low[4], low[5], low[6], low[7],
        ],
        port: dst_port,
        _pad: [0; 2],
    };
    stats.take_clock_rate(stream_clock_rate(pt, declared_rate(&dst, pt)), generation);
}

/// The config's `rates_generation`: which clock rates SDP declared.
#[inline(always)]
fn rates_generation() -> u8 {
    CONFIG.get(0).map_or(0, |c| c.rates_generation)
}

/// The clock rate the receiver (`dst`) declared in its SDP for payload
/// type `pt` (0: none, or no endpoint watched); `stream_clock_rate`
/// derives the stream's rate from it.
#[inline(always)]
fn declared_rate(dst: &EndpointKey, pt: u8) -> u32 {
    let watching = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & detector_common::config::CONFIG_F_WATCHED != 0);
    if !watching {
        return 0;
    }
    // Plain integers with 0 for "unknown" rather than Options: LLVM may
    // store a None's undefined payload from any register (see Arrival).
    // SAFETY: a plain lookup; the value is copied out.
    unsafe { WATCHED.get(dst) }
        .map(|w| w.declared_rate(pt))
        .unwrap_or(0)
}

/// Where a key's flow is in the flow table, or where it could go.
enum Probe {
    Found(*mut FlowStats),
    Missing {
        /// The first free slot in the key's probe window (null: none).
        vacant: *mut FlowSlot,
        /// A slot in the window is being filled by another CPU: possibly
        /// with this very flow.
        busy: bool,
    },
}

/// Probes the key's window in a flow table of `size` flows
/// (`DetectorConfig::flow_table_size`).
#[inline(always)]
fn probe(key: &FlowKey, size: u32) -> Probe {
    let hash = key.slot_hash(size);
    let mut vacant: *mut FlowSlot = core::ptr::null_mut();
    let mut busy = false;
    let mut i = 0;
    while i < FLOW_PROBES {
        if let Some(slot) = FLOW_SLOTS.get_ptr_mut(probe_slot(hash, i)) {
            // SAFETY: array values live as long as the map; the state is read
            // once (volatile: another CPU or the agent may change it).
            let state = unsafe { core::ptr::read_volatile(&(*slot).state) };
            if state == SLOT_LIVE {
                // SAFETY: as above; a key is written before its slot goes live.
                if unsafe { (*slot).key.same(key) } {
                    // SAFETY: as above.
                    return Probe::Found(unsafe { &mut (*slot).stats });
                }
            } else if state == SLOT_FREE {
                if vacant.is_null() {
                    vacant = slot;
                }
            } else {
                busy = true;
            }
        }
        i += 1;
    }
    Probe::Missing { vacant, busy }
}

/// Finds the key's flow and records the packet, or creates the flow.
#[inline(always)]
fn account<A: Arrival>(key: &FlowKey, hook: u8, arrival: &A, size: u32) {
    match probe(key, size) {
        // SAFETY: see the concurrency note in detector_common::flow.
        Probe::Found(stats) => arrival.record(key, unsafe { &mut *stats }, now()),
        // By value: the copies are made here, on the cold path, so the hot
        // path keeps the key and packet in registers.
        Probe::Missing { vacant, busy } => not_in_table(*key, hook, *arrival, vacant, busy),
    }
}

/// A packet whose flow is not in the flow table: it is in an overflow map,
/// or new. A new flow goes into the free slot of its probe window, else into
/// an overflow map: [`WATCHED_FLOWS`] for flows of watched endpoints (never
/// evicted), [`FLOWS`] (an LRU) for the others, so unrelated traffic can
/// only push out unrelated traffic.
///
/// A slot is claimed with a compare-and-swap (free -> claimed), filled, and
/// published by an exchange (-> live), so two CPUs never fill one slot and a
/// reader that sees it live sees its key. A flow that went to an overflow
/// map stays there (it is looked up there before any slot is claimed).
///
/// Not inlined: the hot path (an established flow) stays small, and the new
/// entry's stack space is this function's, not the programs'. (It reads the
/// config again rather than take it: a BPF function has five arguments.)
#[inline(never)]
fn not_in_table<A: Arrival>(key: FlowKey, hook: u8, arrival: A, vacant: *mut FlowSlot, busy: bool) {
    let (key, arrival) = (&key, &arrival);
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    let now = now();
    if let Some(stats) = WATCHED_FLOWS.get_ptr_mut(key) {
        // SAFETY: as in account.
        return arrival.record(key, unsafe { &mut *stats }, now);
    }
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in account.
        return arrival.record(key, unsafe { &mut *stats }, now);
    }
    if busy {
        // Another CPU is inserting into this window, perhaps this flow:
        // inserting it again could split it in two.
        count(hook, counters::FLOW_INSERT_FAILED);
        return;
    }
    if vacant.is_null() {
        count(hook, counters::FLOW_OVERFLOW);
        let watched = is_watched(key, cfg);
        return insert_overflow(key, &arrival.first(key, now), watched, hook, arrival, now);
    }
    // SAFETY: a slot of the flow table; its state word is 8-aligned (the
    // first field of an array value).
    let state = unsafe { &raw mut (*vacant).state };
    // SAFETY: as above.
    if !unsafe { atomic::compare_and_swap(state, SLOT_FREE, SLOT_CLAIMED) } {
        count(hook, counters::FLOW_INSERT_FAILED);
        return;
    }
    // SAFETY: this CPU owns the claimed slot until it publishes it.
    unsafe {
        (*vacant).key = *key;
        (*vacant).stats = arrival.first(key, now);
        atomic::publish(state, SLOT_LIVE);
    }
    count(hook, counters::FLOW_CREATED);
}

/// Inserts a new flow into an overflow map: a flow of a watched endpoint
/// into [`WATCHED_FLOWS`], else (or if that is full) into the LRU [`FLOWS`].
/// If another CPU inserted it first, this packet is recorded into that entry
/// instead. An insert fails only when every place is full.
#[inline(always)]
fn insert_overflow<A: Arrival>(
    key: &FlowKey,
    stats: &FlowStats,
    watched: bool,
    hook: u8,
    arrival: &A,
    now: u64,
) {
    if watched {
        match WATCHED_FLOWS.insert(key, stats, BPF_NOEXIST as u64) {
            Ok(()) => return count(hook, counters::FLOW_CREATED),
            Err(e) if e == -EEXIST => {
                if let Some(existing) = WATCHED_FLOWS.get_ptr_mut(key) {
                    // SAFETY: as in account.
                    arrival.record(key, unsafe { &mut *existing }, now);
                }
                return;
            }
            // Full: the LRU is better than nothing.
            Err(_) => {}
        }
    }
    match FLOWS.insert(key, stats, BPF_NOEXIST as u64) {
        Ok(()) => count(hook, counters::FLOW_CREATED),
        Err(e) if e == -EEXIST => {
            if let Some(existing) = FLOWS.get_ptr_mut(key) {
                // SAFETY: as in account.
                arrival.record(key, unsafe { &mut *existing }, now);
            }
        }
        Err(_) => count(hook, counters::FLOW_INSERT_FAILED),
    }
}

/// The flow is to or from an endpoint the agent watches (a call's, from
/// its SDP). Asked only of new flows that found no slot.
#[inline(always)]
fn is_watched(key: &FlowKey, cfg: &DetectorConfig) -> bool {
    // SAFETY: a plain lookup; the value is not kept.
    flow_is_watched(key, cfg, |k| unsafe { WATCHED.get(k).is_some() })
}

#[inline(always)]
fn copy_sip<F: Frame>(frame: &F, hook: u8) {
    let Some(mut entry) = SIP_RING.reserve::<SipFrame>(0) else {
        count(hook, counters::SIP_RING_FULL);
        return;
    };
    let wire_len = frame.wire_len();
    let mut len = wire_len;
    if len > SIP_SNAPLEN {
        len = SIP_SNAPLEN;
        count(hook, counters::SIP_TRUNCATED);
    }
    // The volatile read hides the clamp from LLVM, so the mask survives
    // optimisation and the verifier sees len <= SIP_SNAPLEN on the register
    // it passes to the helper.
    // SAFETY: reads a local.
    let len = unsafe { core::ptr::read_volatile(&len) } & SIP_SNAPLEN;
    let out = entry.as_mut_ptr();
    // SAFETY: `out` points at a reserved SipFrame; only plain integers are written.
    unsafe {
        (*out).ts_ns = bpf_ktime_get_ns();
        (*out).wire_len = wire_len;
        (*out).hook = hook;
        let copied = len > 0 && frame.copy_to((*out).data.as_mut_ptr(), len);
        (*out).captured_len = if copied { len } else { 0 };
    }
    entry.submit(0);
}

/// Copies an RTCP frame for the agent to read its reports (RTCP is rare:
/// one packet every few seconds per stream; the RTP path never comes here).
#[inline(always)]
fn copy_rtcp<F: Frame>(frame: &F, hook: u8) {
    let Some(mut entry) = RTCP_RING.reserve::<RtcpFrame>(0) else {
        count(hook, counters::RTCP_RING_FULL);
        return;
    };
    let wire_len = frame.wire_len();
    let len = if wire_len > RTCP_SNAPLEN {
        RTCP_SNAPLEN
    } else {
        wire_len
    };
    // As in copy_sip: the mask must survive for the verifier.
    // SAFETY: reads a local.
    let len = unsafe { core::ptr::read_volatile(&len) } & RTCP_SNAPLEN;
    let out = entry.as_mut_ptr();
    // SAFETY: `out` points at a reserved RtcpFrame; only plain integers are written.
    unsafe {
        (*out).ts_ns = bpf_ktime_get_ns();
        (*out).wire_len = wire_len;
        (*out).hook = hook;
        let copied = len > 0 && frame.copy_to((*out).data.as_mut_ptr(), len);
        (*out).captured_len = if copied { len } else { 0 };
    }
    entry.submit(0);
}

#[inline(always)]
fn count(hook: u8, counter: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counters::index(hook, counter)) {
        // SAFETY: per-CPU slot, no other writer.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
