//! The engine's thread: the one owner of calls and flows in the agent.
//!
//! It takes SIP batches and polls in the order they were sent, writes the
//! record of every call that ends, keeps the recent ended calls and events,
//! and publishes a [`Snapshot`] after every poll. A thread of its own, so a
//! poll's work never delays the SIP reader or the API on the runtime.

use std::{collections::VecDeque, io::Write, sync::Arc, time::Instant};

use tokio::sync::{mpsc, watch};

use super::{EngineInput, PollInput, TASK_ENGINE};
use crate::{
    calls::{
        detect::FlagEvent,
        engine::{Engine, PollOutcome, Retention, SipOutcome},
        records::CallReport,
    },
    config::AgentConfig,
    metrics::{CounterTotals, Metrics},
    view::{AgentEvent, Health, Intake, KernelView, Snapshot, TaskState, KEEP_ENDED, KEEP_EVENTS},
};

/// Where the engine's results go.
pub struct Outputs {
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub watched: watch::Sender<
        Arc<
            std::collections::HashMap<
                detector_common::flow::EndpointKey,
                detector_common::flow::WatchedEndpoint,
            >,
        >,
    >,
    /// Flow lists no snapshot holds any more, back to the poller for reuse.
    pub recycle: std::sync::mpsc::Sender<super::FlowList>,
    pub metrics: Arc<Metrics>,
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
    pub calls_log: Option<std::fs::File>,
}

/// Starts the engine's thread; it returns once every sender of `inputs` is
/// gone and what they sent is processed.
pub fn spawn(
    cfg: &AgentConfig,
    inputs: mpsc::Receiver<EngineInput>,
    outputs: Outputs,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let engine = Engine::new(
        cfg.detect.clone(),
        cfg.max_dialog_age.as_secs_f64(),
        Retention::Report,
    );
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let health = outputs.health.clone();
            health.set(TASK_ENGINE, TaskState::Running);
            let mut task = EngineTask {
                engine,
                out: outputs,
                totals: CounterTotals::default(),
                kernel: KernelView::default(),
                ended: Arc::default(),
                events: Arc::default(),
                next_event: 0,
                polls: 0,
                published_flows: None,
            };
            task.run(inputs);
            health.set(TASK_ENGINE, TaskState::Stopped);
        })
}

struct EngineTask {
    engine: Engine,
    out: Outputs,
    totals: CounterTotals,
    kernel: KernelView,
    ended: Arc<VecDeque<Arc<CallReport>>>,
    events: Arc<VecDeque<(u64, Arc<AgentEvent>)>>,
    next_event: u64,
    polls: u64,
    /// The flow list of the snapshot published last.
    published_flows: Option<Arc<super::FlowList>>,
}

impl EngineTask {
    fn run(&mut self, mut inputs: mpsc::Receiver<EngineInput>) {
        while let Some(input) = inputs.blocking_recv() {
            match input {
                EngineInput::Sip(batch) => self.on_sip(&batch),
                EngineInput::Rtcp(batch) => self.on_rtcp(&batch),
                EngineInput::Poll(poll) => self.on_poll(*poll),
            }
        }
    }

    fn on_sip(&mut self, batch: &[(f64, Vec<u8>)]) {
        let (mut parsed, mut errors) = (0, 0);
        for (ts, frame) in batch {
            for outcome in self.engine.on_frame(frame, *ts) {
                match outcome {
                    SipOutcome::Parsed { method, status } => {
                        parsed += 1;
                        self.out.metrics.observe_sip(method.as_deref(), status);
                    }
                    SipOutcome::Unparsable => {
                        errors += 1;
                        self.out.metrics.sip_parse_errors.inc();
                    }
                }
            }
        }
        Intake::add(&self.out.intake.sip_messages, parsed);
        Intake::add(&self.out.intake.sip_parse_errors, errors);
    }

    fn on_rtcp(&mut self, batch: &[(f64, Vec<u8>)]) {
        let undecodable = batch
            .iter()
            .filter(|(ts, frame)| !self.engine.on_rtcp_frame(frame, *ts))
            .count();
        Intake::add(&self.out.intake.rtcp_packets, batch.len() as u64);
        Intake::add(&self.out.intake.rtcp_undecodable, undecodable as u64);
    }

    fn on_poll(&mut self, poll: PollInput) {
        let started = Instant::now();
        self.polls += 1;
        let outcome = self.engine.poll(&poll.flows, poll.time, poll.now);
        let evicted = outcome.flows_gone.saturating_sub(poll.expired) as u64;
        self.kernel.counters = poll.counters;
        self.kernel.evictions += evicted;
        self.kernel.expired += poll.expired as u64;
        let metrics = self.out.metrics.clone();
        metrics.observe_counters(&self.totals.delta(&poll.counters));
        metrics.observe_flows(
            outcome.lost_delta,
            outcome.duplicates_delta,
            outcome.rtp_flows,
            evicted,
        );
        if let Some(watched) = self.engine.take_watched() {
            self.kernel.watched_endpoints = watched.len();
            let _ = self.out.watched.send(Arc::new(watched));
        }
        let PollOutcome { events, ended, .. } = outcome;
        self.record_flags(events);
        self.record_ended(ended);
        let calls = self.engine.live_calls();
        metrics.observe_calls(&calls);
        let flows = Arc::new(poll.flows);
        let snapshot = Snapshot {
            now: poll.now,
            time: poll.time,
            flows: flows.clone(),
            calls,
            ended: self.ended.clone(),
            events: self.events.clone(),
            next_event: self.next_event,
            kernel: self.kernel.clone(),
            polls: self.polls,
        };
        let _ = self.out.snapshot.send(Arc::new(snapshot));
        // The previous list is free once no reader holds its snapshot.
        if let Some(Ok(list)) = self.published_flows.replace(flows).map(Arc::try_unwrap) {
            let _ = self.out.recycle.send(list);
        }
        metrics
            .map_poll_duration
            .observe(poll.read_s + started.elapsed().as_secs_f64());
    }

    fn push_event(&mut self, event: AgentEvent) {
        self.next_event += 1;
        // Copies the queue only while a published snapshot still holds it.
        let events = Arc::make_mut(&mut self.events);
        events.push_back((self.next_event, Arc::new(event)));
        while events.len() > KEEP_EVENTS {
            events.pop_front();
        }
    }

    fn record_flags(&mut self, events: Vec<FlagEvent>) {
        for e in events {
            tracing::info!(
                call_id = %e.call_id,
                kind = e.flag.kind.as_str(),
                direction = ?e.flag.direction,
                raised = e.raised,
                "flag"
            );
            if e.raised {
                self.out.metrics.observe_flag_raised(&e.flag);
            }
            self.push_event(if e.raised {
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
    }

    fn record_ended(&mut self, reports: Vec<CallReport>) {
        for report in reports {
            if let Some(file) = &mut self.out.calls_log {
                // One write per line: a crash loses at most the line being written.
                let mut line = serde_json::to_vec(&report).unwrap_or_default();
                line.push(b'\n');
                if let Err(e) = file.write_all(&line) {
                    tracing::warn!(error = %e, "cannot write the calls log");
                }
            }
            self.out.metrics.observe_call_end(&report);
            tracing::info!(call_id = %report.call.call_id, bucket = ?report.bucket, "call ended");
            self.push_event(AgentEvent::CallEnded {
                call_id: report.call.call_id.clone(),
                bucket: report.bucket,
                end_epoch: report.call.end_epoch,
            });
            let ended = Arc::make_mut(&mut self.ended);
            ended.push_back(Arc::new(report));
            while ended.len() > KEEP_ENDED {
                ended.pop_front();
            }
        }
    }
}
