//! `cargo xtask bench`: figures, printed, never asserted.
//!
//! 1. The kernel programs through BPF_PROG_TEST_RUN, side by side with bare
//!    XDP and TC programs loaded from the same object, in one run.
//! 2. `detector analyze` against `tshark -z rtp,streams` on two generated
//!    captures: RTP only, and 2,000 concurrent SIP calls.
//! 3. The agent at 1,000 to 20,000 concurrent calls (`loadgen`'s frames
//!    through a veth pair): CPU, peak RSS, poll time, API latency.

use std::{
    io::{BufWriter, Write},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use detector_common::config::DetectorConfig;
use detector_user::kernel::{
    Kernel, BASELINE_KTIME_PROGRAM, BASELINE_PROGRAM, BASELINE_TC_PROGRAM, BENCH_ADVANCE_PROGRAM,
    BENCH_ADVANCE_TC_PROGRAM, BENCH_IN_ORDER_PROGRAM, BENCH_IN_ORDER_TC_PROGRAM, TC_PROGRAM,
    XDP_PROGRAM,
};
use integration_tests::{
    afpacket::{run_live, LiveSink, PacketSocket},
    api_get,
    callgen::{Generator, Options, Side, Sink},
    http_get,
    packets::*,
    require_root, workspace_root, AgentDirs, ChildGuard, Link,
};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 15;
const NEW_FLOWS: u32 = 5_000;
const LINKTYPE_ETHERNET: u32 = 1;
const SERVER: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];

fn main() -> Result<()> {
    require_root();
    // `bench kernel`, `bench analyzer` or `bench scale` runs one part.
    let only = std::env::args().nth(1);
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if runs("kernel") {
        kernel_bench()?;
    }
    if runs("analyzer") {
        analyzer_bench()?;
    }
    if runs("scale") {
        scale_bench()?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The kernel's average ns per run of each program, round by round: the
/// programs take turns within a round, so a slow spell of the machine hits
/// all of them and differences are taken within a round.
fn rounds<const N: usize>(
    k: &Kernel,
    programs: [&'static str; N],
    frame: &[u8],
) -> Result<Vec<[f64; N]>> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut round = [0f64; N];
        for (ns, program) in round.iter_mut().zip(programs) {
            *ns = k.test_run(program, frame, REPEAT)?.duration.as_nanos() as f64;
        }
        rounds.push(round);
    }
    Ok(rounds)
}

/// One row of the table: per hook, the detector's program, its bare
/// counterpart, and the median of the rounds' differences between them.
struct Row {
    xdp: f64,
    xdp_bare: f64,
    xdp_over: f64,
    tc: f64,
    tc_bare: f64,
    tc_over: f64,
}

/// `programs`: XDP, bare XDP, TC, bare TC.
fn measure(k: &Kernel, programs: [&'static str; 4], frame: &[u8]) -> Result<Row> {
    let rounds = rounds(k, programs, frame)?;
    let column = |f: &dyn Fn(&[f64; 4]) -> f64| median(rounds.iter().map(f).collect());
    Ok(Row {
        xdp: column(&|r| r[0]),
        xdp_bare: column(&|r| r[1]),
        xdp_over: column(&|r| r[0] - r[1]),
        tc: column(&|r| r[2]),
        tc_bare: column(&|r| r[3]),
        tc_over: column(&|r| r[2] - r[3]),
    })
}

/// Average ns of `NEW_FLOWS` single runs, the `i`th on `frame(i)`.
fn single_runs(k: &Kernel, program: &'static str, frame: impl Fn(u32) -> Vec<u8>) -> Result<f64> {
    let mut total = 0f64;
    for i in 0..NEW_FLOWS {
        total += k.test_run(program, &frame(i), 1)?.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(NEW_FLOWS))
}

/// A frame of a stream never seen before, for each `i`.
fn new_flow(base_ssrc: u32) -> impl Fn(u32) -> Vec<u8> {
    move |i| {
        ipv4_udp(
            PEER,
            SERVER,
            30000,
            20000,
            &rtp_payload(8, 1, 0, base_ssrc + i, 160),
        )
    }
}

fn kernel_bench() -> Result<()> {
    let mut k = Kernel::load(&DetectorConfig::default())?;
    k.load_benchmarks()?;
    let rtp = ipv4_udp(
        PEER,
        SERVER,
        30000,
        20000,
        &rtp_payload(8, 1, 0, 0xE57AB, 160),
    );
    println!(
        "\nKernel programs, BPF_PROG_TEST_RUN (median of {ROUNDS} rounds x {REPEAT} runs, ns per packet)"
    );
    println!(
        "{:<28} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}",
        "packet", "XDP", "bare", "over", "TC", "bare", "over"
    );
    let row = |name: &str, r: &Row, note: &str| {
        println!(
            "{name:<28} {:>7.1} {:>7.1} {:>7.1}   {:>7.1} {:>7.1} {:>7.1}{note}",
            r.xdp, r.xdp_bare, r.xdp_over, r.tc, r.tc_bare, r.tc_over
        );
    };

    // The repeats of BPF_PROG_TEST_RUN reuse one frame; these programs
    // advance its sequence number and timestamp after each run, so every
    // run is the next packet of one established stream. Their bare
    // counterparts only advance.
    let in_order = measure(
        &k,
        [
            BENCH_IN_ORDER_PROGRAM,
            BENCH_ADVANCE_PROGRAM,
            BENCH_IN_ORDER_TC_PROGRAM,
            BENCH_ADVANCE_TC_PROGRAM,
        ],
        &rtp,
    )?;
    row(
        "RTP, established, in order",
        &in_order,
        "   <- target: at most 50 over bare",
    );

    // The first run of an RTP frame creates its flow; all other repeats are
    // duplicates. Tagged and IPv6 frames take the full parser, not the fast
    // path.
    let v6 = |last: u8| {
        let mut a = [0u8; 16];
        a[0] = 0xFD;
        a[15] = last;
        a
    };
    let media = rtp_payload(8, 1, 0, 0xE57AC, 160);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RTP, established, duplicate", rtp.clone()),
        (
            "  the same, VLAN-tagged",
            ipv4(&[42], PEER, SERVER, 17, 0, &udp(30000, 20000, &media)),
        ),
        (
            "  the same, IPv6",
            ipv6_udp(v6(2), v6(1), 30000, 20000, &media),
        ),
        (
            "RTCP",
            ipv4_udp(PEER, SERVER, 30001, 20001, &rtcp_rr(0xE57AB)),
        ),
        (
            "UDP, not RTP (DNS)",
            ipv4_udp(PEER, SERVER, 53, 40000, b"\x12\x34\x01\x00\x00\x01\x00\x00"),
        ),
        (
            "TCP",
            ipv4(&[], PEER, SERVER, 6, 0, &tcp(443, 40000, &[0; 100])),
        ),
    ];
    let programs = [
        XDP_PROGRAM,
        BASELINE_PROGRAM,
        TC_PROGRAM,
        BASELINE_TC_PROGRAM,
    ];
    for (name, frame) in &cases {
        row(name, &measure(&k, programs, frame)?, "");
    }
    let (xdp, tc) = (
        single_runs(&k, XDP_PROGRAM, new_flow(0x1000_0000))?,
        single_runs(&k, TC_PROGRAM, new_flow(0x2000_0000))?,
    );
    let (xdp_bare, tc_bare) = (
        single_runs(&k, BASELINE_PROGRAM, |_| rtp.clone())?,
        single_runs(&k, BASELINE_TC_PROGRAM, |_| rtp.clone())?,
    );
    let new = Row {
        xdp,
        xdp_bare,
        xdp_over: xdp - xdp_bare,
        tc,
        tc_bare,
        tc_over: tc - tc_bare,
    };
    row(
        "RTP, new flow",
        &new,
        &format!("   (single runs, {NEW_FLOWS} new flows each)"),
    );
    let ktime = median(
        rounds(&k, [BASELINE_KTIME_PROGRAM, BASELINE_PROGRAM], &rtp)?
            .iter()
            .map(|r| r[0] - r[1])
            .collect(),
    );
    println!(
        "of which bpf_ktime_get_ns (one call per RTP/RTCP packet): {ktime:.1} ns on this machine"
    );
    Ok(())
}

/// Writes a pcap of `streams` interleaved RTP streams, `per_stream` packets each.
fn write_capture(path: &Path, streams: u32, per_stream: u32) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(&pcap_header(LINKTYPE_ETHERNET))?;
    let start_us = 1_700_000_000_000_000u64;
    let mut packets = 0;
    for round in 0..per_stream {
        for s in 0..streams {
            // Every 20 ms a packet from each stream; 0.1 % lost.
            if (round * 7919 + s * 104_729) % 1000 == 0 && round > 0 && round + 1 < per_stream {
                continue;
            }
            let src = [10, 1, (s >> 8) as u8, s as u8];
            let sport = 10000 + (s % 25000) as u16 * 2;
            let payload = rtp_payload(8, round as u16, round * 160, 0x5000_0000 + s, 160);
            let frame = ipv4_udp(src, [10, 2, 0, 1], sport, 40000, &payload);
            let t_us = u64::from(round) * 20_000 + u64::from(s) * 20_000 / u64::from(streams);
            out.write_all(&pcap_record_header((start_us + t_us) * 1000, frame.len()))?;
            out.write_all(&frame)?;
            packets += 1;
        }
    }
    out.flush()?;
    Ok(packets)
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed");
    Ok(started.elapsed().as_secs_f64())
}

fn analyzer_bench() -> Result<()> {
    let streams: u32 = std::env::var("BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let per_stream: u32 = std::env::var("BENCH_PER_STREAM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let detector = workspace_root().join("target/release/detector");
    println!("\nOffline analysis: `detector analyze --json` against `tshark -q -z rtp,streams` on generated captures");
    println!(
        "{:<44} {:>10} {:>10} {:>14} {:>8}",
        "capture, tool", "packets", "seconds", "packets/s", "streams"
    );

    let path = std::env::temp_dir().join(format!("detector-bench-{}.pcap", std::process::id()));
    let packets = write_capture(&path, streams, per_stream)?;
    let rtp_only = compare(
        &detector,
        &path,
        &format!("RTP only, {streams} streams"),
        packets,
        // No SIP: tshark finds the streams only heuristically.
        &["-o", "rtp.heuristic_rtp:TRUE"],
    );
    let _ = std::fs::remove_file(&path);
    let rtp_only = rtp_only?;

    let calls = 2000;
    let path =
        std::env::temp_dir().join(format!("detector-bench-calls-{}.pcap", std::process::id()));
    let packets = write_calls_capture(&path, calls)?;
    // SIP and SDP announce every stream: tshark follows them as it does by
    // default.
    let with_calls = compare(
        &detector,
        &path,
        &format!("{calls} concurrent SIP calls"),
        packets,
        &[],
    );
    let _ = std::fs::remove_file(&path);
    let with_calls = with_calls?;
    println!(
        "detector is {rtp_only:.1}x faster than tshark on RTP only (target: at least 50x), {with_calls:.1}x on {calls} calls (target: at least 20x)"
    );
    Ok(())
}

/// Runs both tools on `path`, prints a row for each and returns how many
/// times faster the detector was.
fn compare(
    detector: &Path,
    path: &Path,
    name: &str,
    packets: u64,
    tshark_options: &[&str],
) -> Result<f64> {
    let ours = timed(
        Command::new(detector)
            .arg("analyze")
            .arg("--json")
            .arg(path),
    )?;
    // What the timed run found, so a fast wrong answer cannot pass for speed.
    let out = Command::new(detector)
        .arg("analyze")
        .arg("--json")
        .arg(path)
        .output()
        .context("detector analyze")?;
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).context("analyze JSON")?;
    let our_streams = found["streams"].as_array().map_or(0, Vec::len);
    let tshark_args = |c: &mut Command| {
        c.arg("-n")
            .args(tshark_options)
            .args(["-q", "-z", "rtp,streams", "-r"])
            .arg(path);
    };
    let mut cmd = Command::new("tshark");
    tshark_args(&mut cmd);
    let tshark = timed(cmd.stderr(Stdio::null()))?;
    let mut cmd = Command::new("tshark");
    tshark_args(&mut cmd);
    let listing = cmd.stderr(Stdio::null()).output().context("tshark")?;
    // One line per stream between the table's header and its closing line.
    let tshark_streams = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.contains(" 0x"))
        .count();
    let row = |tool: &str, seconds: f64, streams: usize| {
        println!(
            "{:<44} {packets:>10} {seconds:>10.2} {:>14.0} {streams:>8}",
            format!("{name}: {tool}"),
            packets as f64 / seconds
        );
    };
    row("detector", ours, our_streams);
    row("tshark", tshark, tshark_streams);
    Ok(tshark / ours)
}

/// Frames into a pcap, stamped with the generator's clock.
struct PcapSink {
    out: BufWriter<std::fs::File>,
    start_ns: u64,
    frames: u64,
    error: Option<std::io::Error>,
}

impl Sink for PcapSink {
    fn frame(&mut self, _side: Side, time_ns: u64, frame: &[u8]) {
        let header = pcap_record_header(self.start_ns + time_ns, frame.len());
        if let Err(e) = self
            .out
            .write_all(&header)
            .and_then(|()| self.out.write_all(frame))
        {
            self.error.get_or_insert(e);
        }
        self.frames += 1;
    }
}

/// A capture of `calls` concurrent calls as `loadgen` makes them, at
/// G.711's 50 packets/s both ways for 5 s: SIP with SDP, then RTP.
fn write_calls_capture(path: &Path, calls: u32) -> Result<u64> {
    let mut generator = Generator::new(Options {
        calls,
        rate: 50.0,
        hold_s: 5.0,
        ramp: f64::from(calls),
        tag: "bench".into(),
        ..Options::default()
    })
    .map_err(anyhow::Error::msg)?;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(&pcap_header(LINKTYPE_ETHERNET))?;
    let mut sink = PcapSink {
        out,
        start_ns: 1_700_000_000_000_000_000,
        frames: 0,
        error: None,
    };
    generator.advance(u64::MAX, &mut sink);
    if let Some(e) = sink.error {
        return Err(e.into());
    }
    sink.out.flush()?;
    Ok(sink.frames)
}

/// Seconds over which the agent's CPU and poll times are taken, all calls up.
const SCALE_WINDOW_S: u64 = 10;

/// The agent's figures with `calls` calls up.
struct ScaleRow {
    calls: u32,
    /// Of one core, over the window.
    cpu_percent: f64,
    peak_rss_mb: f64,
    /// Mean of `detector_map_poll_duration_seconds` over the window.
    poll_ms: f64,
    /// Median of five `GET /api/calls`, and the answer's size.
    api_ms: f64,
    api_mb: f64,
    /// Calls the agent followed at the window's end, and SIP frames the
    /// kernel could not hand it (a full ring): figures of a run that lost
    /// calls are not figures of that many calls.
    known: u64,
    sip_dropped: u64,
    /// How far `loadgen`'s clock fell behind (its figures are only as good
    /// as its pacing).
    lag_ms: f64,
}

/// The agent (release build) at 1,000 to 20,000 concurrent calls, driven
/// by the load generator through a veth pair.
fn scale_bench() -> Result<()> {
    let detector = workspace_root().join("target/release/detector");
    println!(
        "\nThe agent at scale: calls at 2 packets/s each way through XDP and TC, {SCALE_WINDOW_S} s with all calls up, poll 1 s"
    );
    println!(
        "{:>7} {:>7} {:>9} {:>11} {:>12} {:>8} {:>14} {:>10} {:>12}",
        "calls",
        "known",
        "SIP lost",
        "CPU (core)",
        "peak RSS MB",
        "poll ms",
        "/api/calls ms",
        "answer MB",
        "loadgen lag"
    );
    // BENCH_SCALE_CALLS=20000 runs one row (for profiling).
    let rows: Vec<u32> = match std::env::var("BENCH_SCALE_CALLS") {
        Ok(v) => vec![v.parse().context("BENCH_SCALE_CALLS")?],
        Err(_) => vec![1000, 5000, 10_000, 20_000],
    };
    for calls in rows {
        match scale_row(&detector, calls) {
            Ok(r) => println!(
                "{:>7} {:>7} {:>9} {:>10.1}% {:>12.0} {:>8.1} {:>14.0} {:>10.1} {:>9.0} ms",
                r.calls,
                r.known,
                r.sip_dropped,
                r.cpu_percent,
                r.peak_rss_mb,
                r.poll_ms,
                r.api_ms,
                r.api_mb,
                r.lag_ms
            ),
            Err(e) => println!("{calls:>7} failed: {e:#}"),
        }
    }
    println!("targets at 20,000 calls: under 10 % of one core, under 256 MB peak RSS");
    Ok(())
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: a plain libc query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// VmHWM of `pid`, in MB.
fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// (sum, count) of the agent's poll-duration histogram.
fn poll_histogram(link: &Link) -> Result<(f64, f64)> {
    let (_, text) = http_get(&link.server, "http://127.0.0.1:9477/metrics");
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("{name} in /metrics"))?
            .parse()
            .context(name.to_string())
    };
    Ok((
        value("detector_map_poll_duration_seconds_sum ")?,
        value("detector_map_poll_duration_seconds_count ")?,
    ))
}

fn scale_row(detector: &Path, calls: u32) -> Result<ScaleRow> {
    let link = Link::new();
    let log = std::env::temp_dir().join(format!("{}-agent.log", link.server.name));
    let dirs = AgentDirs::new(&link.server.name);
    let child = link
        .server
        .agent_command(detector)
        .args([
            "agent",
            "--iface",
            &link.server_if,
            "--listen",
            "127.0.0.1:9477",
        ])
        .args(dirs.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawn the agent")?;
    // nsenter execs the agent: this is its pid.
    let pid = child.id();
    let mut agent = ChildGuard::new(child, log);
    agent.agent_dirs = Some(dirs);
    let deadline = Instant::now() + Duration::from_secs(20);
    while api_get(&link.server, "/healthz").is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "agent did not start: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let ramp = 1000.0;
    let generator = Generator::new(Options {
        calls,
        rate: 2.0,
        hold_s: f64::from(calls) / ramp + SCALE_WINDOW_S as f64 + 30.0,
        ramp,
        tag: format!("scale{calls}"),
        ..Options::default()
    })
    .map_err(anyhow::Error::msg)?;
    let caller = PacketSocket::open(&link.peer.name, &link.peer_if)?;
    let server = PacketSocket::open(&link.server.name, &link.server_if)?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU32::new(0));
    let sender = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut generator = generator;
            let mut sink = LiveSink::new(caller, server);
            run_live(
                &mut generator,
                &mut sink,
                || stop.load(Ordering::Relaxed),
                |g, _| answered.store(g.counts().answered, Ordering::Relaxed),
            )
        })
    };
    let result = measure_at_peak(&link, pid, calls, &answered);
    stop.store(true, Ordering::Relaxed);
    let pacing = sender
        .join()
        .map_err(|_| anyhow::anyhow!("loadgen thread panicked"))?;
    agent.terminate();
    result.map(|row| ScaleRow {
        lag_ms: pacing.max_lag.as_secs_f64() * 1e3,
        ..row
    })
}

/// Once every call is up: the agent's CPU and poll times over the window,
/// then the API's latency and the peak RSS.
fn measure_at_peak(link: &Link, pid: u32, calls: u32, answered: &AtomicU32) -> Result<ScaleRow> {
    let deadline = Instant::now() + Duration::from_secs(u64::from(calls) / 1000 + 30);
    while answered.load(Ordering::Relaxed) < calls {
        anyhow::ensure!(Instant::now() < deadline, "the calls never all came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few polls to take in the last answers, then the window.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, hist0, t0) = (cpu_seconds(pid)?, poll_histogram(link)?, Instant::now());
    std::thread::sleep(Duration::from_secs(SCALE_WINDOW_S));
    let (cpu1, hist1) = (cpu_seconds(pid)?, poll_histogram(link)?);
    let window = t0.elapsed().as_secs_f64();
    let mut api = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let (code, body) = http_get(&link.server, "http://127.0.0.1:9477/api/calls");
        api.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(code == 200, "/api/calls answered {code}");
        anyhow::ensure!(body.contains("\"calls\""), "/api/calls answered no calls");
        bytes = body.len();
    }
    let status = api_get(&link.server, "/api/status").context("/api/status")?;
    let counter = |name: &str| status["counters"][name].as_u64().unwrap_or(0);
    Ok(ScaleRow {
        calls,
        known: status["calls"].as_u64().unwrap_or(0),
        sip_dropped: counter("xdp_sip_ring_full") + counter("tc_sip_ring_full"),
        cpu_percent: (cpu1 - cpu0) / window * 100.0,
        peak_rss_mb: peak_rss_mb(pid)?,
        poll_ms: (hist1.0 - hist0.0) / (hist1.1 - hist0.1).max(1.0) * 1e3,
        api_ms: median(api),
        api_mb: bytes as f64 / 1e6,
        lag_ms: 0.0,
    })
}
