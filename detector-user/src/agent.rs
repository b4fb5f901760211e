//! The agent: loads and attaches the programs, polls the maps, keeps the
//! userspace view of flows and serves it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::Write,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use detector_common::{
    counters::{COUNTERS_PER_HOOK, HOOKS},
    flow::{EndpointKey, FlowKey, PtClockRate, WatchedEndpoint, KIND_RTP},
    sip::SipFrame,
};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    calls::{Call, CallTracker},
    capture::{Counters, Kernel},
    config::AgentConfig,
    detect::{CallDetector, Flag},
    flows::{Direction, StreamRecord},
    metrics::Metrics,
    reassembly::SipReassembler,
    records::{self, CallReport},
};

/// SIP and call state, fed by the SIP reader and evaluated by the poller.
#[derive(Debug)]
pub struct Engine {
    pub tracker: CallTracker,
    pub detector: CallDetector,
    pub reassembler: SipReassembler,
    pub parse_errors: u64,
    metrics: SharedMetrics,
}

impl Engine {
    pub fn new(cfg: &AgentConfig, metrics: SharedMetrics) -> Self {
        Self {
            tracker: CallTracker::new(cfg.max_dialog_age.as_secs_f64()),
            detector: CallDetector::new(cfg.detect.clone()),
            reassembler: SipReassembler::default(),
            parse_errors: 0,
            metrics,
        }
    }

    /// Feeds one captured frame (Ethernet) seen at `ts` (Unix seconds);
    /// returns how many SIP messages it completed and parsed.
    pub fn on_frame(&mut self, frame: &[u8], ts: f64) -> u64 {
        let Ok((_, l3)) = detector_common::packet::parse_ethernet(frame) else {
            return 0;
        };
        let mut parsed = 0;
        for message in self.reassembler.push(frame, l3, ts) {
            let metrics = self.metrics.lock().expect("metrics lock");
            match crate::sip::parse_message(&message.bytes) {
                Ok((msg, _)) => {
                    metrics.observe_sip(msg.method(), msg.status());
                    self.tracker.on_message(&msg, ts);
                    parsed += 1;
                }
                Err(_) => {
                    metrics.sip_parse_errors.inc();
                    self.parse_errors += 1;
                }
            }
        }
        parsed
    }
}

pub type SharedEngine = Arc<Mutex<Engine>>;
pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// What the API serves, refreshed every poll.
#[derive(Debug, Serialize)]
pub struct AgentState {
    pub iface: String,
    pub xdp_mode: crate::capture::XdpAttachMode,
    #[serde(skip)]
    pub started: Instant,
    pub flows: Vec<StreamRecord>,
    /// RTCP flows seen (not listed as streams).
    pub rtcp_flows: usize,
    #[serde(skip)]
    pub counters: Counters,
    /// Flows that vanished from the kernel map without the agent expiring
    /// them: the full overflow map (an LRU) evicted them.
    pub evictions: u64,
    /// Idle flows the agent removed.
    pub expired: u64,
    /// SIP frames received from the kernel's ring buffer.
    pub sip_frames: u64,
    /// SIP messages parsed from them (after reassembly).
    pub sip_messages: u64,
    pub polls: u64,
    pub last_poll_error: Option<String>,
    /// Calls up now, as of the last poll.
    #[serde(skip)]
    pub calls: Vec<CallReport>,
    /// The most recent ended calls (newest last), at most [`KEEP_ENDED`].
    #[serde(skip)]
    pub ended_calls: VecDeque<CallReport>,
    /// Flag raised/cleared and call-end events, newest last, numbered.
    #[serde(skip)]
    pub events: VecDeque<(u64, AgentEvent)>,
    #[serde(skip)]
    pub next_event: u64,
    pub sip_parse_errors: u64,
    pub watched_endpoints: usize,
}

/// Ended calls kept for the API.
pub const KEEP_ENDED: usize = 1000;
/// Events kept for the API.
pub const KEEP_EVENTS: usize = 10_000;

/// Something operators want to hear about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    FlagRaised {
        call_id: String,
        flag: Flag,
    },
    FlagCleared {
        call_id: String,
        flag: Flag,
    },
    CallEnded {
        call_id: String,
        bucket: Option<&'static str>,
        end_epoch: Option<f64>,
    },
}

impl AgentState {
    fn push_event(&mut self, event: AgentEvent) {
        self.next_event += 1;
        self.events.push_back((self.next_event, event));
        while self.events.len() > KEEP_EVENTS {
            self.events.pop_front();
        }
    }
}

pub type SharedState = Arc<RwLock<AgentState>>;

impl AgentState {
    pub fn new(cfg: &AgentConfig) -> Self {
        Self {
            iface: cfg.iface.clone(),
            xdp_mode: cfg.xdp_mode,
            started: Instant::now(),
            flows: Vec::new(),
            rtcp_flows: 0,
            counters: [[0; COUNTERS_PER_HOOK as usize]; HOOKS as usize],
            evictions: 0,
            expired: 0,
            sip_frames: 0,
            sip_messages: 0,
            polls: 0,
            last_poll_error: None,
            calls: Vec::new(),
            ended_calls: VecDeque::new(),
            events: VecDeque::new(),
            next_event: 0,
            sip_parse_errors: 0,
            watched_endpoints: 0,
        }
    }
}

/// Runs the agent until `shutdown` resolves; detaches on the way out.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    cfg.validate()?;
    let mut kernel = Kernel::load(&cfg.kernel_config())?;
    kernel.attach(&cfg.iface, cfg.xdp_mode)?;
    let ring = kernel.take_sip_ring()?;
    tracing::info!(
        iface = %cfg.iface,
        xdp_mode = cfg.xdp_mode.as_str(),
        rtp_ports = %format!("{}-{}", cfg.rtp_ports.min, cfg.rtp_ports.max),
        sip_ports = ?cfg.sip_ports,
        "programs attached (XDP ingress, TC egress)"
    );
    let state: SharedState = Arc::new(RwLock::new(AgentState::new(&cfg)));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, "API listening");

    let calls_log = match &cfg.calls_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the calls log {}", path.display()))?,
        ),
        None => None,
    };
    let metrics: SharedMetrics = Arc::new(Mutex::new(Metrics::new()));
    let engine: SharedEngine = Arc::new(Mutex::new(Engine::new(&cfg, metrics.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(poll_loop(
        kernel,
        state.clone(),
        engine.clone(),
        metrics.clone(),
        calls_log,
        cfg.clone(),
        stop_rx.clone(),
    ));
    let sip = tokio::spawn(sip_reader(ring, state.clone(), engine, stop_rx.clone()));
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) if addr != cfg.listen => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            tracing::info!(listen = %addr, "metrics listening");
            Some(l)
        }
        _ => None,
    };
    let api = tokio::spawn(serve(
        listener,
        crate::api::router(state, metrics.clone()),
        stop_rx.clone(),
    ));
    let metrics_api = metrics_listener.map(|l| {
        tokio::spawn(serve(
            l,
            crate::api::metrics_router(metrics),
            stop_rx.clone(),
        ))
    });

    shutdown.await;
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(5);
    // The poller owns the kernel handle: when it returns, the programs detach.
    let kernel = tokio::time::timeout(grace, poller).await;
    let _ = tokio::time::timeout(grace, sip).await;
    let _ = tokio::time::timeout(grace, api).await;
    if let Some(task) = metrics_api {
        let _ = tokio::time::timeout(grace, task).await;
    }
    match kernel {
        Ok(Ok(())) => tracing::info!("programs detached"),
        _ => tracing::warn!("poller did not stop in time; programs detach at exit"),
    }
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn poll_loop(
    mut kernel: Kernel,
    state: SharedState,
    engine: SharedEngine,
    metrics: SharedMetrics,
    mut calls_log: Option<std::fs::File>,
    cfg: AgentConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(cfg.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashSet<FlowKey> = HashSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let result =
            poll_once(&mut kernel, &state, &metrics, &cfg, &mut known).and_then(|(flows, rtcp)| {
                follow_calls(
                    &mut kernel,
                    &state,
                    &engine,
                    &metrics,
                    &mut calls_log,
                    &flows,
                    &rtcp,
                )
            });
        let mut st = state.write().expect("state lock");
        st.polls += 1;
        st.last_poll_error = result.err().map(|e| {
            tracing::warn!(error = %e, "map poll failed");
            e.to_string()
        });
    }
    drop(kernel);
}

fn poll_once(
    kernel: &mut Kernel,
    state: &SharedState,
    metrics: &SharedMetrics,
    cfg: &AgentConfig,
    known: &mut HashSet<FlowKey>,
) -> Result<(Vec<StreamRecord>, Vec<StreamRecord>), crate::capture::CaptureError> {
    let started = Instant::now();
    let entries = kernel.flows()?;
    let counters = kernel.counters()?;
    let clock = Clock::now();
    let idle_ns = cfg.flow_idle_timeout.as_nanos() as u64;
    let mut idle = Vec::new();
    let mut present = HashSet::with_capacity(entries.len());
    let mut flows = Vec::new();
    let mut rtcp = Vec::new();
    for (key, stats) in &entries {
        if clock.mono_ns.saturating_sub(stats.last_seen_ns) > idle_ns {
            idle.push(*key);
            continue;
        }
        present.insert(*key);
        let mut record = StreamRecord::new(key, stats, |ns| clock.to_epoch(ns));
        record.direction = Direction::from_hook(key.hook);
        if key.kind == KIND_RTP {
            flows.push(record);
        } else {
            rtcp.push(record);
        }
    }
    kernel.remove_flows(&idle)?;
    let idle_set: HashSet<FlowKey> = idle.iter().copied().collect();
    let evicted = known
        .iter()
        .filter(|k| !present.contains(k) && !idle_set.contains(k))
        .count();
    *known = present;
    flows.sort_by(|a, b| a.first_epoch.total_cmp(&b.first_epoch));
    {
        let mut m = metrics.lock().expect("metrics lock");
        m.map_poll_duration.observe(started.elapsed().as_secs_f64());
        m.observe_counters(&counters);
        m.observe_flows(&flows, evicted as u64);
    }
    let mut st = state.write().expect("state lock");
    st.flows.clone_from(&flows);
    st.rtcp_flows = rtcp.len();
    st.counters = counters;
    st.evictions += evicted as u64;
    st.expired += idle.len() as u64;
    Ok((flows, rtcp))
}

/// Evaluates the calls against the flows just read, ends expired dialogs,
/// writes the records of ended calls and keeps the kernel's watched
/// endpoints equal to what active calls announced.
fn follow_calls(
    kernel: &mut Kernel,
    state: &SharedState,
    engine: &SharedEngine,
    metrics: &SharedMetrics,
    calls_log: &mut Option<std::fs::File>,
    flows: &[StreamRecord],
    rtcp: &[StreamRecord],
) -> Result<(), crate::capture::CaptureError> {
    let now = Clock::now().real_ns as f64 / 1e9;
    let mut engine = engine.lock().expect("engine lock");
    let engine = &mut *engine;
    engine.reassembler.expire(now);
    let active: Vec<Call> = engine.tracker.active().cloned().collect();
    let events = records::evaluate(&mut engine.detector, &active, flows, now);
    engine.tracker.expire(now);
    let ended = engine.tracker.take_ended();
    let ended_reports = records::reports(&ended, flows, rtcp, now, |call| {
        engine.detector.take(&call.call_id).flags
    });
    let active: Vec<Call> = engine.tracker.active().cloned().collect();
    let active_reports = records::reports(&active, flows, rtcp, now, |call| {
        engine
            .detector
            .flags(&call.call_id)
            .map(|f| f.flags.clone())
            .unwrap_or_default()
    });
    let desired = watched_endpoints(&active);
    let watched = desired.len();
    let parse_errors = engine.parse_errors;
    kernel.sync_watched(&desired)?;

    if let Some(file) = calls_log {
        for report in &ended_reports {
            // One write per line: a crash loses at most the line being written.
            let mut line = serde_json::to_vec(report).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = file.write_all(&line) {
                tracing::warn!(error = %e, "cannot write the calls log");
            }
        }
    }
    {
        let m = metrics.lock().expect("metrics lock");
        for e in events.iter().filter(|e| e.raised) {
            m.observe_flag_raised(&e.flag);
        }
        for report in &ended_reports {
            m.observe_call_end(report, flows);
        }
        m.observe_calls(&active_reports);
    }
    let mut st = state.write().expect("state lock");
    for e in events {
        tracing::info!(
            call_id = %e.call_id,
            kind = e.flag.kind.as_str(),
            direction = ?e.flag.direction,
            raised = e.raised,
            "flag"
        );
        st.push_event(if e.raised {
            AgentEvent::FlagRaised {
                call_id: e.call_id,
                flag: e.flag,
            }
        } else {
            AgentEvent::FlagCleared {
                call_id: e.call_id,
                flag: e.flag,
            }
        });
    }
    for report in ended_reports {
        tracing::info!(call_id = %report.call.call_id, bucket = ?report.bucket, "call ended");
        st.push_event(AgentEvent::CallEnded {
            call_id: report.call.call_id.clone(),
            bucket: report.bucket,
            end_epoch: report.call.end_epoch,
        });
        st.ended_calls.push_back(report);
        while st.ended_calls.len() > KEEP_ENDED {
            st.ended_calls.pop_front();
        }
    }
    st.calls = active_reports;
    st.sip_parse_errors = parse_errors;
    st.watched_endpoints = watched;
    Ok(())
}

/// The RTP endpoints active calls announced, with the clock rates of the
/// dynamic payload types each receives.
fn watched_endpoints(calls: &[Call]) -> HashMap<EndpointKey, WatchedEndpoint> {
    let mut out = HashMap::new();
    for call in calls {
        // Stable across polls, so unchanged entries are not rewritten.
        let cookie = {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            call.call_id.hash(&mut h);
            h.finish()
        };
        for m in call.caller_media.iter().chain(&call.callee_media) {
            if !m.is_rtp() || m.port == 0 || m.hold {
                continue;
            }
            let addr = detector_common::packet::addr_bytes(m.addr);
            let mut value = WatchedEndpoint {
                cookie,
                ..WatchedEndpoint::default()
            };
            let dynamic = m.rtpmap.iter().filter(|(pt, _)| **pt >= 96);
            for (slot, (pt, rate)) in value.rates.iter_mut().zip(dynamic) {
                *slot = PtClockRate {
                    payload_type: *pt,
                    _pad: [0; 3],
                    clock_rate: *rate,
                };
            }
            out.insert(
                EndpointKey {
                    addr,
                    port: m.port,
                    _pad: [0; 2],
                },
                value,
            );
        }
    }
    out
}

async fn sip_reader(
    ring: RingBuf<MapData>,
    state: SharedState,
    engine: SharedEngine,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the SIP ring buffer");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "SIP ring buffer poll failed");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let ring = guard.get_inner_mut();
        let (mut frames, mut messages) = (0u64, 0u64);
        let clock = Clock::now();
        let mut captured = Vec::new();
        while let Some(item) = ring.next() {
            frames += 1;
            if let Some((ts_ns, frame)) = read_sip_frame(&item) {
                captured.push((clock.to_epoch(ts_ns), frame));
            }
        }
        guard.clear_ready();
        {
            let mut engine = engine.lock().expect("engine lock");
            for (ts, frame) in &captured {
                messages += engine.on_frame(frame, *ts);
            }
        }
        let mut st = state.write().expect("state lock");
        st.sip_frames += frames;
        st.sip_messages += messages;
    }
}

fn read_sip_frame(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    if bytes.len() < std::mem::size_of::<SipFrame>() {
        return None;
    }
    // SAFETY: the kernel wrote a SipFrame (plain integers and bytes); an
    // unaligned read copies it out of the ring.
    let frame: SipFrame = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let len = (frame.captured_len as usize).min(frame.data.len());
    Some((frame.ts_ns, frame.data[..len].to_vec()))
}

/// Converts the kernel's monotonic nanoseconds to Unix time.
#[derive(Clone, Copy)]
pub struct Clock {
    pub mono_ns: u64,
    pub real_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            mono_ns: clock_ns(libc::CLOCK_MONOTONIC),
            real_ns: clock_ns(libc::CLOCK_REALTIME),
        }
    }

    pub fn to_epoch(&self, mono_ns: u64) -> f64 {
        let real = self.real_ns as i128 + (mono_ns as i128 - self.mono_ns as i128);
        real as f64 / 1e9
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
