//! The files in deploy/ are checked against the real tools and the real
//! metric names: alert rules with promtool (syntax and rule unit tests), the
//! Grafana dashboard and the rules against the families the agent exports,
//! the systemd unit against the agent's flags.

use std::{collections::BTreeSet, process::Command};

use integration_tests::{detector_bin, run, workspace_root};

fn deploy(path: &str) -> std::path::PathBuf {
    workspace_root().join("deploy").join(path)
}

/// Metric names the agent exports (classic text format), with the series
/// names histograms add.
fn exported_names() -> BTreeSet<String> {
    let text = detector_user::metrics::Metrics::new().encode_prometheus();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `detector_*` identifier in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("detector_") {
        let start = i + pos;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if !preceded_by_ident {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn alert_rules_pass_promtool() {
    let check = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml")));
    assert!(check.contains("SUCCESS: 6 rules found"), "{check}");
    // Unit tests: each alert fires on the series it is meant for.
    let test = run(Command::new("promtool")
        .current_dir(deploy("prometheus"))
        .args(["test", "rules", "alerts_test.yml"]));
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let exported = exported_names();
    for must in [
        "detector_packets_total",
        "detector_rtp_packets_total",
        "detector_rtp_lost_packets_total",
        "detector_rtp_duplicate_packets_total",
        "detector_flows_active",
        "detector_flow_table_capacity",
        "detector_flow_table_evictions_total",
        "detector_flow_insert_failures_total",
        "detector_ringbuf_dropped_total",
        "detector_sip_messages_total",
        "detector_sip_responses_total",
        "detector_sip_parse_errors_total",
        "detector_calls_active",
        "detector_calls_flagged",
        "detector_flags_raised_total",
        "detector_call_end_total",
        "detector_flag_lead_time_seconds",
        "detector_stream_jitter_seconds",
        "detector_call_mos",
        "detector_rtcp_packets_total",
        "detector_map_poll_duration_seconds",
        "detector_build_info",
    ] {
        assert!(
            exported.contains(must),
            "the contract family {must} is not exported: {exported:?}"
        );
    }
    let dashboard = std::fs::read_to_string(deploy("grafana/detector.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    for (file, text) in [
        ("grafana/detector.json", &dashboard),
        ("prometheus/alerts.yml", &rules),
    ] {
        let referenced = referenced_names(text);
        assert!(!referenced.is_empty());
        for name in referenced {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which the agent does not export"
            );
        }
    }
}

#[test]
fn systemd_unit_runs_the_agent_with_flags_it_has() {
    let unit = std::fs::read_to_string(deploy("systemd/detector.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args[0], "agent");
    let help = run(Command::new(detector_bin()).args(["agent", "--help"]));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "{flag} is not an agent flag");
    }
    assert!(
        unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN"),
        "capabilities, not root"
    );
    assert!(!unit.contains("User=root"));
    // Restarts lose no call: the agent comes back, and its journal has a
    // directory of its own that outlives it.
    for line in ["Restart=on-failure", "StateDirectory=detector"] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    let config = std::fs::read_to_string(deploy("detector.toml")).unwrap();
    assert!(config.contains("state_dir = \"/var/lib/detector\""));
}
