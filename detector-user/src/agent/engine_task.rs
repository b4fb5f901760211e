//! The engine's thread: the one owner of calls and flows in the agent.
//!
//! It takes SIP batches and polls in the order they were sent, writes the
//! record of every call that ends, keeps the recent ended calls and events,
//! and publishes a [`Snapshot`] after every poll. A thread of its own, so a
//! poll's work never delays the SIP reader or the API on the runtime.

use std::{collections::VecDeque, io::Write, sync::Arc, time::Instant};

use tokio::sync::{mpsc, watch};

use super::{
    journal::{Journal, Recovered, Replay},
    EngineInput, PollInput, TASK_ENGINE,
};
use crate::{
    calls::{
        detect::FlagEvent,
        engine::{Engine, PollOutcome, Retention, SipOutcome},
        records::CallReport,
    },
    config::AgentConfig,
    metrics::{CounterTotals, Metrics},
    sip::reassembly::ReassemblyStats,
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

/// The journal of calls in progress, and what it held at start-up.
pub struct State {
    pub journal: Journal,
    pub recovered: Recovered,
    pub calls_log_path: Option<std::path::PathBuf>,
    /// The kernel's maps are a previous agent's.
    pub maps_adopted: bool,
}

/// Resumes the calls the journal holds, then starts the engine's thread;
/// it returns once every sender of `inputs` is gone and what they sent is
/// processed. Also returns how many calls were resumed.
pub fn spawn(
    cfg: &AgentConfig,
    inputs: mpsc::Receiver<EngineInput>,
    outputs: Outputs,
    state: State,
) -> std::io::Result<(std::thread::JoinHandle<()>, usize)> {
    let engine = Engine::new(
        cfg.detect.clone(),
        cfg.max_dialog_age.as_secs_f64(),
        Retention::Report,
    );
    let mut task = EngineTask::new(engine, outputs, state.journal, state.maps_adopted);
    let resumed = task.resume(state.recovered, state.calls_log_path.as_deref());
    let handle = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let health = task.out.health.clone();
            health.set(TASK_ENGINE, TaskState::Running);
            task.run(inputs);
            task.journal_result(|j| j.sync());
            health.set(TASK_ENGINE, TaskState::Stopped);
        })?;
    Ok((handle, resumed))
}

/// The Call-IDs of the records in the calls log past byte `from` (records
/// a previous agent wrote and did not live to journal); from the start when
/// the log is shorter than that (it was rotated).
fn calls_logged_after(path: &std::path::Path, from: u64) -> Vec<String> {
    use std::io::{BufRead, Seek};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if from > len { 0 } else { from };
    if from == len || file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let record: serde_json::Value = serde_json::from_str(&line).ok()?;
            Some(record.get("call_id")?.as_str()?.to_string())
        })
        .collect()
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
    journal: Journal,
    /// The journal's last write failed (logged once, until one succeeds).
    journal_failing: bool,
    /// The next poll's flows were counted by a previous agent.
    baseline_flows: bool,
    /// SIP reassembly's drops already added to the metrics.
    reassembly_reported: ReassemblyStats,
}

impl EngineTask {
    /// A task with nothing published yet; `maps_adopted` when the kernel's
    /// maps are a previous agent's (its first poll is then a baseline).
    fn new(engine: Engine, out: Outputs, journal: Journal, maps_adopted: bool) -> Self {
        Self {
            engine,
            out,
            totals: CounterTotals::default(),
            kernel: KernelView::default(),
            ended: Arc::default(),
            events: Arc::default(),
            next_event: 0,
            polls: 0,
            published_flows: None,
            journal,
            journal_failing: false,
            baseline_flows: maps_adopted,
            reassembly_reported: ReassemblyStats::default(),
        }
    }

    /// Replays the journal: dialogs come back from their SIP messages,
    /// calls get their flags back, and calls whose record was written
    /// (journaled, or found in the calls log) are dropped. Returns the
    /// calls resumed.
    fn resume(&mut self, recovered: Recovered, calls_log: Option<&std::path::Path>) -> usize {
        let records = recovered.records.len();
        for record in recovered.records {
            match record {
                Replay::Sip { ts, bytes } => {
                    self.engine.on_sip_bytes(&bytes, ts);
                }
                Replay::Flags { call_id, flags } => self.engine.restore_flags(&call_id, flags),
                Replay::Ended { call_id } => self.engine.forget(&call_id),
                Replay::Windows { call_id, windows } => {
                    self.engine.restore_windows(&call_id, windows);
                }
            }
        }
        if let Some(path) = calls_log {
            let logged = calls_logged_after(path, recovered.calls_log_end.unwrap_or(0));
            let log_end = std::fs::metadata(path).map(|m| m.len()).ok();
            for call_id in logged {
                self.engine.forget(&call_id);
                self.journal.ended(&call_id, log_end);
            }
            self.journal_result(Journal::sync);
        }
        let resumed = self.engine.active_calls() + self.engine.ended_unreported();
        if records > 0 {
            tracing::info!(
                resumed,
                records,
                "resumed the calls in progress from the journal"
            );
        }
        resumed
    }

    /// Runs a journal operation; a failure is logged once (the agent goes
    /// on monitoring without it), and its end once more.
    fn journal_result(
        &mut self,
        op: impl FnOnce(&mut Journal) -> Result<(), super::journal::JournalError>,
    ) {
        match op(&mut self.journal) {
            Ok(()) if self.journal_failing => {
                self.journal_failing = false;
                tracing::info!("the journal of calls in progress is written again");
            }
            Ok(()) => {}
            Err(e) if !self.journal_failing => {
                self.journal_failing = true;
                tracing::error!(error = %e, "cannot write the journal of calls in progress: a restart now would lose them");
            }
            Err(_) => {}
        }
    }

    fn run(&mut self, mut inputs: mpsc::Receiver<EngineInput>) {
        while let Some(input) = inputs.blocking_recv() {
            match input {
                EngineInput::Sip(batch) => self.on_sip(&batch),
                EngineInput::Rtcp(batch) => self.on_rtcp(&batch),
                EngineInput::Poll(poll) => self.on_poll(*poll),
            }
        }
        // A graceful stop: the loss windows too, so the next agent goes on
        // with them (after a crash they refill within one window).
        for (call_id, windows) in self.engine.loss_windows() {
            self.journal.windows(&call_id, &windows);
        }
    }

    fn on_sip(&mut self, batch: &[(f64, Vec<u8>)]) {
        let (mut parsed, mut errors) = (0, 0);
        for (ts, frame) in batch {
            for (outcome, bytes) in self.engine.on_frame(frame, *ts) {
                match outcome {
                    SipOutcome::Parsed {
                        method,
                        status,
                        dialog,
                    } => {
                        parsed += 1;
                        self.out.metrics.observe_sip(method.as_deref(), status);
                        if let Some(call_id) = dialog {
                            self.journal.sip(&call_id, *ts, &bytes);
                        }
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
        self.journal_result(Journal::flush);
        self.report_reassembly_drops();
    }

    /// Exports what SIP reassembly dropped (on bounds as frames come, and
    /// as state expires at polls).
    fn report_reassembly_drops(&mut self) {
        let now = self.engine.reassembler().stats;
        let before = std::mem::replace(&mut self.reassembly_reported, now);
        self.out.metrics.observe_reassembly_drops(
            now.fragments_dropped
                .saturating_sub(before.fragments_dropped),
            now.tcp_bytes_dropped
                .saturating_sub(before.tcp_bytes_dropped),
        );
        let intake = &self.out.intake;
        Intake::set(&intake.sip_fragments_dropped, now.fragments_dropped);
        Intake::set(&intake.sip_tcp_bytes_dropped, now.tcp_bytes_dropped);
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
        self.report_reassembly_drops();
        let evicted = outcome.flows_gone.saturating_sub(poll.expired) as u64;
        self.kernel.counters = poll.counters;
        self.kernel.evictions += evicted;
        self.kernel.expired += poll.expired as u64;
        let metrics = self.out.metrics.clone();
        // Kernel counters adopted from a previous agent are reported whole:
        // they go on from the figure it reported, so the series continues.
        metrics.observe_counters(&self.totals.delta(&poll.counters));
        // Loss and duplicates are summed per flow as the engine meets it: on
        // the first poll after adopting the maps, the flows' whole history
        // is their baseline, not news (it would show as a burst of loss).
        let (lost, duplicates) = if std::mem::take(&mut self.baseline_flows) {
            ([0; 2], [0; 2])
        } else {
            (outcome.lost_delta, outcome.duplicates_delta)
        };
        metrics.observe_flows(lost, duplicates, outcome.rtp_flows, evicted);
        if let Some(watched) = self.engine.take_watched() {
            self.kernel.watched_endpoints = watched.len();
            let _ = self.out.watched.send(Arc::new(watched));
        }
        let PollOutcome { events, ended, .. } = outcome;
        self.journal_flags(&events);
        self.record_flags(events);
        self.record_ended(ended);
        self.journal_result(|j| j.maybe_compact().map(drop));
        self.journal_result(Journal::sync);
        let (calls, call_flows) = self.engine.live_calls();
        metrics.observe_calls(&calls);
        let flows = Arc::new(poll.flows);
        let snapshot = Snapshot {
            now: poll.now,
            time: poll.time,
            flows: flows.clone(),
            calls,
            call_flows,
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

    /// Journals the flags of every call whose flags changed (those still
    /// followed: a call that ended this poll is journaled as ended).
    fn journal_flags(&mut self, events: &[FlagEvent]) {
        let mut done: Vec<&str> = Vec::new();
        for e in events {
            if done.contains(&e.call_id.as_str()) {
                continue;
            }
            done.push(&e.call_id);
            if let Some(flags) = self.engine.flags(&e.call_id) {
                self.journal.flags(&e.call_id, flags);
            }
        }
    }

    fn record_ended(&mut self, reports: Vec<CallReport>) {
        for report in reports {
            let mut log_end = None;
            if let Some(file) = &mut self.out.calls_log {
                // One write per line: a crash loses at most the line being
                // written, and a restarted agent finds the lines written
                // after the journal's last note of them.
                let mut line = serde_json::to_vec(&report).unwrap_or_default();
                line.push(b'\n');
                match file.write_all(&line).and_then(|()| file.metadata()) {
                    Ok(meta) => log_end = Some(meta.len()),
                    Err(e) => tracing::warn!(error = %e, "cannot write the calls log"),
                }
            }
            self.journal.ended(&report.call.call_id, log_end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{detect::DetectConfig, streams::TimeBase};

    fn message(first_line: &str, call_id: &str, cseq: &str, to_tag: bool, sdp: bool) -> Vec<u8> {
        let to = if to_tag { ";tag=b" } else { "" };
        let body = if sdp {
            "Content-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n"
        } else {
            "\r\n"
        };
        format!(
            "{first_line}\r\nCall-ID: {call_id}\r\nFrom: <sip:a@x>;tag=a\r\nTo: <sip:b@x>{to}\r\nCSeq: {cseq}\r\n{body}"
        )
        .into_bytes()
    }

    /// A call's SIP through its answer, and with `ended` its BYE and the
    /// BYE's answer.
    fn call(journal: &mut Journal, call_id: &str, ended: bool) {
        let mut messages = vec![
            message("INVITE sip:b@x SIP/2.0", call_id, "1 INVITE", false, true),
            message("SIP/2.0 200 OK", call_id, "1 INVITE", true, true),
            message("ACK sip:b@x SIP/2.0", call_id, "1 ACK", true, false),
        ];
        if ended {
            messages.push(message(
                "BYE sip:b@x SIP/2.0",
                call_id,
                "2 BYE",
                true,
                false,
            ));
            messages.push(message("SIP/2.0 200 OK", call_id, "2 BYE", true, false));
        }
        for (i, bytes) in messages.iter().enumerate() {
            journal.sip(call_id, 1000.0 + i as f64, bytes);
        }
    }

    fn task(journal: Journal, calls_log: Option<std::fs::File>) -> EngineTask {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        let (watched, _) = watch::channel(Arc::default());
        let (recycle, _) = std::sync::mpsc::channel();
        EngineTask::new(
            Engine::new(DetectConfig::default(), 3600.0, Retention::Report),
            Outputs {
                snapshot,
                watched,
                recycle,
                metrics: Arc::new(Metrics::new()),
                intake: Arc::default(),
                health: Arc::new(Health::new(&[TASK_ENGINE])),
                calls_log,
            },
            journal,
            false,
        )
    }

    /// Calls in progress come back with their flags; a call whose record
    /// was journaled, or found in the calls log after the journal's last
    /// note of it (a kill between the two writes), is not reported again;
    /// a call that ended without its record being written is reported.
    #[test]
    fn resume_brings_back_calls_in_progress_and_writes_each_record_once() {
        let dir = std::env::temp_dir().join(format!("detector-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("calls-eth0.journal");
        let calls_log = dir.join("calls.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        call(&mut journal, "live", false);
        let flag = crate::calls::detect::Flag {
            kind: crate::calls::detect::FlagKind::OneWay,
            direction: crate::calls::detect::FlagDirection::CalleeToCaller,
            since_epoch: 1001.0,
            flagged_epoch: 1007.0,
            cleared_epoch: None,
        };
        journal.flags("live", std::slice::from_ref(&flag));
        let window = (
            crate::calls::CallDirection::CalleeToCaller,
            vec![(1005.0, 200, 0), (1006.0, 250, 1)],
        );
        journal.windows("live", std::slice::from_ref(&window));
        call(&mut journal, "recorded", true);
        journal.ended("recorded", Some(0));
        call(&mut journal, "logged-not-journaled", true);
        call(&mut journal, "ended-unrecorded", true);
        journal.sync().unwrap();
        drop(journal);
        // The record the previous agent wrote before it was killed.
        std::fs::write(
            &calls_log,
            "{\"call_id\":\"logged-not-journaled\",\"bucket\":\"caller_hung_up_after_answer\"}\n",
        )
        .unwrap();

        let (journal, recovered) = Journal::open(&path).unwrap();
        let mut t = task(journal, None);
        let resumed = t.resume(recovered, Some(&calls_log));
        assert_eq!(resumed, 2, "live, and ended-unrecorded awaiting its record");
        assert_eq!(t.engine.active_calls(), 1);
        assert_eq!(t.engine.flags("live"), Some(std::slice::from_ref(&flag)));
        assert_eq!(
            t.engine.loss_windows(),
            [("live".to_string(), vec![window])]
        );
        let outcome = t.engine.poll(&[], TimeBase::Capture, 1010.0);
        let reported: Vec<&str> = outcome
            .ended
            .iter()
            .map(|r| r.call.call_id.as_str())
            .collect();
        assert_eq!(reported, ["ended-unrecorded"]);

        // The calls log's record is journaled now: a second restart does
        // not look at it again, and the live call is still there.
        drop(t);
        let (journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.records.iter().any(|r| *r
            == Replay::Ended {
                call_id: "logged-not-journaled".into()
            }));
        let mut t = task(journal, None);
        t.resume(recovered, Some(&calls_log));
        assert_eq!(t.engine.active_calls(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
