//! Sending crafted frames live: an AF_PACKET socket on each end of the veth
//! pair (each opened inside its network namespace), frames batched per tick
//! and sent with `sendmmsg`, the generator paced by the clock.
//!
//! A frame sent on the caller's end is received by the server's end and
//! passes its XDP hook; a frame sent on the server's end passes its TC
//! egress hook (AF_PACKET goes through the qdisc layer unless told to bypass
//! it, and this socket is not).

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use crate::callgen::{Generator, Side, Sink, TICK_NS};

/// Lag past which the generator is told it is behind (the flood yields).
const BEHIND: Duration = Duration::from_millis(20);
/// Frames sent per `sendmmsg` call.
const BATCH: usize = 256;
/// Room per frame in a batch (an Ethernet MTU frame).
const FRAME_ROOM: usize = 1514;

/// An AF_PACKET socket bound to one interface, for sending only.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a socket on `iface` inside network namespace `netns` (a name
    /// under /var/run/netns). Protocol 0: it receives nothing.
    pub fn open(netns: &str, iface: &str) -> io::Result<Self> {
        let path = format!("/var/run/netns/{netns}");
        let iface = iface.to_string();
        thread::spawn(move || {
            let ns = File::open(&path)?;
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let name = std::ffi::CString::new(iface.clone())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no interface {iface} in {path}"),
                ));
            }
            // SAFETY: plain syscalls on a socket this function owns.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Self { fd })
            }
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// Sends whole Ethernet frames (each at most 1514 bytes); returns how
    /// many went.
    pub fn send_frames(&self, frames: &[Vec<u8>]) -> io::Result<usize> {
        let mut data = vec![0u8; frames.len() * FRAME_ROOM];
        let mut lens = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            let len = frame.len().min(FRAME_ROOM);
            data[i * FRAME_ROOM..i * FRAME_ROOM + len].copy_from_slice(&frame[..len]);
            lens.push(len);
        }
        self.send(&data, &lens)
    }

    /// Sends `frames` (slices of `data`); returns how many went, retrying
    /// while the kernel is out of buffers.
    fn send(&self, data: &[u8], lens: &[usize]) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(lens.len());
        for (i, len) in lens.iter().enumerate() {
            iovecs.push(libc::iovec {
                iov_base: data[i * FRAME_ROOM..].as_ptr() as *mut libc::c_void,
                iov_len: *len,
            });
        }
        // SAFETY: zeroed msghdrs are valid (no name, no control data).
        let mut msgs: Vec<libc::mmsghdr> = (0..lens.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (msg, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
            msg.msg_hdr.msg_iov = std::ptr::from_mut(iov);
            msg.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        let mut busy = 0;
        while sent < msgs.len() {
            // SAFETY: the headers point into `iovecs` and `data`, alive here.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (msgs.len() - sent) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS | libc::EAGAIN) if busy < 1000 => {
                        busy += 1;
                        thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            sent += n as usize;
        }
        Ok(sent)
    }
}

struct Batch {
    data: Vec<u8>,
    lens: Vec<usize>,
}

/// Frames of both sides, batched and sent at the end of each tick.
pub struct LiveSink {
    caller: PacketSocket,
    server: PacketSocket,
    batches: [Batch; 2],
    /// Frames the kernel refused (the generator's own losses).
    pub send_errors: u64,
    pub last_error: Option<String>,
}

impl LiveSink {
    pub fn new(caller: PacketSocket, server: PacketSocket) -> Self {
        let batch = || Batch {
            data: vec![0; BATCH * FRAME_ROOM],
            lens: Vec::with_capacity(BATCH),
        };
        Self {
            caller,
            server,
            batches: [batch(), batch()],
            send_errors: 0,
            last_error: None,
        }
    }

    fn flush(&mut self, side: Side) {
        let (batch, socket) = match side {
            Side::Caller => (&mut self.batches[0], &self.caller),
            Side::Server => (&mut self.batches[1], &self.server),
        };
        if batch.lens.is_empty() {
            return;
        }
        if let Err(e) = socket.send(&batch.data, &batch.lens) {
            self.send_errors += batch.lens.len() as u64;
            self.last_error = Some(e.to_string());
        }
        batch.lens.clear();
    }
}

impl Sink for LiveSink {
    fn frame(&mut self, side: Side, _time_ns: u64, frame: &[u8]) {
        let i = usize::from(side == Side::Server);
        let batch = &mut self.batches[i];
        let at = batch.lens.len() * FRAME_ROOM;
        let len = frame.len().min(FRAME_ROOM);
        batch.data[at..at + len].copy_from_slice(&frame[..len]);
        batch.lens.push(len);
        if batch.lens.len() == BATCH {
            self.flush(side);
        }
    }

    fn end_tick(&mut self) {
        self.flush(Side::Caller);
        self.flush(Side::Server);
    }
}

/// How the live run kept time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    pub elapsed: Duration,
    /// The most a tick was processed after its time.
    pub max_lag: Duration,
    /// Ticks processed more than 100 ms late.
    pub late_ticks: u64,
    /// The most frames sent in one second.
    pub peak_pps: u64,
}

/// Runs `generator` against the clock until it has sent everything, or
/// `stop` says so; `progress` is called about every 100 ms.
pub fn run_live(
    generator: &mut Generator,
    sink: &mut LiveSink,
    mut stop: impl FnMut() -> bool,
    mut progress: impl FnMut(&Generator, &Pacing),
) -> Pacing {
    let start = Instant::now();
    let mut pacing = Pacing::default();
    let mut second = (0u64, 0u64);
    let mut last_progress = Duration::ZERO;
    while !generator.finished() && !stop() {
        let now = start.elapsed();
        let now_tick = (now.as_nanos() / u128::from(TICK_NS)) as u64;
        let first = generator.next_tick();
        if first <= now_tick {
            let lag = now.saturating_sub(Duration::from_nanos(first * TICK_NS));
            pacing.max_lag = pacing.max_lag.max(lag);
            if lag > Duration::from_millis(100) {
                pacing.late_ticks += 1;
            }
            generator.set_behind(lag > BEHIND);
            generator.advance(now_tick, sink);
        }
        let counts = generator.counts();
        let frames = counts.caller_frames + counts.server_frames;
        let this_second = now.as_secs();
        if this_second != second.0 {
            pacing.peak_pps = pacing.peak_pps.max(frames - second.1);
            second = (this_second, frames);
        }
        pacing.elapsed = now;
        if now - last_progress >= Duration::from_millis(100) {
            last_progress = now;
            progress(generator, &pacing);
        }
        let next = Duration::from_nanos((now_tick + 1) * TICK_NS);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    pacing.elapsed = start.elapsed();
    progress(generator, &pacing);
    pacing
}
