//! Aligned tables for people (the analyser's stream table, the client views).

use crate::calls::streams::{Direction, StreamRecord};

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
