//! `cargo xtask bench`: figures, printed, never asserted.
//!
//! 1. The kernel programs through BPF_PROG_TEST_RUN, side by side with bare
//!    XDP and TC programs loaded from the same object, in one run.
//! 2. `detector analyze` against `tshark -z rtp,streams` on one large
//!    generated capture.

use std::{
    io::{BufWriter, Write},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};
use detector_common::config::DetectorConfig;
use detector_user::kernel::{
    Kernel, BASELINE_KTIME_PROGRAM, BASELINE_PROGRAM, BASELINE_TC_PROGRAM, BENCH_ADVANCE_PROGRAM,
    BENCH_ADVANCE_TC_PROGRAM, BENCH_IN_ORDER_PROGRAM, BENCH_IN_ORDER_TC_PROGRAM, TC_PROGRAM,
    XDP_PROGRAM,
};
use integration_tests::{packets::*, require_root, workspace_root};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 15;
const NEW_FLOWS: u32 = 5_000;
const LINKTYPE_ETHERNET: u32 = 1;
const SERVER: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];

fn main() -> Result<()> {
    require_root();
    // `bench kernel` or `bench analyzer` runs one half.
    let only = std::env::args().nth(1);
    if only.as_deref() != Some("analyzer") {
        kernel_bench()?;
    }
    if only.as_deref() != Some("kernel") {
        analyzer_bench()?;
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
    let path = std::env::temp_dir().join(format!("detector-bench-{}.pcap", std::process::id()));
    let packets = write_capture(&path, streams, per_stream)?;
    let size_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    let detector = workspace_root().join("target/release/detector");
    let ours = timed(
        Command::new(&detector)
            .arg("analyze")
            .arg("--json")
            .arg(&path),
    )?;
    let tshark = timed(
        Command::new("tshark")
            .args([
                "-n",
                "-o",
                "rtp.heuristic_rtp:TRUE",
                "-q",
                "-z",
                "rtp,streams",
                "-r",
            ])
            .arg(&path)
            .stderr(Stdio::null()),
    )?;
    let _ = std::fs::remove_file(&path);
    println!("\nOffline analysis of a generated capture: {packets} RTP packets, {streams} streams, {size_mb:.0} MB");
    println!("{:<40} {:>10} {:>16}", "tool", "seconds", "packets/s");
    println!(
        "{:<40} {ours:>10.2} {:>16.0}",
        "detector analyze --json",
        packets as f64 / ours
    );
    println!(
        "{:<40} {tshark:>10.2} {:>16.0}",
        "tshark -q -z rtp,streams (heuristic)",
        packets as f64 / tshark
    );
    println!(
        "detector is {:.1}x faster than tshark (target: at least 20x)",
        tshark / ours
    );
    Ok(())
}
