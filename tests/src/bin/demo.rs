//! `cargo xtask demo`: the detector at work without a media server.
//!
//! Two network namespaces joined by a veth pair play a caller and a media
//! server; the agent watches the media server's side. Five SIPp calls run at
//! once, four with a fault imposed by nftables, and the operator's view is
//! printed as they go. Everything is removed at the end (or on Ctrl-C).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    detector_bin, nft, require_root, start_agent, workspace_root, ChildGuard, Link,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Call {
    what: &'static str,
    server_scenario: &'static str,
    caller_scenario: &'static str,
    sip_port: u16,
    server_media: u16,
    caller_media: u16,
}

const CALLS: [Call; 5] = [
    Call {
        what: "healthy",
        server_scenario: "media_server.xml",
        caller_scenario: "caller.xml",
        sip_port: 5060,
        server_media: 30000,
        caller_media: 20000,
    },
    Call {
        what: "one-way: the media server's own RTP dropped",
        server_scenario: "media_server.xml",
        caller_scenario: "caller.xml",
        sip_port: 5061,
        server_media: 30010,
        caller_media: 20010,
    },
    Call {
        what: "media stops both ways, BYE 408 20 s later",
        server_scenario: "media_server_timeout.xml",
        caller_scenario: "caller_waits.xml",
        sip_port: 5062,
        server_media: 30020,
        caller_media: 20020,
    },
    Call {
        what: "10 % loss toward the media server",
        server_scenario: "media_server.xml",
        caller_scenario: "caller.xml",
        sip_port: 5063,
        server_media: 30030,
        caller_media: 20030,
    },
    Call {
        what: "hold (a=inactive), both sides silent",
        server_scenario: "media_server_hold.xml",
        caller_scenario: "caller_hold.xml",
        sip_port: 5064,
        server_media: 30040,
        caller_media: 20040,
    },
];

fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests/scenarios").join(name)
}

fn sipp(ns: &integration_tests::NetNs, dir: &PathBuf, name: &str, args: &[String]) -> ChildGuard {
    let log = dir.join(format!("{name}.out"));
    let child = ns
        .command("sipp")
        .current_dir(dir)
        .args(args)
        .args(["-m", "1", "-nostdin", "-timeout", "90s"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("sipp log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp (cargo xtask setup --test-peers installs it)");
    ChildGuard::new(child, log)
}

fn show(title: &str, ns: &integration_tests::NetNs, args: &[&str]) {
    let out = ns
        .command(detector_bin())
        .args(args)
        .output()
        .expect("detector");
    println!("\n\x1b[1m$ detector {}\x1b[0m  ({title})", args.join(" "));
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn main() {
    require_root();
    // SAFETY: installs an async-signal-safe handler that only stores a flag.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let started = Instant::now();
    println!(
        "Setting up: two namespaces (caller 198.18.0.2, media server 198.18.0.1) on a veth pair"
    );
    let link = Link::new();
    let dir = std::env::temp_dir().join(format!("detector-demo-{}", link.server.name));
    std::fs::create_dir_all(&dir).expect("demo dir");
    let mut agent_args: Vec<String> = vec![
        "--calls-log".into(),
        dir.join("calls.jsonl").display().to_string(),
    ];
    for call in &CALLS {
        agent_args.extend(["--sip-port".into(), call.sip_port.to_string()]);
    }
    let refs: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let _agent = start_agent(&link.server, &link.server_if, &refs);
    println!(
        "Agent attached to {} (XDP ingress + TC egress), API on 127.0.0.1:9477 in its namespace",
        link.server_if
    );

    let (one_way, loss) = (&CALLS[1], &CALLS[3]);
    nft(&link.server, &format!(
        "table netdev demo {{\n chain egress {{\n type filter hook egress device \"{}\" priority 0; policy accept;\n udp dport {} drop\n }}\n}}",
        link.server_if, one_way.caller_media
    ));
    nft(&link.peer, &format!(
        "table netdev demo {{\n chain egress {{\n type filter hook egress device \"{}\" priority 0; policy accept;\n udp dport {} numgen inc mod 10 == 0 drop\n }}\n}}",
        link.peer_if, loss.server_media
    ));

    let mut peers = Vec::new();
    for call in &CALLS {
        peers.push(sipp(
            &link.server,
            &dir,
            &format!("server-{}", call.sip_port),
            &[
                "-sf".into(),
                scenario(call.server_scenario).display().to_string(),
                "-i".into(),
                link.server_addr.clone(),
                "-p".into(),
                call.sip_port.to_string(),
                "-mi".into(),
                link.server_addr.clone(),
                "-mp".into(),
                call.server_media.to_string(),
            ],
        ));
    }
    thread::sleep(Duration::from_millis(300));
    for call in &CALLS {
        println!("  call on SIP port {}: {}", call.sip_port, call.what);
        peers.push(sipp(
            &link.peer,
            &dir,
            &format!("caller-{}", call.sip_port),
            &[
                "-sf".into(),
                scenario(call.caller_scenario).display().to_string(),
                "-i".into(),
                link.peer_addr.clone(),
                "-p".into(),
                call.sip_port.to_string(),
                "-mi".into(),
                link.peer_addr.clone(),
                "-mp".into(),
                call.caller_media.to_string(),
                format!("{}:{}", link.server_addr, call.sip_port),
            ],
        ));
    }

    let deadline = Instant::now() + Duration::from_secs(75);
    let mut next_view = Instant::now() + Duration::from_secs(8);
    loop {
        let mut running = 0;
        for peer in &mut peers {
            if peer
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            {
                running += 1;
            }
        }
        if running == 0 || Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        if Instant::now() >= next_view {
            show(
                &format!(
                    "{:.0} s in, {running} SIPp peers still running",
                    started.elapsed().as_secs_f64()
                ),
                &link.server,
                &["calls"],
            );
            next_view += Duration::from_secs(8);
        }
        thread::sleep(Duration::from_millis(200));
    }
    if !INTERRUPTED.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(1500));
        show("every call, with why it ended", &link.server, &["calls"]);
        show(
            "only the calls in trouble",
            &link.server,
            &["calls", "--flagged"],
        );
        let flagged = link
            .server
            .command(detector_bin())
            .args(["calls", "--flagged", "--json"])
            .output()
            .expect("detector");
        let flagged: serde_json::Value =
            serde_json::from_slice(&flagged.stdout).unwrap_or_default();
        if let Some(first) = flagged["calls"].as_array().and_then(|c| c.first()) {
            let id = first["call_id"].as_str().unwrap_or_default().to_string();
            show("one call in detail", &link.server, &["call", &id]);
        }
        show("the agent", &link.server, &["status"]);
        let metrics = link.server.command("sh").args(["-c", "curl -s 127.0.0.1:9477/metrics | grep -E '^detector_(call_end|flags_raised)_total' | grep -v ' 0$'"]).output();
        if let Ok(m) = metrics {
            println!("\n\x1b[1m$ curl 127.0.0.1:9477/metrics | grep ...\x1b[0m  (what Prometheus scrapes)");
            print!("{}", String::from_utf8_lossy(&m.stdout));
        }
        println!(
            "\nCall records were appended to {} as JSON lines.",
            dir.join("calls.jsonl").display()
        );
    }
    println!(
        "\nCleaning up (namespaces, agent, peers) after {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    drop(peers);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Command::new("true").status();
}
