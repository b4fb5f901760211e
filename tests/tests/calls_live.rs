//! End to end with real SIP peers: SIPp as the caller (in one namespace) and
//! as the media server (in the other, where the agent is attached), RTP
//! played from SIPp's G.711 sample, faults imposed with nftables. The
//! assertions read the agent's call records (`--calls-log`) and its API.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use detector_common::emodel;
use integration_tests::{
    detector_bin, nft, require_root, run, start_agent, wait_for_api, workspace_root, ChildGuard,
    Link,
};
use serde_json::Value;

const CALLER_MEDIA_PORT: &str = "20000";
const SERVER_MEDIA_PORT: &str = "30000";

fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests/scenarios").join(name)
}

fn sipp(ns: &integration_tests::NetNs, dir: &Path, args: &[&str]) -> Command {
    let mut c = ns.command("sipp");
    c.current_dir(dir).args(args).args([
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "120s",
        "-timeout_error",
    ]);
    c
}

/// Runs one call between SIPp peers with the agent on the media-server side
/// and returns its call record (the `--calls-log` line).
fn run_call(
    server_scenario: &str,
    caller_scenario: &str,
    agent_args: &[&str],
    impair: impl Fn(&Link),
) -> Value {
    run_call_with(
        server_scenario,
        caller_scenario,
        agent_args,
        |link| {
            impair(link);
            Vec::new()
        },
        |_, _| {},
    )
}

/// As [`run_call`], with peers started before the call (kept until the
/// end) and checks run while the agent is still up.
fn run_call_with(
    server_scenario: &str,
    caller_scenario: &str,
    agent_args: &[&str],
    setup: impl FnOnce(&Link) -> Vec<ChildGuard>,
    check: impl FnOnce(&Link, &Value),
) -> Value {
    require_root();
    let link = Link::new();
    let dir = std::env::temp_dir().join(format!("detector-sipp-{}", link.server.name));
    std::fs::create_dir_all(&dir).unwrap();
    let calls_log = dir.join("calls.jsonl");
    let log_arg = calls_log.to_str().unwrap();
    let mut args = vec!["--calls-log", log_arg];
    args.extend_from_slice(agent_args);
    let agent = start_agent(&link.server, &link.server_if, &args);
    let _peers = setup(&link);

    let server_log = std::fs::File::create(dir.join("server.out")).unwrap();
    let server = sipp(
        &link.server,
        &dir,
        &[
            "-sf",
            scenario(server_scenario).to_str().unwrap(),
            "-i",
            &link.server_addr,
            "-p",
            "5060",
            "-mi",
            &link.server_addr,
            "-mp",
            SERVER_MEDIA_PORT,
        ],
    )
    .stdout(server_log)
    .stderr(Stdio::null())
    .spawn()
    .expect("sipp (install sip-tester: cargo xtask setup --test-peers)");
    let mut server = ChildGuard::new(server, dir.join("server.out"));
    thread::sleep(Duration::from_millis(300));
    let remote = format!("{}:5060", link.server_addr);
    let caller = sipp(
        &link.peer,
        &dir,
        &[
            "-sf",
            scenario(caller_scenario).to_str().unwrap(),
            "-i",
            &link.peer_addr,
            "-p",
            "5060",
            "-mi",
            &link.peer_addr,
            "-mp",
            CALLER_MEDIA_PORT,
            &remote,
        ],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert!(
        caller.status.success(),
        "caller SIPp failed ({}); see {}",
        caller.status,
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(Ok(Some(s))) = server.child.as_mut().map(std::process::Child::try_wait) {
            server.child = None;
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "media server SIPp did not finish"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "media server SIPp failed ({status}); see {}",
        dir.display()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let text = std::fs::read_to_string(&calls_log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<Value>(line).expect("a JSON call record");
        }
        assert!(
            Instant::now() < deadline,
            "no call record in {}:\n{}",
            calls_log.display(),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    // The API serves the same record, and `detector calls` lists it.
    let api = wait_for_api(&link.server, "/api/calls", Duration::from_secs(5), |v| {
        v["calls"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert_eq!(api["calls"][0]["call_id"], record["call_id"]);
    let listed = run(link.server.command(detector_bin()).arg("calls"));
    assert!(
        listed.contains(record["call_id"].as_str().unwrap()),
        "{listed}"
    );
    cli_views(&link, &record);
    // Prometheus sees the end bucket and every flag raised.
    let bucket = record["bucket"].as_str().unwrap().to_string();
    let end_line = format!("detector_call_end_total{{bucket=\"{bucket}\"}} 1");
    let metrics = wait_for_api(&link.server, "/metrics", Duration::from_secs(5), |v| {
        v.as_str().is_some_and(|t| t.contains(&end_line))
    });
    let text = metrics.as_str().unwrap();
    for f in record["flags"].as_array().unwrap() {
        let raised = record["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == f["kind"] && g["direction"] == f["direction"])
            .count();
        let line = format!(
            "detector_flags_raised_total{{kind={},direction={}}} {raised}",
            f["kind"], f["direction"]
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    check(&link, &record);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    record
}

/// The operator's views of the call agree with its record.
fn cli_views(link: &Link, record: &Value) {
    let id = record["call_id"].as_str().unwrap();
    let detector = |args: &[&str]| run(link.server.command(detector_bin()).args(args));
    let detail = detector(&["call", id]);
    assert!(
        detail.contains(id)
            && detail.contains("caller_to_callee")
            && detail.contains("callee_to_caller"),
        "{detail}"
    );
    let open_flags: Vec<&Value> = record["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["cleared_epoch"].is_null())
        .collect();
    if open_flags.is_empty() {
        assert!(detail.contains("no flags"), "{detail}");
    } else {
        assert!(
            detail.contains(open_flags[0]["kind"].as_str().unwrap()),
            "{detail}"
        );
    }
    let json: Value = serde_json::from_str(&detector(&["call", id, "--json"])).unwrap();
    assert_eq!(json["call"]["call_id"], id);
    let flagged: Value =
        serde_json::from_str(&detector(&["calls", "--flagged", "--json"])).unwrap();
    assert_eq!(
        flagged["calls"].as_array().unwrap().len(),
        usize::from(!open_flags.is_empty()),
        "{flagged}"
    );
    let flows: Value = serde_json::from_str(&detector(&["flows", "--call", id, "--json"])).unwrap();
    assert_eq!(
        flows["flows"].as_array().unwrap().len(),
        record["streams"].as_array().unwrap().len(),
        "{flows}"
    );
    let sorted = detector(&["flows", "--sort", "loss"]);
    assert!(sorted.starts_with("SOURCE"), "{sorted}");
    // The event feed has the call's end (and its flags), after cursor 0.
    let (code, events) = integration_tests::api_status(&link.server, "/api/events?since=0");
    assert_eq!(code, 200);
    let ended = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "call_ended" && e["call_id"] == id);
    assert!(ended, "{events}");
    let raised = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "flag_raised")
        .count();
    assert_eq!(
        raised,
        record["flags"].as_array().unwrap().len(),
        "{events}"
    );
    let next = events["next"].as_u64().unwrap();
    let (_, later) =
        integration_tests::api_status(&link.server, &format!("/api/events?since={next}"));
    assert_eq!(
        later["events"],
        Value::Array(vec![]),
        "the cursor skips what was read"
    );
    let status_json: Value = serde_json::from_str(&detector(&["status", "--json"])).unwrap();
    assert_eq!(status_json["iface"], link.server_if.as_str());
    assert_eq!(status_json["programs"].as_array().unwrap().len(), 2);
    let status = detector(&["status"]);
    assert!(
        status.contains(&link.server_if) && status.contains("flow table"),
        "{status}"
    );
    // Bad requests get a JSON error and a 4xx.
    let (code, body) = integration_tests::api_status(&link.server, "/api/calls?state=bogus");
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("state"), "{body}");
    let (code, _) = integration_tests::api_status(&link.server, "/api/calls/no-such-call");
    assert_eq!(code, 404);
    let (code, _) = integration_tests::api_status(&link.server, "/api/flows?flagged=maybe");
    assert_eq!(code, 400);
    let (code, body) = integration_tests::api_status(&link.server, "/readyz");
    assert_eq!((code, &body["ready"]), (200, &Value::Bool(true)));
}

fn flags(record: &Value) -> Vec<(String, String)> {
    integration_tests::flag_pairs(record)
}

fn pair(kind: &str, direction: &str) -> (String, String) {
    (kind.to_string(), direction.to_string())
}

#[test]
fn healthy_call() {
    let record = run_call("media_server.xml", "caller.xml", &[], |_| {});
    assert_eq!(flags(&record), vec![], "{record}");
    assert_eq!(record["bucket"], "caller_hung_up_after_answer");
    assert_eq!(record["ended_by"], "caller");
    for direction in ["caller_to_callee", "callee_to_caller"] {
        let media = &record["media"][direction];
        assert!(
            media["packets"].as_u64().unwrap() >= 400,
            "{direction}: {media}"
        );
        assert_eq!(media["lost"], 0, "{direction}");
    }
}

#[test]
fn rtp_timeout_flagged_long_before_the_bye() {
    let record = run_call("media_server_timeout.xml", "caller_waits.xml", &[], |_| {});
    assert_eq!(
        flags(&record),
        vec![pair("rtp_timeout", "both")],
        "{record}"
    );
    let lead = record["flagged_before_end_s"].as_f64().unwrap();
    assert!(lead >= 10.0, "flagged only {lead} s before the BYE");
    let flag = &record["flags"][0];
    let delay = flag["flagged_epoch"].as_f64().unwrap() - flag["since_epoch"].as_f64().unwrap();
    assert!(
        delay <= 5.0 + 0.1 + 0.5,
        "threshold plus one poll: took {delay} s"
    );
    assert_eq!(record["bucket"], "rtp_timeout");
    assert_eq!(record["ended_by"], "callee");
    assert_eq!(record["end"]["reasons"][0]["cause"], 408);
}

/// Drops all RTP to `port` leaving `device` (nftables, netdev egress).
fn drop_rtp(ns: &integration_tests::NetNs, device: &str, port: &str) {
    nft(ns, &format!(
        "table netdev fault {{\n chain egress {{\n type filter hook egress device \"{device}\" priority 0; policy accept;\n udp dport {port} drop\n }}\n}}"
    ));
}

#[test]
fn one_way_toward_the_media_server() {
    let record = run_call("media_server.xml", "caller.xml", &[], |l| {
        drop_rtp(&l.peer, &l.peer_if, SERVER_MEDIA_PORT);
    });
    assert_eq!(
        flags(&record),
        vec![pair("one_way", "caller_to_callee")],
        "{record}"
    );
    assert_eq!(record["bucket"], "one_way_audio");
    assert_eq!(record["media"]["caller_to_callee"]["packets"], 0);
}

#[test]
fn one_way_from_the_media_server_itself() {
    // The media server's own outgoing RTP is only visible at TC egress.
    let record = run_call("media_server.xml", "caller.xml", &[], |l| {
        drop_rtp(&l.server, &l.server_if, CALLER_MEDIA_PORT);
    });
    assert_eq!(
        flags(&record),
        vec![pair("one_way", "callee_to_caller")],
        "{record}"
    );
    assert_eq!(record["bucket"], "one_way_audio");
}

#[test]
fn five_percent_loss() {
    // Exactly every 20th packet toward the media server (5 %), against a
    // 4 % threshold so the flag does not hinge on where the window falls;
    // tcpdump on the media server's interface records what reached it.
    let capture = std::env::temp_dir().join(format!("detector-loss-{}.pcap", std::process::id()));
    let record = run_call_with(
        "media_server.xml",
        "caller.xml",
        &["--loss-threshold", "4"],
        |l| {
            nft(&l.peer, &format!(
            "table netdev fault {{\n chain egress {{\n type filter hook egress device \"{}\" priority 0; policy accept;\n udp dport {SERVER_MEDIA_PORT} numgen inc mod 20 == 0 drop\n }}\n}}",
            l.peer_if
        ));
            vec![tcpdump(&l.server, &l.server_if, &capture)]
        },
        |_, _| {},
    );
    assert_eq!(
        flags(&record),
        vec![pair("loss", "caller_to_callee")],
        "{record}"
    );
    let lost = record["media"]["caller_to_callee"]["lost"]
        .as_i64()
        .unwrap();
    assert!(lost >= 15, "lost {lost}");
    assert_eq!(record["media"]["callee_to_caller"]["lost"], 0);
    // MOS: G.711 (PCMA) at the loss the capture shows, single losses
    // (BurstR 1), no RTCP so no delay term (G.107; detector_common::emodel's
    // table tests check the formula by hand).
    let (received, expected) = rtp_in_capture(&capture, SERVER_MEDIA_PORT);
    std::fs::remove_file(&capture).unwrap();
    let _ = std::fs::remove_file(capture.with_extension("log"));
    assert!(
        expected > received,
        "{received} of {expected} in the capture"
    );
    let loss_pct = (expected - received) as f64 * 100.0 / expected as f64;
    let media = &record["media"]["caller_to_callee"];
    assert_eq!(media["packets"].as_u64(), Some(received), "{media}");
    let want = emodel::mos(emodel::r_factor(&emodel::G711, loss_pct, 1.0, 0.0));
    let mos = media["mos"].as_f64().unwrap();
    assert!(
        (mos - want).abs() <= 0.1,
        "MOS {mos}, G.107 at the captured {loss_pct:.2} %: {want}"
    );
    assert!(media["mos_min"].as_f64().unwrap() <= mos + 0.1, "{media}");
    let healthy = &record["media"]["callee_to_caller"];
    assert!(healthy["mos"].as_f64().unwrap() >= 4.3, "{healthy}");
    assert!(media["far_end"].is_null(), "SIPp sends no RTCP");
}

/// tcpdump writing what `iface` in `ns` carries (UDP) to `path`, packet by
/// packet (immediate mode: else the packets of a partly filled buffer are
/// lost when it stops); started once it has created the file.
fn tcpdump(ns: &integration_tests::NetNs, iface: &str, path: &Path) -> ChildGuard {
    let log = path.with_extension("log");
    let child = ns
        .command("tcpdump")
        .args(["-i", iface, "--immediate-mode", "-U", "-w"])
        .arg(path)
        .arg("udp")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("tcpdump (cargo xtask setup --test-peers)");
    let guard = ChildGuard::new(child, log);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "tcpdump did not start: {}",
            guard.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// RTP packets to `port` in a capture, as tshark decodes them: received,
/// and expected from their sequence numbers (first to highest per run, a
/// run ending where the sender restarts its numbers: SIPp does, each time
/// it plays its sample again).
fn rtp_in_capture(path: &Path, port: &str) -> (u64, u64) {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-d", &format!("udp.port=={port},rtp")])
        .args(["-Y", &format!("rtp && udp.dstport=={port}")])
        .args(["-T", "fields", "-e", "rtp.seq"])
        .output()
        .expect("run tshark");
    let seqs: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        !seqs.is_empty(),
        "no RTP to port {port} in {}",
        path.display()
    );
    let (mut expected, mut base, mut highest) = (0, seqs[0], seqs[0]);
    for &seq in &seqs[1..] {
        match (seq - (highest & 0xFFFF)).rem_euclid(0x1_0000) {
            // Duplicate or late.
            0 => {}
            step if step >= 0x1_0000 - 100 => {}
            step if step < 3000 => highest += step,
            _ => {
                expected += highest - base + 1;
                (base, highest) = (seq, seq);
            }
        }
    }
    expected += highest - base + 1;
    (seqs.len() as u64, expected as u64)
}

/// The far end reports loss on the media server's own outgoing stream over
/// RTCP (SIPp sends none, so the test does, as the phone would: from the
/// caller's address to RTCP's port of the server's media): `poor_quality`
/// on that direction, although the server's counters show no loss there.
#[test]
fn far_end_loss_reported_by_rtcp_raises_poor_quality() {
    let stop = Arc::new(AtomicBool::new(false));
    let sender: Arc<Mutex<Option<thread::JoinHandle<()>>>> = Arc::default();
    let record = run_call_with(
        "media_server.xml",
        "caller.xml",
        &["--poor-quality-time", "2s"],
        |link| {
            let (server, peer) = (link.server.handle(), link.peer.handle());
            let (server_addr, peer_addr) = (link.server_addr.clone(), link.peer_addr.clone());
            let stop = stop.clone();
            *sender.lock().unwrap() = Some(thread::spawn(move || {
                report_loss(&server, &peer, &server_addr, &peer_addr, &stop);
            }));
            Vec::new()
        },
        |link, record| {
            // The call is over: stop reporting while the namespaces exist.
            stop.store(true, Ordering::Relaxed);
            if let Some(handle) = sender.lock().unwrap().take() {
                handle.join().expect("the RTCP sender");
            }
            // Every report came through the kernel's RTCP ring and was read.
            let status = integration_tests::api_get(&link.server, "/api/status").unwrap();
            assert!(status["rtcp_packets"].as_u64().unwrap() >= 3, "{status}");
            assert_eq!(status["rtcp_undecodable"], 0, "{status}");
            assert_eq!(status["counters"]["xdp_rtcp_ring_full"], 0, "{status}");
            // Each direction's MOS went into the histogram at the call's end
            // (one call: its sum is the record's MOS), the far end's reports
            // into the RTCP counter.
            let sums: Vec<String> = ["caller_to_callee", "callee_to_caller"]
                .iter()
                .map(|d| {
                    let mos = record["media"][d]["mos"].as_f64().unwrap();
                    format!("detector_call_mos_sum{{direction=\"{d}\"}} {mos}\n")
                })
                .collect();
            let metrics = wait_for_api(&link.server, "/metrics", Duration::from_secs(5), |v| {
                v.as_str()
                    .is_some_and(|t| sums.iter().all(|line| t.contains(line)))
            });
            let text = metrics.as_str().unwrap();
            assert!(
                !text.contains("detector_rtcp_packets_total{direction=\"ingress\"} 0"),
                "{text}"
            );
        },
    );
    assert!(
        flags(&record).contains(&pair("poor_quality", "callee_to_caller")),
        "{record}"
    );
    assert!(
        !flags(&record).contains(&pair("poor_quality", "caller_to_callee")),
        "{record}"
    );
    let media = &record["media"]["callee_to_caller"];
    assert_eq!(media["lost"], 0, "the server's own counters: {media}");
    let far = &media["far_end"];
    assert!(far["reports"].as_u64().unwrap() >= 3, "{far}");
    // 77/256 lost in each report: 30.078 %.
    assert_eq!(far["fraction_lost_pct"], 30.078, "{far}");
    assert_eq!(far["cumulative_lost"], 40, "{far}");
    // G.711 at 30.078 %: Ie,eff = 95·30.078/55.178 = 51.79, R = 41.4,
    // MOS 2.13 (and over the call, 40 of what the phone expected).
    assert!(media["mos_min"].as_f64().unwrap() < 2.2, "{media}");
    // The last sample: the far end kept reporting 30 % to the end.
    assert!(media["mos_last"].as_f64().unwrap() < 2.2, "{media}");
    assert!(record["media"]["caller_to_callee"]["mos"].as_f64().unwrap() >= 4.3);
}

/// The phone's side of RTCP: once the server's outgoing stream shows in
/// the agent's flows, a receiver report about it every 500 ms (30 % lost,
/// 40 cumulative), until `stop` (or 60 s, a bound should the call hang).
fn report_loss(
    server: &integration_tests::NetNs,
    peer: &integration_tests::NetNs,
    server_addr: &str,
    peer_addr: &str,
    stop: &AtomicBool,
) {
    let src: std::net::SocketAddr = format!("{peer_addr}:20001").parse().unwrap();
    let dst: std::net::SocketAddr = format!("{server_addr}:30001").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let flows = integration_tests::api_get(server, "/api/flows").unwrap_or(Value::Null);
        let stream = flows["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["direction"] == "egress" && f["dport"].as_u64() == Some(20000));
        if let Some(f) = stream {
            let ssrc = f["ssrc"].as_str().unwrap().trim_start_matches("0x");
            let ssrc = u32::from_str_radix(ssrc, 16).unwrap();
            let rr = integration_tests::packets::rtcp_rr_block(0x0FEE_D0CC, ssrc, 77, 40, 0);
            peer.enter(move || {
                let socket = std::net::UdpSocket::bind(src).expect("bind the RTCP port");
                socket.send_to(&rr, dst).expect("send RTCP");
            });
        }
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn hold_with_both_sides_silent_raises_nothing() {
    let record = run_call("media_server_hold.xml", "caller_hold.xml", &[], |_| {});
    assert_eq!(flags(&record), vec![], "{record}");
    assert_eq!(record["bucket"], "caller_hung_up_after_answer");
    assert_eq!(record["caller_media"][0]["direction"], "inactive");
}

/// A real Prometheus server (Debian's package) in the media server's
/// namespace, scraping the agent every second with the shipped alert rules.
fn start_prometheus(link: &Link) -> ChildGuard {
    let dir = std::env::temp_dir().join(format!("detector-prom-{}", link.server.name));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = workspace_root().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: ['{}']\n\
         scrape_configs:\n  - job_name: detector\n    static_configs: [{{targets: ['127.0.0.1:9477']}}]\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = dir.join("prometheus.log");
    let child = link
        .server
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prometheus (install it: cargo xtask setup --test-peers)");
    ChildGuard::new(child, log)
}

/// An instant query against the Prometheus in `link`'s server namespace.
fn prometheus_value(link: &Link, query: &str) -> Option<f64> {
    let query = query.to_string();
    link.server.enter(move || {
        let mut response = ureq::get("http://127.0.0.1:9090/api/v1/query")
            .query("query", &query)
            .call()
            .ok()?;
        let body: Value = response.body_mut().read_json().ok()?;
        body["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    })
}

#[test]
fn prometheus_scrapes_flags_call_ends_and_alerts() {
    let record = run_call_with(
        "media_server.xml",
        "caller.xml",
        &[],
        |l| {
            drop_rtp(&l.peer, &l.peer_if, SERVER_MEDIA_PORT);
            let prometheus = start_prometheus(l);
            // The call starts once Prometheus scrapes the agent, so the
            // counters' zeros are in its history (increase() needs them).
            let deadline = Instant::now() + Duration::from_secs(20);
            while prometheus_value(l, "up{job=\"detector\"}") != Some(1.0) {
                assert!(
                    Instant::now() < deadline,
                    "Prometheus never scraped the agent"
                );
                thread::sleep(Duration::from_millis(200));
            }
            thread::sleep(Duration::from_millis(1500));
            vec![prometheus]
        },
        |link, _| {
            let deadline = Instant::now() + Duration::from_secs(20);
            let wanted = [
                ("detector_call_end_total{bucket=\"one_way_audio\"}", 1.0),
                (
                    "detector_flags_raised_total{kind=\"one_way\",direction=\"caller_to_callee\"}",
                    1.0,
                ),
                (
                    "count(ALERTS{alertname=\"DetectorOneWayAudio\",alertstate=\"firing\"})",
                    1.0,
                ),
                ("detector_sip_messages_total{method=\"INVITE\"}", 1.0),
            ];
            loop {
                let got: Vec<Option<f64>> = wanted
                    .iter()
                    .map(|(q, _)| prometheus_value(link, q))
                    .collect();
                if wanted
                    .iter()
                    .zip(&got)
                    .all(|((_, want), got)| *got == Some(*want))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus answered {got:?} for {wanted:?}"
                );
                thread::sleep(Duration::from_millis(500));
            }
            // RTP really flowed the other way, and Prometheus saw it.
            let egress =
                prometheus_value(link, "detector_rtp_packets_total{direction=\"egress\"}").unwrap();
            assert!(egress >= 400.0, "{egress}");
        },
    );
    assert_eq!(record["bucket"], "one_way_audio");
}
