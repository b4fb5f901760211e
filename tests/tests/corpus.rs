//! Accuracy against real traffic: every RTP stream tshark sees in
//! ../shared/corpus (ground_truth.json) appears in `detector analyze --json`
//! with identical packets, expected and lost, and no other stream appears.

use std::{collections::BTreeMap, process::Command};

use integration_tests::{corpus_dir, detector_bin};
use serde_json::Value;

type StreamKey = (String, u64, String, u64, String);

fn key(s: &Value) -> StreamKey {
    (
        s["src"].as_str().unwrap().to_string(),
        s["sport"].as_u64().unwrap(),
        s["dst"].as_str().unwrap().to_string(),
        s["dport"].as_u64().unwrap(),
        s["ssrc"].as_str().unwrap().to_string(),
    )
}

fn analyze(file: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let out = Command::new(detector_bin())
        .arg("analyze")
        .arg(corpus_dir().join(file))
        .arg("--json")
        .args(extra)
        .output()
        .expect("run detector analyze");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, json)
}

/// Streams tshark does not report and we do, each with the reason. (None
/// today: T.38 reusing an RTP 5-tuple is handled by following SDP in H.248
/// and SIP, as Wireshark does.)
const KNOWN_EXTRA: &[(&str, StreamKey)] = &[];

#[test]
fn every_corpus_stream_matches_tshark() {
    let truth: Value =
        serde_json::from_slice(&std::fs::read(corpus_dir().join("ground_truth.json")).unwrap())
            .unwrap();
    let files = truth.as_array().expect("ground truth is a list");
    assert_eq!(files.len(), 29, "the corpus README promises 29 captures");
    let mut failures = Vec::new();
    let mut compared = 0;
    for file in files {
        let name = file["file"].as_str().unwrap();
        let (out, json) = analyze(name, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mine: BTreeMap<StreamKey, &Value> = json["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (key(s), s))
            .collect();
        let want: BTreeMap<StreamKey, &Value> = file["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (key(s), s))
            .collect();
        for (k, w) in &want {
            let Some(m) = mine.get(k) else {
                failures.push(format!("{name}: stream {k:?} missing"));
                continue;
            };
            for field in ["packets", "expected", "lost"] {
                if m[field] != w[field] {
                    failures.push(format!(
                        "{name} {k:?}: {field} {} != tshark's {}",
                        m[field], w[field]
                    ));
                }
            }
            compared += 1;
        }
        for k in mine.keys() {
            if !want.contains_key(k) && !KNOWN_EXTRA.iter().any(|(f, e)| *f == name && e == k) {
                failures.push(format!("{name}: extra stream {k:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(compared, 57, "every ground-truth stream compared");
}

#[test]
fn duplicates_and_wrap_figures_from_the_corpus() {
    // RFC 4733 end-of-event packets are sent three times: lost is negative.
    let (_, json) = analyze("rtponly_sipp_dtmf_2833_1.pcap", &[]);
    let s = &json["streams"][0];
    assert_eq!(
        (
            s["packets"].as_u64(),
            s["expected"].as_u64(),
            s["lost"].as_i64(),
            s["duplicates"].as_u64()
        ),
        (Some(10), Some(8), Some(-2), Some(2))
    );
    // One G.726 call crosses the 65535 -> 0 wrap without loss.
    let (_, json) = analyze("sip_rtp_g726.pcap", &[]);
    let wrapped = json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ssrc"] == "0x043FFA7F")
        .unwrap();
    assert_eq!(
        (wrapped["expected"].as_u64(), wrapped["lost"].as_i64()),
        (Some(425), Some(0))
    );
}

#[test]
fn vlan_and_loopback_captures_are_read() {
    let (_, json) = analyze("rtponly_ndpi_vlan.pcapng", &[]);
    assert_eq!(json["streams"].as_array().unwrap().len(), 5);
    let (_, json) = analyze("h263_over_rtp.pcap", &[]);
    assert_eq!(json["streams"][0]["packets"].as_u64(), Some(45));
}

#[test]
fn narrowed_port_range_counts_like_the_kernel() {
    // With --rtp-ports only that range is RTP (plus endpoints SDP announced).
    let (_, json) = analyze(
        "rtponly_marseillaise_srtp.pcap",
        &["--rtp-ports", "20000-30000"],
    );
    assert!(json["streams"].as_array().unwrap().is_empty());
    let (_, json) = analyze(
        "rtponly_marseillaise_srtp.pcap",
        &["--rtp-ports", "10000-10000"],
    );
    assert_eq!(json["streams"][0]["packets"].as_u64(), Some(11888));
}

#[test]
fn damaged_and_foreign_files() {
    let dir = std::env::temp_dir().join(format!("detector-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read(corpus_dir().join("sip_rtp_g711.pcap")).unwrap();
    let truncated = dir.join("truncated.pcap");
    std::fs::write(&truncated, &original[..original.len() / 2 + 7]).unwrap();
    let out = Command::new(detector_bin())
        .arg("analyze")
        .arg(&truncated)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: capture is truncated"), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packets: u64 = json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["packets"].as_u64().unwrap())
        .sum();
    assert!(
        packets > 300 && packets < 839,
        "results up to the damage: {packets}"
    );
    assert!(json["warnings"][0].as_str().unwrap().contains("truncated"));

    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is not a capture\n").unwrap();
    let out = Command::new(detector_bin())
        .arg("analyze")
        .arg(&text)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("error: {} is not a pcap or pcapng capture", text.display())
    );

    let out = Command::new(detector_bin())
        .args(["analyze", "/nonexistent.pcap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.pcap"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn human_table() {
    let out = Command::new(detector_bin())
        .arg("analyze")
        .arg(corpus_dir().join("sip_dtmf2.pcap"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SOURCE") && lines[0].contains("LOST"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("0x9A7B5382") && l.contains("2 (0.3%)")),
        "{text}"
    );
}

/// Rewrites an Ethernet capture with another link type, frame by frame.
fn reencapsulate(linktype: u32, header: impl Fn(u16) -> Vec<u8>) -> std::path::PathBuf {
    use detector_user::offline::pcap::{read_capture, Layer3};
    use integration_tests::packets::{pcap_header, pcap_record_header};
    let mut out = pcap_header(linktype);
    read_capture(&corpus_dir().join("sip_rtp_g711.pcap"), |f| {
        assert_eq!(f.layer3, Layer3::Ethernet);
        let ethertype = u16::from_be_bytes([f.data[12], f.data[13]]);
        let mut frame = header(ethertype);
        frame.extend_from_slice(&f.data[14..]);
        out.extend_from_slice(&pcap_record_header(f.ts_ns, frame.len()));
        out.extend_from_slice(&frame);
    })
    .unwrap();
    let path = std::env::temp_dir().join(format!(
        "detector-link{linktype}-{}.pcap",
        std::process::id()
    ));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn linux_cooked_and_raw_ip_captures_read_like_ethernet() {
    let streams = |json: &Value| -> Vec<(StreamKey, Value, Value)> {
        json["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (key(s), s["packets"].clone(), s["lost"].clone()))
            .collect()
    };
    let (_, ethernet) = analyze("sip_rtp_g711.pcap", &[]);
    let want = streams(&ethernet);
    assert_eq!(want.len(), 2);
    let sll = |ethertype: u16| {
        let mut h = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        h.extend_from_slice(&ethertype.to_be_bytes());
        h
    };
    let sll2 = |ethertype: u16| {
        let mut h = ethertype.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        h
    };
    for (linktype, path) in [
        (113, reencapsulate(113, sll)),
        (276, reencapsulate(276, sll2)),
        (101, reencapsulate(101, |_| Vec::new())),
    ] {
        let out = Command::new(detector_bin())
            .arg("analyze")
            .arg(&path)
            .arg("--json")
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(streams(&json), want, "link type {linktype}");
        std::fs::remove_file(path).unwrap();
    }
}

/// "src:sport>dst:dport/SSRC", as ground_truth.json names streams.
fn stream_name(s: &Value) -> String {
    format!(
        "{}:{}>{}:{}/{}",
        s["src"].as_str().unwrap(),
        s["sport"],
        s["dst"].as_str().unwrap(),
        s["dport"],
        s["ssrc"].as_str().unwrap()
    )
}

#[test]
fn every_invite_dialog_is_followed_and_correlated_with_its_streams() {
    let truth: Value =
        serde_json::from_slice(&std::fs::read(corpus_dir().join("ground_truth.json")).unwrap())
            .unwrap();
    let mut failures = Vec::new();
    let mut answered = 0;
    for file in truth.as_array().unwrap() {
        let name = file["file"].as_str().unwrap();
        let (_, json) = analyze(name, &[]);
        let calls = json["calls"].as_array().unwrap();
        for dialog in file["dialogs"].as_array().unwrap() {
            if dialog["is_invite_dialog"] != true {
                continue;
            }
            let id = dialog["call_id"].as_str().unwrap();
            let Some(call) = calls.iter().find(|c| c["call_id"] == id) else {
                failures.push(format!("{name}: dialog {id} not followed"));
                continue;
            };
            // The streams SDP ties to the dialog (both legs of a B2BUA with
            // direct media share theirs; back-to-back calls reusing a port
            // do not).
            let mut want: Vec<&str> = dialog["rtp_streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            want.sort_unstable();
            let mut got: Vec<String> = call["streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(stream_name)
                .collect();
            got.sort_unstable();
            if got != want {
                failures.push(format!(
                    "{name} {id}: streams {got:?}, tshark's SDP match {want:?}"
                ));
            }
            if !dialog["answered_epoch"].is_null() {
                answered += 1;
                if call["answer_epoch"] != dialog["answered_epoch"] {
                    failures.push(format!(
                        "{name} {id}: answer {} != {}",
                        call["answer_epoch"], dialog["answered_epoch"]
                    ));
                }
            }
            // How it ended, where the capture shows it.
            if let Some(bye) = dialog["bye"].as_object() {
                let end = &call["end"];
                if end["method"] != "BYE"
                    || call["end_epoch"] != bye["epoch"]
                    || end["status"] != bye["response"]
                {
                    failures.push(format!(
                        "{name} {id}: expected a BYE at {}: {end} at {}",
                        bye["epoch"], call["end_epoch"]
                    ));
                }
            } else if dialog["cancel"] == true && call["end"]["method"] != "CANCEL" {
                failures.push(format!("{name} {id}: expected CANCEL, got {}", call["end"]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(answered, 44, "answered dialogs compared");
}

#[test]
fn buckets_from_sip_alone() {
    let bucket_of = |file: &str, id_prefix: &str| {
        let (_, json) = analyze(file, &[]);
        let call = json["calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["call_id"].as_str().unwrap().starts_with(id_prefix))
            .unwrap_or_else(|| panic!("{file}: no call {id_prefix}"))
            .clone();
        (call["bucket"].clone(), call["ended_by"].clone())
    };
    // The callee (10.0.2.15 answered, then hung up) ends these test calls.
    assert_eq!(
        bucket_of("sip_rtp_g722.pcap", "1-2161"),
        (Value::from("callee_or_system_ended"), Value::from("callee"))
    );
    // The caller's BYE after answer.
    assert_eq!(
        bucket_of("nb6_telephone.pcap", "1135D8701739D86"),
        (
            Value::from("caller_hung_up_after_answer"),
            Value::from("caller")
        )
    );
    // 603 Decline is a SIP error, ended by the callee.
    assert_eq!(
        bucket_of("sip_dtmf2.pcap", "5514@"),
        (Value::from("sip_error"), Value::from("callee"))
    );
    // CANCEL before answer (its INVITE then times out with 408).
    assert_eq!(
        bucket_of("aaa.pcap", "105090259"),
        (
            Value::from("caller_hung_up_before_answer"),
            Value::from("caller")
        )
    );
    // Still up when the capture ends: no bucket yet.
    assert_eq!(bucket_of("h263_over_rtp.pcap", "").0, Value::Null);
}

/// (kind, direction) of every flag a call raised, and its bucket.
fn flags_of(file: &str, id_prefix: &str) -> (Vec<(String, String)>, Value) {
    let (_, json) = analyze(file, &[]);
    let call = json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"].as_str().unwrap().starts_with(id_prefix))
        .unwrap_or_else(|| panic!("{file}: no call {id_prefix}"))
        .clone();
    let flags = integration_tests::flag_pairs(&call);
    (flags, call["bucket"].clone())
}

fn flag(kind: &str, direction: &str) -> (String, String) {
    (kind.to_string(), direction.to_string())
}

#[test]
fn corpus_flags_and_buckets() {
    // Near one-way after Asterisk's direct-media re-INVITE: one packet from
    // 172.16.98.1, then silence while 355 packets flow back. Both B2BUA legs
    // share the streams, so both are flagged.
    for leg in ["M2Q0ZDc1ZGM1", "37686afc57ce"] {
        assert_eq!(
            flags_of("b2bua_asterisk_reinvite.pcapng", leg),
            (
                vec![flag("one_way", "caller_to_callee")],
                Value::from("one_way_audio")
            )
        );
    }
    // The fax call: its 6 lost packets (where tshark stops reading RTP once
    // H.248 switches the endpoint to T.38) show in its record; at 2.4 % of a
    // window they stay under the loss threshold. The switch itself is no RTP
    // timeout, and the caller's BYE ends the call normally.
    assert_eq!(
        flags_of("fax_t38_ca_tdm.pcap", "00e9d4a5"),
        (vec![], Value::from("caller_hung_up_after_answer"))
    );
    let (_, json) = analyze("fax_t38_ca_tdm.pcap", &[]);
    let fax = json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"].as_str().unwrap().starts_with("00e9d4a5"))
        .unwrap();
    assert_eq!(fax["media"]["callee_to_caller"]["lost"], 6);
    // Its TDM leg's media is not in this capture at all: seen from here,
    // media never started after the answer.
    assert_eq!(
        flags_of("fax_t38_ca_tdm.pcap", "SD4909701"),
        (
            vec![flag("rtp_timeout", "both")],
            Value::from("rtp_timeout")
        )
    );
    // VAD without comfort noise (gaps up to 5.8 s), comfort noise (PT 13),
    // and negotiated one-way announcements (sendonly/recvonly): no flag.
    assert_eq!(flags_of("sip_call_rtp_g711.pcap", "12013223").0, vec![]);
    assert_eq!(flags_of("audiocodes_mp114_cn.pcap", "").0, vec![]);
    for file in [
        "sip_rtp_g711.pcap",
        "sip_rtp_g722.pcap",
        "sip_rtp_g726.pcap",
        "sip_rtp_l16.pcap",
        "sip_rtp_speex.pcap",
    ] {
        let (_, json) = analyze(file, &[]);
        for call in json["calls"].as_array().unwrap() {
            assert_eq!(
                call["flags"],
                Value::Array(vec![]),
                "{file} {}",
                call["call_id"]
            );
        }
    }
    // 311 of 316 packets lost on the Opus stream.
    assert_eq!(
        flags_of("sip_rtp_opus_hybrid.pcap", "").0,
        vec![flag("loss", "callee_to_caller")]
    );
    // No RTP after the answer, and the capture's clock jumps years between
    // its messages: a discontinuity, not silence. The dialog is not expired
    // for it (its BYE ends it); the timeout is raised at the first frame
    // after the jump, where capture time resumes, not inside the gap.
    let (_, json) = analyze("sip_ipv6_udp_nortp.pcap", &[]);
    let call = &json["calls"][0];
    assert_eq!(call["end"]["method"], "BYE");
    assert_eq!(call["flags"].as_array().unwrap().len(), 1);
    assert_eq!(call["flags"][0]["kind"], "rtp_timeout");
    assert_eq!(call["flags"][0]["flagged_epoch"], 1_680_721_832.251_758);
    // SDP that does not match the traffic (both endpoints announced on
    // .110) and media starting 22 s after the answer: a timeout that clears
    // when media starts, then nothing arriving toward the caller.
    assert_eq!(
        flags_of("sip_dtmf2.pcap", "25672@").0,
        vec![
            flag("rtp_timeout", "both"),
            flag("one_way", "callee_to_caller")
        ]
    );
}

#[test]
fn rtcp_liveness_is_recorded_but_is_not_media() {
    // isa_real_sip_call.pcap: 5 RTCP reports each way on RTP port + 1.
    let (_, json) = analyze("isa_real_sip_call.pcap", &[]);
    let call = json["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"] == "153037964")
        .unwrap();
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let media = &call["media"][direction];
        assert_eq!(media["rtcp_packets"], 5, "{direction}: {media}");
        assert!(media["rtcp_last_epoch"].as_f64().is_some());
        assert!(
            media["packets"].as_u64().unwrap() > 700,
            "RTP counted apart from RTCP"
        );
    }
}
