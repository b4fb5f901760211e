//! The real kernel programs run on crafted frames through BPF_PROG_TEST_RUN:
//! a table of {frame, hook, expected outcome counter, expected flow figures},
//! as katran tests its fixtures. Needs root; no traffic.

use detector_common::{
    config::DetectorConfig,
    counters::{self, HOOK_TC, HOOK_XDP},
    flow::{FlowKey, FlowStats, FLOW_PROBES, KIND_RTCP, KIND_RTP},
    packet::ipv4_mapped,
    sip::{SipFrame, SIP_SNAPLEN},
};
use detector_user::kernel::{
    Kernel, BASELINE_PROGRAM, BENCH_ADVANCE_PROGRAM, BENCH_IN_ORDER_PROGRAM, TC_PROGRAM,
    XDP_PROGRAM,
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

/// SSRCs after `after` whose streams hash to the same flow-table slot as
/// SSRC 1's.
fn colliding_ssrcs(after: u32, n: usize) -> Vec<u32> {
    let target = rtp_key(1, HOOK_XDP).slot_hash();
    (after + 1..)
        .filter(|&s| rtp_key(s, HOOK_XDP).slot_hash() == target)
        .take(n)
        .collect()
}

#[test]
fn streams_beyond_a_full_probe_window_overflow_and_stay_whole() {
    let mut k = kernel();
    // One more stream than a probe window holds, all hashing to one slot.
    let ssrcs = colliding_ssrcs(0, FLOW_PROBES as usize + 1);
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
    assert_eq!(count(&k, counters::FLOW_CREATED), 5);
    assert_eq!(count(&k, counters::FLOW_OVERFLOW), 1);
    assert_eq!(count(&k, counters::FLOW_INSERT_FAILED), 0);

    // The agent frees an idle stream's slot (with the hash computed in
    // userspace: it must agree with the kernel's); a new stream takes it,
    // and the overflowed stream stays in the overflow map, still whole.
    k.remove_flows(&[rtp_key(ssrcs[0], HOOK_XDP)]).unwrap();
    assert!(entries(&k, ssrcs[0]).is_empty());
    let newcomer = colliding_ssrcs(ssrcs[4], 1)[0];
    send_rtp(&k, newcomer, 7);
    send_rtp(&k, ssrcs[4], 103);
    assert_eq!(count(&k, counters::FLOW_CREATED), 6);
    assert_eq!(count(&k, counters::FLOW_OVERFLOW), 1);
    assert_eq!(entries(&k, newcomer)[0].packets, 1);
    let overflowed = entries(&k, ssrcs[4]);
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
        detector_common::flow::FLOW_SLOTS_MAP,
        detector_common::flow::WATCHED_MAP,
        detector_common::counters::COUNTERS_MAP,
        detector_common::config::CONFIG_MAP,
        detector_common::config::CLOCK_RATES_MAP,
        detector_common::sip::SIP_RING_MAP,
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "map {name} missing from the object: {names:?}"
        );
    }
}
