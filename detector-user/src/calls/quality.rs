//! Voice quality per call direction: what the far end reports over RTCP,
//! and the E-model's MOS (`detector_common::emodel`).
//!
//! - **Far end.** Every RTCP report block says how a receiver hears one
//!   source (SSRC). A direction's far-end view is the latest block its
//!   receiver sent about its stream: the stream's SSRC, sent from the
//!   stream's destination address. That is the only view of loss on the way
//!   from the media server to the phone, which the server's egress cannot see.
//!   The round trip comes from LSR/DLSR (RFC 3550 6.4.1) when the sender
//!   report the block names was seen: the time between that SR and the
//!   block, as the monitor saw them, less the receiver's hold time (DLSR).
//! - **MOS.** Ppl is the larger of the loss our own sequence accounting
//!   sees (what reached the monitor) and the loss the far end reports (what
//!   reached the receiver); BurstR comes from our own loss runs (1 when the
//!   far end's figure is the larger: a fraction says nothing of bursts);
//!   the delay is half the largest round trip known for the call, else
//!   [`emodel::DEFAULT_ONE_WAY_DELAY_MS`]. Per window (the loss window):
//!   the live MOS (`mos_last`, at the end the last sample), its minimum
//!   (`mos_min`) and `poor_quality`; over the call: `mos` and `r_factor`.

use std::collections::VecDeque;

use detector_common::{
    emodel,
    flow::{FlowKey, FlowStats},
    rtcp::{Compound, Packet, ReportBlock},
};
use serde::Serialize;

use super::{CallDirection, FastMap};

/// A far-end report older than this no longer speaks for the window (three
/// of RFC 3550's minimum 5 s report intervals).
pub const FAR_END_FRESH_S: f64 = 15.0;
/// Reports and sender reports unheard of this long are forgotten.
pub const RTCP_FORGET_S: f64 = 600.0;
/// Sources whose latest report is kept, and senders whose SRs are, at most
/// (memory bound).
pub const MAX_REPORTED_SOURCES: usize = 200_000;
/// Sender reports remembered per source, to match LSR against.
const SENDER_REPORTS_KEPT: usize = 4;
/// Packets that must have been expected in a window for its MOS to count.
pub const MOS_MIN_EXPECTED: u64 = 50;

/// The latest report a receiver sent about one source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    pub block: ReportBlock,
    /// When it was seen (Unix seconds).
    pub at: f64,
    /// Reports about this source from this receiver so far.
    pub reports: u32,
    /// The round trip, from the latest block whose SR was seen.
    pub rtt_ms: Option<f64>,
}

/// What RTCP has told so far: the latest report about each source, and the
/// sender reports that later blocks name.
#[derive(Debug, Default)]
pub struct RtcpReports {
    /// By (reportee SSRC, reporter address).
    latest: FastMap<(u32, [u8; 16]), Report>,
    /// By sender SSRC: (NTP middle 32 bits, when seen), newest last.
    sent: FastMap<u32, VecDeque<(u32, f64)>>,
    /// RTCP packets read, and those that were not a valid compound (SRTCP,
    /// damage): counted for liveness only.
    pub packets: u64,
    pub undecodable: u64,
}

impl RtcpReports {
    /// Reads one RTCP packet (a UDP payload) sent from `reporter` and seen at
    /// `at` (Unix seconds). Returns whether it was a valid compound.
    pub fn on_packet(&mut self, reporter: [u8; 16], payload: &[u8], at: f64) -> bool {
        self.packets += 1;
        let Ok(compound) = Compound::parse(payload) else {
            self.undecodable += 1;
            return false;
        };
        for packet in compound.packets() {
            if let Packet::SenderReport(sr) = packet {
                if self.sent.len() >= MAX_REPORTED_SOURCES && !self.sent.contains_key(&sr.ssrc) {
                    continue;
                }
                let seen = self.sent.entry(sr.ssrc).or_default();
                if seen.len() == SENDER_REPORTS_KEPT {
                    seen.pop_front();
                }
                seen.push_back((sr.ntp_middle(), at));
            }
        }
        for (_, block) in compound.report_blocks() {
            let rtt_ms = self.round_trip_ms(&block, at);
            let key = (block.ssrc, reporter);
            if let Some(report) = self.latest.get_mut(&key) {
                report.block = block;
                report.at = at;
                report.reports += 1;
                report.rtt_ms = rtt_ms.or(report.rtt_ms);
            } else if self.latest.len() < MAX_REPORTED_SOURCES {
                self.latest.insert(
                    key,
                    Report {
                        block,
                        at,
                        reports: 1,
                        rtt_ms,
                    },
                );
            }
        }
        true
    }

    /// RFC 3550 6.4.1: arrival − LSR − DLSR, with the SR's arrival as the
    /// monitor saw it standing in for its NTP time.
    fn round_trip_ms(&self, block: &ReportBlock, at: f64) -> Option<f64> {
        if block.lsr == 0 {
            return None;
        }
        let &(_, sr_at) = self
            .sent
            .get(&block.ssrc)?
            .iter()
            .rev()
            .find(|(middle, _)| *middle == block.lsr)?;
        let rtt_s = at - sr_at - f64::from(block.dlsr) / 65536.0;
        (rtt_s >= 0.0).then(|| (rtt_s * 1e6).round() / 1e3)
    }

    /// The latest report about `ssrc` sent from `reporter`.
    pub fn latest(&self, ssrc: u32, reporter: [u8; 16]) -> Option<&Report> {
        self.latest.get(&(ssrc, reporter))
    }

    /// No report is known (no lookups needed: the common case at scale
    /// when phones send no RTCP).
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Forgets what was last heard before `now − RTCP_FORGET_S`.
    pub fn expire(&mut self, now: f64) {
        let horizon = now - RTCP_FORGET_S;
        self.latest.retain(|_, r| r.at >= horizon);
        self.sent
            .retain(|_, seen| seen.back().is_some_and(|(_, at)| *at >= horizon));
    }
}

/// A direction's far-end view, as records show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FarEnd {
    /// Reports received about the direction's streams.
    pub reports: u32,
    /// The latest report's fraction lost, in percent.
    pub fraction_lost_pct: f64,
    /// Cumulative lost as the receiver counts it (summed over the
    /// direction's streams).
    pub cumulative_lost: i64,
    /// The latest report's interarrival jitter, in ms (the stream's clock rate).
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    /// When the latest report was seen (not serialised: for freshness).
    #[serde(skip)]
    pub at: f64,
    /// The receiver's loss over the call in percent, from the cumulative
    /// count and the highest sequence number it reported.
    #[serde(skip)]
    pub call_loss_pct: f64,
}

/// The far-end view of a direction whose RTP streams are `streams`.
pub fn far_end<'a>(
    rtcp: &RtcpReports,
    streams: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
) -> Option<FarEnd> {
    if rtcp.is_empty() {
        return None;
    }
    let mut view: Option<FarEnd> = None;
    let (mut lost, mut expected) = (0i64, 0i64);
    for (key, stats) in streams {
        let Some(report) = rtcp.latest(key.ssrc, key.dst_addr) else {
            continue;
        };
        let block = report.block;
        let clock_rate = stats.jitter.clock_rate.max(1);
        // The receiver's expected count: ours, less the packets sent after
        // the highest it had received (both sides' sequence numbers agree in
        // their low 16 bits; their cycle counts need not); ours if that
        // makes no sense.
        let ours = i64::from(stats.expected());
        let behind = i64::from(stats.seq.highest.wrapping_sub(block.highest_seq) & 0xFFFF);
        expected += if behind < ours { ours - behind } else { ours };
        lost += i64::from(block.cumulative_lost);
        let latest = FarEnd {
            reports: report.reports,
            fraction_lost_pct: round3(block.fraction_lost_pct()),
            cumulative_lost: i64::from(block.cumulative_lost),
            jitter_ms: round3(f64::from(block.jitter) * 1000.0 / f64::from(clock_rate)),
            rtt_ms: report.rtt_ms,
            at: report.at,
            call_loss_pct: 0.0,
        };
        view = Some(match view {
            None => latest,
            Some(mut v) => {
                v.reports += latest.reports;
                v.cumulative_lost += latest.cumulative_lost;
                if latest.at >= v.at {
                    v.fraction_lost_pct = latest.fraction_lost_pct;
                    v.jitter_ms = latest.jitter_ms;
                    v.at = latest.at;
                    v.rtt_ms = latest.rtt_ms.or(v.rtt_ms);
                }
                v
            }
        });
    }
    view.map(|mut v| {
        v.call_loss_pct = if expected > 0 {
            (lost.max(0) as f64 * 100.0 / expected as f64).min(100.0)
        } else {
            0.0
        };
        v
    })
}

/// A direction's quality, as records show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quality {
    /// MOS and R over the call so far; `None` without media.
    pub mos: Option<f64>,
    /// The lowest window MOS.
    pub mos_min: Option<f64>,
    /// The latest window MOS: the live view, and at the end the last sample.
    pub mos_last: Option<f64>,
    pub r_factor: Option<f64>,
    pub far_end: Option<FarEnd>,
    /// The latest window's MOS (not serialised: the live view's figure,
    /// which `poor_quality` watches).
    #[serde(skip)]
    pub window_mos: Option<f64>,
}

/// Loss figures summed over a direction's streams.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LossTotals {
    expected: u64,
    lost: i64,
    runs: u64,
}

impl LossTotals {
    fn of<'a>(streams: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>) -> (Self, Option<u8>) {
        let mut totals = Self::default();
        // The codec of the stream with the most packets.
        let mut main: Option<(u64, u8)> = None;
        for (_, s) in streams {
            totals.expected += u64::from(s.expected());
            totals.lost += s.lost();
            totals.runs += u64::from(s.loss_runs);
            if main.is_none_or(|(packets, _)| s.packets > packets) {
                main = Some((s.packets, s.payload_type));
            }
        }
        (totals, main.map(|(_, pt)| pt))
    }

    /// Loss in percent and BurstR over `self − before`.
    fn loss_since(&self, before: &Self) -> Option<(f64, f64)> {
        let expected = self.expected.checked_sub(before.expected)?;
        if expected == 0 {
            return None;
        }
        let lost = u64::try_from(self.lost - before.lost).unwrap_or(0);
        let runs = self.runs.saturating_sub(before.runs);
        let pct = (lost as f64 * 100.0 / expected as f64).min(100.0);
        Some((pct, emodel::burst_ratio(lost, runs, expected)))
    }
}

/// One direction's window state.
#[derive(Debug, Default)]
struct DirectionWindow {
    samples: VecDeque<(f64, LossTotals)>,
    mos_min: Option<f64>,
    /// The latest window that had enough media to rate.
    mos_last: Option<f64>,
}

/// Per-call quality state.
#[derive(Debug, Default)]
pub struct CallQuality {
    directions: [DirectionWindow; 2],
    /// What the latest evaluation found, per direction.
    pub latest: [Quality; 2],
}

fn slot(direction: CallDirection) -> usize {
    usize::from(direction == CallDirection::CalleeToCaller)
}

impl CallQuality {
    /// The window minimums and the latest figures, without the samples
    /// (what a record needs).
    pub fn snapshot(&self) -> Self {
        Self {
            directions: [0, 1].map(|i| DirectionWindow {
                samples: VecDeque::new(),
                mos_min: self.directions[i].mos_min,
                mos_last: self.directions[i].mos_last,
            }),
            latest: self.latest.clone(),
        }
    }

    /// Evaluates both directions at `now`, window included: `streams(d)`
    /// lists direction d's RTP streams; `window_s` is the MOS window.
    pub fn evaluate<'a, I>(
        &mut self,
        rtcp: &RtcpReports,
        streams: impl Fn(CallDirection) -> I,
        window_s: f64,
        now: f64,
    ) -> &[Quality; 2]
    where
        I: Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    {
        self.latest = self.assess(rtcp, streams, Some(window_s), now);
        &self.latest
    }

    /// The figures over the call at `now` (a record's), with the windows'
    /// minimum so far; the windows are left as they are.
    pub fn summary<'a, I>(
        &mut self,
        rtcp: &RtcpReports,
        streams: impl Fn(CallDirection) -> I,
        now: f64,
    ) -> [Quality; 2]
    where
        I: Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    {
        self.assess(rtcp, streams, None, now)
    }

    fn assess<'a, I>(
        &mut self,
        rtcp: &RtcpReports,
        streams: impl Fn(CallDirection) -> I,
        window_s: Option<f64>,
        now: f64,
    ) -> [Quality; 2]
    where
        I: Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    {
        let far: [Option<FarEnd>; 2] = CallDirection::BOTH.map(|d| far_end(rtcp, streams(d)));
        // The path's round trip: the largest either direction's reports gave.
        let rtt_ms = far
            .iter()
            .flatten()
            .filter_map(|f| f.rtt_ms)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        let one_way_ms = rtt_ms.map_or(emodel::DEFAULT_ONE_WAY_DELAY_MS, |r| r / 2.0);
        CallDirection::BOTH.map(|direction| {
            let (totals, payload_type) = LossTotals::of(streams(direction));
            let far_end = far[slot(direction)].clone();
            let window = &mut self.directions[slot(direction)];
            if let Some(window_s) = window_s {
                window.samples.push_back((now, totals));
                while window.samples.len() > 1 && window.samples[0].0 < now - window_s {
                    window.samples.pop_front();
                }
            }
            let Some(payload_type) = payload_type else {
                return Quality {
                    far_end,
                    ..Quality::default()
                };
            };
            let codec = emodel::codec(payload_type, None);
            let rate = |own: Option<(f64, f64)>, far: Option<f64>| -> Option<f64> {
                let (own_pct, burst_r) = own?;
                let (pct, burst_r) = match far {
                    Some(far_pct) if far_pct > own_pct => (far_pct, 1.0),
                    _ => (own_pct, burst_r),
                };
                Some(emodel::r_factor(&codec, pct, burst_r, one_way_ms))
            };
            let mut window_mos = None;
            if window_s.is_some() {
                let fresh_far = far_end
                    .as_ref()
                    .filter(|f| now - f.at <= FAR_END_FRESH_S)
                    .map(|f| f.fraction_lost_pct);
                let start = window.samples[0].1;
                if totals.expected.saturating_sub(start.expected) >= MOS_MIN_EXPECTED {
                    window_mos =
                        rate(totals.loss_since(&start), fresh_far).map(|r| round3(emodel::mos(r)));
                }
                if let Some(m) = window_mos {
                    window.mos_min = Some(window.mos_min.map_or(m, |min: f64| min.min(m)));
                    window.mos_last = Some(m);
                }
            }
            let call_r = rate(
                totals.loss_since(&LossTotals::default()),
                far_end.as_ref().map(|f| f.call_loss_pct),
            );
            let mos = call_r.map(|r| round3(emodel::mos(r)));
            Quality {
                mos,
                // A call too short for a window still has its one figure.
                mos_min: window.mos_min.or(mos),
                mos_last: window.mos_last,
                r_factor: call_r.map(round3),
                far_end,
                window_mos,
            }
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use detector_common::{flow::KIND_RTP, rtp::RtpHeader};

    use super::*;

    const PHONE: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 2];
    const SERVER: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 1];

    /// An SR from `ssrc` with NTP time `msw.lsw`, no blocks.
    fn sender_report(ssrc: u32, msw: u32, lsw: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        for w in [ssrc, msw, lsw, 0, 0, 0] {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p
    }

    /// An RR from `reporter` with one block about `ssrc`.
    fn receiver_report(reporter: u32, block: &ReportBlock) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&reporter.to_be_bytes());
        let lost =
            (u32::from(block.fraction_lost) << 24) | (block.cumulative_lost as u32 & 0xFF_FFFF);
        for w in [
            block.ssrc,
            lost,
            block.highest_seq,
            block.jitter,
            block.lsr,
            block.dlsr,
        ] {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p
    }

    /// A stream from the server to the phone: `packets` in order from
    /// sequence 1000, with `lost` of them missing in `runs` gaps.
    fn stream(ssrc: u32, packets: u16, gaps: &[u16]) -> (FlowKey, FlowStats) {
        let key = FlowKey {
            src_addr: SERVER,
            dst_addr: PHONE,
            src_port: 20000,
            dst_port: 30000,
            ssrc,
            kind: KIND_RTP,
            ..FlowKey::default()
        };
        let header = |seq: u16| RtpHeader {
            marker: false,
            payload_type: 0,
            seq,
            timestamp: u32::from(seq) * 160,
            ssrc,
        };
        let mut stats = FlowStats::first_rtp(&header(1000), 214, 0, 8000);
        let mut seq = 1000;
        for i in 1..packets {
            seq += 1 + gaps.iter().filter(|&&g| g == i).count() as u16;
            stats.record_rtp(&header(seq), 214, u64::from(i) * 20_000_000);
        }
        (key, stats)
    }

    #[test]
    fn far_end_view_with_round_trip() {
        let mut rtcp = RtcpReports::default();
        // The server's SR at t = 100.0 s, NTP middle 0x0001_8000.
        assert!(rtcp.on_packet(SERVER, &sender_report(0xAA, 1, 0x8000_0000), 100.0));
        // The phone reports 25 % lost, 40 cumulative, jitter 80 units
        // (10 ms at 8 kHz), having held the SR 0.5 s; seen at 100.62 s:
        // RTT = 0.62 - 0.5 = 120 ms.
        let block = ReportBlock {
            ssrc: 0xAA,
            fraction_lost: 64,
            cumulative_lost: 40,
            highest_seq: 1000 + 499,
            jitter: 80,
            lsr: 0x0001_8000,
            dlsr: 32768,
        };
        assert!(rtcp.on_packet(PHONE, &receiver_report(0xBB, &block), 100.62));
        let (key, stats) = stream(0xAA, 500, &[]);
        let view = far_end(&rtcp, [(&key, &stats)].into_iter()).unwrap();
        assert_eq!(
            (
                view.reports,
                view.fraction_lost_pct,
                view.cumulative_lost,
                view.jitter_ms
            ),
            (1, 25.0, 40, 10.0)
        );
        assert_eq!(view.rtt_ms, Some(120.0));
        // 40 of the 500 the phone expected (1000..=1499).
        assert!(
            (view.call_loss_pct - 8.0).abs() < 1e-9,
            "{}",
            view.call_loss_pct
        );
        // A report from another address is about someone else's copy.
        let mut other = key;
        other.dst_addr = SERVER;
        assert!(far_end(&rtcp, [(&other, &stats)].into_iter()).is_none());
        // SRTCP (a trailer after the compound) is counted, not read.
        let mut srtcp = receiver_report(0xBB, &block);
        srtcp.extend_from_slice(&[0x80, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(!rtcp.on_packet(PHONE, &srtcp, 101.0));
        assert_eq!((rtcp.packets, rtcp.undecodable), (3, 1));
        rtcp.expire(100.62 + RTCP_FORGET_S + 1.0);
        assert!(rtcp.latest(0xAA, PHONE).is_none());
    }

    #[test]
    fn mos_from_own_loss_and_from_the_far_end() {
        let rtcp = RtcpReports::default();
        // 1000 packets expected, 50 lost in 50 single gaps: 5 % random loss,
        // G.711: MOS 3.9228, R 77.419 (emodel's table).
        let gaps: Vec<u16> = (1..=50).map(|i| i * 18).collect();
        let (key, stats) = stream(0xAA, 950, &gaps);
        assert_eq!(
            (stats.expected(), stats.lost(), stats.loss_runs),
            (1000, 50, 50)
        );
        let mut quality = CallQuality::default();
        let streams = |d: CallDirection| {
            (d == CallDirection::CallerToCallee)
                .then_some((&key, &stats))
                .into_iter()
        };
        let [a, b] = quality.evaluate(&rtcp, streams, 5.0, 10.0).clone();
        assert_eq!((a.mos, a.r_factor), (Some(3.923), Some(77.419)));
        assert_eq!(b, Quality::default());
        // The first evaluation has no window yet; the next, 5 s on with the
        // same figures, has nothing expected in it.
        assert_eq!(a.window_mos, None);

        // The far end reports 10 % (25/256 = 9.766 %) on a stream without
        // loss of its own: that is the window's loss.
        let mut rtcp = RtcpReports::default();
        let (key, stats0) = stream(0xAA, 100, &[]);
        let (_, stats1) = stream(0xAA, 400, &[]);
        let block = ReportBlock {
            ssrc: 0xAA,
            fraction_lost: 25,
            cumulative_lost: 39,
            highest_seq: 1399,
            ..ReportBlock::default()
        };
        rtcp.on_packet(PHONE, &receiver_report(0xBB, &block), 19.0);
        let mut quality = CallQuality::default();
        let first = |d: CallDirection| {
            (d == CallDirection::CallerToCallee)
                .then_some((&key, &stats0))
                .into_iter()
        };
        let later = |d: CallDirection| {
            (d == CallDirection::CallerToCallee)
                .then_some((&key, &stats1))
                .into_iter()
        };
        quality.evaluate(&rtcp, first, 5.0, 16.0);
        let [a, _] = quality.evaluate(&rtcp, later, 5.0, 20.0).clone();
        // G.711 at 9.766 %: Ie,eff = 95·9.766/(9.766 + 25.1) = 26.609,
        // R = 66.591, MOS 3.4332.
        assert_eq!(a.window_mos, Some(3.433));
        assert_eq!(a.mos_min, Some(3.433));
        // Over the call: 39 of the 400 the phone expected = 9.75 %:
        // R = 93.2 - 95·9.75/34.85 = 66.622, MOS 3.4348.
        assert_eq!((a.r_factor, a.mos), (Some(66.622), Some(3.435)));
        assert_eq!(a.far_end.unwrap().fraction_lost_pct, 9.766);
    }
}
