//! The poller: the only owner of the kernel handle.

use std::{collections::HashMap, sync::Arc, time::Instant};

use detector_common::flow::{EndpointKey, WatchedEndpoint};
use tokio::sync::{mpsc, watch};

use super::{Clock, EngineInput, FlowList, PollInput};
use crate::{config::AgentConfig, kernel::Kernel, view::Health};

/// Reads the maps every poll interval until `stop`; the kernel handle (and
/// with it the attachment) is dropped when this returns.
pub async fn run(
    mut kernel: Kernel,
    cfg: AgentConfig,
    engine: mpsc::Sender<EngineInput>,
    mut watched: watch::Receiver<Arc<HashMap<EndpointKey, WatchedEndpoint>>>,
    recycled: std::sync::mpsc::Receiver<FlowList>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut ticker = tokio::time::interval(cfg.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_ns = u64::try_from(cfg.flow_idle_timeout.as_nanos()).unwrap_or(u64::MAX);
    // Flows the last poll read: a fresh list is sized for about as many,
    // rather than grown by doubling (each step a copy, and old and new
    // held at once).
    let mut last_read = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        if watched.has_changed().unwrap_or(false) {
            let desired = watched.borrow_and_update().clone();
            if let Err(e) = kernel.sync_watched(&desired) {
                tracing::warn!(error = %e, "cannot update the watched endpoints");
            }
        }
        // The list the engine no longer needs, so a large table is not
        // page-faulted into a fresh vector every poll.
        let mut buffer = recycled.try_iter().last().unwrap_or_default();
        buffer.clear();
        buffer.reserve(last_read + last_read / 16);
        match read(&mut kernel, idle_ns, buffer) {
            Ok(input) => {
                last_read = input.flows.len() + input.expired;
                health.set_poll_error(None);
                if engine
                    .send(EngineInput::Poll(Box::new(input)))
                    .await
                    .is_err()
                {
                    return Err("the engine stopped".into());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "map poll failed");
                health.set_poll_error(Some(e.to_string()));
            }
        }
    }
}

/// One reading of the flow table and counters; idle flows are removed.
fn read(
    kernel: &mut Kernel,
    idle_ns: u64,
    mut flows: FlowList,
) -> Result<PollInput, crate::kernel::CaptureError> {
    let started = Instant::now();
    let counters = kernel.counters()?;
    kernel.flows_into(&mut flows)?;
    let clock = Clock::now();
    let idle: Vec<_> = flows
        .iter()
        .filter(|(_, s)| clock.mono_ns.saturating_sub(s.last_seen_ns) > idle_ns)
        .map(|(k, _)| *k)
        .collect();
    if !idle.is_empty() {
        kernel.remove_flows(&idle)?;
        flows.retain(|(_, s)| clock.mono_ns.saturating_sub(s.last_seen_ns) <= idle_ns);
    }
    Ok(PollInput {
        flows,
        counters,
        expired: idle.len(),
        time: clock.time_base(),
        now: clock.real_epoch(),
        read_s: started.elapsed().as_secs_f64(),
    })
}
