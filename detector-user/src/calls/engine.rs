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
    detect::{
        expectations, CallDetector, CallFlags, DetectConfig, Expectation, Flag, FlagEvent,
        StreamFigures,
    },
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
    key: FlowKey,
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

/// A flow's place in the engine's flow slab: stable while the flow lives.
type FlowId = usize;

/// Everything the engine keeps per call, in one place: a poll walks the
/// slots and reaches each call's state and flows without a lookup.
#[derive(Debug)]
struct CallSlot {
    call: Arc<Call>,
    /// Its flows (RTP and RTCP) with their direction in it.
    flows: Vec<(FlowId, CallDirection)>,
    flags: CallFlags,
    /// What the call's SDP says of each direction ([`expectations`]).
    expected: [Expectation; 2],
    /// MOS windows and the latest quality (answered calls).
    quality: CallQuality,
    /// The JSON of `call`'s own fields, made by the first reader that needs
    /// it and kept while `call` does not change.
    json: CallJson,
    /// The call ended: no longer evaluated, reported at the next poll (or
    /// at the end of a capture).
    ended: bool,
}

impl CallSlot {
    fn new(call: Arc<Call>) -> Self {
        Self {
            expected: expectations(&call),
            call,
            flows: Vec::new(),
            flags: CallFlags::default(),
            quality: CallQuality::default(),
            json: CallJson::default(),
            ended: false,
        }
    }

    /// Points the slot at the call's latest version.
    fn update(&mut self, call: &Arc<Call>) {
        if !Arc::ptr_eq(&self.call, call) {
            self.call = call.clone();
            self.json = CallJson::default();
            self.expected = expectations(call);
        }
    }
}

/// Follows calls and their media.
#[derive(Debug)]
pub struct Engine {
    tracker: CallTracker,
    detector: CallDetector,
    reassembler: SipReassembler,
    index: EndpointIndex,
    /// Every flow, and where each key's is.
    flows: slab::Slab<FlowEntry>,
    flow_ids: FastMap<FlowKey, FlowId>,
    /// Per followed call (by Call-ID): its state and flows.
    calls: CallSlots,
    /// Slots of ended calls whose Call-ID a new dialog took before the
    /// end was taken in (or, offline, kept for the end).
    parked: Vec<CallSlot>,
    /// The flows at each endpoint (either end, and the RTP port of RTCP's),
    /// so an endpoint announced anew finds its flows without a scan.
    flows_at: FastMap<EndpointKey, Vec<FlowId>>,
    /// Endpoints announced anew since the last poll.
    dirty: FastSet<EndpointKey>,
    /// Endpoints whose latest SDP offered something other than RTP (T.38's
    /// udptl, learnt offline from H.248 too): their directions are not
    /// watched.
    not_rtp: FastSet<EndpointKey>,
    retention: Retention,
    poll: u64,
    time: TimeBase,
    watched_changed: bool,
    /// The readers' view the last poll built ([`Retention::Report`]).
    live: (Vec<LiveCall>, Vec<(u32, CallDirection)>),
    /// Where the clock last resumed after a discontinuity (offline: a jump
    /// of the capture's clock); dialogs' quiet time counts from here.
    clock_resumed: f64,
    pub sip_parse_errors: u64,
    /// What RTCP reported, by source.
    rtcp: RtcpReports,
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
            flows: slab::Slab::new(),
            flow_ids: FastMap::default(),
            calls: CallSlots::default(),
            parked: Vec::new(),
            flows_at: FastMap::default(),
            dirty: FastSet::default(),
            not_rtp: FastSet::default(),
            retention,
            poll: 0,
            time: TimeBase::Capture,
            watched_changed: false,
            live: (Vec::new(), Vec::new()),
            clock_resumed: f64::NEG_INFINITY,
            sip_parse_errors: 0,
            rtcp: RtcpReports::default(),
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
        if let Some(call_id) = msg.call_id() {
            self.sync_slot(call_id);
        }
        // What the kernel should watch changes with SDP (new media, a
        // move, hold) and with the end of a call (`take_ended`, `forget`),
        // not with every message: rebuilding it is a pass over all calls.
        if msg.sdp_body().is_some() {
            self.watched_changed = true;
        }
        followed_before || msg.call_id().is_some_and(|id| self.tracker.follows(id))
    }

    /// Keeps the slot of `call_id` on the tracker's latest version of the
    /// call; a new dialog with the Call-ID of one that ended gets a slot of
    /// its own.
    fn sync_slot(&mut self, call_id: &str) {
        let Some(call) = self.tracker.get(call_id) else {
            return;
        };
        match self.calls.get_mut(call_id) {
            Some(slot) if slot.call.serial == call.serial => slot.update(call),
            Some(slot) => {
                let mut previous = std::mem::replace(slot, CallSlot::new(call.clone()));
                previous.ended = true;
                self.parked.push(previous);
            }
            None => {
                self.calls
                    .insert(Arc::from(call_id), CallSlot::new(call.clone()));
            }
        }
    }

    /// The slot of a call in progress.
    fn live_slot(&mut self, call_id: &str) -> Option<&mut CallSlot> {
        self.calls.get_mut(call_id).filter(|s| !s.ended)
    }

    /// Sets a call's flags as a previous agent left them (its journal).
    pub fn restore_flags(&mut self, call_id: &str, flags: Vec<Flag>) {
        if let Some(slot) = self.live_slot(call_id) {
            slot.flags.flags = flags;
        }
    }

    /// Every active call's loss windows (for the journal at a stop).
    pub fn loss_windows(&self) -> Vec<(String, Vec<super::detect::LossWindow>)> {
        self.calls
            .values()
            .filter(|s| !s.ended)
            .map(|s| (s.call.call_id.clone(), s.flags.windows()))
            .filter(|(_, w)| !w.is_empty())
            .collect()
    }

    /// Sets a call's loss windows as a previous agent left them.
    pub fn restore_windows(&mut self, call_id: &str, windows: Vec<super::detect::LossWindow>) {
        if let Some(slot) = self.live_slot(call_id) {
            slot.flags.restore_windows(windows);
        }
    }

    /// Forgets a call whose record a previous agent wrote already (its
    /// journal says so): it will not be reported again.
    pub fn forget(&mut self, call_id: &str) {
        if self.tracker.forget(call_id) {
            self.calls.remove(call_id);
            self.parked.retain(|s| s.call.call_id != call_id);
            self.dirty.extend(self.index.remove(call_id));
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

    /// A call's flags so far.
    pub fn flags(&self, call_id: &str) -> Option<&[Flag]> {
        self.calls
            .get(call_id)
            .filter(|s| !s.ended)
            .map(|s| s.flags.flags.as_slice())
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

        if self.retention == Retention::Report {
            for call in ended {
                if let Some(slot) = self.take_slot(call) {
                    outcome.ended.push(self.report_ended(slot, now));
                }
            }
        }
        outcome
    }

    /// The calls that ended since the last poll, their slots marked so and
    /// their end recorded in the index (streams at their endpoints are
    /// matched again).
    fn take_ended(&mut self, now: f64) -> Vec<EndedCall> {
        let ended = self.tracker.take_ended();
        let mut out = Vec::with_capacity(ended.len());
        for call in ended {
            let endpoints = self
                .index
                .set_end(&call.call_id, call.end_epoch.unwrap_or(now));
            self.dirty.extend(endpoints);
            let slot = match self.calls.get_mut(call.call_id.as_str()) {
                Some(slot) if slot.call.serial == call.serial => Some(slot),
                _ => self
                    .parked
                    .iter_mut()
                    .find(|s| s.call.serial == call.serial),
            };
            match slot {
                Some(slot) => {
                    slot.update(&call);
                    slot.ended = true;
                }
                None => {
                    let mut slot = CallSlot::new(call.clone());
                    slot.ended = true;
                    self.parked.push(slot);
                }
            }
            out.push(EndedCall {
                call_id: call.call_id.as_str().into(),
                serial: call.serial,
            });
        }
        if !out.is_empty() {
            self.watched_changed = true;
        }
        out
    }

    /// Takes an ended call's slot out of the engine.
    fn take_slot(&mut self, ended: EndedCall) -> Option<CallSlot> {
        match self.calls.get(&ended.call_id) {
            Some(slot) if slot.call.serial == ended.serial => self.calls.remove(&ended.call_id),
            _ => {
                let at = self
                    .parked
                    .iter()
                    .position(|s| s.call.serial == ended.serial)?;
                Some(self.parked.swap_remove(at))
            }
        }
    }

    /// Updates the flows; returns the ones new to the engine.
    fn update_flows(
        &mut self,
        flows: &[(FlowKey, FlowStats)],
        outcome: &mut PollOutcome,
    ) -> Vec<FlowId> {
        let poll = self.poll;
        let mut fresh = Vec::new();
        let mut present = 0;
        for (i, (key, stats)) in flows.iter().enumerate() {
            let id = match self.flow_ids.entry(*key) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(v) => {
                    let id = self.flows.insert(FlowEntry {
                        key: *key,
                        stats: *stats,
                        seen: 0,
                        index: 0,
                        matches: Vec::new(),
                        reported_lost: 0,
                        reported_duplicates: 0,
                    });
                    fresh.push(id);
                    *v.insert(id)
                }
            };
            let entry = &mut self.flows[id];
            entry.stats = *stats;
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
        for &id in &fresh {
            for at in flow_endpoints(&self.flows[id].key) {
                self.flows_at.entry(at).or_default().push(id);
            }
        }
        if self.flows.len() > present {
            outcome.flows_gone = self.drop_flows_not_seen();
        }
        fresh
    }

    /// Forgets the flows this poll did not see; how many.
    fn drop_flows_not_seen(&mut self) -> usize {
        let poll = self.poll;
        let gone: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, e)| e.seen != poll)
            .map(|(id, _)| id)
            .collect();
        for &id in &gone {
            let entry = self.flows.remove(id);
            self.flow_ids.remove(&entry.key);
            for m in &entry.matches {
                self.unlink(&m.call_id, id);
            }
            for at in flow_endpoints(&entry.key) {
                if let Some(list) = self.flows_at.get_mut(&at) {
                    list.retain(|&f| f != id);
                    if list.is_empty() {
                        self.flows_at.remove(&at);
                    }
                }
            }
        }
        gone.len()
    }

    /// Removes a flow from the list of the call a match names (in
    /// progress, or ended and still kept).
    fn unlink(&mut self, call_id: &str, id: FlowId) {
        if let Some(slot) = self.calls.get_mut(call_id) {
            slot.flows.retain(|&(f, _)| f != id);
        }
    }

    /// Ties new flows, and flows at endpoints announced anew, to their calls.
    fn rematch(&mut self, fresh: &[FlowId]) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut todo: Vec<FlowId> = fresh.to_vec();
        // A flow may be matched twice (new, and at a dirty endpoint), which
        // is harmless.
        for at in &dirty {
            todo.extend(self.flows_at.get(at).into_iter().flatten());
        }
        for id in todo {
            let Some(entry) = self.flows.get(id) else {
                continue;
            };
            let key = entry.key;
            let first = self.time.epoch_rounded(entry.stats.first_seen_ns);
            let mut found = self.index.matches(&key, first, 0);
            if found.is_empty() && key.kind != KIND_RTP {
                // RTCP on the port after RTP's (not multiplexed).
                found = self.index.matches(&key, first, 1);
            }
            if self.flows[id].matches == found {
                continue;
            }
            let previous = std::mem::take(&mut self.flows[id].matches);
            for m in &previous {
                self.unlink(&m.call_id, id);
            }
            for m in &found {
                if let Some(slot) = self.calls.get_mut(&m.call_id) {
                    if !slot.flows.iter().any(|&(f, _)| f == id) {
                        slot.flows.push((id, m.direction));
                    }
                }
            }
            self.flows[id].matches = found;
        }
    }

    /// Runs detection on every answered call and, for the agent, builds
    /// the readers' view of every call in the same pass over each call's
    /// flows.
    fn evaluate(&mut self, now: f64) -> Vec<FlagEvent> {
        let publish = self.retention == Retention::Report;
        let Self {
            calls: slots,
            flows,
            detector,
            rtcp,
            not_rtp,
            time,
            ..
        } = self;
        let mut events = Vec::new();
        let mut figures = Vec::new();
        let mut rtp: Vec<(&FlowKey, &FlowStats, CallDirection)> = Vec::new();
        let window_s = detector.config.loss_window_s;
        let (mut calls, mut all_flows) = if publish {
            (
                Vec::with_capacity(slots.len()),
                Vec::with_capacity(flows.len()),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for slot in slots.values_mut().filter(|s| !s.ended) {
            // The call's flows, looked up once for every use.
            let start = u32::try_from(all_flows.len()).unwrap_or(u32::MAX);
            rtp.clear();
            for &(id, direction) in &slot.flows {
                let entry = &flows[id];
                if publish {
                    all_flows.push((entry.index, direction));
                }
                if entry.key.kind == KIND_RTP {
                    rtp.push((&entry.key, &entry.stats, direction));
                }
            }
            let call = &slot.call;
            let mut latest = None;
            if call.state == CallState::Confirmed {
                let of = |direction: CallDirection| {
                    rtp.iter()
                        .filter(move |(_, _, d)| *d == direction)
                        .map(|&(k, stats, _)| (k, stats))
                };
                let now_quality = slot.quality.evaluate(rtcp, of, window_s, now);
                let window_mos = now_quality.each_ref().map(|q| q.window_mos);
                latest = Some(now_quality.clone());
                figures.clear();
                figures.extend(rtp.iter().map(|&(_, stats, d)| figures_of(*time, stats, d)));
                let state = &mut slot.flags;
                events.extend(match unwatched_view(not_rtp, call) {
                    Some(view) => {
                        let expected = expectations(&view);
                        detector.evaluate(state, &view, expected, &figures, now)
                    }
                    None => detector.evaluate(state, call, slot.expected, &figures, now),
                });
                events.extend(detector.evaluate_quality(state, call, window_mos, now));
            }
            if publish {
                let end = u32::try_from(all_flows.len()).unwrap_or(u32::MAX);
                calls.push(LiveCall {
                    call_json: slot.json.clone(),
                    call: call.clone(),
                    flags: slot.flags.flags.clone(),
                    flows: start..end,
                    quality: latest.unwrap_or_default(),
                });
            }
        }
        if publish {
            self.live = (calls, all_flows);
        }
        events
    }

    /// The record of a call that ended.
    fn report_ended(&mut self, slot: CallSlot, now: f64) -> CallReport {
        self.dirty.extend(self.index.remove(&slot.call.call_id));
        self.report(slot, now)
    }

    /// A call's report at `now` with the figures its flows have now.
    fn report(&self, mut slot: CallSlot, now: f64) -> CallReport {
        let mut mine: Vec<(&FlowEntry, CallDirection)> = slot
            .flows
            .iter()
            .filter_map(|&(id, d)| Some((self.flows.get(id)?, d)))
            .collect();
        mine.sort_by_key(|(e, _)| (e.stats.first_seen_ns, e.key));
        let record = |e: &FlowEntry| StreamRecord::new(&e.key, &e.stats, self.time);
        let (rtp, rtcp): (Vec<_>, Vec<_>) = mine.iter().partition(|(e, _)| e.key.kind == KIND_RTP);
        let streams: Vec<(StreamRecord, CallDirection)> =
            rtp.iter().map(|&&(e, d)| (record(e), d)).collect();
        let control: Vec<(StreamRecord, CallDirection)> =
            rtcp.iter().map(|&&(e, d)| (record(e), d)).collect();
        let rtp_of = |direction: CallDirection| {
            rtp.iter()
                .filter(move |(_, d)| *d == direction)
                .map(|(e, _)| (&e.key, &e.stats))
        };
        let mut quality = slot.quality.snapshot();
        let summary = quality.summary(&self.rtcp, rtp_of, now);
        let flags = std::mem::take(&mut slot.flags.flags);
        let mut report = CallReport::new(slot.call, flags, &streams, &control, now);
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
        self.take_ended(end);
        self.rematch(&fresh);
        let mut slots: Vec<CallSlot> = std::mem::take(&mut self.parked);
        slots.extend(std::mem::take(&mut self.calls).into_values());
        slots.sort_by_key(|s| s.call.serial);
        slots
            .into_iter()
            .map(|slot| self.report(slot, end))
            .collect()
    }
}

/// The engine's call slots: by Call-ID for SIP and lookups, in a slab so a
/// poll walks them in memory order (and no spare hash bucket is a slot's
/// size).
#[derive(Debug, Default)]
struct CallSlots {
    by_id: FastMap<Arc<str>, usize>,
    slots: slab::Slab<CallSlot>,
}

impl CallSlots {
    fn get(&self, call_id: &str) -> Option<&CallSlot> {
        self.slots.get(*self.by_id.get(call_id)?)
    }

    fn get_mut(&mut self, call_id: &str) -> Option<&mut CallSlot> {
        self.slots.get_mut(*self.by_id.get(call_id)?)
    }

    fn insert(&mut self, call_id: Arc<str>, slot: CallSlot) {
        let at = self.slots.insert(slot);
        if let Some(previous) = self.by_id.insert(call_id, at) {
            self.slots.remove(previous);
        }
    }

    fn remove(&mut self, call_id: &str) -> Option<CallSlot> {
        let at = self.by_id.remove(call_id)?;
        Some(self.slots.remove(at))
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn values(&self) -> impl Iterator<Item = &CallSlot> {
        self.slots.iter().map(|(_, slot)| slot)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut CallSlot> {
        self.slots.iter_mut().map(|(_, slot)| slot)
    }

    fn into_values(self) -> impl Iterator<Item = CallSlot> {
        self.slots.into_iter().map(|(_, slot)| slot)
    }
}

/// A call the tracker ended, until its slot is taken.
struct EndedCall {
    call_id: Box<str>,
    serial: u64,
}

/// A call whose media an endpoint's latest SDP switched away from RTP
/// (T.38): a copy with that media marked so, else `None` (the common case:
/// no copy).
fn unwatched_view(not_rtp: &FastSet<EndpointKey>, call: &Call) -> Option<Call> {
    if not_rtp.is_empty() {
        return None;
    }
    let switched =
        |m: &super::MediaEndpoint| not_rtp.contains(&endpoint(addr_bytes(m.addr), m.port));
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

fn figures_of(time: TimeBase, stats: &FlowStats, direction: CallDirection) -> StreamFigures {
    StreamFigures {
        direction,
        packets: stats.packets,
        expected: u64::from(stats.expected()),
        lost: stats.lost(),
        first_epoch: time.epoch_rounded(stats.first_seen_ns),
        last_epoch: time.epoch_rounded(stats.last_seen_ns),
        comfort_noise: stats.comfort_noise,
        resumed_talkspurts: u32::from(stats.resumed_talkspurts),
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
