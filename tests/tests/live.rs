//! The real agent attached in network namespaces this test creates, real RTP
//! sent both ways through a veth pair, loss imposed with nftables (this
//! kernel has no netem). What the agent reports must equal what was sent
//! minus what nftables dropped, exactly.

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use integration_tests::{
    afpacket::PacketSocket,
    api_get, detector_bin, http_get, nft, nft_counter,
    packets::{self, udp},
    require_root, run, send_rtp, send_udp, start_agent, start_agent_env, start_agent_with,
    wait_for_api, Link, RtpStream,
};
use serde_json::Value;

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn find_flow<'a>(flows: &'a Value, ssrc: &str) -> Option<&'a Value> {
    flows["flows"]
        .as_array()?
        .iter()
        .find(|f| f["ssrc"] == ssrc)
}

/// Drops RTP to `dport` whose sequence number is in `fixed`, plus about 5 %
/// of the packets whose sequence number is in `random_ranges`, on the egress
/// of `device`; counts both.
fn impair(
    ns: &integration_tests::NetNs,
    device: &str,
    dport: u16,
    fixed: &str,
    random_ranges: &str,
) {
    // @th,80,16 is the RTP sequence number: 8 bytes of UDP header, then 2.
    nft(
        ns,
        &format!(
            "table netdev impair {{
                counter fixed_drops {{}}
                counter random_drops {{}}
                chain egress {{
                    type filter hook egress device \"{device}\" priority 0; policy accept;
                    udp dport {dport} @th,80,16 {{ {fixed} }} counter name \"fixed_drops\" drop
                    udp dport {dport} @th,80,16 {{ {random_ranges} }} numgen random mod 100 < 5 counter name \"random_drops\" drop
                }}
            }}"
        ),
    );
}

/// `promtool check metrics` on real output (Debian's prometheus package).
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (install prometheus: cargo xtask setup --test-peers)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dropped(ns: &integration_tests::NetNs) -> u64 {
    nft_counter(ns, "fixed_drops") + nft_counter(ns, "random_drops")
}

#[test]
fn both_directions_with_loss_across_the_sequence_wrap() {
    require_root();
    let link = Link::new();
    let mut agent = start_agent(&link.server, &link.server_if, &[]);

    // Toward the media server (XDP): 3000 packets from 64000, wrapping.
    impair(
        &link.peer,
        &link.peer_if,
        20000,
        "65535, 0, 100",
        "64100-65400, 200-900",
    );
    // From the media server (TC egress): 2000 packets from 65000, wrapping.
    impair(
        &link.server,
        &link.server_if,
        30002,
        "65535, 1, 2, 3",
        "65100-65500, 10-900",
    );
    let ingress = RtpStream {
        src: addr(&link.peer_addr, 30000),
        dst: addr(&link.server_addr, 20000),
        ssrc: 0x1A1A_0001,
        first_seq: 64000,
        count: 3000,
        payload_type: 8,
        interval: Duration::from_micros(700),
    };
    let egress = RtpStream {
        src: addr(&link.server_addr, 20002),
        dst: addr(&link.peer_addr, 30002),
        ssrc: 0x2B2B_0002,
        first_seq: 65000,
        count: 2000,
        payload_type: 0,
        interval: Duration::from_micros(700),
    };
    thread::scope(|s| {
        let a = s.spawn(|| send_rtp(&link.peer, ingress.clone()));
        let b = s.spawn(|| send_rtp(&link.server, egress.clone()));
        assert_eq!(a.join().unwrap(), 3000);
        assert_eq!(b.join().unwrap(), 2000);
    });
    let (lost_in, lost_out) = (dropped(&link.peer), dropped(&link.server));
    assert!(
        lost_in >= 3 && lost_out >= 4,
        "the fixed drops always happen: {lost_in} {lost_out}"
    );

    let flows = wait_for_api(&link.server, "/api/flows", Duration::from_secs(10), |v| {
        let done =
            |ssrc, n: u64| find_flow(v, ssrc).is_some_and(|f| f["packets"].as_u64() == Some(n));
        done("0x1A1A0001", 3000 - lost_in) && done("0x2B2B0002", 2000 - lost_out)
    });
    let inf = find_flow(&flows, "0x1A1A0001").unwrap();
    assert_eq!(inf["direction"], "ingress");
    assert_eq!(
        (inf["src"].as_str(), inf["sport"].as_u64()),
        (Some("198.18.0.2"), Some(30000))
    );
    assert_eq!(
        (inf["dst"].as_str(), inf["dport"].as_u64()),
        (Some("198.18.0.1"), Some(20000))
    );
    assert_eq!(inf["expected"].as_u64(), Some(3000));
    assert_eq!(inf["lost"].as_u64(), Some(lost_in));
    assert_eq!(
        (inf["duplicates"].as_u64(), inf["out_of_order"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(inf["payload_type"].as_u64(), Some(8));
    let outf = find_flow(&flows, "0x2B2B0002").unwrap();
    assert_eq!(outf["direction"], "egress");
    assert_eq!(outf["expected"].as_u64(), Some(2000));
    assert_eq!(outf["lost"].as_u64(), Some(lost_out));
    assert_eq!(flows["flows"].as_array().unwrap().len(), 2, "{flows}");

    // SIP both ways reaches userspace through the ring buffer.
    let options = |to: &str| {
        format!("OPTIONS sip:{to} SIP/2.0\r\nCall-ID: live@test\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    };
    send_udp(
        &link.peer,
        addr(&link.peer_addr, 5060),
        addr(&link.server_addr, 5060),
        options("server"),
    );
    send_udp(
        &link.server,
        addr(&link.server_addr, 5060),
        addr(&link.peer_addr, 5060),
        options("peer"),
    );
    let status = wait_for_api(&link.server, "/api/status", Duration::from_secs(5), |v| {
        v["sip_messages"] == 2 && v["counters"]["tc_sip"] == 1
    });
    assert_eq!(status["counters"]["xdp_sip"], 1);
    assert_eq!(status["counters"]["tc_sip"], 1);
    assert_eq!(status["counters"]["xdp_rtp"].as_u64(), Some(3000 - lost_in));

    // The same figures as Prometheus metrics, valid for promtool.
    let metrics = wait_for_api(&link.server, "/metrics", Duration::from_secs(5), |v| {
        v.as_str()
            .is_some_and(|t| t.contains("detector_sip_messages_total{method=\"OPTIONS\"} 2"))
    });
    let text = metrics.as_str().unwrap();
    for line in [
        format!(
            "detector_rtp_packets_total{{direction=\"ingress\"}} {}",
            3000 - lost_in
        ),
        format!(
            "detector_rtp_packets_total{{direction=\"egress\"}} {}",
            2000 - lost_out
        ),
        format!("detector_rtp_lost_packets_total{{direction=\"ingress\"}} {lost_in}"),
        format!("detector_rtp_lost_packets_total{{direction=\"egress\"}} {lost_out}"),
        "detector_flows_active{direction=\"ingress\"} 1".to_string(),
        "detector_packets_total{hook=\"tc\",outcome=\"sip\"} 1".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    promtool_check_metrics(text);

    // `detector flows` prints the same through the API.
    let table = run(link.server.command(detector_bin()).arg("flows"));
    assert!(
        table.contains("0x1A1A0001") && table.contains("ingress") && table.contains("egress"),
        "{table}"
    );
    let json = run(link
        .server
        .command(detector_bin())
        .args(["flows", "--json"]));
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["flows"].as_array().unwrap().len(), 2);

    // SIGTERM: exit 0; the programs stay attached, pinned for the next
    // agent, until `detector agent --cleanup` leaves nothing on the interface.
    let status = agent.terminate().expect("agent ran");
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("stay attached"));
    let dirs = agent.agent_dirs.clone().expect("the agent's own dirs");
    let tc_pin = dirs.bpf_pin_dir.join(&link.server_if).join("link_tc");
    // XDP shows on the link; the TCX link (which `bpftool net` does not
    // list on every version) by its pin, whose id must not outlive cleanup.
    let attached = |dev: &str| {
        let links = link.server.ip(&["-d", "link", "show", "dev", dev]);
        (links.contains("xdp"), tc_pin.exists())
    };
    let tc_link = run(Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&tc_pin));
    let tc_link_id = serde_json::from_str::<Value>(&tc_link).unwrap()["id"].clone();
    let removed = dirs.cleanup(&link.server, &link.server_if);
    assert!(
        removed.contains("link_xdp") && removed.contains("FLOW_SLOTS"),
        "{removed}"
    );
    assert_eq!(attached(&link.server_if), (false, false), "cleaned up");
    let links = run(Command::new("bpftool").args(["-j", "link", "show"]));
    let links: Value = serde_json::from_str(&links).unwrap();
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == tc_link_id),
        "the TC link {tc_link_id} is gone: {links}"
    );
    assert!(!dirs.bpf_pin_dir.join(&link.server_if).exists());
}

#[test]
fn generic_xdp_ipv6_port_range_and_sip_truncation() {
    require_root();
    let link = Link::new();
    for (ns, dev) in [(&link.server, &link.server_if), (&link.peer, &link.peer_if)] {
        ns.ip(&["link", "set", "dev", dev, "mtu", "9000"]);
    }
    // No --iface: the agent takes the default route's interface.
    link.server
        .ip(&["route", "add", "default", "dev", &link.server_if]);
    let _agent = start_agent_with(
        &link.server,
        &[
            "--xdp-mode",
            "skb",
            "--rtp-ports",
            "40000-40100",
            "--metrics-listen",
            "127.0.0.1:9478",
        ],
    );
    // Metrics on their own address, and nothing else there.
    let (code, body) = http_get(&link.server, "http://127.0.0.1:9478/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("detector_build_info"), "{body}");
    let (code, _) = http_get(&link.server, "http://127.0.0.1:9478/api/calls");
    assert_eq!(code, 404, "call data stays on --listen");
    let v6 = |host: u8, port: u16| -> SocketAddr {
        format!("[fd00:198:18::{host}]:{port}").parse().unwrap()
    };
    let stream = RtpStream {
        src: v6(2, 40000),
        dst: v6(1, 40001),
        ssrc: 0x6666,
        first_seq: 1,
        count: 200,
        payload_type: 9,
        interval: Duration::from_micros(500),
    };
    send_rtp(&link.peer, stream.clone());
    // Outside the configured range: not tracked.
    send_rtp(
        &link.peer,
        RtpStream {
            src: v6(2, 50000),
            dst: v6(1, 50002),
            ssrc: 0x7777,
            ..stream
        },
    );
    // A 6000-byte SIP datagram in one jumbo frame: copied, cut, counted.
    let mut invite = b"INVITE sip:bob@server SIP/2.0\r\nCall-ID: big@test\r\n\r\n".to_vec();
    invite.resize(6000, b'x');
    send_udp(
        &link.peer,
        addr(&link.peer_addr, 5060),
        addr(&link.server_addr, 5060),
        invite,
    );

    let flows = wait_for_api(&link.server, "/api/flows", Duration::from_secs(10), |v| {
        find_flow(v, "0x00006666").is_some_and(|f| f["packets"] == 200)
    });
    let f = find_flow(&flows, "0x00006666").unwrap();
    assert_eq!(f["src"], "fd00:198:18::2");
    assert_eq!(
        (f["expected"].as_u64(), f["lost"].as_i64()),
        (Some(200), Some(0))
    );
    assert!(
        find_flow(&flows, "0x00007777").is_none(),
        "port 50000 is outside 40000-40100"
    );
    let status = wait_for_api(&link.server, "/api/status", Duration::from_secs(5), |v| {
        v["sip_frames"] == 1 && v["counters"]["xdp_sip"] == 1
    });
    assert_eq!(status["xdp_mode"], "skb");
    assert_eq!(status["iface"], link.server_if.as_str());
    assert_eq!(status["counters"]["xdp_sip_truncated"], 1);
    assert_eq!(status["counters"]["xdp_udp_other"].as_u64(), Some(200));
}

#[test]
fn clear_errors_and_exit_codes() {
    require_root();
    let link = Link::new();
    let agent = |args: &[&str]| {
        let out = link
            .server
            .command(detector_bin())
            .arg("agent")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    assert_eq!(
        agent(&["--iface", "nosuchif0"]).lines().last(),
        Some("error: interface nosuchif0 does not exist")
    );

    let out = Command::new(detector_bin())
        .args(["agent", "--iface", "x", "--rtp-ports", "60000-10000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid port range"));

    // No --iface and no default route in this namespace.
    assert!(agent(&[]).contains("no --iface given and no default route"));
    // A named configuration file must exist.
    assert!(agent(&["--config", "/nonexistent/detector.toml"])
        .contains("cannot read /nonexistent/detector.toml"));
    // An invalid value names its key; flags override the file.
    let dir = std::env::temp_dir().join(format!("detector-cfg-{}", link.server.name));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\niface = \"nosuchif1\"\n[detect]\nloss_threshold = 250\n",
    )
    .unwrap();
    let stderr = agent(&["--config", bad.to_str().unwrap()]);
    assert!(
        stderr.ends_with("detect.loss_threshold: 250 is outside 0-100 %"),
        "{stderr}"
    );
    let good = dir.join("good.toml");
    std::fs::write(&good, "[agent]\niface = \"nosuchif1\"\n").unwrap();
    assert!(
        agent(&["--config", good.to_str().unwrap()]).contains("interface nosuchif1 does not exist")
    );
    let stderr = agent(&["--iface", "nosuchif2", "--config", good.to_str().unwrap()]);
    assert!(
        stderr.contains("interface nosuchif2 does not exist"),
        "the flag wins: {stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // No agent in this namespace: one clear line, for every client command.
    for args in [
        &["flows"][..],
        &["calls"],
        &["call", "x"],
        &["status"],
        &["flows", "--json"],
    ] {
        let out = link
            .server
            .command(detector_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: cannot reach the agent at http://127.0.0.1:9477"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("detector agent --iface"),
            "says how to start it"
        );
        assert_eq!(stderr.trim().lines().count(), 1);
    }
    assert!(api_get(&link.server, "/healthz").is_none());
}

/// Builds an INVITE of about `size` bytes (padded with a long header).
fn big_invite(call_id: &str, size: usize) -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 198.18.0.2\r\ns=-\r\nc=IN IP4 198.18.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 96\r\na=rtpmap:96 opus/48000/2\r\n";
    let head = format!(
        "INVITE sip:media@198.18.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK-{call_id}\r\n\
         From: <sip:caller@198.18.0.2>;tag=a-{call_id}\r\nTo: <sip:media@198.18.0.1>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
    );
    let padding = size.saturating_sub(head.len() + sdp.len() + 40);
    format!(
        "{head}X-Padding: {}\r\nContent-Length: {}\r\n\r\n{sdp}",
        "p".repeat(padding),
        sdp.len()
    )
    .into_bytes()
}

fn wait_for_call(link: &Link, call_id: &str) -> Value {
    let calls = wait_for_api(&link.server, "/api/calls", Duration::from_secs(10), |v| {
        v["calls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["call_id"] == call_id))
    });
    calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call_id"] == call_id)
        .unwrap()
        .clone()
}

#[test]
fn sip_from_ip_fragments_and_tcp_segments_reaches_the_call_tracker() {
    require_root();
    let link = Link::new();
    let _agent = start_agent(&link.server, &link.server_if, &[]);

    // A 4000-byte INVITE over UDP leaves the caller as three IP fragments.
    let invite = big_invite("frag-1", 4000);
    assert!(invite.len() > 3000);
    send_udp(
        &link.peer,
        addr(&link.peer_addr, 5060),
        addr(&link.server_addr, 5060),
        invite,
    );
    let call = wait_for_call(&link, "frag-1");
    assert_eq!(call["state"], "trying");
    assert_eq!(call["caller_media"][0]["port"], 4000);
    // The SDP's dynamic payload type and its clock rate reach the kernel.
    assert_eq!(call["caller_media"][0]["rtpmap"]["96"], 48000);
    let status = wait_for_api(&link.server, "/api/status", Duration::from_secs(5), |v| {
        v["watched_endpoints"] == 1
    });
    assert!(
        status["counters"]["xdp_fragment"].as_u64().unwrap() >= 2,
        "{status}"
    );

    // Over TCP, one INVITE split across three segments.
    let server_addr = addr(&link.server_addr, 5060);
    let listener = link
        .server
        .enter(move || std::net::TcpListener::bind(server_addr).unwrap());
    let accept = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = [0u8; 8192];
        use std::io::Read;
        while conn.read(&mut sink).unwrap_or(0) > 0 {}
    });
    let invite = big_invite("tcp-1", 1200);
    link.peer.enter(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(server_addr).unwrap();
        stream.set_nodelay(true).unwrap();
        for chunk in invite.chunks(500) {
            stream.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
    });
    accept.join().unwrap();
    let call = wait_for_call(&link, "tcp-1");
    assert_eq!(call["caller_media"][0]["port"], 4000);

    // First fragments of 300 SIP datagrams whose rest never comes: the
    // reassembly keeps 256 (MAX_PENDING) and drops the oldest, and says
    // so in /api/status and /metrics.
    let peer = [198, 18, 0, 2];
    let server = [198, 18, 0, 1];
    let orphans: Vec<Vec<u8>> = (0..300u16)
        .map(|i| {
            let sip = udp(
                5060,
                5060,
                b"INVITE sip:orphan@server SIP/2.0\r\nCall-ID: x",
            );
            // More fragments follow (flag 0x2000), offset 0; an ID each.
            let mut frame = packets::ipv4(&[], peer, server, 17, 0x2000, &sip);
            frame[18..20].copy_from_slice(&(0x4000 + i).to_be_bytes());
            frame
        })
        .collect();
    let socket = PacketSocket::open(&link.peer.name, &link.peer_if).unwrap();
    assert_eq!(socket.send_frames(&orphans).unwrap(), 300);
    let status = wait_for_api(&link.server, "/api/status", Duration::from_secs(10), |v| {
        v["sip_fragments_dropped"].as_u64() == Some(44)
    });
    assert_eq!(status["counters"]["xdp_sip_ring_full"], 0, "{status}");
    let (_, metrics) = http_get(&link.server, "http://127.0.0.1:9477/metrics");
    assert!(
        metrics.contains("detector_sip_fragments_dropped_total 44"),
        "{metrics}"
    );
}

/// A Linux bridge has no native XDP: with no --xdp-mode the agent falls back
/// to generic XDP, says so once, and reports `skb`; the TC egress program
/// goes through a clsact qdisc and netlink when told to (as on kernels
/// before 6.6). Both hooks then count a stream each way.
#[test]
fn auto_mode_takes_generic_xdp_on_a_bridge_and_tc_attaches_through_netlink() {
    require_root();
    let link = Link::new();
    let bridge = format!("br{}", &link.server_if[2..]);
    let ns = &link.server;
    ns.ip(&["link", "add", &bridge, "type", "bridge"]);
    ns.ip(&["addr", "del", "198.18.0.1/24", "dev", &link.server_if]);
    ns.ip(&["link", "set", &link.server_if, "master", &bridge]);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", &bridge]);
    ns.ip(&["link", "set", &bridge, "up"]);
    let agent = start_agent_env(
        ns,
        &["--iface", &bridge, "--rtp-ports", "40000-40100"],
        &[("DETECTOR_TC_ATTACH", "netlink")],
    );
    let status = api_get(ns, "/api/status").expect("status");
    assert_eq!(status["xdp_mode"], "skb", "{status}");
    assert_eq!(status["tc_attach"], "netlink", "{status}");
    let log = agent.log_text();
    assert_eq!(
        log.matches("native XDP is not available").count(),
        1,
        "one warning line saying why:\n{log}"
    );
    let qdiscs = run(ns.command("tc").args(["qdisc", "show", "dev", &bridge]));
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    let filters = run(ns
        .command("tc")
        .args(["filter", "show", "dev", &bridge, "egress"]));
    assert!(filters.contains("detector_tc"), "{filters}");

    let stream = |src: &str, dst: &str, ssrc| RtpStream {
        src: addr(src, 40000),
        dst: addr(dst, 40002),
        ssrc,
        first_seq: 1,
        count: 50,
        payload_type: 0,
        interval: Duration::from_millis(1),
    };
    send_rtp(&link.peer, stream("198.18.0.2", "198.18.0.1", 0x4242));
    send_rtp(&link.server, stream("198.18.0.1", "198.18.0.2", 0x4343));
    let flows = wait_for_api(ns, "/api/flows", Duration::from_secs(10), |v| {
        find_flow(v, "0x00004242").is_some_and(|f| f["packets"] == 50)
            && find_flow(v, "0x00004343").is_some_and(|f| f["packets"] == 50)
    });
    assert_eq!(
        find_flow(&flows, "0x00004242").unwrap()["direction"],
        "ingress"
    );
    assert_eq!(
        find_flow(&flows, "0x00004343").unwrap()["direction"],
        "egress"
    );
    // A restart takes over the netlink filter in place (no second one) and
    // the maps (the streams' counts go on).
    let dirs = agent.agent_dirs.clone().expect("the agent's own dirs");
    let mut agent = agent;
    assert!(agent.terminate().expect("agent ran").success());
    let detector_filters = || {
        run(ns
            .command("tc")
            .args(["filter", "show", "dev", &bridge, "egress"]))
        .lines()
        .filter(|l| l.contains("detector_tc"))
        .count()
    };
    assert_eq!(detector_filters(), 1, "kept for the next agent");
    let mut args = vec!["--iface", &bridge, "--rtp-ports", "40000-40100"];
    let dir_args = dirs.args();
    args.extend(dir_args.iter().map(String::as_str));
    let mut again = start_agent_env(ns, &args, &[("DETECTOR_TC_ATTACH", "netlink")]);
    let status = api_get(ns, "/api/status").expect("status");
    assert_eq!(status["restart"]["maps_adopted"], true, "{status}");
    assert_eq!(status["restart"]["programs_adopted"], true, "{status}");
    assert_eq!(status["xdp_mode"], "skb", "{status}");
    assert_eq!(detector_filters(), 1, "replaced, not added");
    send_rtp(&link.server, stream("198.18.0.1", "198.18.0.2", 0x4343));
    wait_for_api(ns, "/api/flows", Duration::from_secs(10), |v| {
        find_flow(v, "0x00004242").is_some_and(|f| f["packets"] == 50)
            && find_flow(v, "0x00004343").is_some_and(|f| f["packets"] == 100)
    });
    assert!(again.terminate().expect("agent ran").success());
    dirs.cleanup(ns, &bridge);
    assert_eq!(detector_filters(), 0, "--cleanup detaches");
}
