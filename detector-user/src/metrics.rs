//! Prometheus metrics: one registry, `detector_` prefix, `_total` counters,
//! label values from bounded enums only (never a Call-ID, number or IP).
//!
//! The family names are a contract: dashboards and alert rules (`deploy/`)
//! depend on them.

use detector_common::{
    counters::{self, COUNTERS_PER_HOOK, HOOKS},
    flow::FLOW_TABLE_CAPACITY,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    calls::{detect::FlagKind, engine::LiveCall, records::CallReport, CallState},
    kernel::Counters,
};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Hook {
    xdp,
    tc,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookOutcome {
    pub hook: Hook,
    pub outcome: &'static str,
}

/// Which way a packet crossed the interface.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    ingress,
    egress,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: Direction,
}

/// Which way media flows within a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallDirectionLabel {
    pub direction: &'static str,
}

/// The buckets of `detector_call_mos`: the MOS scale, finer where
/// operators draw lines (3.1 poor, 3.6 fair, 4.0 good, 4.3 G.711's best).
const MOS_BUCKETS: [f64; 10] = [1.5, 2.0, 2.5, 3.0, 3.1, 3.6, 4.0, 4.2, 4.3, 4.4];

fn mos_histogram() -> Histogram {
    Histogram::new(MOS_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindDirectionLabel {
    pub kind: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabel {
    pub bucket: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// SIP methods counted by name; anything else is `other`.
const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "UPDATE",
    "PRACK",
    "INFO",
    "NOTIFY",
    "SUBSCRIBE",
    "REFER",
    "MESSAGE",
    "PUBLISH",
];

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    packets: Family<HookOutcome, Counter>,
    rtp_packets: Family<DirectionLabel, Counter>,
    rtcp_packets: Family<DirectionLabel, Counter>,
    rtp_lost: Family<DirectionLabel, Counter>,
    rtp_duplicates: Family<DirectionLabel, Counter>,
    flows_active: Family<DirectionLabel, Gauge>,
    pub flow_table_capacity: Gauge,
    flow_table_evictions: Counter,
    flow_insert_failures: Counter,
    ringbuf_dropped: Counter,
    sip_messages: Family<MethodLabel, Counter>,
    sip_responses: Family<ClassLabel, Counter>,
    pub sip_parse_errors: Counter,
    sip_fragments_dropped: Counter,
    sip_tcp_bytes_dropped: Counter,
    calls_active: Family<StateLabel, Gauge>,
    calls_flagged: Family<KindLabel, Gauge>,
    flags_raised: Family<KindDirectionLabel, Counter>,
    call_end: Family<BucketLabel, Counter>,
    flag_lead_time: Histogram,
    stream_jitter: Histogram,
    call_mos: Family<CallDirectionLabel, Histogram, fn() -> Histogram>,
    pub map_poll_duration: Histogram,
    build_info: Family<VersionLabel, Gauge>,
}

/// Turns the kernel's absolute counter totals into increments.
#[derive(Debug)]
pub struct CounterTotals {
    last: Counters,
}

impl Default for CounterTotals {
    fn default() -> Self {
        Self {
            last: [[0; COUNTERS_PER_HOOK as usize]; HOOKS as usize],
        }
    }
}

impl CounterTotals {
    /// What grew since the last call.
    pub fn delta(&mut self, now: &Counters) -> Counters {
        let mut out = *now;
        for (hook, row) in out.iter_mut().enumerate() {
            for (i, value) in row.iter_mut().enumerate() {
                *value = value.saturating_sub(self.last[hook][i]);
            }
        }
        self.last = *now;
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("detector");
        let m = Self {
            packets: Family::default(),
            rtp_packets: Family::default(),
            rtcp_packets: Family::default(),
            rtp_lost: Family::default(),
            rtp_duplicates: Family::default(),
            flows_active: Family::default(),
            flow_table_capacity: Gauge::default(),
            flow_table_evictions: Counter::default(),
            flow_insert_failures: Counter::default(),
            ringbuf_dropped: Counter::default(),
            sip_messages: Family::default(),
            sip_responses: Family::default(),
            sip_parse_errors: Counter::default(),
            sip_fragments_dropped: Counter::default(),
            sip_tcp_bytes_dropped: Counter::default(),
            calls_active: Family::default(),
            calls_flagged: Family::default(),
            flags_raised: Family::default(),
            call_end: Family::default(),
            flag_lead_time: Histogram::new([
                1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
            stream_jitter: Histogram::new([0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5]),
            call_mos: Family::new_with_constructor(mos_histogram),
            map_poll_duration: Histogram::new([
                0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "packets",
            "Packets seen by the kernel programs, by hook and outcome",
            m.packets.clone(),
        );
        registry.register(
            "rtp_packets",
            "RTP packets, by direction on the interface",
            m.rtp_packets.clone(),
        );
        registry.register(
            "rtcp_packets",
            "RTCP packets (SRTCP included), by direction on the interface",
            m.rtcp_packets.clone(),
        );
        registry.register(
            "rtp_lost_packets",
            "RTP packets lost (expected minus received), by direction",
            m.rtp_lost.clone(),
        );
        registry.register(
            "rtp_duplicate_packets",
            "Duplicate RTP packets, by direction",
            m.rtp_duplicates.clone(),
        );
        registry.register(
            "flows_active",
            "RTP streams in the flow table, by direction",
            m.flows_active.clone(),
        );
        registry.register(
            "flow_table_capacity",
            "Streams the kernel can track at once (flow table and overflow map)",
            m.flow_table_capacity.clone(),
        );
        registry.register(
            "flow_table_evictions",
            "Flows evicted from the full overflow map (capture loss, not network loss)",
            m.flow_table_evictions.clone(),
        );
        registry.register(
            "flow_insert_failures",
            "New flows the kernel could not insert into the flow table",
            m.flow_insert_failures.clone(),
        );
        registry.register(
            "ringbuf_dropped",
            "SIP frames dropped because the ring buffer was full",
            m.ringbuf_dropped.clone(),
        );
        registry.register(
            "sip_messages",
            "SIP requests, by method",
            m.sip_messages.clone(),
        );
        registry.register(
            "sip_responses",
            "SIP responses, by class",
            m.sip_responses.clone(),
        );
        registry.register(
            "sip_parse_errors",
            "SIP messages that could not be parsed",
            m.sip_parse_errors.clone(),
        );
        registry.register(
            "sip_fragments_dropped",
            "IP fragments of SIP the reassembly dropped (a bound hit, or never completed)",
            m.sip_fragments_dropped.clone(),
        );
        registry.register(
            "sip_tcp_bytes_dropped",
            "Bytes of SIP over TCP the reassembly dropped (a bound hit, a gap, or idle)",
            m.sip_tcp_bytes_dropped.clone(),
        );
        registry.register(
            "calls_active",
            "Calls being followed, by state",
            m.calls_active.clone(),
        );
        registry.register(
            "calls_flagged",
            "Calls up now with an open flag, by kind",
            m.calls_flagged.clone(),
        );
        registry.register(
            "flags_raised",
            "Flags raised, by kind and direction",
            m.flags_raised.clone(),
        );
        registry.register("call_end", "Calls ended, by bucket", m.call_end.clone());
        registry.register(
            "flag_lead_time_seconds",
            "How long before a call's end its first open flag was raised",
            m.flag_lead_time.clone(),
        );
        registry.register(
            "stream_jitter_seconds",
            "RFC 3550 jitter of each stream at its call's end",
            m.stream_jitter.clone(),
        );
        registry.register(
            "call_mos",
            "E-model MOS over each ended call, by direction in the call (calls with media that way)",
            m.call_mos.clone(),
        );
        registry.register(
            "map_poll_duration_seconds",
            "Time to read the kernel maps once",
            m.map_poll_duration.clone(),
        );
        registry.register("build_info", "Build information", m.build_info.clone());
        m.flow_table_capacity.set(i64::from(FLOW_TABLE_CAPACITY));
        // Every known label set from the start, so dashboards and alert
        // expressions see zeros rather than absent series.
        for direction in [Direction::ingress, Direction::egress] {
            let label = DirectionLabel { direction };
            let _ = m.rtp_packets.get_or_create(&label);
            let _ = m.rtcp_packets.get_or_create(&label);
            let _ = m.rtp_lost.get_or_create(&label);
            let _ = m.rtp_duplicates.get_or_create(&label);
            let _ = m.flows_active.get_or_create(&label);
        }
        for bucket in crate::calls::records::BUCKETS {
            let _ = m.call_end.get_or_create(&BucketLabel { bucket });
        }
        for kind in FlagKind::ALL {
            let _ = m.calls_flagged.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for direction in ["caller_to_callee", "callee_to_caller"] {
            let _ = m.call_mos.get_or_create(&CallDirectionLabel { direction });
        }
        for (kind, direction) in [
            ("one_way", "caller_to_callee"),
            ("one_way", "callee_to_caller"),
            ("loss", "caller_to_callee"),
            ("loss", "callee_to_caller"),
            ("poor_quality", "caller_to_callee"),
            ("poor_quality", "callee_to_caller"),
            ("rtp_timeout", "both"),
        ] {
            let _ = m
                .flags_raised
                .get_or_create(&KindDirectionLabel { kind, direction });
        }
        for hook in [Hook::xdp, Hook::tc] {
            for (_, outcome) in counters::OUTCOMES {
                let _ = m.packets.get_or_create(&HookOutcome { hook, outcome });
            }
        }
        for method in METHODS.into_iter().chain(["other"]) {
            let _ = m.sip_messages.get_or_create(&MethodLabel { method });
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"] {
            let _ = m.sip_responses.get_or_create(&ClassLabel { class });
        }
        for state in ["trying", "early", "confirmed"] {
            let _ = m.calls_active.get_or_create(&StateLabel { state });
        }
        m.build_info
            .get_or_create(&VersionLabel {
                version: crate::version(),
            })
            .set(1);
        Self { registry, ..m }
    }

    /// Renders the OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    /// Renders the classic Prometheus text format (0.0.4), for clients that
    /// do not ask for OpenMetrics (curl, promtool, older scrapers).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// Adds what the kernel's counters grew by (see [`CounterTotals`]).
    pub fn observe_counters(&self, delta: &Counters) {
        for (hook_index, hook) in [(0usize, Hook::xdp), (1, Hook::tc)] {
            let delta = |i: u32| delta[hook_index][i as usize];
            for (index, outcome) in counters::OUTCOMES {
                self.packets
                    .get_or_create(&HookOutcome { hook, outcome })
                    .inc_by(delta(index));
            }
            let direction = if hook_index == 0 {
                Direction::ingress
            } else {
                Direction::egress
            };
            self.rtp_packets
                .get_or_create(&DirectionLabel { direction })
                .inc_by(delta(counters::RTP));
            self.rtcp_packets
                .get_or_create(&DirectionLabel { direction })
                .inc_by(delta(counters::RTCP));
            self.flow_insert_failures
                .inc_by(delta(counters::FLOW_INSERT_FAILED));
            self.ringbuf_dropped.inc_by(delta(counters::SIP_RING_FULL));
        }
    }

    /// Takes a poll's flow figures, per direction on the interface
    /// (ingress, egress): lost and duplicate increments, live RTP flows.
    pub fn observe_flows(
        &self,
        lost: [u64; 2],
        duplicates: [u64; 2],
        active: [i64; 2],
        evicted: u64,
    ) {
        self.flow_table_evictions.inc_by(evicted);
        for (i, direction) in [Direction::ingress, Direction::egress]
            .into_iter()
            .enumerate()
        {
            let label = DirectionLabel { direction };
            self.rtp_lost.get_or_create(&label).inc_by(lost[i]);
            self.rtp_duplicates
                .get_or_create(&label)
                .inc_by(duplicates[i]);
            self.flows_active.get_or_create(&label).set(active[i]);
        }
    }

    /// Adds what SIP reassembly dropped since the last call.
    pub fn observe_reassembly_drops(&self, fragments: u64, tcp_bytes: u64) {
        self.sip_fragments_dropped.inc_by(fragments);
        self.sip_tcp_bytes_dropped.inc_by(tcp_bytes);
    }

    /// Counts one SIP message.
    pub fn observe_sip(&self, method: Option<&str>, status: Option<u16>) {
        if let Some(method) = method {
            let method = METHODS
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("other");
            self.sip_messages
                .get_or_create(&MethodLabel { method })
                .inc();
        }
        if let Some(status) = status {
            let class = match status / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                6 => "6xx",
                _ => "other",
            };
            self.sip_responses
                .get_or_create(&ClassLabel { class })
                .inc();
        }
    }

    /// Sets the call gauges from the calls up now.
    pub fn observe_calls(&self, calls: &[LiveCall]) {
        const STATES: [&str; 3] = ["trying", "early", "confirmed"];
        const KINDS: [FlagKind; FlagKind::ALL.len()] = FlagKind::ALL;
        // Counted here, then set once per label: a family lookup (a lock
        // and a hash) per call would cost more than the counting.
        let mut active = [0i64; 3];
        let mut flagged = [0i64; KINDS.len()];
        for r in calls {
            active[match r.call.state {
                CallState::Trying => 0,
                CallState::Early => 1,
                CallState::Confirmed | CallState::Ended => 2,
            }] += 1;
            for (count, kind) in flagged.iter_mut().zip(KINDS) {
                if r.flags
                    .iter()
                    .any(|f| f.kind == kind && f.cleared_epoch.is_none())
                {
                    *count += 1;
                }
            }
        }
        for (state, n) in STATES.into_iter().zip(active) {
            self.calls_active
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        for (kind, n) in KINDS.into_iter().zip(flagged) {
            self.calls_flagged
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(n);
        }
    }

    pub fn observe_flag_raised(&self, flag: &crate::calls::detect::Flag) {
        let direction = match flag.direction {
            crate::calls::detect::FlagDirection::CallerToCallee => "caller_to_callee",
            crate::calls::detect::FlagDirection::CalleeToCaller => "callee_to_caller",
            crate::calls::detect::FlagDirection::Both => "both",
        };
        self.flags_raised
            .get_or_create(&KindDirectionLabel {
                kind: flag.kind.as_str(),
                direction,
            })
            .inc();
    }

    /// Counts an ended call: its bucket, its first flag's lead time, its
    /// streams' jitter and each direction's MOS.
    pub fn observe_call_end(&self, report: &CallReport) {
        let bucket = report.bucket.unwrap_or("callee_or_system_ended");
        self.call_end.get_or_create(&BucketLabel { bucket }).inc();
        if let Some(lead) = report.flagged_before_end_s {
            self.flag_lead_time.observe(lead.max(0.0));
        }
        for s in &report.streams {
            self.stream_jitter.observe(s.jitter_ms / 1e3);
        }
        for (direction, media) in &report.media {
            if let Some(mos) = media.mos {
                self.call_mos
                    .get_or_create(&CallDirectionLabel {
                        direction: direction.as_str(),
                    })
                    .observe(mos);
            }
        }
    }
}

/// OpenMetrics names a counter family without `_total` in HELP/TYPE and
/// ends with `# EOF`; the 0.0.4 text format names it with the suffix.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_by_contract() {
        let m = Metrics::new();
        let mut totals = CounterTotals::default();
        let mut c: Counters = [[0; COUNTERS_PER_HOOK as usize]; HOOKS as usize];
        c[0][counters::RTP as usize] = 10;
        c[1][counters::SIP as usize] = 2;
        c[1][counters::RTCP as usize] = 3;
        m.observe_counters(&totals.delta(&c));
        m.observe_sip(Some("INVITE"), None);
        m.observe_sip(Some("FOO"), None);
        m.observe_sip(None, Some(486));
        m.observe_reassembly_drops(3, 120);
        let text = m.encode();
        for family in [
            "detector_packets_total{hook=\"xdp\",outcome=\"rtp\"} 10",
            "detector_packets_total{hook=\"tc\",outcome=\"sip\"} 2",
            "detector_rtp_packets_total{direction=\"ingress\"} 10",
            "detector_rtcp_packets_total{direction=\"egress\"} 3",
            "detector_calls_flagged{kind=\"poor_quality\"} 0",
            "detector_flags_raised_total{kind=\"poor_quality\",direction=\"callee_to_caller\"} 0",
            "# TYPE detector_call_mos histogram",
            "detector_call_mos_bucket{le=\"3.1\",direction=\"caller_to_callee\"} 0",
            "detector_flow_table_capacity 163840",
            "detector_sip_messages_total{method=\"INVITE\"} 1",
            "detector_sip_messages_total{method=\"other\"} 1",
            "detector_sip_responses_total{class=\"4xx\"} 1",
            "detector_sip_fragments_dropped_total 3",
            "detector_sip_tcp_bytes_dropped_total 120",
            "detector_build_info{version=",
            "# TYPE detector_flag_lead_time_seconds histogram",
            "# TYPE detector_map_poll_duration_seconds histogram",
        ] {
            assert!(text.contains(family), "missing {family} in\n{text}");
        }
        let classic = m.encode_prometheus();
        assert!(
            classic.contains("# TYPE detector_packets_total counter"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"));
        // Absolute kernel totals become increments.
        c[0][counters::RTP as usize] = 15;
        m.observe_counters(&totals.delta(&c));
        assert!(m
            .encode()
            .contains("detector_packets_total{hook=\"xdp\",outcome=\"rtp\"} 15"));
    }
}
