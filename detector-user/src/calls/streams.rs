//! The JSON view of a stream, shared by `detector analyze` and `/api/flows`.

use std::net::IpAddr;

use detector_common::{
    counters::{HOOK_TC, HOOK_XDP},
    flow::{FlowKey, FlowStats},
    packet::ip_addr,
};
use serde::{Deserialize, Serialize};

/// Which way a live flow crossed the monitored interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by the host (XDP).
    Ingress,
    /// Sent by the host (TC egress).
    Egress,
}

impl Direction {
    pub fn from_hook(hook: u8) -> Option<Self> {
        match hook {
            HOOK_XDP => Some(Self::Ingress),
            HOOK_TC => Some(Self::Egress),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// One RTP stream's figures. Field names are a contract (README, tests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// `0x%08X`.
    pub ssrc: String,
    /// The latest payload type.
    pub payload_type: u8,
    pub packets: u64,
    pub expected: u64,
    /// Wireshark's lost: expected − received, negative with duplicates.
    pub lost: i64,
    pub duplicates: u32,
    pub out_of_order: u32,
    pub first_epoch: f64,
    pub last_epoch: f64,
    pub max_gap_ms: f64,
    pub jitter_ms: f64,
    pub bytes: u64,
    pub markers: u32,
    pub comfort_noise: u32,
    /// Talkspurts resumed after suppressed silence: evidence of VAD.
    #[serde(default)]
    pub resumed_talkspurts: u16,
    pub seq_restarts: u32,
    pub seq_jumps: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub direction: Option<Direction>,
}

impl StreamRecord {
    /// Builds the record; `time` turns the stats' clock into Unix seconds.
    pub fn new(key: &FlowKey, st: &FlowStats, time: TimeBase) -> Self {
        let to_epoch = |ns| time.epoch(ns);
        Self {
            src: ip_addr(key.src_addr, key.ip_version),
            sport: key.src_port,
            dst: ip_addr(key.dst_addr, key.ip_version),
            dport: key.dst_port,
            ssrc: format!("0x{:08X}", key.ssrc),
            payload_type: st.payload_type,
            packets: st.packets,
            expected: u64::from(st.expected()),
            lost: st.lost(),
            duplicates: st.seq.duplicates,
            out_of_order: st.seq.out_of_order,
            first_epoch: round6(to_epoch(st.first_seen_ns)),
            last_epoch: round6(to_epoch(st.last_seen_ns)),
            max_gap_ms: round3(st.max_gap_ns as f64 / 1e6),
            jitter_ms: round3(st.jitter.jitter_ms()),
            bytes: st.bytes,
            markers: st.markers,
            comfort_noise: st.comfort_noise,
            resumed_talkspurts: st.resumed_talkspurts,
            seq_restarts: st.seq.restarts,
            seq_jumps: st.seq.jumps,
            direction: match time {
                TimeBase::Capture => None,
                TimeBase::Live { .. } => Direction::from_hook(key.hook),
            },
        }
    }

    /// Lost packets as a percentage of expected (0 when nothing is expected).
    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }
}

/// What the flows' nanosecond clock is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeBase {
    /// A capture's timestamps: Unix nanoseconds.
    Capture,
    /// The kernel's monotonic clock, read at `mono_ns` together with the
    /// real-time clock at `real_ns`; flows have a direction on the interface.
    Live { mono_ns: u64, real_ns: u64 },
}

impl TimeBase {
    /// Unix seconds.
    pub fn epoch(self, ns: u64) -> f64 {
        match self {
            Self::Capture => ns as f64 / 1e9,
            Self::Live { mono_ns, real_ns } => {
                let real = i128::from(real_ns) + (i128::from(ns) - i128::from(mono_ns));
                real as f64 / 1e9
            }
        }
    }

    /// Unix seconds to the microsecond, as records show them.
    pub fn epoch_rounded(self, ns: u64) -> f64 {
        round6(self.epoch(ns))
    }
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

pub(crate) fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}
