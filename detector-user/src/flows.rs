//! The JSON view of a stream, shared by `detector analyze` and `/api/flows`.

use std::net::IpAddr;

use detector_common::{
    counters::{HOOK_TC, HOOK_XDP},
    flow::{FlowKey, FlowStats},
    packet::ip_addr,
};
use serde::{Deserialize, Serialize};

/// Which way a live flow crossed the monitored interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received by the host (XDP).
    Ingress,
    /// Sent by the host (TC egress).
    Egress,
}

impl Direction {
    pub fn from_hook(hook: u8) -> Option<Self> {
        match hook {
            HOOK_XDP => Some(Self::Ingress),
            HOOK_TC => Some(Self::Egress),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// One RTP stream's figures. Field names are a contract (README, tests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// `0x%08X`.
    pub ssrc: String,
    /// The latest payload type.
    pub payload_type: u8,
    pub packets: u64,
    pub expected: u64,
    /// Wireshark's lost: expected − received, negative with duplicates.
    pub lost: i64,
    pub duplicates: u32,
    pub out_of_order: u32,
    pub first_epoch: f64,
    pub last_epoch: f64,
    pub max_gap_ms: f64,
    pub jitter_ms: f64,
    pub bytes: u64,
    pub markers: u32,
    pub comfort_noise: u32,
    pub seq_restarts: u32,
    pub seq_jumps: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub direction: Option<Direction>,
}

impl StreamRecord {
    /// Builds the record; `to_epoch` turns the stats' clock into Unix seconds.
    pub fn new(key: &FlowKey, st: &FlowStats, to_epoch: impl Fn(u64) -> f64) -> Self {
        Self {
            src: ip_addr(key.src_addr, key.ip_version),
            sport: key.src_port,
            dst: ip_addr(key.dst_addr, key.ip_version),
            dport: key.dst_port,
            ssrc: format!("0x{:08X}", key.ssrc),
            payload_type: st.payload_type,
            packets: st.packets,
            expected: u64::from(st.expected()),
            lost: st.lost(),
            duplicates: st.seq.duplicates,
            out_of_order: st.seq.out_of_order,
            first_epoch: round6(to_epoch(st.first_seen_ns)),
            last_epoch: round6(to_epoch(st.last_seen_ns)),
            max_gap_ms: round3(st.max_gap_ns as f64 / 1e6),
            jitter_ms: round3(st.jitter.jitter_ms()),
            bytes: st.bytes,
            markers: st.markers,
            comfort_noise: st.comfort_noise,
            seq_restarts: st.seq.restarts,
            seq_jumps: st.seq.jumps,
            direction: None,
        }
    }

    /// Lost packets as a percentage of expected (0 when nothing is expected).
    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Renders streams as an aligned table for people.
pub fn render_table(streams: &[StreamRecord]) -> String {
    let header = [
        "SOURCE",
        "DESTINATION",
        "DIR",
        "SSRC",
        "PT",
        "PACKETS",
        "EXPECTED",
        "LOST",
        "DUP/OOO",
        "MAX GAP ms",
        "JITTER ms",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    rows.extend(streams.iter().map(|s| {
        vec![
            format!("{}:{}", s.src, s.sport),
            format!("{}:{}", s.dst, s.dport),
            s.direction.map_or("-", Direction::as_str).to_string(),
            s.ssrc.clone(),
            s.payload_type.to_string(),
            s.packets.to_string(),
            s.expected.to_string(),
            format!("{} ({:.1}%)", s.lost, s.loss_percent()),
            format!("{}/{}", s.duplicates, s.out_of_order),
            format!("{:.1}", s.max_gap_ms),
            format!("{:.2}", s.jitter_ms),
        ]
    }));
    table(&rows)
}

/// Aligned columns, two spaces apart; the first row is the header. ANSI
/// colour codes do not count toward a cell's width.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| visible_len(c)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i].saturating_sub(visible_len(cell))));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn visible_len(s: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            _ => len += 1,
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn tables_align_ignoring_colour() {
        let rows = vec![
            vec!["A".to_string(), "B".to_string()],
            vec!["\x1b[31mlong\x1b[0m".to_string(), "x".to_string()],
        ];
        assert_eq!(table(&rows), "A     B\n\x1b[31mlong\x1b[0m  x\n");
    }
}
