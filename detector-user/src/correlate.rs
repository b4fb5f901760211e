//! Ties RTP streams to calls by the media endpoints their SDP announced.
//!
//! A stream belongs to a call when its destination is an endpoint a side
//! announced (that side receives it), or, for symmetric RTP and NAT, when its
//! source is one (that side sends it). When several dialogs announced the
//! same endpoint (back-to-back calls reusing a port), the stream belongs to
//! the one whose announcement came last before the stream began.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    calls::{Call, Side},
    flows::StreamRecord,
};

/// Media may start a little before the SDP that announces it is seen
/// (early media racing the 183, capture timestamps of two interfaces).
const EARLY_SLACK_S: f64 = 2.0;

/// Which way a stream flows within its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    CallerToCallee,
    CalleeToCaller,
}

impl CallDirection {
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

/// A stream's place in a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub call: usize,
    pub direction: CallDirection,
}

/// Finds each stream's calls (`calls` indexed as given). A stream can belong
/// to two calls: the legs of a B2BUA that re-INVITEd both sides to send media
/// to each other directly announce the same endpoints.
pub fn correlate(calls: &[Call], streams: &[StreamRecord]) -> Vec<Vec<Match>> {
    streams.iter().map(|s| matches(calls, s)).collect()
}

/// An announcement that fits a stream: (when, call, direction).
type Candidate = (f64, usize, CallDirection);

fn matches(calls: &[Call], s: &StreamRecord) -> Vec<Match> {
    // The receiver's SDP is authoritative; the source only counts when no
    // destination matches (symmetric RTP from behind NAT).
    let mut by_dst = Vec::new();
    let mut by_src = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        for (side, ep) in &call.announced {
            if !ep.is_rtp() {
                continue;
            }
            if same(ep.addr, s.dst) && ep.port == s.dport {
                by_dst.push((ep.since, i, CallDirection::from_sender(side.other())));
            }
            if same(ep.addr, s.src) && ep.port == s.sport {
                by_src.push((ep.since, i, CallDirection::from_sender(*side)));
            }
        }
    }
    let found = pick(calls, s, by_dst);
    if found.is_empty() {
        pick(calls, s, by_src)
    } else {
        found
    }
}

/// Every call that announced the endpoint before the stream began and had not
/// ended by then; failing that, the latest announcement before the stream,
/// else the earliest after it.
fn pick(calls: &[Call], s: &StreamRecord, mut candidates: Vec<Candidate>) -> Vec<Match> {
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let starts = s.first_epoch + EARLY_SLACK_S;
    let mut current: Vec<Match> = Vec::new();
    for &(since, call, direction) in candidates.iter().rev() {
        let alive = calls[call].end_epoch.is_none_or(|end| end >= s.first_epoch);
        if since <= starts && alive && !current.iter().any(|m| m.call == call) {
            current.push(Match { call, direction });
        }
    }
    if !current.is_empty() {
        current.sort_by_key(|m| m.call);
        return current;
    }
    let fallback = candidates
        .iter()
        .rev()
        .find(|c| c.0 <= starts)
        .or_else(|| candidates.first());
    fallback
        .map(|&(_, call, direction)| Match { call, direction })
        .into_iter()
        .collect()
}

fn same(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V6(y)) | (IpAddr::V6(y), IpAddr::V4(x)) => {
            y.to_ipv4_mapped() == Some(x)
        }
        _ => a == b,
    }
}
