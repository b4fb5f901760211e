//! Calls as people and programs read them: streams, per-direction media
//! summary, flag timeline and the bucket. The same objects come out of
//! `detector analyze --json`, `GET /api/calls` and the `--calls-log` lines.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{
    detect::{Flag, FlagKind},
    quality::{FarEnd, Quality},
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
    /// The E-model's MOS and R over the call, and the lowest window MOS
    /// (`calls::quality`); `null` without media.
    pub mos: Option<f64>,
    pub mos_min: Option<f64>,
    /// The latest window's MOS (live: now; at the end: the last sample).
    pub mos_last: Option<f64>,
    pub r_factor: Option<f64>,
    /// The latest RTCP report the receiver sent about this direction;
    /// `null` without reports.
    pub far_end: Option<FarEnd>,
}

/// A call with everything known about it: the call's own fields, then
/// the report's, in one JSON object.
#[derive(Clone, Debug)]
pub struct CallReport {
    pub call: Arc<Call>,
    pub streams: Vec<CallStream>,
    pub media: BTreeMap<CallDirection, MediaSummary>,
    pub flags: Vec<Flag>,
    /// How long before the end the first flag still open at the end was raised.
    pub flagged_before_end_s: Option<f64>,
    pub bucket: Option<&'static str>,
}

/// Written field by field rather than with `#[serde(flatten)]`, which goes
/// through serde's map machinery and made serialising 20,000 calls for
/// `/api/calls` several times slower.
impl Serialize for CallReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("CallReport", 16)?;
        call_fields(&mut s, &self.call)?;
        report_fields(&mut s, self)?;
        s.end()
    }
}

fn call_fields<S: serde::ser::SerializeStruct>(s: &mut S, c: &Call) -> Result<(), S::Error> {
    s.serialize_field("call_id", &c.call_id)?;
    s.serialize_field("from", &c.from)?;
    s.serialize_field("to", &c.to)?;
    s.serialize_field("state", &c.state)?;
    s.serialize_field("invite_epoch", &c.invite_epoch)?;
    s.serialize_field("answer_epoch", &c.answer_epoch)?;
    s.serialize_field("end_epoch", &c.end_epoch)?;
    s.serialize_field("ended_by", &c.ended_by)?;
    s.serialize_field("end", &c.end)?;
    s.serialize_field("caller_media", &c.caller_media)?;
    s.serialize_field("callee_media", &c.callee_media)
}

fn report_fields<S: serde::ser::SerializeStruct>(
    s: &mut S,
    r: &CallReport,
) -> Result<(), S::Error> {
    s.serialize_field("streams", &r.streams)?;
    s.serialize_field("media", &r.media)?;
    s.serialize_field("flags", &r.flags)?;
    s.serialize_field("flagged_before_end_s", &r.flagged_before_end_s)?;
    s.serialize_field("bucket", &r.bucket)
}

/// The call's own fields as JSON, without the enclosing braces: they change
/// only with SIP, so a reader can keep them from one request to the next.
pub fn call_fields_json(call: &Call) -> Vec<u8> {
    struct Fields<'a>(&'a Call);
    impl Serialize for Fields<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut s = serializer.serialize_struct("Call", 11)?;
            call_fields(&mut s, self.0)?;
            s.end()
        }
    }
    let mut json = serde_json::to_vec(&Fields(call)).unwrap_or_else(|_| b"{}".to_vec());
    json.pop();
    json.remove(0);
    json
}

impl CallReport {
    /// Writes the report as JSON, with its call's fields as
    /// [`call_fields_json`] made them.
    pub fn write_json_with(&self, call_json: &[u8], out: &mut Vec<u8>) -> serde_json::Result<()> {
        struct Fields<'a>(&'a CallReport);
        impl Serialize for Fields<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut s = serializer.serialize_struct("Report", 5)?;
                report_fields(&mut s, self.0)?;
                s.end()
            }
        }
        // `{` + the call's fields + `,` + the report's fields: written in
        // place, the report's own opening brace then taken out.
        out.push(b'{');
        out.extend_from_slice(call_json);
        out.push(b',');
        let brace = out.len();
        serde_json::to_writer(&mut *out, &Fields(self))?;
        out.remove(brace);
        Ok(())
    }
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

    /// Adds each direction's voice quality (`[caller_to_callee, callee_to_caller]`).
    pub fn set_quality(&mut self, quality: &[Quality; 2]) {
        for (direction, q) in CallDirection::BOTH.into_iter().zip(quality) {
            if let Some(media) = self.media.get_mut(&direction) {
                media.mos = q.mos;
                media.mos_min = q.mos_min;
                media.mos_last = q.mos_last;
                media.r_factor = q.r_factor;
                media.far_end = q.far_end.clone();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The report is one object: the call's fields (as `Call` serialises
    /// them), then the report's.
    #[test]
    fn a_report_serialises_as_the_call_and_its_figures() {
        let mut tracker = super::super::CallTracker::default();
        let invite = "INVITE sip:b SIP/2.0\r\nCall-ID: k\r\nFrom: <sip:a>;tag=a\r\nTo: <sip:b>\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        tracker.on_message(
            &crate::sip::parse_message(invite.as_bytes()).unwrap().0,
            1.0,
        );
        let call = tracker.get("k").unwrap().clone();
        let report = CallReport::new(call.clone(), Vec::new(), &[], &[], 2.0);
        let json = serde_json::to_value(&report).unwrap();
        let mut want = serde_json::to_value(&*call).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        for (k, v) in want.as_object_mut().unwrap().iter() {
            assert_eq!(&json[k], v, "{k}");
        }
        for k in [
            "streams",
            "media",
            "flags",
            "flagged_before_end_s",
            "bucket",
        ] {
            assert!(json.get(k).is_some(), "{k} in {keys:?}");
        }
        assert_eq!(keys.len(), want.as_object().unwrap().len() + 5);
        // Written from the kept call fields, the same JSON.
        let mut out = Vec::new();
        report
            .write_json_with(&call_fields_json(&call), &mut out)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            json
        );
    }
}
