//! Per-CPU outcome counters, indexed `hook * COUNTERS_PER_HOOK + counter`.
//!
//! Every packet increments exactly one outcome ([`OUTCOMES`]), so packets
//! seen are their sum (one map update per packet, not two); events
//! ([`SIP_TRUNCATED`] and later) count what happened to the monitor itself,
//! so capture loss is never mistaken for network loss.

pub const COUNTERS_MAP: &str = "COUNTERS";

/// XDP, on the monitored interface's ingress.
pub const HOOK_XDP: u8 = 0;
/// TC clsact, on the monitored interface's egress.
pub const HOOK_TC: u8 = 1;
pub const HOOKS: u32 = 2;

pub const NOT_IP: u32 = 0;
pub const TRUNCATED: u32 = 1;
/// IP fragments other than the first (no transport header to look at).
pub const FRAGMENT: u32 = 2;
/// IP but neither UDP nor a TCP SIP segment.
pub const NOT_UDP: u32 = 3;
pub const SIP: u32 = 4;
pub const RTP: u32 = 5;
pub const RTCP: u32 = 6;
/// UDP that is neither SIP nor RTP/RTCP in range.
pub const UDP_OTHER: u32 = 7;
/// A SIP packet longer than the ring buffer's snapshot: the copy is cut.
pub const SIP_TRUNCATED: u32 = 8;
/// The ring buffer was full: a SIP packet was not copied.
pub const SIP_RING_FULL: u32 = 9;
/// New flow entries created.
pub const FLOW_CREATED: u32 = 10;
/// A new flow could not be inserted: the overflow map refused it, or its
/// first packet raced another CPU inserting a flow into the same slots (that
/// packet is not accounted).
pub const FLOW_INSERT_FAILED: u32 = 11;
/// New flows whose probed flow-table slots were all taken, kept in the
/// overflow map instead (a little slower per packet, and evictable).
pub const FLOW_OVERFLOW: u32 = 12;
/// The RTCP ring buffer was full: an RTCP packet was counted but not copied.
pub const RTCP_RING_FULL: u32 = 13;
pub const COUNTERS_PER_HOOK: u32 = 14;
pub const COUNTERS_LEN: u32 = HOOKS * COUNTERS_PER_HOOK;

/// The per-packet outcomes, in index order, with the names metrics use.
pub const OUTCOMES: [(u32, &str); 8] = [
    (NOT_IP, "not_ip"),
    (TRUNCATED, "truncated"),
    (FRAGMENT, "fragment"),
    (NOT_UDP, "not_udp"),
    (SIP, "sip"),
    (RTP, "rtp"),
    (RTCP, "rtcp"),
    (UDP_OTHER, "udp_other"),
];

/// Counters of what happened to the monitor itself, with their names.
pub const EVENTS: [(u32, &str); 6] = [
    (SIP_TRUNCATED, "sip_truncated"),
    (SIP_RING_FULL, "sip_ring_full"),
    (FLOW_CREATED, "flow_created"),
    (FLOW_INSERT_FAILED, "flow_insert_failed"),
    (FLOW_OVERFLOW, "flow_overflow"),
    (RTCP_RING_FULL, "rtcp_ring_full"),
];

/// Packets seen on one hook: the sum of its outcomes.
pub fn packets(per_hook: &[u64]) -> u64 {
    OUTCOMES
        .iter()
        .map(|&(i, _)| per_hook.get(i as usize).copied().unwrap_or(0))
        .sum()
}

#[inline(always)]
pub const fn index(hook: u8, counter: u32) -> u32 {
    hook as u32 * COUNTERS_PER_HOOK + counter
}
