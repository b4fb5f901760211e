//! The SIP reader: drains the kernel's ring buffers as they fill, SIP's and
//! RTCP's (one task: RTCP is a few packets per second per call).

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use detector_common::{rtcp::RtcpFrame, sip::SipFrame};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use super::{Clock, EngineInput};
use crate::view::Intake;

/// Frames sent to the engine at once, at most.
const MAX_BATCH: usize = 1024;

/// Which ring a batch came from.
#[derive(Clone, Copy)]
enum Ring {
    Sip,
    Rtcp,
}

/// Forwards SIP and RTCP frames to the engine until `stop`.
pub async fn run(
    sip_ring: RingBuf<MapData>,
    rtcp_ring: RingBuf<MapData>,
    engine: mpsc::Sender<EngineInput>,
    intake: Arc<Intake>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    // SAFETY: each ring buffer owns its map fd, which stays open and the
    // same for as long as the AsyncFd holds it.
    let mut sip = unsafe { AsyncFd::register(sip_ring) }
        .map_err(|e| format!("cannot poll the SIP ring buffer: {e}"))?;
    // SAFETY: as above.
    let mut rtcp = unsafe { AsyncFd::register(rtcp_ring) }
        .map_err(|e| format!("cannot poll the RTCP ring buffer: {e}"))?;
    loop {
        let (mut guard, ring) = tokio::select! {
            g = sip.readable_mut() => (g.map_err(|e| format!("SIP ring buffer poll failed: {e}"))?, Ring::Sip),
            g = rtcp.readable_mut() => (g.map_err(|e| format!("RTCP ring buffer poll failed: {e}"))?, Ring::Rtcp),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        // In batches, so a burst reaches the engine while the ring is
        // still being drained.
        loop {
            let items = guard.get_inner_mut();
            let clock = Clock::now();
            let mut batch = Vec::new();
            let mut frames = 0;
            let mut drained = true;
            while let Some(item) = items.next() {
                frames += 1;
                let read = match ring {
                    Ring::Sip => read_sip_frame(&item),
                    Ring::Rtcp => read_rtcp_frame(&item),
                };
                if let Some((ts_ns, frame)) = read {
                    batch.push((clock.to_epoch(ts_ns), frame));
                }
                if batch.len() >= MAX_BATCH {
                    drained = false;
                    break;
                }
            }
            let input = match ring {
                Ring::Sip => {
                    Intake::add(&intake.sip_frames, frames);
                    EngineInput::Sip(batch)
                }
                Ring::Rtcp => EngineInput::Rtcp(batch),
            };
            let empty =
                matches!(&input, EngineInput::Sip(b) | EngineInput::Rtcp(b) if b.is_empty());
            if !empty && engine.send(input).await.is_err() {
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

fn read_rtcp_frame(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    if bytes.len() < std::mem::size_of::<RtcpFrame>() {
        return None;
    }
    // SAFETY: as in read_sip_frame, for an RtcpFrame.
    let frame: RtcpFrame = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let len = (frame.captured_len as usize).min(frame.data.len());
    Some((frame.ts_ns, frame.data[..len].to_vec()))
}
