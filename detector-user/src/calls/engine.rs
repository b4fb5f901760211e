//! The engine: the one owner of dialogs, flows and detection state.
//!
//! The agent feeds it SIP frames from the kernel's ring and the flow table
//! at every poll; `detector analyze` feeds it the same from a capture. Work
//! per poll is linear in flows and calls: a stream is tied to its calls once
//! (two lookups in the [`EndpointIndex`]) and matched again only when an
//! endpoint it uses is announced anew; calls are evaluated in place.

use std::{
    collections::{hash_map::Entry, HashMap},
    sync::Arc,
};

use detector_common::{
    flow::{EndpointKey, FlowKey, FlowStats, WatchedEndpoint, KIND_RTP},
    packet::addr_bytes,
};

use super::{
    correlate::{endpoint, EndpointIndex, Match},
    detect::{CallDetector, DetectConfig, Flag, FlagEvent, StreamFigures},
    quality::{CallQuality, Quality, RtcpReports},
    records::CallReport,
    streams::{StreamRecord, TimeBase},
    Call, CallDirection, CallState, CallTracker, FastMap, FastSet,
};
use crate::sip::{self, reassembly::SipReassembler, SipMessage};

/// What happens to a call that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// The agent: its record is made at the next poll, then it is forgotten.
    Report,
    /// A capture: every call is kept, and reported at the end with the
    /// figures of the whole capture.
    KeepAll,
}

/// A flow as the engine follows it.
#[derive(Debug)]
struct FlowEntry {
    stats: FlowStats,
    /// The poll that last saw it.
    seen: u64,
    /// Its position in that poll's flow list.
    index: u32,
    matches: Vec<Match>,
    /// Lost and duplicate counts already added to the metrics.
    reported_lost: i64,
    reported_duplicates: u32,
}

/// What a poll changed.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Flags raised and cleared.
    pub events: Vec<FlagEvent>,
    /// The records of calls that ended (with [`Retention::Report`]).
    pub ended: Vec<CallReport>,
    /// Flows that left the flow table since the last poll.
    pub flows_gone: usize,
    /// Lost and duplicate packets added since the last poll, and the live
    /// RTP flows, per direction on the interface (ingress, egress).
    pub lost_delta: [u64; 2],
    pub duplicates_delta: [u64; 2],
    pub rtp_flows: [i64; 2],
}

/// An active call as readers see it: the call, its flags, and its flows as
/// positions in the poll's flow list.
#[derive(Clone, Debug)]
pub struct LiveCall {
    pub call: Arc<Call>,
    pub flags: Vec<Flag>,
    /// Its flows: a range of the snapshot's `call_flows`.
    pub flows: std::ops::Range<u32>,
    /// Voice quality per direction (`[caller_to_callee, callee_to_caller]`)
    /// at the latest evaluation.
    pub quality: [Quality; 2],
    /// The call's own fields as JSON, made by the first reader that needs
    /// them and kept while the call does not change.
    pub call_json: CallJson,
}

/// JSON made once and shared by the snapshots that hold the same call.
pub type CallJson = Arc<std::sync::OnceLock<Vec<u8>>>;

/// Follows calls and their media.
#[derive(Debug)]
pub struct Engine {
    tracker: CallTracker,
    detector: CallDetector,
    reassembler: SipReassembler,
    index: EndpointIndex,
    flows: FastMap<FlowKey, FlowEntry>,
    /// The flows tied to each call (RTP and RTCP), with their direction in it.
    call_flows: FastMap<Arc<str>, Vec<(FlowKey, CallDirection)>>,
    /// The flows at each endpoint (either end, and the RTP port of RTCP's),
    /// so an endpoint announced anew finds its flows without a scan.
    flows_at: FastMap<EndpointKey, Vec<FlowKey>>,
    /// Endpoints announced anew since the last poll.
    dirty: FastSet<EndpointKey>,
    /// Endpoints whose latest SDP offered something other than RTP (T.38's
    /// udptl, learnt offline from H.248 too): their directions are not
    /// watched.
    not_rtp: FastSet<EndpointKey>,
    retention: Retention,
    /// Ended calls kept for the end ([`Retention::KeepAll`]).
    kept: Vec<Arc<Call>>,
    poll: u64,
    time: TimeBase,
    watched_changed: bool,
    /// Per active call: the JSON of its fields, while it is this `Arc<Call>`.
    json_cache: FastMap<Arc<str>, (Arc<Call>, CallJson)>,
    /// The readers' view the last poll built ([`Retention::Report`]).
    live: (Vec<LiveCall>, Vec<(u32, CallDirection)>),
    /// Where the clock last resumed after a discontinuity (offline: a jump
    /// of the capture's clock); dialogs' quiet time counts from here.
    clock_resumed: f64,
    pub sip_parse_errors: u64,
    /// What RTCP reported, by source.
    rtcp: RtcpReports,
    /// Per answered call: the MOS windows and the latest quality.
    quality: FastMap<Arc<str>, CallQuality>,
}

/// A SIP message parsed from a frame: its method or status, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipOutcome {
    Parsed {
        method: Option<String>,
        status: Option<u16>,
        /// The Call-ID, when the message belongs to a dialog the engine
        /// follows (what a journal of calls in progress keeps).
        dialog: Option<String>,
    },
    Unparsable,
}

impl Engine {
    pub fn new(detect: DetectConfig, max_dialog_age_s: f64, retention: Retention) -> Self {
        Self {
            tracker: CallTracker::new(max_dialog_age_s),
            detector: CallDetector::new(detect),
            reassembler: SipReassembler::default(),
            index: EndpointIndex::default(),
            flows: FastMap::default(),
            call_flows: FastMap::default(),
            flows_at: FastMap::default(),
            dirty: FastSet::default(),
            not_rtp: FastSet::default(),
            retention,
            kept: Vec::new(),
            poll: 0,
            time: TimeBase::Capture,
            watched_changed: false,
            json_cache: FastMap::default(),
            live: (Vec::new(), Vec::new()),
            clock_resumed: f64::NEG_INFINITY,
            sip_parse_errors: 0,
            rtcp: RtcpReports::default(),
            quality: FastMap::default(),
        }
    }

    pub fn reassembler(&self) -> &SipReassembler {
        &self.reassembler
    }

    pub fn reassembler_mut(&mut self) -> &mut SipReassembler {
        &mut self.reassembler
    }

    /// Feeds one captured Ethernet frame seen at `ts` (Unix seconds);
    /// returns the SIP messages it completed, each with what came of it.
    pub fn on_frame(&mut self, frame: &[u8], ts: f64) -> Vec<(SipOutcome, Vec<u8>)> {
        let Ok((_, l3)) = detector_common::packet::parse_ethernet(frame) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for message in self.reassembler.push(frame, l3, ts) {
            out.push((self.on_sip_bytes(&message.bytes, ts), message.bytes));
        }
        out
    }

    /// Reads one RTCP packet (a UDP payload) sent from `src` and seen at
    /// `ts` (Unix seconds); returns whether it was a valid compound (SRTCP
    /// is not: it counts for liveness only).
    pub fn on_rtcp(&mut self, src: [u8; 16], payload: &[u8], ts: f64) -> bool {
        self.rtcp.on_packet(src, payload, ts)
    }

    /// As [`Engine::on_rtcp`], from a captured Ethernet frame.
    pub fn on_rtcp_frame(&mut self, frame: &[u8], ts: f64) -> bool {
        use detector_common::packet::{parse_ethernet, parse_ip};
        let Some(ip) = parse_ethernet(frame)
            .ok()
            .and_then(|(_, l3)| parse_ip(frame, l3).ok())
        else {
            return false;
        };
        let end = ip.payload_offset + ip.payload_len;
        match frame.get(ip.payload_offset..end) {
            Some(payload) => self.on_rtcp(ip.src, payload, ts),
            None => false,
        }
    }

    /// Parses and follows one SIP message.
    pub fn on_sip_bytes(&mut self, bytes: &[u8], ts: f64) -> SipOutcome {
        match sip::parse_message(bytes) {
            Ok((msg, _)) => {
                let followed = self.on_sip(&msg, ts);
                SipOutcome::Parsed {
                    method: msg.method().map(str::to_string),
                    status: msg.status(),
                    dialog: msg.call_id().filter(|_| followed).map(str::to_string),
                }
            }
            Err(_) => {
                self.sip_parse_errors += 1;
                SipOutcome::Unparsable
            }
        }
    }

    /// Follows one parsed SIP message; whether it belongs to a dialog the
    /// engine follows.
    pub fn on_sip(&mut self, msg: &SipMessage, ts: f64) -> bool {
        let followed_before = msg
            .call_id()
            .is_some_and(|id| self.tracker.get(id).is_some());
        if let Some(call) = self.tracker.on_message(msg, ts) {
            self.dirty.extend(self.index.reindex(&call));
        }
        // What the kernel should watch changes with SDP (new media, a
        // move, hold) and with the end of a call (`take_ended`, `forget`),
        // not with every message: rebuilding it is a pass over all calls.
        if msg.sdp_body().is_some() {
            self.watched_changed = true;
        }
        followed_before || msg.call_id().is_some_and(|id| self.tracker.follows(id))
    }

    /// Sets a call's flags as a previous agent left them (its journal).
    pub fn restore_flags(&mut self, call_id: &str, flags: Vec<Flag>) {
        self.detector.restore(call_id, flags);
    }

    /// Every active call's loss windows (for the journal at a stop).
    pub fn loss_windows(&self) -> Vec<(String, Vec<super::detect::LossWindow>)> {
        self.tracker
            .active()
            .map(|c| (c.call_id.clone(), self.detector.windows(&c.call_id)))
            .filter(|(_, w)| !w.is_empty())
            .collect()
    }

    /// Sets a call's loss windows as a previous agent left them.
    pub fn restore_windows(&mut self, call_id: &str, windows: Vec<super::detect::LossWindow>) {
        self.detector.restore_windows(call_id, windows);
    }

    /// Forgets a call whose record a previous agent wrote already (its
    /// journal says so): it will not be reported again.
    pub fn forget(&mut self, call_id: &str) {
        if self.tracker.forget(call_id) {
            self.detector.take(call_id);
            self.dirty.extend(self.index.remove(call_id));
            self.call_flows.remove(call_id);
            self.json_cache.remove(call_id);
            self.watched_changed = true;
        }
    }

    /// Tells the engine an endpoint's latest SDP offered something other
    /// than RTP (or RTP again).
    pub fn set_not_rtp(&mut self, key: EndpointKey, not_rtp: bool) {
        if not_rtp {
            self.not_rtp.insert(key);
        } else {
            self.not_rtp.remove(&key);
        }
    }

    /// The clock jumped to `at` (offline: the capture's timestamps): the
    /// time before it is not silence of the dialogs.
    pub fn clock_resumed(&mut self, at: f64) {
        self.clock_resumed = at;
    }

    pub fn active_calls(&self) -> usize {
        self.tracker.active_count()
    }

    /// Calls that ended and are reported at the next poll.
    pub fn ended_unreported(&self) -> usize {
        self.tracker.ended_count()
    }

    /// A call's flags so far (`None` for a call not evaluated yet).
    pub fn flags(&self, call_id: &str) -> Option<&[Flag]> {
        self.detector.flags(call_id).map(|f| f.flags.as_slice())
    }

    /// Takes the flow table as read at `now` (Unix seconds; `time` converts
    /// the flows' clock), evaluates every answered call, and reports the
    /// calls that ended.
    pub fn poll(
        &mut self,
        flows: &[(FlowKey, FlowStats)],
        time: TimeBase,
        now: f64,
    ) -> PollOutcome {
        self.poll += 1;
        self.time = time;
        self.reassembler.expire(now);
        self.rtcp.expire(now);
        let mut outcome = PollOutcome::default();
        let fresh = self.update_flows(flows, &mut outcome);

        self.tracker.expire_quiet_since(now, self.clock_resumed);
        let ended = self.take_ended(now);
        self.rematch(&fresh);
        outcome.events = self.evaluate(now);

        match self.retention {
            Retention::Report => {
                for call in ended {
                    outcome.ended.push(self.report_ended(call, now));
                }
            }
            Retention::KeepAll => self.kept.extend(ended),
        }
        outcome
    }

    /// The calls that ended since the last poll, their end recorded in the
    /// index (streams at their endpoints are matched again).
    fn take_ended(&mut self, now: f64) -> Vec<Arc<Call>> {
        let ended = self.tracker.take_ended();
        for call in &ended {
            let endpoints = self
                .index
                .set_end(&call.call_id, call.end_epoch.unwrap_or(now));
            self.dirty.extend(endpoints);
        }
        if !ended.is_empty() {
            self.watched_changed = true;
        }
        ended
    }

    /// Updates the flows; returns the ones new to the engine.
    fn update_flows(
        &mut self,
        flows: &[(FlowKey, FlowStats)],
        outcome: &mut PollOutcome,
    ) -> Vec<FlowKey> {
        let poll = self.poll;
        let mut fresh = Vec::new();
        let mut present = 0;
        for (i, (key, stats)) in flows.iter().enumerate() {
            let entry = match self.flows.entry(*key) {
                Entry::Occupied(e) => {
                    let e = e.into_mut();
                    e.stats = *stats;
                    e
                }
                Entry::Vacant(v) => {
                    fresh.push(*key);
                    v.insert(FlowEntry {
                        stats: *stats,
                        seen: 0,
                        index: 0,
                        matches: Vec::new(),
                        reported_lost: 0,
                        reported_duplicates: 0,
                    })
                }
            };
            if entry.seen != poll {
                present += 1;
            }
            entry.seen = poll;
            entry.index = u32::try_from(i).unwrap_or(u32::MAX);
            if key.kind == KIND_RTP {
                let direction = usize::from(key.hook != detector_common::counters::HOOK_XDP);
                let lost = stats.lost();
                let duplicates = stats.seq.duplicates;
                outcome.lost_delta[direction] +=
                    u64::try_from(lost - entry.reported_lost).unwrap_or(0);
                outcome.duplicates_delta[direction] +=
                    u64::from(duplicates.saturating_sub(entry.reported_duplicates));
                entry.reported_lost = entry.reported_lost.max(lost);
                entry.reported_duplicates = entry.reported_duplicates.max(duplicates);
                outcome.rtp_flows[direction] += 1;
            }
        }
        for key in &fresh {
            for at in flow_endpoints(key) {
                self.flows_at.entry(at).or_default().push(*key);
            }
        }
        if self.flows.len() > present {
            let (call_flows, flows_at) = (&mut self.call_flows, &mut self.flows_at);
            let mut gone = 0;
            self.flows.retain(|key, entry| {
                if entry.seen == poll {
                    return true;
                }
                gone += 1;
                for m in &entry.matches {
                    unlink(call_flows, &m.call_id, key);
                }
                for at in flow_endpoints(key) {
                    if let Some(list) = flows_at.get_mut(&at) {
                        list.retain(|k| k != key);
                        if list.is_empty() {
                            flows_at.remove(&at);
                        }
                    }
                }
                false
            });
            outcome.flows_gone = gone;
        }
        fresh
    }

    /// Ties new flows, and flows at endpoints announced anew, to their calls.
    fn rematch(&mut self, fresh: &[FlowKey]) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut todo: Vec<FlowKey> = fresh.to_vec();
        // A flow may be matched twice (new, and at a dirty endpoint), which
        // is harmless.
        for at in &dirty {
            todo.extend(self.flows_at.get(at).into_iter().flatten());
        }
        for key in todo {
            let Some(entry) = self.flows.get(&key) else {
                continue;
            };
            let first = self.time.epoch_rounded(entry.stats.first_seen_ns);
            let mut found = self.index.matches(&key, first, 0);
            if found.is_empty() && key.kind != KIND_RTP {
                // RTCP on the port after RTP's (not multiplexed).
                found = self.index.matches(&key, first, 1);
            }
            let Some(entry) = self.flows.get_mut(&key) else {
                continue;
            };
            if entry.matches == found {
                continue;
            }
            for m in &entry.matches {
                unlink(&mut self.call_flows, &m.call_id, &key);
            }
            for m in &found {
                let list = self.call_flows.entry(m.call_id.clone()).or_default();
                if !list.iter().any(|(k, _)| *k == key) {
                    list.push((key, m.direction));
                }
            }
            entry.matches = found;
        }
    }

    /// The call's flows with their direction in it: RTP streams and RTCP.
    fn flows_of<'a>(
        &'a self,
        call_id: &'a str,
    ) -> impl Iterator<Item = (&'a FlowKey, &'a FlowEntry, CallDirection)> + 'a {
        self.call_flows
            .get(call_id)
            .into_iter()
            .flatten()
            .filter_map(move |(key, direction)| Some((key, self.flows.get(key)?, *direction)))
    }

    /// Runs detection on every answered call and, for the agent, builds
    /// the readers' view of every call in the same pass over each call's
    /// flows.
    fn evaluate(&mut self, now: f64) -> Vec<FlagEvent> {
        let publish = self.retention == Retention::Report;
        let mut events = Vec::new();
        let mut figures = Vec::new();
        let mut rtp: Vec<(&FlowKey, &FlowStats, CallDirection)> = Vec::new();
        let mut detector = std::mem::take(&mut self.detector);
        let mut cache = std::mem::take(&mut self.json_cache);
        let mut quality = std::mem::take(&mut self.quality);
        let window_s = detector.config.loss_window_s;
        let (mut calls, mut all_flows) = if publish {
            (
                Vec::with_capacity(self.tracker.active_count()),
                Vec::with_capacity(self.flows.len()),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for call in self.tracker.active() {
            // The call's flows, looked up once for every use.
            let start = u32::try_from(all_flows.len()).unwrap_or(u32::MAX);
            rtp.clear();
            for (key, entry, direction) in self.flows_of(&call.call_id) {
                if publish {
                    all_flows.push((entry.index, direction));
                }
                if key.kind == KIND_RTP {
                    rtp.push((key, &entry.stats, direction));
                }
            }
            let mut latest = None;
            if call.state == CallState::Confirmed {
                let q = match quality.get_mut(call.call_id.as_str()) {
                    Some(q) => q,
                    None => quality.entry(Arc::from(call.call_id.as_str())).or_default(),
                };
                let of = |direction: CallDirection| {
                    rtp.iter()
                        .filter(move |(_, _, d)| *d == direction)
                        .map(|&(k, stats, _)| (k, stats))
                };
                let now_quality = q.evaluate(&self.rtcp, of, window_s, now);
                let window_mos = now_quality.each_ref().map(|q| q.window_mos);
                latest = Some(now_quality.clone());
                figures.clear();
                figures.extend(rtp.iter().map(|&(_, stats, d)| self.figures(stats, d)));
                match self.unwatched_view(call) {
                    Some(view) => events.extend(detector.evaluate(&view, &figures, now)),
                    None => events.extend(detector.evaluate(call, &figures, now)),
                }
                events.extend(detector.evaluate_quality(call, window_mos, now));
            }
            if publish {
                let end = u32::try_from(all_flows.len()).unwrap_or(u32::MAX);
                calls.push(LiveCall {
                    call_json: cached_json(&mut cache, call),
                    call: call.clone(),
                    flags: detector
                        .flags(&call.call_id)
                        .map(|f| f.flags.clone())
                        .unwrap_or_default(),
                    flows: start..end,
                    quality: latest.unwrap_or_default(),
                });
            }
        }
        self.detector = detector;
        self.json_cache = cache;
        self.quality = quality;
        if publish {
            self.live = (calls, all_flows);
        }
        events
    }

    /// A call's RTP streams in one direction.
    fn rtp_of<'a>(
        &'a self,
        call_id: &'a str,
        direction: CallDirection,
    ) -> impl Iterator<Item = (&'a FlowKey, &'a FlowStats)> + 'a {
        self.flows_of(call_id)
            .filter(move |(k, _, d)| k.kind == KIND_RTP && *d == direction)
            .map(|(k, e, _)| (k, &e.stats))
    }

    /// A call whose media an endpoint's latest SDP switched away from RTP
    /// (T.38): a copy with that media marked so, else `None` (the common
    /// case: no copy).
    fn unwatched_view(&self, call: &Call) -> Option<Call> {
        if self.not_rtp.is_empty() {
            return None;
        }
        let switched =
            |m: &super::MediaEndpoint| self.not_rtp.contains(&endpoint(addr_bytes(m.addr), m.port));
        if !call
            .caller_media
            .iter()
            .chain(&call.callee_media)
            .any(switched)
        {
            return None;
        }
        let mut view = call.clone();
        for m in view
            .caller_media
            .iter_mut()
            .chain(view.callee_media.iter_mut())
        {
            if switched(m) {
                m.proto = "udptl".into();
            }
        }
        Some(view)
    }

    fn figures(&self, stats: &FlowStats, direction: CallDirection) -> StreamFigures {
        StreamFigures {
            direction,
            packets: stats.packets,
            expected: u64::from(stats.expected()),
            lost: stats.lost(),
            first_epoch: self.time.epoch_rounded(stats.first_seen_ns),
            last_epoch: self.time.epoch_rounded(stats.last_seen_ns),
            comfort_noise: stats.comfort_noise,
            resumed_talkspurts: u32::from(stats.resumed_talkspurts),
        }
    }

    /// The record of a call that ended; the call is then forgotten.
    fn report_ended(&mut self, call: Arc<Call>, now: f64) -> CallReport {
        let flags = self.detector.take(&call.call_id).flags;
        let report = self.report(call.clone(), flags, now);
        self.quality.remove(call.call_id.as_str());
        self.dirty.extend(self.index.remove(&call.call_id));
        self.call_flows.remove(call.call_id.as_str());
        self.json_cache.remove(call.call_id.as_str());
        report
    }

    /// A call's report at `now` with the figures its flows have now.
    fn report(&self, call: Arc<Call>, flags: Vec<Flag>, now: f64) -> CallReport {
        let mut mine: Vec<(&FlowKey, &FlowEntry, CallDirection)> =
            self.flows_of(&call.call_id).collect();
        mine.sort_by_key(|(k, e, _)| (e.stats.first_seen_ns, **k));
        let record = |k: &FlowKey, e: &FlowEntry| StreamRecord::new(k, &e.stats, self.time);
        let (rtp, rtcp): (Vec<_>, Vec<_>) =
            mine.into_iter().partition(|(k, _, _)| k.kind == KIND_RTP);
        let streams: Vec<(StreamRecord, CallDirection)> =
            rtp.into_iter().map(|(k, e, d)| (record(k, e), d)).collect();
        let control: Vec<(StreamRecord, CallDirection)> = rtcp
            .into_iter()
            .map(|(k, e, d)| (record(k, e), d))
            .collect();
        let mut quality = self
            .quality
            .get(call.call_id.as_str())
            .map(CallQuality::snapshot)
            .unwrap_or_default();
        let summary = quality.summary(&self.rtcp, |d| self.rtp_of(&call.call_id, d), now);
        let mut report = CallReport::new(call, flags, &streams, &control, now);
        report.set_quality(&summary);
        report
    }

    /// Every active call with its flags and flows as the last poll left
    /// them, for readers; each call's flows are a range of the second list
    /// (one list for all calls rather than one per call per poll).
    pub fn live_calls(&mut self) -> (Vec<LiveCall>, Vec<(u32, CallDirection)>) {
        std::mem::take(&mut self.live)
    }

    /// The RTP endpoints active calls announced, with the clock rates of
    /// the dynamic payload types each receives: `None` when unchanged since
    /// the last call.
    pub fn take_watched(&mut self) -> Option<HashMap<EndpointKey, WatchedEndpoint>> {
        if !std::mem::take(&mut self.watched_changed) {
            return None;
        }
        let mut out = HashMap::new();
        for call in self.tracker.active() {
            // Stable across polls, so unchanged entries are not rewritten.
            let cookie = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                call.call_id.hash(&mut h);
                h.finish()
            };
            for m in call.caller_media.iter().chain(&call.callee_media) {
                if !m.is_rtp() || m.port == 0 || m.hold {
                    continue;
                }
                let value = WatchedEndpoint::new(cookie, m.rtpmap.iter().map(|(pt, r)| (*pt, *r)));
                out.insert(endpoint(addr_bytes(m.addr), m.port), value);
            }
        }
        Some(out)
    }

    /// Every call, ended or up, in the order the dialogs began, reported at
    /// `end` with the figures the flows have then ([`Retention::KeepAll`]).
    pub fn finish(mut self, flows: &[(FlowKey, FlowStats)], end: f64) -> Vec<CallReport> {
        self.poll += 1;
        let fresh = self.update_flows(flows, &mut PollOutcome::default());
        let ended = self.take_ended(end);
        self.kept.extend(ended);
        self.rematch(&fresh);
        let mut calls = std::mem::take(&mut self.kept);
        calls.extend(self.tracker.active().cloned());
        calls.sort_by_key(|c| c.serial);
        calls
            .into_iter()
            .map(|call| {
                let flags = self.detector.take(&call.call_id).flags;
                self.report(call, flags, end)
            })
            .collect()
    }
}

/// The JSON of a call's own fields, shared while the call is this
/// `Arc<Call>`, made anew (lazily, by a reader) when it changes.
fn cached_json(cache: &mut FastMap<Arc<str>, (Arc<Call>, CallJson)>, call: &Arc<Call>) -> CallJson {
    match cache.get_mut(call.call_id.as_str()) {
        Some((cached, json)) if Arc::ptr_eq(cached, call) => json.clone(),
        Some(entry) => {
            *entry = (call.clone(), Arc::default());
            entry.1.clone()
        }
        None => {
            let json = CallJson::default();
            cache.insert(
                Arc::from(call.call_id.as_str()),
                (call.clone(), json.clone()),
            );
            json
        }
    }
}

/// Removes `key` from a call's list of flows.
fn unlink(
    call_flows: &mut FastMap<Arc<str>, Vec<(FlowKey, CallDirection)>>,
    call_id: &str,
    key: &FlowKey,
) {
    if let Some(list) = call_flows.get_mut(call_id) {
        list.retain(|(k, _)| k != key);
    }
}

/// The endpoints whose announcements can tie a flow to a call: both ends,
/// and for RTCP also the RTP ports below them.
fn flow_endpoints(key: &FlowKey) -> impl Iterator<Item = EndpointKey> + '_ {
    let offsets: &[u16] = if key.kind == KIND_RTP { &[0] } else { &[0, 1] };
    offsets.iter().flat_map(move |&o| {
        [
            endpoint(key.dst_addr, key.dst_port.wrapping_sub(o)),
            endpoint(key.src_addr, key.src_port.wrapping_sub(o)),
        ]
    })
}
