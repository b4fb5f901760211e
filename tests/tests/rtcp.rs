//! RTCP against tshark: every report block of every corpus capture, as our
//! parser (`detector_common::rtcp`) reads it and as tshark decodes the same
//! frame, field for field. Frames tshark does not take for RTCP by itself
//! (a relayed copy on a port its SDP tracking gave to something else) are
//! compared with tshark told to decode their port as RTCP.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use detector_common::{
    packet::{parse_ethernet, parse_ip},
    rtcp::{Compound, ReportBlock},
    rtp::{classify, PayloadKind},
};
use detector_user::offline::pcap::{read_capture, Frame, Layer3};
use integration_tests::corpus_dir;

/// Report blocks per frame number.
type Blocks = BTreeMap<u64, Vec<ReportBlock>>;

/// tshark's report blocks, from its PDML: a block is an `rtcp.ssrc.identifier`
/// followed by `rtcp.ssrc.fraction` (SDES chunks reuse the identifier field).
fn tshark_blocks(file: &Path, decode_as: Option<u16>) -> Blocks {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file);
    if let Some(port) = decode_as {
        cmd.arg("-d").arg(format!("udp.port=={port},rtcp"));
    }
    let out = cmd
        .args(["--enable-heuristic", "rtcp_udp", "-Y", "rtcp", "-T", "pdml"])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", file.display());
    let text = String::from_utf8(out.stdout).expect("PDML is UTF-8");
    let mut blocks = Blocks::new();
    let mut frame = 0;
    let mut block: Option<ReportBlock> = None;
    for line in text.lines() {
        let Some((name, show)) = field(line) else {
            continue;
        };
        let number = || show.parse::<i64>().unwrap_or_else(|_| panic!("{line}"));
        match name {
            "frame.number" => {
                frame = number() as u64;
                blocks.insert(frame, Vec::new());
            }
            "rtcp.ssrc.identifier" => {
                let hex = show.trim_start_matches("0x");
                block = Some(ReportBlock {
                    ssrc: u32::from_str_radix(hex, 16).unwrap(),
                    ..ReportBlock::default()
                });
            }
            "rtcp.ssrc.fraction" => open_block(&mut block, line).fraction_lost = number() as u8,
            "rtcp.ssrc.cum_nr" => open_block(&mut block, line).cumulative_lost = number() as i32,
            "rtcp.ssrc.ext_high" => open_block(&mut block, line).highest_seq = number() as u32,
            "rtcp.ssrc.jitter" => open_block(&mut block, line).jitter = number() as u32,
            "rtcp.ssrc.lsr" => open_block(&mut block, line).lsr = number() as u32,
            "rtcp.ssrc.dlsr" => {
                open_block(&mut block, line).dlsr = number() as u32;
                // The last field of a block.
                blocks.get_mut(&frame).unwrap().push(block.take().unwrap());
            }
            _ => {}
        }
    }
    blocks
}

fn open_block<'a>(block: &'a mut Option<ReportBlock>, line: &str) -> &'a mut ReportBlock {
    block
        .as_mut()
        .unwrap_or_else(|| panic!("a report block field outside a block: {line}"))
}

/// A PDML field's name and `show` value.
fn field(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start().strip_prefix("<field name=\"")?;
    let (name, rest) = line.split_once('"')?;
    let show = rest.split_once(" show=\"")?.1.split_once('"')?.0;
    Some((name, show))
}

/// Our report blocks, per frame whose UDP payload reads as RTCP, with the
/// frame's UDP destination port.
fn our_blocks(file: &Path) -> (Blocks, BTreeMap<u64, u16>) {
    let mut blocks = Blocks::new();
    let mut ports = BTreeMap::new();
    let mut frames = 0;
    read_capture(file, |frame: &Frame<'_>| {
        frames += 1;
        let Some((payload, port)) = udp_payload(frame) else {
            return;
        };
        let Some(head) = payload.get(..8) else {
            return;
        };
        let head: [u8; 8] = head.try_into().unwrap();
        if !matches!(classify(head, payload.len()), PayloadKind::Rtcp { .. }) {
            return;
        }
        if let Ok(compound) = Compound::parse(payload) {
            let parsed: Vec<ReportBlock> = compound.report_blocks().map(|(_, b)| b).collect();
            blocks.insert(frames, parsed);
            ports.insert(frames, port);
        }
    })
    .expect("read the capture");
    (blocks, ports)
}

fn udp_payload<'a>(frame: &Frame<'a>) -> Option<(&'a [u8], u16)> {
    let l3 = match frame.layer3 {
        Layer3::Ethernet => parse_ethernet(frame.data).ok()?.1,
        Layer3::Ip(offset) => offset,
        Layer3::None => return None,
    };
    let ip = parse_ip(frame.data, l3).ok()?;
    if ip.protocol != 17 {
        return None;
    }
    let payload = frame
        .data
        .get(ip.payload_offset..ip.payload_offset + ip.payload_len)?;
    Some((payload, ip.dst_port))
}

#[test]
fn every_report_block_matches_tshark() {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 29, "the corpus README promises 29 captures");
    let mut failures = Vec::new();
    let mut per_file = BTreeMap::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut want = tshark_blocks(file, None);
        let (mine, ports) = our_blocks(file);
        let unseen: BTreeSet<u16> = mine
            .keys()
            .filter(|f| !want.contains_key(f))
            .map(|f| ports[f])
            .collect();
        for port in unseen {
            for (frame, blocks) in tshark_blocks(file, Some(port)) {
                if ports.get(&frame) == Some(&port) {
                    want.entry(frame).or_insert(blocks);
                }
            }
        }
        for (frame, want_blocks) in &want {
            match mine.get(frame) {
                None => failures.push(format!(
                    "{name} frame {frame}: tshark decodes RTCP, we do not"
                )),
                Some(got) if got != want_blocks => failures.push(format!(
                    "{name} frame {frame}:\n  ours   {got:?}\n  tshark {want_blocks:?}"
                )),
                Some(_) => {}
            }
        }
        for (frame, got) in &mine {
            if !got.is_empty() && !want.contains_key(frame) {
                failures.push(format!(
                    "{name} frame {frame}: {} report blocks tshark does not see",
                    got.len()
                ));
            }
        }
        let count: usize = want.values().map(Vec::len).sum();
        if count > 0 {
            per_file.insert(name, count);
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // What the corpus holds (tshark's count; 4 of the 44 in sip_call_rtp_g711
    // through decode-as), so a tshark that stopped
    // decoding RTCP cannot pass this test by comparing nothing.
    let expected: BTreeMap<String, usize> = [
        ("isa_called_by_another_pc.pcap", 2),
        ("isa_real_call.pcap", 2),
        ("isa_real_sip_call.pcap", 10),
        ("sip_call_rtp_g711.pcap", 44),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_string(), n))
    .collect();
    assert_eq!(per_file, expected);
}

/// `detector analyze`'s far-end view against tshark: per call direction,
/// the number of reports about its stream, the latest one's jitter (in ms
/// at the stream's 8 kHz) and the round trip, which Wireshark computes the
/// same way (RFC 3550 6.4.1 from the SR it saw) and shows in whole ms.
#[test]
fn far_end_view_matches_tshark() {
    let file = corpus_dir().join("isa_real_sip_call.pcap");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-o",
            "rtcp.show_roundtrip_calculation:TRUE",
            "-o",
            "rtcp.roundtrip_min_threshhold:0",
            "-Y",
            "rtcp",
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-e",
            "rtcp.ssrc.identifier",
            "-e",
            "rtcp.ssrc.jitter",
            "-e",
            "rtcp.roundtrip-delay",
        ])
        .output()
        .expect("run tshark");
    // Per reportee SSRC: reports, and the latest (jitter, round trip).
    let mut want: BTreeMap<String, (u64, u64, Option<f64>)> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let ssrc = format!(
            "0x{:08X}",
            u32::from_str_radix(fields[0].trim_start_matches("0x"), 16).unwrap()
        );
        let jitter = fields[1].parse().unwrap();
        let rtt = fields.get(2).and_then(|r| r.parse().ok());
        let entry = want.entry(ssrc).or_insert((0, 0, None));
        *entry = (entry.0 + 1, jitter, rtt.or(entry.2));
    }
    assert_eq!(want.len(), 2, "{want:?}");
    let analyzed = Command::new(integration_tests::detector_bin())
        .arg("analyze")
        .arg(&file)
        .arg("--json")
        .output()
        .expect("run detector analyze");
    let json: serde_json::Value = serde_json::from_slice(&analyzed.stdout).unwrap();
    let mut compared = 0;
    for call in json["calls"].as_array().unwrap() {
        for stream in call["streams"].as_array().unwrap() {
            let ssrc = stream["ssrc"].as_str().unwrap();
            let direction = stream["direction"].as_str().unwrap();
            let far = &call["media"][direction]["far_end"];
            let (reports, jitter, rtt) = want[ssrc];
            assert_eq!(far["reports"].as_u64(), Some(reports), "{ssrc}: {far}");
            assert_eq!(
                far["jitter_ms"].as_f64(),
                Some(jitter as f64 / 8.0),
                "{ssrc}"
            );
            assert_eq!(far["fraction_lost_pct"].as_f64(), Some(0.0));
            let ours = far["rtt_ms"].as_f64().unwrap();
            let theirs = rtt.unwrap();
            assert!(
                (ours - theirs).abs() < 1.0,
                "{ssrc}: rtt {ours} ms, tshark {theirs} ms"
            );
            // No loss either way: G.711 at 0 %, with half the round trip as delay.
            assert!(call["media"][direction]["mos"].as_f64().unwrap() > 4.4);
            compared += 1;
        }
    }
    assert_eq!(
        compared, 4,
        "two calls (a B2BUA's legs), two directions each"
    );
}

/// `detector analyze` runs the agent's engine, so a capture of a call whose
/// caller reports 30 % loss over RTCP on the callee's stream gets the same
/// verdict as the live test: `poor_quality` on that direction, whose own
/// counters show no loss, with the far end's figures and MOS in the record.
#[test]
fn far_end_loss_in_a_capture_raises_poor_quality() {
    use integration_tests::packets::{ipv4_udp, pcap_header, pcap_record_header, rtcp_rr_block};
    const CALLER: [u8; 4] = [10, 0, 0, 1];
    const CALLEE: [u8; 4] = [10, 0, 0, 2];
    const CALLER_SSRC: u32 = 0x1111_0001;
    const CALLEE_SSRC: u32 = 0x2222_0002;
    let sip = |start: &str, from: [u8; 4], to: [u8; 4], sdp: Option<(&str, u16)>| {
        let body = sdp.map_or(String::new(), |(addr, port)| {
            format!("v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=sendrecv\r\n")
        });
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@10.0.0.1>;tag=a\r\nTo: <sip:b@10.0.0.2>{}\r\nCall-ID: far-end-1\r\n{}Contact: <sip:x@10.0.0.1>\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            if start.starts_with("INVITE") { "" } else { ";tag=b" },
            match start.split(' ').next().unwrap() {
                "SIP/2.0" if start.ends_with("(bye)") => "CSeq: 2 BYE\r\n",
                "SIP/2.0" => "CSeq: 1 INVITE\r\n",
                "ACK" => "CSeq: 1 ACK\r\n",
                "BYE" => "CSeq: 2 BYE\r\n",
                _ => "CSeq: 1 INVITE\r\n",
            },
            body.len()
        );
        let text = text.replace(" (bye)", "");
        ipv4_udp(from, to, 5060, 5060, text.as_bytes())
    };
    let ms = |t: u64| t * 1_000_000;
    let mut frames: Vec<(u64, Vec<u8>)> = vec![
        (
            ms(0),
            sip(
                "INVITE sip:b@10.0.0.2 SIP/2.0",
                CALLER,
                CALLEE,
                Some(("10.0.0.1", 20000)),
            ),
        ),
        (
            ms(100),
            sip("SIP/2.0 200 OK", CALLEE, CALLER, Some(("10.0.0.2", 30000))),
        ),
        (
            ms(200),
            sip("ACK sip:b@10.0.0.2 SIP/2.0", CALLER, CALLEE, None),
        ),
        (
            ms(31_000),
            sip("BYE sip:b@10.0.0.2 SIP/2.0", CALLER, CALLEE, None),
        ),
        (
            ms(31_050),
            sip("SIP/2.0 200 OK (bye)", CALLEE, CALLER, None),
        ),
    ];
    // 30 s of G.711 both ways, 50 packets a second, nothing lost.
    for i in 0..1500u32 {
        let t = ms(300 + u64::from(i) * 20);
        let seq = 1000 + i as u16;
        let rtp = |ssrc| integration_tests::packets::rtp_payload(0, seq, i * 160, ssrc, 160);
        frames.push((t, ipv4_udp(CALLER, CALLEE, 20000, 30000, &rtp(CALLER_SSRC))));
        frames.push((
            t + 5_000,
            ipv4_udp(CALLEE, CALLER, 30000, 20000, &rtp(CALLEE_SSRC)),
        ));
    }
    // The caller hears 30 % (77/256) of the callee's stream lost, from 2 s on,
    // and says so every second on RTCP's port.
    for s in 2..31u32 {
        let received = (s * 1000 - 300) / 20;
        let cumulative = received * 3 / 10;
        let rr = rtcp_rr_block(
            CALLER_SSRC,
            CALLEE_SSRC,
            77,
            cumulative,
            1000 + received - 1,
        );
        frames.push((
            ms(u64::from(s) * 1000 + 10),
            ipv4_udp(CALLER, CALLEE, 20001, 30001, &rr),
        ));
    }
    frames.sort_by_key(|(t, _)| *t);
    let mut file = pcap_header(1);
    for (t, frame) in &frames {
        file.extend_from_slice(&pcap_record_header(
            1_700_000_000_000_000_000 + t,
            frame.len(),
        ));
        file.extend_from_slice(frame);
    }
    let path = std::env::temp_dir().join(format!("detector-far-end-{}.pcap", std::process::id()));
    std::fs::write(&path, file).unwrap();
    let out = Command::new(integration_tests::detector_bin())
        .arg("analyze")
        .arg(&path)
        .arg("--json")
        .output()
        .expect("run detector analyze");
    std::fs::remove_file(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let call = &json["calls"][0];
    assert_eq!(call["call_id"], "far-end-1", "{json}");
    assert_eq!(
        integration_tests::flag_pairs(call),
        [("poor_quality".to_string(), "callee_to_caller".to_string())],
        "{call}"
    );
    let flag = &call["flags"][0];
    // Under 3.1 from the first report (2.01 s; the poll at 3 s sees it)
    // for the default 10 s.
    assert_eq!(
        flag["since_epoch"].as_f64(),
        Some(1_700_000_003.0),
        "{flag}"
    );
    assert_eq!(
        flag["flagged_epoch"].as_f64(),
        Some(1_700_000_013.0),
        "{flag}"
    );
    let media = &call["media"]["callee_to_caller"];
    assert_eq!(media["lost"], 0, "{media}");
    let far = &media["far_end"];
    assert_eq!(far["reports"], 29, "{far}");
    assert_eq!(far["fraction_lost_pct"], 30.078, "{far}");
    assert_eq!(far["cumulative_lost"], 445, "{far}");
    assert!(far["rtt_ms"].is_null(), "no SR, no round trip: {far}");
    // Window: G.711 at 30.078 %: R = 93.2 - 95·30.078/55.178 = 41.415,
    // MOS 2.1339. Over the call: 445 lost of the 1485 the caller expected
    // (its highest sequence number, 2484, is 15 behind the last sent) =
    // 29.966 %: R = 93.2 - 95·29.966/55.066 = 41.502, MOS 2.1382.
    assert_eq!(media["mos_min"].as_f64(), Some(2.134), "{media}");
    assert_eq!(media["mos_last"].as_f64(), Some(2.134), "{media}");
    assert_eq!(media["r_factor"].as_f64(), Some(41.502), "{media}");
    assert_eq!(media["mos"].as_f64(), Some(2.138), "{media}");
    let healthy = &call["media"]["caller_to_callee"];
    assert_eq!(healthy["mos"].as_f64(), Some(4.409), "{healthy}");
    assert!(healthy["far_end"].is_null());
}
