//! XDP (ingress) and TC (egress) programs that account every RTP stream and
//! copy SIP to userspace. Both always pass the packet: a monitor must never
//! harm media.
#![no_std]
#![no_main]

mod access;

use access::{Frame, Tc, Xdp};
use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_NOEXIST, TC_ACT_PIPE},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use detector_common::{
    config::{DetectorConfig, CLOCK_RATES_LEN},
    counters::{self, HOOK_TC, HOOK_XDP},
    flow::{
        inspect_ethernet, EndpointKey, FlowKey, FlowStats, Inspection, WatchedEndpoint,
        FLOWS_CAPACITY, WATCHED_CAPACITY,
    },
    rtp::{default_clock_rate, RtpHeader},
    sip::{SipFrame, SIP_RING_BYTES, SIP_SNAPLEN},
};

const EEXIST: i32 = 17;

// Map names must match the constants in detector_common (checked by a
// userspace test against the built object).
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNTERS_LEN, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<DetectorConfig> = Array::with_max_entries(1, 0);

#[map(name = "CLOCK_RATES")]
static CLOCK_RATES: Array<u32> = Array::with_max_entries(CLOCK_RATES_LEN, 0);

#[map(name = "WATCHED")]
static WATCHED: HashMap<EndpointKey, WatchedEndpoint> =
    HashMap::with_max_entries(WATCHED_CAPACITY, 0);

#[map(name = "SIP_RING")]
static SIP_RING: RingBuf = RingBuf::with_byte_size(SIP_RING_BYTES, 0);

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

#[inline(always)]
fn track<F: Frame>(frame: &F, hook: u8) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    // SAFETY: a plain lookup; the value is not kept.
    let watched = |k: &EndpointKey| unsafe { WATCHED.get(k).is_some() };
    let inspection = inspect_ethernet(frame, hook, cfg, watched);
    count(hook, inspection.outcome());
    match inspection {
        Inspection::Rtp { key, header } => track_rtp(frame, &key, &header, hook),
        Inspection::Rtcp { key } => track_rtcp(frame, &key, hook),
        Inspection::Sip | Inspection::LaterFragment => copy_sip(frame, hook),
        Inspection::Skip(_) => {}
    }
}

#[inline(always)]
fn track_rtp<F: Frame>(frame: &F, key: &FlowKey, header: &RtpHeader, hook: u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let wire_len = frame.wire_len();
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the map value stays valid for this program run; see the
        // concurrency note in detector_common::flow.
        unsafe { (*stats).record_rtp(header, wire_len, now) };
        return;
    }
    let pt = header.payload_type;
    // The receiver's SDP names dynamic payload types' rates; else the
    // agent's table; else RFC 3551's.
    let declared = if cfg_watches() {
        let dst = EndpointKey { addr: key.dst_addr, port: key.dst_port, _pad: [0; 2] };
        // SAFETY: a plain lookup; the value is copied out.
        unsafe { WATCHED.get(&dst) }.and_then(|w| w.clock_rate(pt))
    } else {
        None
    };
    let rate = match (declared, CLOCK_RATES.get(pt as u32)) {
        (Some(rate), _) => rate,
        (None, Some(&rate)) if rate != 0 => rate,
        _ => default_clock_rate(pt),
    };
    let stats = FlowStats::first_rtp(header, wire_len, now, rate);
    insert_flow(key, &stats, hook, |s| {
        s.record_rtp(header, wire_len, now);
    });
}

#[inline(always)]
fn cfg_watches() -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & detector_common::config::CONFIG_F_WATCHED != 0)
}

#[inline(always)]
fn track_rtcp<F: Frame>(frame: &F, key: &FlowKey, hook: u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let wire_len = frame.wire_len();
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in track_rtp.
        unsafe { (*stats).record_rtcp(wire_len, now) };
        return;
    }
    insert_flow(key, &FlowStats::first_rtcp(wire_len, now), hook, |s| s.record_rtcp(wire_len, now));
}

/// Inserts a new flow. If another CPU inserted it first, this packet is
/// recorded into that entry instead.
#[inline(always)]
fn insert_flow(key: &FlowKey, stats: &FlowStats, hook: u8, record: impl FnOnce(&mut FlowStats)) {
    match FLOWS.insert(key, stats, BPF_NOEXIST as u64) {
        Ok(()) => count(hook, counters::FLOW_CREATED),
        Err(e) if e == -EEXIST => {
            if let Some(existing) = FLOWS.get_ptr_mut(key) {
                // SAFETY: as in track_rtp.
                record(unsafe { &mut *existing });
            }
        }
        Err(_) => count(hook, counters::FLOW_INSERT_FAILED),
    }
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
