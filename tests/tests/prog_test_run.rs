//! The real kernel programs run on crafted frames through BPF_PROG_TEST_RUN:
//! a table of {frame, hook, expected outcome counter, expected flow figures},
//! as katran tests its fixtures. Needs root; no traffic.

use std::collections::HashMap;

use detector_common::{
    config::DetectorConfig,
    counters::{self, HOOK_TC, HOOK_XDP},
    flow::{
        EndpointKey, FlowKey, FlowStats, WatchedEndpoint, DEFAULT_FLOW_TABLE_SIZE, FLOW_PROBES,
        KIND_RTCP, KIND_RTP, MAX_FLOW_TABLE_SIZE,
    },
    packet::ipv4_mapped,
    rtcp::RtcpFrame,
    sip::{SipFrame, SIP_SNAPLEN},
};
use detector_user::kernel::{
    CaptureError, Kernel, BASELINE_PROGRAM, BENCH_ADVANCE_PROGRAM, BENCH_IN_ORDER_PROGRAM,
    TC_PROGRAM, XDP_PROGRAM,
};
use integration_tests::{packets::*, require_root};

const XDP_PASS: u32 = 2;
const TC_ACT_PIPE: u32 = 3;
const SERVER: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];

fn kernel() -> Kernel {
    require_root();
    Kernel::load(&DetectorConfig::default()).expect("load programs")
}

/// The programs with a flow table sized for `flows`.
fn kernel_sized(flows: u32) -> Kernel {
    require_root();
    let cfg = DetectorConfig {
        flow_table_size: flows,
        ..DetectorConfig::default()
    };
    let k = Kernel::load(&cfg).expect("load programs");
    assert_eq!(k.flow_table_capacity(), flows);
    k
}

fn count(k: &Kernel, hook: u8, counter: u32) -> u64 {
    k.counters().unwrap()[hook as usize][counter as usize]
}

/// Both hooks' count of `counter`.
fn count_both(k: &Kernel, counter: u32) -> u64 {
    count(k, HOOK_XDP, counter) + count(k, HOOK_TC, counter)
}

fn run(k: &Kernel, hook: u8, frame: &[u8]) {
    let (program, verdict) = if hook == HOOK_XDP {
        (XDP_PROGRAM, XDP_PASS)
    } else {
        (TC_PROGRAM, TC_ACT_PIPE)
    };
    let result = k.test_run(program, frame, 1).expect("test run");
    assert_eq!(
        result.return_value, verdict,
        "{program} must always pass the packet"
    );
}

fn flow(k: &Kernel, pred: impl Fn(&FlowKey) -> bool) -> Option<(FlowKey, FlowStats)> {
    k.flows()
        .expect("read flows")
        .into_iter()
        .find(|(key, _)| pred(key))
}

#[test]
fn outcome_table() {
    let k = kernel();
    let rtp = rtp_payload(8, 1, 0, 0xABCD, 160);
    let big_sip = {
        let mut m = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        m.resize(1400, b'x');
        m
    };
    let v6 = |last: u8| {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = last;
        a
    };
    let cases: Vec<(&str, u8, Vec<u8>, u32)> = vec![
        (
            "rtp to a port in range",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 30000, 20000, &rtp),
            counters::RTP,
        ),
        (
            "rtp from the server (egress)",
            HOOK_TC,
            ipv4_udp(SERVER, PEER, 20000, 30000, &rtp),
            counters::RTP,
        ),
        (
            "rtp on ports outside the range",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 4000, 6000, &rtp),
            counters::UDP_OTHER,
        ),
        (
            "rtcp (muxed on the rtp port)",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 30000, 20000, &rtcp_rr(0xABCD)),
            counters::RTCP,
        ),
        (
            "sip over udp",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 5060, 5060, b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"),
            counters::SIP,
        ),
        (
            "sip over tcp",
            HOOK_TC,
            ipv4(
                &[],
                SERVER,
                PEER,
                6,
                0,
                &tcp(5060, 40000, b"SIP/2.0 200 OK\r\n\r\n"),
            ),
            counters::SIP,
        ),
        (
            "other tcp",
            HOOK_XDP,
            ipv4(&[], PEER, SERVER, 6, 0, &tcp(443, 40000, b"x")),
            counters::NOT_UDP,
        ),
        (
            "not rtp in range",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 30000, 20000, b"not rtp at all!"),
            counters::UDP_OTHER,
        ),
        ("arp", HOOK_XDP, arp(), counters::NOT_IP),
        (
            "truncated ip header",
            HOOK_XDP,
            ipv4_udp(PEER, SERVER, 1, 2, b"")[..20].to_vec(),
            counters::TRUNCATED,
        ),
        (
            "qinq rtp",
            HOOK_XDP,
            ipv4(&[100, 200], PEER, SERVER, 17, 0, &udp(30000, 20002, &rtp)),
            counters::RTP,
        ),
        (
            "ipv6 rtp",
            HOOK_XDP,
            ipv6_udp(v6(2), v6(1), 30000, 20004, &rtp),
            counters::RTP,
        ),
        (
            "later ipv4 fragment",
            HOOK_XDP,
            ipv4(&[], PEER, SERVER, 17, 0x0010, &big_sip),
            counters::FRAGMENT,
        ),
        (
            "first fragment of sip",
            HOOK_XDP,
            ipv4(&[], PEER, SERVER, 17, 0x2000, &udp(5060, 5060, &big_sip)),
            counters::SIP,
        ),
        (
            "first fragment off the sip ports",
            HOOK_XDP,
            ipv4(&[], PEER, SERVER, 17, 0x2000, &udp(30000, 20000, &rtp)),
            counters::FRAGMENT,
        ),
    ];
    for (name, hook, frame, outcome) in cases {
        let before = k.counters().expect("counters");
        run(&k, hook, &frame);
        let after = k.counters().expect("counters");
        let h = hook as usize;
        assert_eq!(
            counters::packets(&after[h]),
            counters::packets(&before[h]) + 1,
            "{name}: packets"
        );
        for (index, label) in counters::OUTCOMES {
            let want = u64::from(index == outcome);
            let got = after[h][index as usize] - before[h][index as usize];
            assert_eq!(got, want, "{name}: outcome {label}");
        }
    }
    // Every RTP case created exactly its own flow; RTCP has its own kind.
    let rtp_flows = k
        .flows()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.kind == KIND_RTP)
        .count();
    assert_eq!(rtp_flows, 4);
    assert!(flow(&k, |key| key.kind == KIND_RTCP && key.ssrc == 0xABCD).is_some());
    let v6flow = flow(&k, |key| key.ip_version == 6).expect("ipv6 flow");
    assert_eq!(v6flow.0.dst_addr, v6(1));
}

#[test]
fn sequence_accounting_in_the_kernel() {
    let k = kernel();
    // 20 packets across the wrap with 65535 and 3 missing, one duplicate,
    // one late.
    let seqs: Vec<u16> = vec![
        65530, 65531, 65532, 65533, 65534, 0, 1, 2, 4, 5, 5, 6, 8, 7, 9, 10,
    ];
    for (i, &seq) in seqs.iter().enumerate() {
        let rtp = rtp_payload(0, seq, i as u32 * 160, 0x5EC, 160);
        run(&k, HOOK_XDP, &ipv4_udp(PEER, SERVER, 30000, 20000, &rtp));
    }
    let (key, st) = flow(&k, |key| key.ssrc == 0x5EC).expect("flow");
    assert_eq!(
        (key.src_port, key.dst_port, key.hook),
        (30000, 20000, HOOK_XDP)
    );
    assert_eq!(st.packets, 16);
    // 65530..=65535 and 0..=10: 17 expected; 65535 and 3 missing, 5 twice.
    assert_eq!(st.expected(), 17);
    assert_eq!(st.lost(), 1);
    assert_eq!(
        (st.seq.duplicates, st.seq.out_of_order, st.seq.cycles()),
        (1, 1, 1)
    );
    assert_eq!(st.payload_type, 0);
    assert_eq!(st.bytes, 16 * (14 + 20 + 8 + 172) as u64);
}

/// Untagged frames take the programs' fast path, VLAN-tagged ones the full
/// parser: one stream whose frames alternate is one flow, counted exactly.
#[test]
fn fast_path_and_full_parser_account_one_stream_together() {
    let k = kernel();
    for seq in 1..=10u16 {
        let rtp = rtp_payload(8, seq, u32::from(seq) * 160, 0xFA57, 160);
        let vlans: &[u16] = if seq % 2 == 0 { &[42] } else { &[] };
        run(
            &k,
            HOOK_XDP,
            &ipv4(vlans, PEER, SERVER, 17, 0, &udp(30000, 20000, &rtp)),
        );
    }
    let flows = k.flows().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (key, st) = &flows[0];
    assert_eq!(*key, rtp_key(0xFA57, HOOK_XDP));
    assert_eq!((st.packets, st.expected(), st.lost()), (10, 10, 0));
    assert_eq!(st.bytes, 5 * (14 + 20 + 8 + 172) + 5 * (18 + 20 + 8 + 172));
}

#[test]
fn ssrc_change_is_a_new_stream_and_hooks_are_separate() {
    let k = kernel();
    for ssrc in [1u32, 2] {
        for hook in [HOOK_XDP, HOOK_TC] {
            run(
                &k,
                hook,
                &ipv4_udp(PEER, SERVER, 30000, 20000, &rtp_payload(8, 7, 0, ssrc, 160)),
            );
        }
    }
    let flows = k.flows().unwrap();
    assert_eq!(flows.len(), 4, "{flows:?}");
}

/// What the agent pushes for a call whose SDP announced SERVER:20000 with
/// Opus (`a=rtpmap:111 opus/48000/2`).
fn watch_server_opus(k: &mut Kernel) {
    let key = EndpointKey {
        addr: ipv4_mapped(SERVER),
        port: 20000,
        _pad: [0; 2],
    };
    let value = WatchedEndpoint::new(1, [(111, 48000), (101, 8000)]);
    k.sync_watched(&HashMap::from([(key, value)])).unwrap();
}

/// Issue 11: the rate the SDP declares reaches streams that began before
/// the agent knew the SDP (media often starts within the poll that brings
/// the 200 OK), not only streams created after it.
#[test]
fn streams_take_the_declared_clock_rate_when_the_sdp_becomes_known() {
    let mut k = kernel();
    let opus = |seq: u16, ssrc: u32| {
        let rtp = rtp_payload(111, seq, u32::from(seq) * 960, ssrc, 80);
        ipv4_udp(PEER, SERVER, 30000, 20000, &rtp)
    };
    for seq in 1..=3 {
        run(&k, HOOK_XDP, &opus(seq, 0x0905));
    }
    let (_, before) = flow(&k, |key| key.ssrc == 0x0905).expect("flow");
    assert_eq!(before.jitter.clock_rate, 8000, "dynamic type, no SDP yet");
    watch_server_opus(&mut k);
    run(&k, HOOK_XDP, &opus(4, 0x0905));
    run(&k, HOOK_XDP, &opus(1, 0x0906));
    for ssrc in [0x0905, 0x0906] {
        let (_, st) = flow(&k, |key| key.ssrc == ssrc).expect("flow");
        assert_eq!(st.jitter.clock_rate, 48000, "{ssrc:#x}");
    }
    let (_, st) = flow(&k, |key| key.ssrc == 0x0905).unwrap();
    assert_eq!((st.packets, st.expected()), (4, 4));
}

/// Issue 11: toward an endpoint SDP announced, a valid RTP header counts
/// whatever its payload type (a softphone's first packet: PT 77, one
/// payload byte); elsewhere such a payload type is not RTP.
#[test]
fn announced_endpoints_count_every_valid_rtp_header() {
    let mut k = kernel();
    watch_server_opus(&mut k);
    let first = rtp_payload(77, 1, 0, 0x0907, 1);
    run(&k, HOOK_XDP, &ipv4_udp(PEER, SERVER, 30000, 20000, &first));
    run(&k, HOOK_XDP, &ipv4_udp(PEER, SERVER, 30000, 20002, &first));
    assert_eq!(count(&k, HOOK_XDP, counters::RTP), 1);
    assert_eq!(count(&k, HOOK_XDP, counters::UDP_OTHER), 1);
    let (key, st) = flow(&k, |key| key.ssrc == 0x0907).expect("flow");
    assert_eq!((key.dst_port, st.packets, st.payload_type), (20000, 1, 77));
}

/// The key the programs build for an RTP frame from PEER:30000 to
/// SERVER:20000.
fn rtp_key(ssrc: u32, hook: u8) -> FlowKey {
    FlowKey {
        src_addr: ipv4_mapped(PEER),
        dst_addr: ipv4_mapped(SERVER),
        src_port: 30000,
        dst_port: 20000,
        ssrc,
        ip_version: 4,
        kind: KIND_RTP,
        hook,
        _pad: [0; 5],
    }
}

fn send_rtp(k: &Kernel, ssrc: u32, seq: u16) {
    let rtp = rtp_payload(8, seq, u32::from(seq) * 160, ssrc, 160);
    run(k, HOOK_XDP, &ipv4_udp(PEER, SERVER, 30000, 20000, &rtp));
}

/// SSRCs after `after` whose streams hash to the same first slot of `k`'s
/// flow table as SSRC 1's.
fn colliding_ssrcs(k: &Kernel, after: u32, n: usize) -> Vec<u32> {
    let size = k.flow_table_capacity();
    let target = rtp_key(1, HOOK_XDP).slot_hash(size);
    (after + 1..)
        .filter(|&s| rtp_key(s, HOOK_XDP).slot_hash(size) == target)
        .take(n)
        .collect()
}

#[test]
fn streams_beyond_a_full_probe_window_overflow_and_stay_whole() {
    // A small table (of an odd size), where colliding SSRCs are quick to find.
    let mut k = kernel_sized(999);
    // One more stream than a probe window holds, all hashing to one slot.
    let ssrcs = colliding_ssrcs(&k, 0, FLOW_PROBES as usize + 1);
    let last = ssrcs[FLOW_PROBES as usize];
    for seq in 100..103 {
        for &ssrc in &ssrcs {
            send_rtp(&k, ssrc, seq);
        }
    }
    let count = |k: &Kernel, c: u32| k.counters().unwrap()[HOOK_XDP as usize][c as usize];
    let entries = |k: &Kernel, ssrc: u32| -> Vec<FlowStats> {
        k.flows()
            .unwrap()
            .into_iter()
            .filter(|(key, _)| key.ssrc == ssrc)
            .map(|(key, st)| {
                assert_eq!(key, rtp_key(ssrc, HOOK_XDP));
                st
            })
            .collect()
    };
    for &ssrc in &ssrcs {
        let st = entries(&k, ssrc);
        assert_eq!(st.len(), 1, "ssrc {ssrc:#x}: {st:?}");
        assert_eq!((st[0].packets, st[0].expected(), st[0].lost()), (3, 3, 0));
    }
    assert_eq!(
        count(&k, counters::FLOW_CREATED),
        u64::from(FLOW_PROBES) + 1
    );
    assert_eq!(count(&k, counters::FLOW_OVERFLOW), 1);
    assert_eq!(count(&k, counters::FLOW_INSERT_FAILED), 0);

    // The agent frees an idle stream's slot (with the hash computed in
    // userspace: it must agree with the kernel's); a new stream takes it,
    // and the overflowed stream stays in the overflow map, still whole.
    k.remove_flows(&[rtp_key(ssrcs[0], HOOK_XDP)]).unwrap();
    assert!(entries(&k, ssrcs[0]).is_empty());
    let newcomer = colliding_ssrcs(&k, last, 1)[0];
    send_rtp(&k, newcomer, 7);
    send_rtp(&k, last, 103);
    assert_eq!(
        count(&k, counters::FLOW_CREATED),
        u64::from(FLOW_PROBES) + 2
    );
    assert_eq!(count(&k, counters::FLOW_OVERFLOW), 1);
    assert_eq!(entries(&k, newcomer)[0].packets, 1);
    let overflowed = entries(&k, last);
    assert_eq!(overflowed.len(), 1);
    assert_eq!((overflowed[0].packets, overflowed[0].expected()), (4, 4));
}

/// `cargo xtask bench` times the in-order path by letting the program
/// advance the frame's sequence number between BPF_PROG_TEST_RUN repeats:
/// the repeats must indeed arrive as successive packets.
#[test]
fn bench_program_makes_repeats_successive_packets() {
    let mut k = kernel();
    k.load_benchmarks().expect("load the benchmark programs");
    let frame = ipv4_udp(
        PEER,
        SERVER,
        30000,
        20000,
        &rtp_payload(8, 65000, 0, 0xBE, 160),
    );
    let result = k.test_run(BENCH_IN_ORDER_PROGRAM, &frame, 1000).unwrap();
    assert_eq!(result.return_value, XDP_PASS);
    let (_, st) = flow(&k, |key| key.ssrc == 0xBE).expect("flow");
    assert_eq!((st.packets, st.expected(), st.lost()), (1000, 1000, 0));
    assert_eq!((st.seq.duplicates, st.seq.cycles()), (0, 1));
    let result = k.test_run(BENCH_ADVANCE_PROGRAM, &frame, 10).unwrap();
    assert_eq!(result.return_value, XDP_PASS);
}

#[test]
fn sip_is_copied_to_the_ring_buffer() {
    let mut k = kernel();
    let small = ipv4_udp(
        PEER,
        SERVER,
        5060,
        5060,
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n",
    );
    // BPF_PROG_TEST_RUN takes at most about a page of data, so the cut at
    // SIP_SNAPLEN is tested live (tests/live.rs); here a full-MTU-plus frame
    // must arrive whole.
    let mut big_payload = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
    big_payload.resize(3000, b'a');
    let big = ipv4_udp(PEER, SERVER, 5060, 5060, &big_payload);
    run(&k, HOOK_XDP, &small);
    run(&k, HOOK_TC, &big);
    let mut ring = k.take_sip_ring().expect("ring");
    let mut frames = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<SipFrame>());
        // SAFETY: the kernel wrote a SipFrame.
        let frame: SipFrame = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        frames.push((
            frame.hook,
            frame.wire_len,
            frame.captured_len,
            frame.data[..frame.captured_len as usize].to_vec(),
        ));
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].0, HOOK_XDP);
    assert_eq!(frames[0].3, small, "a small frame is copied whole");
    assert_eq!(
        (frames[1].0, frames[1].1, frames[1].2),
        (HOOK_TC, big.len() as u32, big.len() as u32)
    );
    assert_eq!(frames[1].3, big);
    assert!(big.len() < SIP_SNAPLEN as usize);
    let counters = k.counters().unwrap();
    assert_eq!(
        counters[HOOK_TC as usize][counters::SIP_TRUNCATED as usize],
        0
    );
}

#[test]
fn rtcp_is_counted_and_copied_to_its_ring() {
    let mut k = kernel();
    // An RR muxed on the RTP port, into the server (XDP), and one sent on
    // RTCP's own port (TC).
    let muxed = ipv4_udp(PEER, SERVER, 30000, 20000, &rtcp_rr(0xABCD));
    let own_port = ipv4_udp(SERVER, PEER, 20001, 30001, &rtcp_rr(0xBEEF));
    run(&k, HOOK_XDP, &muxed);
    run(&k, HOOK_TC, &own_port);
    let mut ring = k.take_rtcp_ring().expect("ring");
    let mut frames = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<RtcpFrame>());
        // SAFETY: the kernel wrote an RtcpFrame.
        let frame: RtcpFrame = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        frames.push((
            frame.hook,
            frame.wire_len,
            frame.data[..frame.captured_len as usize].to_vec(),
        ));
    }
    assert_eq!(
        frames,
        [
            (HOOK_XDP, muxed.len() as u32, muxed),
            (HOOK_TC, own_port.len() as u32, own_port)
        ]
    );
    let counters = k.counters().unwrap();
    for hook in [HOOK_XDP, HOOK_TC] {
        assert_eq!(counters[hook as usize][counters::RTCP as usize], 1);
        assert_eq!(
            counters[hook as usize][counters::RTCP_RING_FULL as usize],
            0
        );
    }
    // Counted in the flow table as before.
    assert!(flow(&k, |key| key.kind == KIND_RTCP && key.ssrc == 0xBEEF).is_some());
}

#[test]
fn baseline_program_passes() {
    let mut k = kernel();
    k.load_benchmarks().expect("load the benchmark programs");
    let result = k.test_run(BASELINE_PROGRAM, &arp(), 1).expect("run");
    assert_eq!(result.return_value, XDP_PASS);
}

#[test]
fn map_names_match_the_shared_constants() {
    let k = kernel();
    let names = k.map_names();
    for name in [
        detector_common::flow::FLOWS_MAP,
        detector_common::flow::WATCHED_FLOWS_MAP,
        detector_common::flow::FLOW_SLOTS_MAP,
        detector_common::flow::WATCHED_MAP,
        detector_common::counters::COUNTERS_MAP,
        detector_common::config::CONFIG_MAP,
        detector_common::sip::SIP_RING_MAP,
        detector_common::rtcp::RTCP_RING_MAP,
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "map {name} missing from the object: {names:?}"
        );
    }
}

/// Keeps the calling thread (and so its BPF_PROG_TEST_RUNs) on one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// splitmix64: the tests' deterministic random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A port in the default RTP range (10000-60000).
    fn rtp_port(&mut self) -> u16 {
        10_000 + (self.next() % 50_001) as u16
    }
}

/// The `i`th of many distinct media streams toward the server, as a media
/// server sees them: peers in 10.0.0.0/8 (the stream's number in the
/// address keeps them distinct), even ports, random SSRCs; every other one
/// sent by the server (TC), the rest received (XDP).
fn media_stream(i: u32, rng: &mut Rng) -> (u8, [u8; 4], [u8; 4], u16, u16, u32) {
    let peer = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let (peer_port, server_port) = (rng.rtp_port() & !1, rng.rtp_port() & !1);
    let ssrc = rng.next() as u32;
    if i.is_multiple_of(2) {
        (HOOK_XDP, peer, SERVER, peer_port, server_port, ssrc)
    } else {
        (HOOK_TC, SERVER, peer, server_port, peer_port, ssrc)
    }
}

/// Filled to its capacity with distinct streams, the flow table (with its
/// overflow) holds every one of them, each counted exactly: no insert
/// fails below capacity. At the default size (20,000 B2BUA calls and more)
/// and at an odd small one.
#[test]
fn a_table_filled_to_capacity_holds_every_stream_exactly() {
    for capacity in [DEFAULT_FLOW_TABLE_SIZE, 5_001] {
        let k = kernel_sized(capacity);
        let mut rng = Rng(u64::from(capacity));
        let streams: Vec<_> = (0..capacity).map(|i| media_stream(i, &mut rng)).collect();
        // Sequence numbers 1, 2 and 4 of each stream: 3 received, 4
        // expected, 1 lost. Stream by stream within a round, as on a wire.
        for seq in [1u16, 2, 4] {
            for &(hook, src, dst, sport, dport, ssrc) in &streams {
                let rtp = rtp_payload(8, seq, u32::from(seq) * 160, ssrc, 160);
                run(&k, hook, &ipv4_udp(src, dst, sport, dport, &rtp));
            }
        }
        assert_eq!(
            count_both(&k, counters::FLOW_INSERT_FAILED),
            0,
            "{capacity}"
        );
        assert_eq!(count_both(&k, counters::FLOW_CREATED), u64::from(capacity));
        // What the agent pays per poll, printed (not asserted): flows(),
        // and the quickest of three flows_into() into a kept vector.
        let started = std::time::Instant::now();
        let flows = k.flows().unwrap();
        let fresh = started.elapsed();
        let mut kept = Vec::new();
        let kept_in = (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                k.flows_into(&mut kept).unwrap();
                started.elapsed()
            })
            .min()
            .unwrap();
        assert_eq!(kept, flows);
        let usage = k.flow_table_usage().unwrap();
        eprintln!(
            "capacity {capacity}: {usage:?}, overflowed {}, flows() read {} flows in {fresh:?}, \
             flows_into() a kept vector in {kept_in:?}",
            count_both(&k, counters::FLOW_OVERFLOW),
            flows.len()
        );
        assert_eq!(flows.len(), capacity as usize);
        assert_eq!(
            usage.slots + usage.watched_overflow + usage.overflow,
            u64::from(capacity)
        );
        // Nothing is watched: what overflowed is in the LRU, well within it.
        assert_eq!(usage.watched_overflow, 0);
        assert!(
            usage.overflow * 100 < u64::from(capacity).max(10_000),
            "{usage:?}"
        );
        let by_key: HashMap<FlowKey, FlowStats> = flows.into_iter().collect();
        for &(hook, src, dst, sport, dport, ssrc) in &streams {
            let key = FlowKey {
                src_addr: ipv4_mapped(src),
                dst_addr: ipv4_mapped(dst),
                src_port: sport,
                dst_port: dport,
                ssrc,
                ip_version: 4,
                kind: KIND_RTP,
                hook,
                _pad: [0; 5],
            };
            let st = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("missing {key:?}"));
            assert_eq!((st.packets, st.expected(), st.lost()), (3, 4, 1), "{key:?}");
        }
    }
}

/// A call's streams, to and from endpoints the agent watches, while a
/// flood of 200,000 random RTP-looking streams on RTP ports fills a small
/// flow table many times over: the call's streams established before the
/// flood keep their slots, one that starts once the table is full goes to
/// the overflow map of watched streams, and all of them stay, counted
/// exactly. The flood costs its own streams: they overflow into the LRU
/// map and push each other out.
#[test]
fn a_flood_of_random_streams_never_pushes_out_a_watched_call() {
    const CAPACITY: u32 = 16_384;
    const FLOOD: u32 = 200_000;
    // On one CPU throughout: the LRU keeps free entries in per-CPU lists,
    // and how full it gets depends on which CPUs inserted.
    pin_to_cpu(0);
    let mut k = kernel_sized(CAPACITY);
    let layout = k.flow_table_layout();
    let callee: [u8; 4] = [198, 18, 7, 7];
    // What the SDP of two calls announced: the server's and the peers'
    // media endpoints.
    let endpoints = [
        (SERVER, 20_000),
        (PEER, 30_000),
        (SERVER, 20_010),
        (callee, 30_010),
    ];
    let watched: HashMap<EndpointKey, WatchedEndpoint> = endpoints
        .iter()
        .enumerate()
        .map(|(i, &(addr, port))| {
            let key = EndpointKey {
                addr: ipv4_mapped(addr),
                port,
                _pad: [0; 2],
            };
            let value = WatchedEndpoint {
                cookie: i as u64 / 2 + 1,
                ..WatchedEndpoint::default()
            };
            (key, value)
        })
        .collect();
    k.sync_watched(&watched).unwrap();

    // (hook, src, dst, sport, dport, ssrc): call 1 both ways, established
    // before the flood; call 2 starts when the table is full.
    let call1 = [
        (HOOK_XDP, PEER, SERVER, 30_000, 20_000, 0xCA11_0001u32),
        (HOOK_TC, SERVER, PEER, 20_000, 30_000, 0xCA11_0002),
    ];
    let call2 = [(HOOK_TC, SERVER, callee, 20_010, 30_010, 0xCA11_0003)];
    // Sequence numbers sent per stream; every 25th is lost on the way.
    let mut sent: HashMap<u32, (u64, u16)> = HashMap::new();
    let mut send =
        |k: &Kernel,
         &(hook, src, dst, sport, dport, ssrc): &(u8, [u8; 4], [u8; 4], u16, u16, u32)| {
            let (packets, next) = sent.entry(ssrc).or_insert((0, 1));
            let seq = *next;
            *next += if seq.is_multiple_of(25) { 2 } else { 1 };
            *packets += 1;
            let rtp = rtp_payload(0, seq, u32::from(seq) * 160, ssrc, 160);
            run(k, hook, &ipv4_udp(src, dst, sport, dport, &rtp));
        };
    for stream in &call1 {
        send(&k, stream);
    }
    let mut rng = Rng(0xF100D);
    let mut rtcp_sent = 0;
    for i in 0..FLOOD {
        // Random sources and destinations outside the call's addresses
        // (172.16.0.0/12; the stream's number keeps them distinct),
        // random RTP ports and SSRCs, both hooks.
        let src = [172, 16 | (i >> 16) as u8 & 0x0F, (i >> 8) as u8, i as u8];
        let r = rng.next();
        let dst = [172, 16 | (r & 0x0F) as u8, (r >> 8) as u8, (r >> 16) as u8];
        let (sport, dport) = (rng.rtp_port(), rng.rtp_port());
        let hook = if r >> 63 == 0 { HOOK_XDP } else { HOOK_TC };
        let rtp = rtp_payload(
            0,
            (r >> 24) as u16,
            (r >> 40) as u32,
            rng.next() as u32,
            160,
        );
        run(&k, hook, &ipv4_udp(src, dst, sport, dport, &rtp));
        // A packet of each live stream every 500 flood packets; call 2
        // once 100,000 flood streams have filled the table's 32,775 slots.
        if i % 500 == 499 {
            let live = if i > FLOOD / 2 { &call2[..] } else { &[] };
            for stream in call1.iter().chain(live) {
                send(&k, stream);
            }
            // Call 2's callee reports back by RTCP on its RTP port (muxed).
            if i > FLOOD / 2 {
                run(
                    &k,
                    HOOK_XDP,
                    &ipv4_udp(callee, SERVER, 30_010, 20_010, &rtcp_rr(0xCA11_0004)),
                );
                rtcp_sent += 1;
            }
        }
    }
    let usage = k.flow_table_usage().unwrap();
    let flows = k.flows().unwrap();
    let flood_overflowed = count_both(&k, counters::FLOW_OVERFLOW);
    let failed = count_both(&k, counters::FLOW_INSERT_FAILED);
    let flood_left = flows.len() as u64 - 4;
    eprintln!(
        "{usage:?}, flow_overflow {flood_overflowed}, flow_insert_failed {failed}, \
         flood streams left {flood_left} of {FLOOD} (evicted {})",
        u64::from(FLOOD) - flood_left
    );
    for &(hook, src, dst, sport, dport, ssrc) in call1.iter().chain(&call2) {
        let key = FlowKey {
            src_addr: ipv4_mapped(src),
            dst_addr: ipv4_mapped(dst),
            src_port: sport,
            dst_port: dport,
            ssrc,
            ip_version: 4,
            kind: KIND_RTP,
            hook,
            _pad: [0; 5],
        };
        let (_, st) = flows
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("the flood pushed out {key:?}"));
        let (packets, next) = sent[&ssrc];
        let expected = u64::from(next) - 1;
        assert_eq!(
            (st.packets, u64::from(st.expected()), st.lost()),
            (packets, expected, (expected - packets) as i64),
            "{ssrc:#x}"
        );
        assert!(packets > 150, "{ssrc:#x}: only {packets} packets");
    }
    let rtcp = flows
        .iter()
        .find(|(k, _)| k.kind == KIND_RTCP && k.ssrc == 0xCA11_0004)
        .expect("the flood pushed out call 2's RTCP");
    assert_eq!(rtcp.1.packets, rtcp_sent);
    // Call 2's streams found the table full: they are the watched overflow.
    assert_eq!(usage.watched_overflow, 2, "{usage:?}");
    // The slots are full (of the flood and call 1; the first few can stay
    // free, only the keys hashing right there reach them), the LRU too;
    // every other flood stream overflowed, and the LRU evicted them.
    assert!(usage.slots + 8 > u64::from(layout.slots), "{usage:?}");
    // (The LRU evicts a little before it is full: some free entries wait
    // in other CPUs' local lists.)
    assert!(
        usage.overflow <= u64::from(layout.overflow)
            && usage.overflow * 10 > u64::from(layout.overflow) * 9,
        "{usage:?}"
    );
    assert_eq!(
        flood_overflowed,
        u64::from(FLOOD) - (usage.slots - 2) + 2,
        "every stream without a slot overflowed"
    );
    assert_eq!(failed, 0);
    assert_eq!(flood_left, usage.slots - 2 + usage.overflow);

    // The agent expires idle streams: call 1 and 2 are freed like any other.
    k.remove_flows(&flows.iter().map(|(key, _)| *key).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(k.flows().unwrap().len(), 0);
    assert_eq!(k.flow_table_usage().unwrap(), Default::default());
}

/// A flow table of no streams, or beyond the largest, is refused with an
/// error that says why, before anything is created.
#[test]
fn out_of_range_flow_table_sizes_are_refused() {
    require_root();
    for size in [0, MAX_FLOW_TABLE_SIZE + 1, u32::MAX] {
        let cfg = DetectorConfig {
            flow_table_size: size,
            ..DetectorConfig::default()
        };
        match Kernel::load(&cfg) {
            Err(e @ CaptureError::FlowTableSize(_)) => {
                assert!(e.to_string().contains("flow_table_size"), "{e}");
            }
            Err(e) => panic!("{size}: {e}"),
            Ok(_) => panic!("{size}: loaded"),
        }
    }
}

/// Every map of the object is pinned with the shape `pins` expects of it:
/// a second agent adopts them (a stream's counts go on), and pins of
/// another shape (another build, another flow table size) are replaced.
#[test]
fn pinned_maps_are_adopted_by_the_next_load_and_foreign_ones_replaced() {
    use detector_user::kernel::pins;
    require_root();
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/detector-tests/prog-test-{}/lo",
        std::process::id()
    ));
    let cfg = |flows| DetectorConfig {
        flow_table_size: flows,
        ..DetectorConfig::default()
    };
    let layout = detector_common::flow::FlowTableLayout::new(4096).unwrap();
    let shapes = pins::map_shapes(&layout);

    let ours = Some(detector_common::MAP_LAYOUT_VERSION);
    let first = Kernel::load_pinned(&cfg(4096), &dir, "lo", ours).expect("load pinned");
    assert!(!first.maps_adopted());
    for name in first.map_names() {
        assert!(
            shapes.iter().any(|s| s.name == name),
            "map {name} of the object is not pinned"
        );
    }
    // A packet counted by the first load's maps...
    let frame = ipv4_udp(PEER, SERVER, 30000, 20000, &rtp_payload(8, 1, 0, 0xAD, 160));
    first.test_run(XDP_PROGRAM, &frame, 1).expect("run");
    let counted = count(&first, HOOK_XDP, counters::RTP);
    assert_eq!(counted, 1);
    drop(first);
    assert_eq!(pins::inspect(&dir, &shapes), pins::Found::Compatible);

    // ...is still counted by the next one's, which adopted them.
    let second = Kernel::load_pinned(&cfg(4096), &dir, "lo", ours).expect("adopt");
    assert!(second.maps_adopted());
    assert_eq!(count(&second, HOOK_XDP, counters::RTP), 1);
    second.test_run(XDP_PROGRAM, &frame, 1).expect("run");
    drop(second);

    // The same shapes, but pinned by a build whose maps mean something
    // else (or by one no journal names): not adopted.
    for other_build in [Some(detector_common::MAP_LAYOUT_VERSION - 1), None] {
        let k = Kernel::load_pinned(&cfg(4096), &dir, "lo", other_build).expect("replace");
        assert!(!k.maps_adopted(), "{other_build:?}");
        assert_eq!(count(&k, HOOK_XDP, counters::RTP), 0, "a clean start");
        k.test_run(XDP_PROGRAM, &frame, 1).expect("run");
    }

    // Another flow table size: the pins are not this layout's.
    let other = detector_common::flow::FlowTableLayout::new(8192).unwrap();
    assert!(matches!(
        pins::inspect(&dir, &pins::map_shapes(&other)),
        pins::Found::Foreign(why) if why.contains(detector_common::flow::FLOW_SLOTS_MAP)
    ));
    let third = Kernel::load_pinned(&cfg(8192), &dir, "lo", ours).expect("replace");
    assert!(!third.maps_adopted());
    assert_eq!(count(&third, HOOK_XDP, counters::RTP), 0, "a clean start");
    drop(third);
    pins::remove(&dir, "lo").expect("remove the pins");
    assert_eq!(pins::inspect(&dir, &shapes), pins::Found::Nothing);
    let _ = std::fs::remove_dir(dir.parent().unwrap());
}
