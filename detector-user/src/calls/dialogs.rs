//! SIP dialogs per Call-ID: their state, who ended them and why, and the
//! media each side announced in SDP.
//!
//! Offer/answer is followed the way monitors must, not the way endpoints do:
//! every SDP a side sends (INVITE, 183, 200, ACK for a late offer, re-INVITE,
//! UPDATE, PRACK) replaces that side's view of where it receives media and in
//! which direction. A response's sender is the side that did not send the
//! request, which the From tag tells.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use crate::sip::{
    sdp::{self, MediaDirection},
    Reason, SipMessage,
};

/// One end of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Self::Caller => Self::Callee,
            Self::Callee => Self::Caller,
        }
    }
}

/// Which way a stream flows within its call.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    CallerToCallee,
    CalleeToCaller,
}

impl CallDirection {
    pub const BOTH: [Self; 2] = [Self::CallerToCallee, Self::CalleeToCaller];

    pub fn from_sender(sender: Side) -> Self {
        match sender {
            Side::Caller => Self::CallerToCallee,
            Side::Callee => Self::CalleeToCaller,
        }
    }

    pub fn sender(self) -> Side {
        match self {
            Self::CallerToCallee => Side::Caller,
            Self::CalleeToCaller => Side::Callee,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerToCallee => "caller_to_callee",
            Self::CalleeToCaller => "callee_to_caller",
        }
    }
}

/// Where a dialog is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// INVITE sent, no provisional answer with a tag yet.
    Trying,
    /// A provisional answer (possibly with early media).
    Early,
    /// Answered (2xx).
    Confirmed,
    Ended,
}

/// One m-line as a side announced it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MediaEndpoint {
    pub media: String,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: String,
    pub direction: &'static str,
    /// `c=0.0.0.0`, the old way to hold.
    pub hold: bool,
    pub rtcp_mux: bool,
    pub crypto: bool,
    /// Clock rate per payload type, from `a=rtpmap`.
    pub rtpmap: std::collections::BTreeMap<u8, u32>,
    /// When this side announced it (Unix seconds).
    #[serde(skip)]
    pub since: f64,
}

impl MediaEndpoint {
    /// The side that announced this endpoint intends to send media from it.
    pub fn sends(&self) -> bool {
        !self.hold && matches!(self.direction, "sendrecv" | "sendonly")
    }

    /// The side that announced this endpoint intends to receive media on it.
    pub fn receives(&self) -> bool {
        !self.hold && matches!(self.direction, "sendrecv" | "recvonly")
    }

    pub fn is_rtp(&self) -> bool {
        self.proto
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"RTP"))
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallEnd {
    /// BYE, CANCEL, INVITE (a non-2xx final answer) or EXPIRED.
    pub method: String,
    /// The final status: the BYE's response, or the INVITE's failure.
    pub status: Option<u16>,
    pub reasons: Vec<Reason>,
}

impl CallEnd {
    /// A dialog that went quiet without a BYE.
    pub fn expired() -> Self {
        Self {
            method: "EXPIRED".into(),
            status: None,
            reasons: Vec::new(),
        }
    }
}

/// A dialog and what it announced.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub state: CallState,
    pub invite_epoch: f64,
    pub answer_epoch: Option<f64>,
    pub end_epoch: Option<f64>,
    pub ended_by: Option<Side>,
    pub end: Option<CallEnd>,
    pub caller_media: Vec<MediaEndpoint>,
    pub callee_media: Vec<MediaEndpoint>,
    /// Media every side ever announced, for matching streams that began
    /// before a re-INVITE moved them.
    #[serde(skip)]
    pub announced: Vec<(Side, MediaEndpoint)>,
    #[serde(skip)]
    pub last_sip_epoch: f64,
    #[serde(skip)]
    pub session_expires: Option<u32>,
    /// Order of the INVITEs that began the dialogs, for stable output.
    #[serde(skip)]
    pub serial: u64,
    /// Bumped whenever `announced` changes, so an index of announcements
    /// knows when to look again.
    #[serde(skip)]
    pub announce_gen: u64,
    #[serde(skip)]
    caller_tag: Option<String>,
    #[serde(skip)]
    invite_cseq: Option<u32>,
    #[serde(skip)]
    bye_cseq: Option<u32>,
}

impl Call {
    pub fn media(&self, side: Side) -> &[MediaEndpoint] {
        match side {
            Side::Caller => &self.caller_media,
            Side::Callee => &self.callee_media,
        }
    }

    fn media_mut(&mut self, side: Side) -> &mut Vec<MediaEndpoint> {
        match side {
            Side::Caller => &mut self.caller_media,
            Side::Callee => &mut self.callee_media,
        }
    }

    /// Which side sent `msg`.
    fn sender(&self, msg: &SipMessage) -> Side {
        let from_caller = match (&self.caller_tag, msg.from_tag()) {
            (Some(caller), Some(tag)) => caller == tag,
            _ => true,
        };
        let request_by = if from_caller {
            Side::Caller
        } else {
            Side::Callee
        };
        if msg.method().is_some() {
            request_by
        } else {
            request_by.other()
        }
    }

    fn apply_sdp(&mut self, side: Side, msg: &SipMessage, ts: f64) {
        let Some(Ok(desc)) = msg.sdp_body().map(sdp::parse) else {
            return;
        };
        let mut media = Vec::new();
        for m in &desc.media {
            let Some(addr) = desc.address_of(m) else {
                continue;
            };
            let endpoint = MediaEndpoint {
                media: m.kind.clone(),
                addr,
                port: m.port,
                proto: m.proto.clone(),
                direction: if desc.is_hold_address(m) {
                    MediaDirection::Inactive.as_str()
                } else {
                    desc.direction_of(m).as_str()
                },
                hold: desc.is_hold_address(m),
                rtcp_mux: m.rtcp_mux,
                crypto: m.crypto,
                rtpmap: m
                    .rtpmaps
                    .iter()
                    .map(|r| (r.payload_type, r.clock_rate))
                    .collect(),
                since: ts,
            };
            if endpoint.port != 0 && !endpoint.hold {
                if self.announced.len() >= MAX_ANNOUNCED {
                    self.announced.remove(0);
                }
                self.announced.push((side, endpoint.clone()));
                self.announce_gen += 1;
            }
            media.push(endpoint);
        }
        *self.media_mut(side) = media;
    }

    fn finish(&mut self, ts: f64, by: Option<Side>, end: CallEnd) {
        if self.state == CallState::Ended {
            return;
        }
        self.state = CallState::Ended;
        self.end_epoch = Some(ts);
        self.ended_by = by;
        self.end = Some(end);
    }
}

/// Announcements kept per call (session refreshes re-send the same SDP; a
/// flood of re-INVITEs must not grow memory).
pub const MAX_ANNOUNCED: usize = 32;
/// Dialogs followed at once; beyond this the longest-idle one is expired.
pub const MAX_DIALOGS: usize = 100_000;
/// An INVITE without a final answer for this long is dead (RFC 3261's
/// Timer C is 3 minutes).
pub const UNANSWERED_MAX_AGE_S: f64 = 300.0;

/// Default age after which a dialog without SIP is considered dead when it
/// announced no Session-Expires.
pub const DEFAULT_MAX_DIALOG_AGE_S: f64 = 4.0 * 3600.0;

/// Follows every dialog. Calls are shared (`Arc`) with the views readers
/// hold; a call is copied only when it changes while a view still holds it.
#[derive(Debug)]
pub struct CallTracker {
    active: super::FastMap<String, Arc<Call>>,
    ended: Vec<Arc<Call>>,
    next_serial: u64,
    max_age_s: f64,
}

impl Default for CallTracker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DIALOG_AGE_S)
    }
}

impl CallTracker {
    pub fn new(max_age_s: f64) -> Self {
        Self {
            active: super::FastMap::default(),
            ended: Vec::new(),
            next_serial: 0,
            max_age_s,
        }
    }

    /// Feeds one SIP message seen at `ts` (Unix seconds). Messages outside an
    /// INVITE dialog (REGISTER, OPTIONS, ...) are ignored. Returns the call
    /// when the message changed the media it announced.
    pub fn on_message(&mut self, msg: &SipMessage, ts: f64) -> Option<Arc<Call>> {
        let call_id = msg.call_id()?;
        let (cseq, cseq_method) = msg.cseq()?;
        if !self.active.contains_key(call_id) {
            if msg.method() != Some("INVITE") || msg.to_tag().is_some() {
                return None;
            }
            if self.active.len() >= MAX_DIALOGS {
                self.expire_longest_idle(ts);
            }
            self.next_serial += 1;
            self.active.insert(
                call_id.to_string(),
                Arc::new(Call {
                    call_id: call_id.to_string(),
                    from: msg.header("from").unwrap_or_default().to_string(),
                    to: msg.header("to").unwrap_or_default().to_string(),
                    state: CallState::Trying,
                    invite_epoch: ts,
                    answer_epoch: None,
                    end_epoch: None,
                    ended_by: None,
                    end: None,
                    caller_media: Vec::new(),
                    callee_media: Vec::new(),
                    announced: Vec::new(),
                    last_sip_epoch: ts,
                    session_expires: None,
                    caller_tag: msg.from_tag().map(str::to_string),
                    invite_cseq: Some(cseq),
                    bye_cseq: None,
                    serial: self.next_serial,
                    announce_gen: 0,
                }),
            );
        }
        let call = Arc::make_mut(self.active.get_mut(call_id)?);
        let gen_before = call.announce_gen;
        call.last_sip_epoch = ts;
        if let Some(expires) = msg.session_expires() {
            call.session_expires = Some(expires);
        }
        let side = call.sender(msg);
        match (msg.method(), msg.status()) {
            (Some("INVITE" | "UPDATE" | "PRACK" | "ACK"), _) => {
                if msg.method() == Some("INVITE") && msg.to_tag().is_none() {
                    call.invite_cseq = Some(cseq);
                }
                call.apply_sdp(side, msg, ts);
            }
            (Some("BYE"), _) => {
                call.bye_cseq = Some(cseq);
                call.finish(
                    ts,
                    Some(side),
                    CallEnd {
                        method: "BYE".into(),
                        status: None,
                        reasons: msg.reasons(),
                    },
                );
            }
            (Some("CANCEL"), _) if call.state != CallState::Confirmed => {
                call.finish(
                    ts,
                    Some(side),
                    CallEnd {
                        method: "CANCEL".into(),
                        status: None,
                        reasons: msg.reasons(),
                    },
                );
            }
            (None, Some(status)) if cseq_method == "INVITE" => {
                call.apply_sdp(side, msg, ts);
                let initial = call.invite_cseq == Some(cseq) && call.state != CallState::Confirmed;
                match status {
                    101..=199 if call.state == CallState::Trying && msg.to_tag().is_some() => {
                        call.state = CallState::Early;
                    }
                    200..=299 => {
                        if call.state != CallState::Ended {
                            call.state = CallState::Confirmed;
                        }
                        call.answer_epoch.get_or_insert(ts);
                    }
                    // Authentication challenges are retried with a new INVITE.
                    401 | 407 => {}
                    300..=699 if initial => {
                        let cancelled = call.end.as_ref().is_some_and(|e| e.method == "CANCEL");
                        if cancelled {
                            if let Some(end) = &mut call.end {
                                end.status = Some(status);
                            }
                        } else {
                            call.finish(
                                ts,
                                Some(side),
                                CallEnd {
                                    method: "INVITE".into(),
                                    status: Some(status),
                                    reasons: msg.reasons(),
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
            (None, Some(status))
                if cseq_method == "BYE" && status >= 200 && call.bye_cseq == Some(cseq) =>
            {
                if let Some(end) = &mut call.end {
                    end.status.get_or_insert(status);
                }
            }
            _ => {}
        }
        let changed = call.announce_gen != gen_before;
        let touched = changed.then(|| self.active.get(call_id).map(Arc::clone));
        self.retire_ended(call_id);
        touched.flatten()
    }

    fn retire_ended(&mut self, call_id: &str) {
        // The answer to a BYE or CANCEL still arrives after the end: keep
        // the call until it does (or until `expire` settles it).
        let settled = self.active.get(call_id).is_some_and(|c| {
            c.state == CallState::Ended
                && c.end.as_ref().is_some_and(|e| {
                    e.status.is_some() || !matches!(e.method.as_str(), "BYE" | "CANCEL")
                })
        });
        if settled {
            if let Some(call) = self.active.remove(call_id) {
                self.ended.push(call);
            }
        }
    }

    fn expire_longest_idle(&mut self, now: f64) {
        let oldest = self
            .active
            .values()
            .min_by(|a, b| a.last_sip_epoch.total_cmp(&b.last_sip_epoch))
            .map(|c| c.call_id.clone());
        if let Some(mut call) = oldest.and_then(|id| self.active.remove(&id)) {
            Arc::make_mut(&mut call).finish(now, None, CallEnd::expired());
            self.ended.push(call);
        }
    }

    /// Ends dialogs that saw no SIP for longer than their Session-Expires
    /// (twice, to allow the refresh) or the maximum age, and INVITEs left
    /// without a final answer.
    pub fn expire(&mut self, now: f64) -> usize {
        self.expire_quiet_since(now, f64::NEG_INFINITY)
    }

    /// As [`CallTracker::expire`], with a dialog's quiet time counted from
    /// `clock_resumed` at the earliest: offline, time across a jump of the
    /// capture's clock was never observed, so it is not silence.
    pub fn expire_quiet_since(&mut self, now: f64, clock_resumed: f64) -> usize {
        let max_age = self.max_age_s;
        let expired: Vec<String> = self
            .active
            .values()
            .filter(|c| {
                let limit = match c.state {
                    CallState::Trying | CallState::Early => UNANSWERED_MAX_AGE_S.min(max_age),
                    _ => c.session_expires.map_or(max_age, |s| 2.0 * f64::from(s)),
                };
                c.state != CallState::Ended && now - c.last_sip_epoch.max(clock_resumed) > limit
            })
            .map(|c| c.call_id.clone())
            .collect();
        for id in &expired {
            if let Some(mut call) = self.active.remove(id) {
                Arc::make_mut(&mut call).finish(now, None, CallEnd::expired());
                self.ended.push(call);
            }
        }
        // Ended calls whose BYE never got an answer are settled now, unless
        // the clock only just resumed: the answer may be the next frame.
        let unsettled: Vec<String> = self
            .active
            .values()
            .filter(|c| c.state == CallState::Ended && c.last_sip_epoch.max(clock_resumed) < now)
            .map(|c| c.call_id.clone())
            .collect();
        for id in unsettled {
            if let Some(call) = self.active.remove(&id) {
                self.ended.push(call);
            }
        }
        expired.len()
    }

    /// Whether `call_id` is a dialog followed now (active, or ended and
    /// not yet reported).
    pub fn follows(&self, call_id: &str) -> bool {
        self.active.contains_key(call_id) || self.ended.iter().any(|c| c.call_id == call_id)
    }

    /// Drops a dialog without reporting it; whether there was one.
    pub fn forget(&mut self, call_id: &str) -> bool {
        let active = self.active.remove(call_id).is_some();
        let before = self.ended.len();
        self.ended.retain(|c| c.call_id != call_id);
        active || self.ended.len() != before
    }

    /// Calls that ended since the last call (for call records).
    pub fn take_ended(&mut self) -> Vec<Arc<Call>> {
        std::mem::take(&mut self.ended)
    }

    /// Active calls.
    pub fn active(&self) -> impl Iterator<Item = &Arc<Call>> {
        self.active.values()
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    pub fn ended_count(&self) -> usize {
        self.ended.len()
    }

    /// An active call.
    pub fn get(&self, call_id: &str) -> Option<&Arc<Call>> {
        self.active.get(call_id)
    }

    /// Every call in the order the dialogs began (offline use).
    pub fn into_calls(mut self) -> Vec<Arc<Call>> {
        let mut all: Vec<Arc<Call>> = self.ended.drain(..).collect();
        all.extend(self.active.into_values());
        all.sort_by_key(|c| c.serial);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse_message;

    fn msg(text: &str) -> SipMessage {
        let text = text.replace('\n', "\r\n");
        parse_message(text.as_bytes()).expect("test message").0
    }

    fn sdp(addr: &str, port: u16, dir: &str) -> String {
        format!("Content-Type: application/sdp\n\nv=0\nc=IN IP4 {addr}\nm=audio {port} RTP/AVP 0\na={dir}\n")
    }

    fn request(
        method: &str,
        cseq: u32,
        from_tag: &str,
        to_tag: Option<&str>,
        extra: &str,
    ) -> SipMessage {
        let to = to_tag.map_or(String::new(), |t| format!(";tag={t}"));
        let body_or_end = if extra.contains("\n\n") {
            extra.to_string()
        } else {
            format!("{extra}\n")
        };
        msg(&format!(
            "{method} sip:b@x SIP/2.0\nCall-ID: c1\nFrom: <sip:a@x>;tag={from_tag}\nTo: <sip:b@x>{to}\nCSeq: {cseq} {method}\n{body_or_end}"
        ))
    }

    fn response(
        status: u16,
        method: &str,
        cseq: u32,
        from_tag: &str,
        to_tag: &str,
        extra: &str,
    ) -> SipMessage {
        let body_or_end = if extra.contains("\n\n") {
            extra.to_string()
        } else {
            format!("{extra}\n")
        };
        msg(&format!(
            "SIP/2.0 {status} X\nCall-ID: c1\nFrom: <sip:a@x>;tag={from_tag}\nTo: <sip:b@x>;tag={to_tag}\nCSeq: {cseq} {method}\n{body_or_end}"
        ))
    }

    #[test]
    fn answered_call_hung_up_by_the_callee_with_a_reason() {
        let mut t = CallTracker::default();
        t.on_message(
            &request("INVITE", 1, "a", None, &sdp("10.0.0.1", 4000, "sendrecv")),
            1.0,
        );
        t.on_message(&response(180, "INVITE", 1, "a", "b", ""), 1.5);
        assert_eq!(t.active().next().unwrap().state, CallState::Early);
        t.on_message(
            &response(
                200,
                "INVITE",
                1,
                "a",
                "b",
                &sdp("10.0.0.2", 5000, "sendrecv"),
            ),
            2.0,
        );
        t.on_message(&request("ACK", 1, "a", Some("b"), ""), 2.1);
        let call = t.active().next().unwrap();
        assert_eq!(
            (call.state, call.answer_epoch),
            (CallState::Confirmed, Some(2.0))
        );
        assert_eq!(call.media(Side::Callee)[0].port, 5000);
        // The callee's BYE has the tags swapped.
        let bye = msg("BYE sip:a@x SIP/2.0\nCall-ID: c1\nFrom: <sip:b@x>;tag=b\nTo: <sip:a@x>;tag=a\nCSeq: 7 BYE\nReason: SIP;cause=408;text=\"RTP Timeout\"\n\n");
        t.on_message(&bye, 30.0);
        t.on_message(&msg("SIP/2.0 200 OK\nCall-ID: c1\nFrom: <sip:b@x>;tag=b\nTo: <sip:a@x>;tag=a\nCSeq: 7 BYE\n\n"), 30.01);
        let ended = t.take_ended();
        assert_eq!(ended.len(), 1);
        let call = &ended[0];
        assert_eq!(
            (call.ended_by, call.end_epoch),
            (Some(Side::Callee), Some(30.0))
        );
        let end = call.end.as_ref().unwrap();
        assert_eq!(
            (end.method.as_str(), end.status, end.reasons[0].cause),
            ("BYE", Some(200), Some(408))
        );
    }

    #[test]
    fn auth_challenge_then_cancel() {
        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        t.on_message(&response(407, "INVITE", 1, "a", "p", ""), 1.1);
        t.on_message(
            &request("INVITE", 2, "a", None, &sdp("10.0.0.1", 4000, "sendrecv")),
            1.2,
        );
        assert_eq!(t.active().count(), 1, "a 407 is retried, not an end");
        t.on_message(&request("CANCEL", 2, "a", None, ""), 5.0);
        t.on_message(&response(487, "INVITE", 2, "a", "q", ""), 5.1);
        let ended = t.take_ended();
        let end = ended[0].end.as_ref().unwrap();
        assert_eq!(
            (end.method.as_str(), end.status, ended[0].ended_by),
            ("CANCEL", Some(487), Some(Side::Caller))
        );
    }

    #[test]
    fn busy_is_a_sip_error_and_reinvite_failures_are_not_ends() {
        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        t.on_message(&response(486, "INVITE", 1, "a", "b", ""), 2.0);
        let ended = t.take_ended();
        assert_eq!(ended[0].end.as_ref().unwrap().status, Some(486));
        assert_eq!(ended[0].ended_by, Some(Side::Callee));

        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        t.on_message(&response(200, "INVITE", 1, "a", "b", ""), 2.0);
        t.on_message(&request("INVITE", 2, "a", Some("b"), ""), 3.0);
        t.on_message(&response(488, "INVITE", 2, "a", "b", ""), 3.1);
        assert_eq!(t.active().next().unwrap().state, CallState::Confirmed);
    }

    #[test]
    fn late_offer_and_hold() {
        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        t.on_message(
            &response(
                200,
                "INVITE",
                1,
                "a",
                "b",
                &sdp("10.0.0.2", 5000, "sendrecv"),
            ),
            2.0,
        );
        t.on_message(
            &request("ACK", 1, "a", Some("b"), &sdp("10.0.0.1", 4000, "sendrecv")),
            2.1,
        );
        let call = t.active().next().unwrap();
        assert_eq!(call.media(Side::Caller)[0].port, 4000);
        t.on_message(
            &request(
                "INVITE",
                2,
                "a",
                Some("b"),
                &sdp("0.0.0.0", 4000, "sendrecv"),
            ),
            10.0,
        );
        let call = t.active().next().unwrap();
        assert!(call.media(Side::Caller)[0].hold && !call.media(Side::Caller)[0].sends());
    }

    #[test]
    fn unanswered_invites_and_floods_are_bounded() {
        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        assert_eq!(t.expire(200.0), 0);
        assert_eq!(t.expire(302.0), 1, "no final answer in 5 minutes");
        let ended = t.take_ended();
        assert_eq!(ended[0].end.as_ref().unwrap().method, "EXPIRED");
    }

    #[test]
    fn dialogs_without_bye_expire() {
        let mut t = CallTracker::new(60.0);
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        t.on_message(
            &response(
                200,
                "INVITE",
                1,
                "a",
                "b",
                "Session-Expires: 10;refresher=uac\n",
            ),
            2.0,
        );
        assert_eq!(t.expire(15.0), 0);
        assert_eq!(t.expire(23.0), 1, "twice Session-Expires without a refresh");
        let ended = t.take_ended();
        assert_eq!(ended[0].end.as_ref().unwrap().method, "EXPIRED");
        assert_eq!(ended[0].ended_by, None);
    }

    #[test]
    fn quiet_time_counts_from_where_the_clock_resumed() {
        let mut t = CallTracker::default();
        t.on_message(&request("INVITE", 1, "a", None, ""), 1.0);
        // The clock jumped to 1e9: 5 minutes after that, not before.
        assert_eq!(t.expire_quiet_since(1e9 + 200.0, 1e9), 0);
        assert_eq!(t.expire_quiet_since(1e9 + 302.0, 1e9), 1);
    }
}
