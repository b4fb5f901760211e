//! Ties RTP streams to calls by the media endpoints their SDP announced.
//!
//! A stream belongs to a call when its destination is an endpoint a side
//! announced (that side receives it), or, for symmetric RTP and NAT, when its
//! source is one (that side sends it). When several dialogs announced the
//! same endpoint (back-to-back calls reusing a port), the stream belongs to
//! the one whose announcement came last before the stream began.
//!
//! The [`EndpointIndex`] maps each announced endpoint to its announcements,
//! so a stream is matched with two lookups, whatever the number of calls.

use std::sync::Arc;

use detector_common::{
    flow::{EndpointKey, FlowKey},
    packet::addr_bytes,
};

use super::{Call, CallDirection, FastMap};

/// Media may start a little before the SDP that announces it is seen
/// (early media racing the 183, capture timestamps of two interfaces).
const EARLY_SLACK_S: f64 = 2.0;

/// A stream's place in a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub call_id: Arc<str>,
    pub direction: CallDirection,
}

/// One side's announcement of an endpoint.
#[derive(Clone, Debug)]
struct Announcement {
    call_id: Arc<str>,
    /// Which way media sent to this endpoint flows in the call.
    toward: CallDirection,
    /// Which way media sent from this endpoint flows (symmetric RTP).
    from: CallDirection,
    since: f64,
    /// When the call ended, once it has.
    end: Option<f64>,
}

/// Announced RTP endpoints, by endpoint and by call.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    by_endpoint: FastMap<EndpointKey, Vec<Announcement>>,
    by_call: FastMap<Arc<str>, Vec<EndpointKey>>,
}

/// An endpoint key from an address and port (IPv4 as IPv4-mapped, as the
/// kernel's keys have it).
pub fn endpoint(addr: [u8; 16], port: u16) -> EndpointKey {
    EndpointKey {
        addr,
        port,
        _pad: [0; 2],
    }
}

impl EndpointIndex {
    /// Replaces what `call` announced; returns the endpoints whose
    /// announcements changed (streams there must be matched again).
    pub fn reindex(&mut self, call: &Call) -> Vec<EndpointKey> {
        let id: Arc<str> = self
            .by_call
            .get_key_value(call.call_id.as_str())
            .map_or_else(|| Arc::from(call.call_id.as_str()), |(k, _)| k.clone());
        let mut touched = self.remove(&id);
        let mut mine = Vec::new();
        for (side, ep) in &call.announced {
            if !ep.is_rtp() {
                continue;
            }
            let key = endpoint(addr_bytes(ep.addr), ep.port);
            self.by_endpoint.entry(key).or_default().push(Announcement {
                call_id: id.clone(),
                toward: CallDirection::from_sender(side.other()),
                from: CallDirection::from_sender(*side),
                since: ep.since,
                end: call.end_epoch,
            });
            if !mine.contains(&key) {
                mine.push(key);
            }
        }
        touched.extend(mine.iter().copied());
        if !mine.is_empty() {
            self.by_call.insert(id, mine);
        }
        touched
    }

    /// Records that a call ended at `end` (a stream that began later is
    /// not its own); returns the endpoints it had announced, whose streams
    /// must be matched again.
    pub fn set_end(&mut self, call_id: &str, end: f64) -> Vec<EndpointKey> {
        let keys = self.by_call.get(call_id).cloned().unwrap_or_default();
        for key in &keys {
            for a in self.by_endpoint.get_mut(key).into_iter().flatten() {
                if &*a.call_id == call_id {
                    a.end = Some(end);
                }
            }
        }
        keys
    }

    /// Forgets a call; returns the endpoints it had announced.
    pub fn remove(&mut self, call_id: &str) -> Vec<EndpointKey> {
        let keys = self.by_call.remove(call_id).unwrap_or_default();
        for key in &keys {
            if let Some(list) = self.by_endpoint.get_mut(key) {
                list.retain(|a| &*a.call_id != call_id);
                if list.is_empty() {
                    self.by_endpoint.remove(key);
                }
            }
        }
        keys
    }

    /// The calls a stream belongs to, with its direction in each. A stream
    /// can belong to two calls: the legs of a B2BUA that re-INVITEd both
    /// sides to send media to each other directly announce the same
    /// endpoints. `port_offset` shifts the stream's ports first (RTCP on
    /// the port after RTP's).
    pub fn matches(&self, key: &FlowKey, first_epoch: f64, port_offset: u16) -> Vec<Match> {
        let dst = endpoint(key.dst_addr, key.dst_port.wrapping_sub(port_offset));
        let src = endpoint(key.src_addr, key.src_port.wrapping_sub(port_offset));
        // The receiver's SDP is authoritative; the source only counts when no
        // destination matches (symmetric RTP from behind NAT).
        let found = self.pick(&dst, first_epoch, |a| a.toward);
        if found.is_empty() {
            self.pick(&src, first_epoch, |a| a.from)
        } else {
            found
        }
    }

    /// Every call that announced the endpoint before the stream began and
    /// had not ended by then; failing that, the earliest announcement after
    /// the stream began by a call alive then (media racing its SDP), else
    /// the latest before it, else the earliest.
    fn pick(
        &self,
        key: &EndpointKey,
        first_epoch: f64,
        direction: impl Fn(&Announcement) -> CallDirection,
    ) -> Vec<Match> {
        let Some(list) = self.by_endpoint.get(key) else {
            return Vec::new();
        };
        let mut candidates: Vec<&Announcement> = list.iter().collect();
        candidates.sort_by(|a, b| a.since.total_cmp(&b.since));
        let starts = first_epoch + EARLY_SLACK_S;
        let mut current: Vec<Match> = Vec::new();
        for a in candidates.iter().rev() {
            let alive = a.end.is_none_or(|end| end >= first_epoch);
            if a.since <= starts && alive && !current.iter().any(|m| m.call_id == a.call_id) {
                current.push(Match {
                    call_id: a.call_id.clone(),
                    direction: direction(a),
                });
            }
        }
        if !current.is_empty() {
            return current;
        }
        let fallback = candidates
            .iter()
            .find(|a| a.since > starts && a.end.is_none_or(|end| end >= first_epoch))
            .or_else(|| candidates.iter().rev().find(|a| a.since <= starts))
            .or_else(|| candidates.first());
        fallback
            .map(|a| Match {
                call_id: a.call_id.clone(),
                direction: direction(a),
            })
            .into_iter()
            .collect()
    }
}
