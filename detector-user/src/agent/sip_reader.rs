//! The SIP reader: drains the kernel's ring buffer as it fills.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use detector_common::sip::SipFrame;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use super::{Clock, EngineInput};
use crate::view::Intake;

/// SIP frames sent to the engine at once, at most.
const MAX_BATCH: usize = 1024;

/// Forwards SIP frames to the engine until `stop`.
pub async fn run(
    ring: RingBuf<MapData>,
    engine: mpsc::Sender<EngineInput>,
    intake: Arc<Intake>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| format!("cannot poll the SIP ring buffer: {e}"))?;
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => g.map_err(|e| format!("SIP ring buffer poll failed: {e}"))?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        // In batches, so a burst reaches the engine while the ring is
        // still being drained.
        loop {
            let ring = guard.get_inner_mut();
            let clock = Clock::now();
            let mut batch = Vec::new();
            let mut frames = 0;
            let mut drained = true;
            while let Some(item) = ring.next() {
                frames += 1;
                if let Some((ts_ns, frame)) = read_sip_frame(&item) {
                    batch.push((clock.to_epoch(ts_ns), frame));
                }
                if batch.len() >= MAX_BATCH {
                    drained = false;
                    break;
                }
            }
            Intake::add(&intake.sip_frames, frames);
            if !batch.is_empty() && engine.send(EngineInput::Sip(batch)).await.is_err() {
                return Err("the engine stopped".into());
            }
            if drained {
                guard.clear_ready();
                break;
            }
        }
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
