//! `loadgen`: N concurrent SIP calls with RTP both ways through the real
//! kernel programs, or a flood of distinct RTP 5-tuples, sent as crafted
//! frames from AF_PACKET sockets on both ends of a veth pair (see
//! `integration_tests::callgen` for what a call is made of).
//!
//! Progress goes to stderr, one line about every 2 s, plus `loadgen: all
//! calls up` once every call is answered and `loadgen: first hangup` at the
//! first BYE. At the end the manifest (JSON: every call's Call-ID, fault,
//! endpoints, SSRCs and packets sent per direction, and the run's pacing)
//! goes to `--manifest` or stdout.

use std::{
    io::Write,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use integration_tests::{
    afpacket::{run_live, LiveSink, PacketSocket},
    callgen::{Generator, Options},
};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "SIP calls with RTP both ways, as crafted frames on a veth pair"
)]
struct Args {
    /// Network namespace of the caller's (remote) end of the veth pair.
    #[arg(long)]
    caller_netns: String,
    /// The caller's veth end (frames sent here enter the server: XDP).
    #[arg(long)]
    caller_iface: String,
    /// Network namespace of the media server's end.
    #[arg(long)]
    server_netns: String,
    /// The server's veth end, where the agent is attached (TC egress).
    #[arg(long)]
    server_iface: String,
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// RTP packets per second per stream (at least 2).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Seconds of media per call, from its answer.
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
    /// Calls set up per second.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Calls whose caller stops sending (one-way, caller_to_callee).
    #[arg(long, default_value_t = 0)]
    one_way_caller_to_callee: u32,
    /// Calls whose media server stops sending (one-way, callee_to_caller).
    #[arg(long, default_value_t = 0)]
    one_way_callee_to_caller: u32,
    /// Calls where both sides stop; the server's BYE says RTP timeout (408).
    #[arg(long, default_value_t = 0)]
    silent: u32,
    /// Calls losing --loss-percent of one direction (directions alternate).
    #[arg(long, default_value_t = 0)]
    loss: u32,
    /// Share of the lossy direction's sequence numbers skipped.
    #[arg(long, default_value_t = 10)]
    loss_percent: u32,
    /// Packets per second of lossy calls' streams.
    #[arg(long, default_value_t = 50.0)]
    loss_rate: f64,
    /// Seconds after the answer when one-way and silent calls stop sending.
    #[arg(long, default_value_t = 3.0)]
    fault_after: f64,
    /// Seconds from the last RTP packet to the BYE.
    #[arg(long, default_value_t = 1.5)]
    bye_gap: f64,
    /// Distinct random RTP 5-tuples sent once each toward the server.
    #[arg(long, default_value_t = 0)]
    flood: u32,
    /// Seconds from the start when the flood begins.
    #[arg(long, default_value_t = 5.0)]
    flood_at: f64,
    /// The flood's packets per second.
    #[arg(long, default_value_t = 100_000)]
    flood_pps: u32,
    /// Seed of the random sequence numbers, timestamps and flood tuples.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Call-ID prefix [default: lg<pid>].
    #[arg(long)]
    tag: Option<String>,
    /// Write the manifest here instead of stdout.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> Result<()> {
    let args = Args::parse();
    let opts = Options {
        calls: args.calls,
        rate: args.rate,
        hold_s: args.hold,
        ramp: args.ramp,
        one_way_caller_to_callee: args.one_way_caller_to_callee,
        one_way_callee_to_caller: args.one_way_callee_to_caller,
        silent: args.silent,
        loss: args.loss,
        loss_percent: args.loss_percent,
        loss_rate: args.loss_rate,
        fault_after_s: args.fault_after,
        bye_gap_s: args.bye_gap,
        flood: args.flood,
        flood_at_s: args.flood_at,
        flood_pps: args.flood_pps,
        seed: args.seed,
        tag: args
            .tag
            .unwrap_or_else(|| format!("lg{}", std::process::id())),
    };
    let mut generator = match Generator::new(opts) {
        Ok(g) => g,
        Err(e) => bail!("{e}"),
    };
    let caller = PacketSocket::open(&args.caller_netns, &args.caller_iface).with_context(|| {
        format!(
            "AF_PACKET socket on {} in {} (needs root)",
            args.caller_iface, args.caller_netns
        )
    })?;
    let server = PacketSocket::open(&args.server_netns, &args.server_iface).with_context(|| {
        format!(
            "AF_PACKET socket on {} in {}",
            args.server_iface, args.server_netns
        )
    })?;
    // SIGTERM/SIGINT stop the run; the manifest still says what was sent.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    // A traffic source should not be held up by the system it measures (the
    // agent, on a machine of two cores): a higher priority, if allowed.
    // SAFETY: a plain syscall on this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
    let mut sink = LiveSink::new(caller, server);
    let calls = args.calls;
    let (mut all_up, mut hung_up, mut last_line) = (false, false, Duration::ZERO);
    let pacing = run_live(
        &mut generator,
        &mut sink,
        || STOP.load(Ordering::Relaxed),
        |g, p| {
            let c = g.counts();
            if !all_up && c.answered == calls {
                all_up = true;
                eprintln!(
                    "loadgen: all calls up ({calls}) at {:.1}s",
                    p.elapsed.as_secs_f64()
                );
            }
            if !hung_up && c.hung_up > 0 {
                hung_up = true;
                eprintln!("loadgen: first hangup at {:.1}s", p.elapsed.as_secs_f64());
            }
            if p.elapsed >= last_line + Duration::from_secs(2) {
                last_line = p.elapsed;
                eprintln!(
                    "loadgen: {:.0}s answered {} ended {} frames {} (rtp {} sip {} flood {}) peak {}/s max lag {} ms",
                    p.elapsed.as_secs_f64(),
                    c.answered,
                    c.ended,
                    c.caller_frames + c.server_frames,
                    c.rtp,
                    c.sip,
                    c.flood,
                    p.peak_pps,
                    p.max_lag.as_millis()
                );
            }
        },
    );
    let mut manifest = generator.manifest();
    manifest["complete"] = serde_json::json!(generator.finished());
    manifest["elapsed_s"] = serde_json::json!(pacing.elapsed.as_secs_f64());
    manifest["max_lag_ms"] = serde_json::json!(pacing.max_lag.as_secs_f64() * 1e3);
    manifest["late_ticks"] = serde_json::json!(pacing.late_ticks);
    manifest["peak_pps"] = serde_json::json!(pacing.peak_pps);
    manifest["send_errors"] = serde_json::json!(sink.send_errors);
    manifest["last_send_error"] = serde_json::json!(sink.last_error);
    let text = serde_json::to_string(&manifest)?;
    match &args.manifest {
        Some(path) => std::fs::write(path, text).with_context(|| format!("{}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    eprintln!(
        "loadgen: done in {:.1}s, peak {}/s, max lag {} ms, {} send errors",
        pacing.elapsed.as_secs_f64(),
        pacing.peak_pps,
        pacing.max_lag.as_millis(),
        sink.send_errors
    );
    Ok(())
}
