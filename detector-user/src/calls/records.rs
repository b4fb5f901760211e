//! Calls as people and programs read them: streams, per-direction media
//! summary, flag timeline and the bucket. The same objects come out of
//! `detector analyze --json`, `GET /api/calls` and the `--calls-log` lines.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{
    detect::{Flag, FlagKind},
    streams::StreamRecord,
    Call, CallDirection, Side,
};

/// A stream as listed inside its call.
#[derive(Clone, Debug, Serialize)]
pub struct CallStream {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ssrc: String,
    pub direction: CallDirection,
    pub packets: u64,
    pub lost: i64,
    pub jitter_ms: f64,
}

/// One direction's media over the call.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MediaSummary {
    pub packets: u64,
    pub lost: i64,
    pub jitter_ms: f64,
    pub max_gap_ms: f64,
    /// Seconds from the last RTP packet to the end of the call (or to now
    /// while it is up); `null` when none ever came.
    pub silent_s: Option<f64>,
    /// RTCP is not media, but its liveness tells a dead endpoint from a
    /// silent one: RTCP packets this way, and when the last one came.
    pub rtcp_packets: u64,
    pub rtcp_last_epoch: Option<f64>,
}

/// A call with everything known about it.
#[derive(Clone, Debug, Serialize)]
pub struct CallReport {
    #[serde(flatten)]
    pub call: Arc<Call>,
    pub streams: Vec<CallStream>,
    pub media: BTreeMap<CallDirection, MediaSummary>,
    pub flags: Vec<Flag>,
    /// How long before the end the first flag still open at the end was raised.
    pub flagged_before_end_s: Option<f64>,
    pub bucket: Option<&'static str>,
}

impl CallReport {
    /// Builds the report at `now` (the end for ended calls) from the call's
    /// RTP streams and RTCP flows, each with its direction in the call.
    pub fn new(
        call: Arc<Call>,
        flags: Vec<Flag>,
        streams: &[(StreamRecord, CallDirection)],
        rtcp: &[(StreamRecord, CallDirection)],
        now: f64,
    ) -> Self {
        let until = call.end_epoch.unwrap_or(now);
        let mut media: BTreeMap<CallDirection, MediaSummary> = BTreeMap::new();
        for direction in [CallDirection::CallerToCallee, CallDirection::CalleeToCaller] {
            let mut summary = MediaSummary::default();
            let mut last: Option<f64> = None;
            for (s, _) in streams.iter().filter(|(_, d)| *d == direction) {
                summary.packets += s.packets;
                summary.lost += s.lost;
                summary.jitter_ms = summary.jitter_ms.max(s.jitter_ms);
                summary.max_gap_ms = summary.max_gap_ms.max(s.max_gap_ms);
                last = Some(last.map_or(s.last_epoch, |l: f64| l.max(s.last_epoch)));
            }
            summary.silent_s = last.map(|l| ((until - l).max(0.0) * 1e3).round() / 1e3);
            for (s, _) in rtcp.iter().filter(|(_, d)| *d == direction) {
                summary.rtcp_packets += s.packets;
                summary.rtcp_last_epoch = Some(
                    summary
                        .rtcp_last_epoch
                        .map_or(s.last_epoch, |l: f64| l.max(s.last_epoch)),
                );
            }
            media.insert(direction, summary);
        }
        let first_open = flags
            .iter()
            .filter(|f| f.cleared_epoch.is_none())
            .min_by(|a, b| a.flagged_epoch.total_cmp(&b.flagged_epoch));
        let flagged_before_end_s = call
            .end_epoch
            .zip(first_open)
            .map(|(end, f)| ((end - f.flagged_epoch) * 1e3).round() / 1e3);
        Self {
            bucket: bucket(&call, &flags),
            streams: streams
                .iter()
                .map(|(s, direction)| CallStream {
                    src: s.src,
                    sport: s.sport,
                    dst: s.dst,
                    dport: s.dport,
                    ssrc: s.ssrc.clone(),
                    direction: *direction,
                    packets: s.packets,
                    lost: s.lost,
                    jitter_ms: s.jitter_ms,
                })
                .collect(),
            media,
            flags,
            flagged_before_end_s,
            call,
        }
    }

    /// Has a flag that is still open.
    pub fn flagged(&self) -> bool {
        self.flags.iter().any(|f| f.cleared_epoch.is_none())
    }
}

/// Every bucket a call can end in.
pub const BUCKETS: [&str; 7] = [
    "caller_hung_up_after_answer",
    "caller_hung_up_before_answer",
    "callee_or_system_ended",
    "rtp_timeout",
    "one_way_audio",
    "sip_error",
    "ended_without_bye",
];

/// Why a call ended, in the operators' taxonomy (bounded label values).
/// `flags` are the detector's flags for the call: a silence or one-way flag
/// still open at the end names the cause.
pub fn bucket(call: &Call, flags: &[Flag]) -> Option<&'static str> {
    let end = call.end.as_ref()?;
    let open = |kind| {
        flags
            .iter()
            .any(|f| f.kind == kind && f.cleared_epoch.is_none())
    };
    let rtp_timeout_reason = end.reasons.iter().any(|r| {
        r.cause == Some(408) && r.protocol.eq_ignore_ascii_case("SIP")
            || r.text
                .as_deref()
                .is_some_and(|t| t.to_ascii_lowercase().contains("rtp timeout"))
    });
    Some(match end.method.as_str() {
        "EXPIRED" => "ended_without_bye",
        "CANCEL" => "caller_hung_up_before_answer",
        "INVITE" => match end.status {
            Some(487) => "caller_hung_up_before_answer",
            Some(400..=699) => "sip_error",
            _ => "callee_or_system_ended",
        },
        _ if rtp_timeout_reason || open(FlagKind::RtpTimeout) => "rtp_timeout",
        _ if open(FlagKind::OneWay) => "one_way_audio",
        _ => match (call.ended_by, call.answer_epoch) {
            (Some(Side::Caller), Some(_)) => "caller_hung_up_after_answer",
            (Some(Side::Caller), None) => "caller_hung_up_before_answer",
            _ => "callee_or_system_ended",
        },
    })
}
