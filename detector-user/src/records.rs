//! Calls as people and programs read them: streams, per-direction media
//! summary, flag timeline and the bucket. The same objects come out of
//! `detector analyze --json`, `GET /api/calls` and the `--calls-log` lines.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{
    calls::{bucket, Call, CallState},
    correlate::{correlate, CallDirection},
    detect::{CallDetector, Flag, FlagEvent, StreamFigures},
    flows::StreamRecord,
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
    pub call: Call,
    pub streams: Vec<CallStream>,
    pub media: BTreeMap<CallDirection, MediaSummary>,
    pub flags: Vec<Flag>,
    /// How long before the end the first flag still open at the end was raised.
    pub flagged_before_end_s: Option<f64>,
    pub bucket: Option<&'static str>,
}

impl CallReport {
    /// Builds the report at `now` (the end for ended calls).
    pub fn new(
        call: Call,
        flags: Vec<Flag>,
        streams: &[(&StreamRecord, CallDirection)],
        rtcp: &[(&StreamRecord, CallDirection)],
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

/// The reports of `calls` at `now`: each with the streams and RTCP that
/// belong to it, and the flags `flags_of` gives.
pub fn reports(
    calls: &[Call],
    streams: &[StreamRecord],
    rtcp: &[StreamRecord],
    now: f64,
    mut flags_of: impl FnMut(&Call) -> Vec<Flag>,
) -> Vec<CallReport> {
    calls
        .iter()
        .zip(streams_by_call(calls, streams))
        .zip(rtcp_by_call(calls, rtcp))
        .map(|((call, mine), control)| {
            CallReport::new(call.clone(), flags_of(call), &mine, &control, now)
        })
        .collect()
}

/// Each call's streams and their direction in it.
pub fn streams_by_call<'a>(
    calls: &[Call],
    streams: &'a [StreamRecord],
) -> Vec<Vec<(&'a StreamRecord, CallDirection)>> {
    let mut per_call = vec![Vec::new(); calls.len()];
    for (stream, matches) in streams.iter().zip(correlate(calls, streams)) {
        for m in matches {
            per_call[m.call].push((stream, m.direction));
        }
    }
    per_call
}

/// Each call's RTCP flows: on the RTP port (rtcp-mux) or the next one.
pub fn rtcp_by_call<'a>(
    calls: &[Call],
    rtcp: &'a [StreamRecord],
) -> Vec<Vec<(&'a StreamRecord, CallDirection)>> {
    let mut per_call = vec![Vec::new(); calls.len()];
    let on_rtp_port: Vec<StreamRecord> = rtcp
        .iter()
        .map(|s| StreamRecord {
            sport: s.sport.saturating_sub(1),
            dport: s.dport.saturating_sub(1),
            ..s.clone()
        })
        .collect();
    let muxed = correlate(calls, rtcp);
    let paired = correlate(calls, &on_rtp_port);
    for ((stream, mux), pair) in rtcp.iter().zip(muxed).zip(paired) {
        for m in if mux.is_empty() { pair } else { mux } {
            per_call[m.call].push((stream, m.direction));
        }
    }
    per_call
}

/// Runs detection on every answered call at `now`.
pub fn evaluate(
    detector: &mut CallDetector,
    calls: &[Call],
    streams: &[StreamRecord],
    now: f64,
) -> Vec<FlagEvent> {
    let confirmed: Vec<Call> = calls
        .iter()
        .filter(|c| c.state == CallState::Confirmed)
        .cloned()
        .collect();
    if confirmed.is_empty() {
        return Vec::new();
    }
    let mut events = Vec::new();
    for (call, mine) in confirmed.iter().zip(streams_by_call(&confirmed, streams)) {
        let figures: Vec<StreamFigures> = mine.iter().map(|(s, d)| figures(s, *d)).collect();
        events.extend(detector.evaluate(call, &figures, now));
    }
    events
}

fn figures(s: &StreamRecord, direction: CallDirection) -> StreamFigures {
    StreamFigures {
        direction,
        packets: s.packets,
        expected: s.expected,
        lost: s.lost,
        first_epoch: s.first_epoch,
        last_epoch: s.last_epoch,
        max_gap_s: s.max_gap_ms / 1e3,
        comfort_noise: s.comfort_noise,
        markers: s.markers,
    }
}
