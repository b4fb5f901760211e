//! CLI commands that talk to a running agent: `flows`, `calls`, `call`,
//! `status`. Human output is aligned tables with humane durations, coloured
//! only on a terminal; `--json` prints the agent's JSON, stable for scripts.

use std::{io::IsTerminal, time::Duration};

use serde_json::Value;

use crate::{
    calls::streams::StreamRecord,
    cli::render::{render_table, table},
};

pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9477";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the agent's address.
    #[error("cannot reach the agent at {url}: is it running? Start it with `detector agent --iface IF` (or `cargo xtask run -- --iface IF`)")]
    Unreachable { url: String },
    /// The agent answered with an error.
    #[error("the agent at {url} answered: {detail}")]
    Agent { url: String, detail: String },
}

fn get_json(base: &str, path: &str) -> Result<Value, ClientError> {
    let text = get_text(base, path)?;
    serde_json::from_str(&text).map_err(|e| ClientError::Agent {
        url: format!("{}{path}", base.trim_end_matches('/')),
        detail: e.to_string(),
    })
}

/// The body of a successful answer as it came (what `--json` prints, so
/// tens of thousands of calls are not parsed and printed again).
fn get_text(base: &str, path: &str) -> Result<String, ClientError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut response = match ureq::get(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
    {
        Ok(r) => r,
        Err(_) => {
            return Err(ClientError::Unreachable {
                url: base.to_string(),
            })
        }
    };
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| ClientError::Agent {
            url: url.clone(),
            detail: e.to_string(),
        })?;
    if !status.is_success() {
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        let detail = body["error"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_string);
        return Err(ClientError::Agent { url, detail });
    }
    Ok(text)
}

/// The largest answer read from the agent (tens of thousands of calls).
const MAX_ANSWER_BYTES: u64 = 1 << 30;

fn pretty(value: &Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// Colours only when stdout is a terminal.
struct Style {
    on: bool,
}

impl Style {
    fn detect() -> Self {
        Self {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn red(&self, s: &str) -> String {
        if self.on {
            format!("\x1b[31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn bold(&self, s: &str) -> String {
        if self.on {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// "850ms", "4.2s", "3m05s", "2h03m".
pub fn humane(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    if seconds < 1.0 {
        format!("{}ms", (seconds * 1000.0).round())
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// Runs `render` once, or every 2 s until interrupted with `--watch`.
pub fn maybe_watch(
    watch: bool,
    render: impl Fn() -> Result<String, ClientError>,
) -> Result<(), ClientError> {
    if !watch {
        print!("{}", render()?);
        return Ok(());
    }
    loop {
        let out = render()?;
        // Clear the screen and home the cursor, as watch(1) does.
        print!("\x1b[2J\x1b[H{out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// How to order `detector flows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowSort {
    /// Highest loss first.
    Loss,
    /// Longest silence (time since the last packet) first.
    Silence,
    /// Highest jitter first.
    Jitter,
}

/// `detector flows`.
pub fn flows(
    agent: &str,
    flagged: bool,
    call: Option<&str>,
    sort: Option<FlowSort>,
    json: bool,
) -> Result<String, ClientError> {
    let mut query = Vec::new();
    if flagged {
        query.push("flagged=true".to_string());
    }
    if let Some(id) = call {
        query.push(format!("call={}", encode(id)));
    }
    let path = format!("/api/flows?{}", query.join("&"));
    if json {
        return get_text(agent, &path);
    }
    let value = get_json(agent, &path)?;
    let mut streams: Vec<StreamRecord> =
        serde_json::from_value(value["flows"].clone()).map_err(|e| ClientError::Agent {
            url: agent.to_string(),
            detail: e.to_string(),
        })?;
    if streams.is_empty() {
        return Ok(if flagged {
            "no flows of flagged calls\n".into()
        } else {
            "no RTP flows\n".into()
        });
    }
    match sort {
        Some(FlowSort::Loss) => {
            streams.sort_by(|a, b| b.loss_percent().total_cmp(&a.loss_percent()))
        }
        Some(FlowSort::Silence) => streams.sort_by(|a, b| a.last_epoch.total_cmp(&b.last_epoch)),
        Some(FlowSort::Jitter) => streams.sort_by(|a, b| b.jitter_ms.total_cmp(&a.jitter_ms)),
        None => {}
    }
    Ok(render_table(&streams))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn flag_text(f: &Value) -> String {
    let open = if f["cleared_epoch"].is_null() {
        ""
    } else {
        " (cleared)"
    };
    format!(
        "{} {}{open}",
        f["kind"].as_str().unwrap_or("?"),
        f["direction"].as_str().unwrap_or("?")
    )
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `detector calls`.
pub fn calls(agent: &str, flagged: bool, json: bool) -> Result<String, ClientError> {
    let path = if flagged {
        "/api/calls?flagged=true"
    } else {
        "/api/calls?"
    };
    if json {
        return get_text(agent, path);
    }
    let value = get_json(agent, path)?;
    let calls = value["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() {
        return Ok(if flagged {
            "no flagged calls\n".into()
        } else {
            "no calls\n".into()
        });
    }
    let style = Style::detect();
    let now = now_epoch();
    let mut rows = vec![["CALL-ID", "STATE", "DURATION", "BUCKET", "FLAGS"]
        .map(String::from)
        .to_vec()];
    for c in &calls {
        let start = c["answer_epoch"]
            .as_f64()
            .or(c["invite_epoch"].as_f64())
            .unwrap_or(now);
        let end = c["end_epoch"].as_f64().unwrap_or(now);
        let flags: Vec<String> = c["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(flag_text)
            .collect();
        let flags = if flags.is_empty() {
            "-".to_string()
        } else {
            style.red(&flags.join(", "))
        };
        rows.push(vec![
            c["call_id"].as_str().unwrap_or("?").to_string(),
            c["state"].as_str().unwrap_or("?").to_string(),
            humane(end - start),
            c["bucket"].as_str().unwrap_or("-").to_string(),
            flags,
        ]);
    }
    Ok(table(&rows))
}

/// `detector call ID`: per-direction figures and the flag timeline.
pub fn call(agent: &str, call_id: &str, json: bool) -> Result<String, ClientError> {
    let value = get_json(agent, &format!("/api/calls/{}", encode(call_id)))?;
    if json {
        return Ok(pretty(&value));
    }
    let c = &value["call"];
    let style = Style::detect();
    let now = now_epoch();
    let end = c["end_epoch"].as_f64();
    let mut out = String::new();
    out.push_str(&format!(
        "{} {}\n",
        style.bold("call"),
        c["call_id"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "  from   {}\n  to     {}\n",
        c["from"].as_str().unwrap_or("?"),
        c["to"].as_str().unwrap_or("?")
    ));
    let state = c["state"].as_str().unwrap_or("?");
    let answered = c["answer_epoch"].as_f64();
    out.push_str(&format!(
        "  state  {state}{}{}\n",
        answered.map_or(String::new(), |a| format!(
            ", answered {} ago",
            humane(now - a)
        )),
        c["bucket"]
            .as_str()
            .map_or(String::new(), |b| format!(", ended: {b}")),
    ));
    let mut rows = vec![[
        "DIRECTION",
        "PACKETS",
        "LOST",
        "JITTER",
        "MAX GAP",
        "SILENT",
        "RTCP",
    ]
    .map(String::from)
    .to_vec()];
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let m = &c["media"][direction];
        let silent = m["silent_s"]
            .as_f64()
            .map_or("never sent".to_string(), |s| {
                humane(if end.is_some() { s } else { s.max(0.0) })
            });
        rows.push(vec![
            direction.to_string(),
            m["packets"].to_string(),
            m["lost"].to_string(),
            format!("{:.1}ms", m["jitter_ms"].as_f64().unwrap_or(0.0)),
            humane(m["max_gap_ms"].as_f64().unwrap_or(0.0) / 1000.0),
            silent,
            m["rtcp_packets"].to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out.push('\n');
    out.push_str(&table(&quality_rows(&c["media"])));
    let flags = c["flags"].as_array().cloned().unwrap_or_default();
    out.push('\n');
    if flags.is_empty() {
        out.push_str("no flags\n");
    } else {
        let mut rows = vec![["FLAG", "SINCE", "RAISED AFTER", "CLEARED"]
            .map(String::from)
            .to_vec()];
        for f in &flags {
            let since = f["since_epoch"].as_f64().unwrap_or(0.0);
            let raised = f["flagged_epoch"].as_f64().unwrap_or(0.0);
            rows.push(vec![
                style.red(&flag_text(f)),
                format!("{} ago", humane(now - since)),
                humane(raised - since),
                f["cleared_epoch"]
                    .as_f64()
                    .map_or("-".to_string(), |c| format!("{} ago", humane(now - c))),
            ]);
        }
        out.push_str(&table(&rows));
    }
    Ok(out)
}

/// Per direction: the E-model's MOS and R, and what the receiver's RTCP
/// reports say (the far end: the only view of loss past the server's egress).
fn quality_rows(media: &Value) -> Vec<Vec<String>> {
    let number = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{x:.digits$}"))
    };
    let mut rows = vec![[
        "DIRECTION",
        "MOS",
        "MOS MIN",
        "MOS LAST",
        "R",
        "FAR-END LOST",
        "CUMULATIVE",
        "FAR-END JITTER",
        "RTT",
        "REPORTS",
    ]
    .map(String::from)
    .to_vec()];
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let m = &media[direction];
        let far = &m["far_end"];
        let far_text = |field: &str, unit: &str, digits: usize| {
            if far.is_null() {
                "-".to_string()
            } else {
                format!("{}{unit}", number(&far[field], digits))
            }
        };
        rows.push(vec![
            direction.to_string(),
            number(&m["mos"], 2),
            number(&m["mos_min"], 2),
            number(&m["mos_last"], 2),
            number(&m["r_factor"], 1),
            far_text("fraction_lost_pct", "%", 1),
            far_text("cumulative_lost", "", 0),
            far_text("jitter_ms", "ms", 1),
            match far["rtt_ms"].as_f64() {
                Some(rtt) => format!("{rtt:.1}ms"),
                None => "-".to_string(),
            },
            far["reports"].as_u64().unwrap_or(0).to_string(),
        ]);
    }
    rows
}

/// `detector status`.
pub fn status(agent: &str, json: bool) -> Result<String, ClientError> {
    let v = get_json(agent, "/api/status")?;
    if json {
        return Ok(pretty(&v));
    }
    Ok(status_table(&v))
}

/// `detector status`'s table from `/api/status`.
fn status_table(v: &Value) -> String {
    let c = &v["counters"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let capacity = v["flow_table_capacity"].as_u64().unwrap_or(0);
    let entries = v["flow_table_entries"].as_u64().unwrap_or(0);
    let rows = vec![
        vec![
            "interface".to_string(),
            format!(
                "{} (XDP {} mode, TC through {})",
                v["iface"].as_str().unwrap_or("?"),
                v["xdp_mode"].as_str().unwrap_or("?"),
                v["tc_attach"].as_str().unwrap_or("?")
            ),
        ],
        vec![
            "programs".to_string(),
            "detector_xdp on ingress, detector_tc on egress".to_string(),
        ],
        vec![
            "agent".to_string(),
            format!(
                "version {}, up {}",
                v["version"].as_str().unwrap_or("?"),
                humane(v["uptime_s"].as_f64().unwrap_or(0.0))
            ),
        ],
        vec![
            "flow table".to_string(),
            format!(
                "{entries} of {capacity} ({:.1} %)",
                entries as f64 * 100.0 / capacity.max(1) as f64
            ),
        ],
        vec![
            "calls".to_string(),
            format!(
                "{} up, {} SIP messages parsed",
                v["calls"], v["sip_messages"]
            ),
        ],
        vec![
            "packets".to_string(),
            format!(
                "ingress {} (rtp {}), egress {} (rtp {})",
                n("xdp_packets"),
                n("xdp_rtp"),
                n("tc_packets"),
                n("tc_rtp")
            ),
        ],
        vec![
            "monitor drops".to_string(),
            format!(
                "evictions {}, insert failures {}, SIP ring full {}, SIP cut {}, SIP unparsable {}, RTCP ring full {}",
                v["evictions"],
                n("xdp_flow_insert_failed") + n("tc_flow_insert_failed"),
                n("xdp_sip_ring_full") + n("tc_sip_ring_full"),
                n("xdp_sip_truncated") + n("tc_sip_truncated"),
                v["sip_parse_errors"],
                n("xdp_rtcp_ring_full") + n("tc_rtcp_ring_full")
            ),
        ],
        vec![
            "rtcp".to_string(),
            format!(
                "{} read, {} not readable (SRTCP or damaged: liveness only)",
                v["rtcp_packets"], v["rtcp_undecodable"]
            ),
        ],
        vec![
            "SIP reassembly".to_string(),
            format!(
                "{} IP fragments dropped, {} TCP bytes dropped",
                v["sip_fragments_dropped"].as_u64().unwrap_or(0),
                v["sip_tcp_bytes_dropped"].as_u64().unwrap_or(0)
            ),
        ],
    ];
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_what_sip_reassembly_dropped() {
        let v = serde_json::json!({
            "iface": "eth0",
            "counters": {},
            "sip_fragments_dropped": 7,
            "sip_tcp_bytes_dropped": 1500,
        });
        let text = status_table(&v);
        assert!(
            text.contains("7 IP fragments dropped, 1500 TCP bytes dropped"),
            "{text}"
        );
    }

    #[test]
    fn humane_durations() {
        assert_eq!(humane(0.25), "250ms");
        assert_eq!(humane(4.21), "4.2s");
        assert_eq!(humane(185.0), "3m05s");
        assert_eq!(humane(7380.0), "2h03m");
        assert_eq!(humane(-1.0), "-");
    }

    #[test]
    fn quality_per_direction() {
        let media = serde_json::json!({
            "caller_to_callee": {"mos": 4.409, "mos_min": 4.3, "mos_last": 4.409, "r_factor": 93.179, "far_end": null},
            "callee_to_caller": {
                "mos": 2.138, "mos_min": 2.134, "mos_last": 2.134, "r_factor": 41.502,
                "far_end": {"reports": 29, "fraction_lost_pct": 30.078, "cumulative_lost": 445,
                            "jitter_ms": 1.25, "rtt_ms": null}
            }
        });
        let rows = quality_rows(&media);
        assert_eq!(
            rows[1],
            [
                "caller_to_callee",
                "4.41",
                "4.30",
                "4.41",
                "93.2",
                "-",
                "-",
                "-",
                "-",
                "0"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "callee_to_caller",
                "2.14",
                "2.13",
                "2.13",
                "41.5",
                "30.1%",
                "445",
                "1.2ms",
                "-",
                "29"
            ]
        );
        // No media at all.
        let rows = quality_rows(&serde_json::json!({}));
        assert_eq!(rows[1][1..5], ["-", "-", "-", "-"]);
    }
}
