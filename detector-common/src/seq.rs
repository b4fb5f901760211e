//! RTP sequence accounting (RFC 3550 A.1), counted the way Wireshark counts.
//!
//! Figures agree with Wireshark's RTP stream analysis: `expected` is the
//! extended highest sequence minus the first plus one, `lost` is expected
//! minus received (so duplicates can make it negative).
//!
//! Large jumps are handled deliberately, because a loss detector must tell a
//! long outage from a sender that restarted its sequence numbers:
//! - a forward jump of fewer than [`MAX_DROPOUT`] packets is loss;
//! - a larger forward jump is loss too when enough time passed for the sender
//!   to have sent the missing packets ([`MIN_PACKET_INTERVAL_NS`] each): an
//!   outage of a minute is reported as a minute of loss;
//! - a larger forward jump that came too quickly, or a packet more than
//!   [`MAX_MISORDER`] behind, is suspect; if the next packet continues from it,
//!   the sender restarted: the old run's expected count is kept and a new run
//!   begins at the suspect packet (RFC 3550 A.1's probation, with one packet).
//!
//! Duplicates and late packets are told apart with a 64-packet bitmap of what
//! arrived behind the highest sequence number; a packet further behind is
//! counted as late.

/// Largest forward jump that is always counted as loss (RFC 3550 A.1).
pub const MAX_DROPOUT: u32 = 3000;
/// Largest backward distance still treated as reordering (RFC 3550 A.1).
pub const MAX_MISORDER: u32 = 100;
/// The shortest packet interval a real sender keeps up (8 kHz audio at 2.5 ms
/// frames is the fastest common one). A forward jump of N packets that arrives
/// sooner than N of these after the previous packet cannot be loss.
pub const MIN_PACKET_INTERVAL_NS: u64 = 2_500_000;

const SEQ_MOD: u32 = 1 << 16;
const WINDOW_BITS: u32 = 64;
const PROBATION_ACTIVE: u32 = 1 << 31;
const PROBATION_BACKWARD: u32 = 1 << 30;
const PROBATION_SEQ_MASK: u32 = 0xFFFF;

/// Per-stream sequence state, stored inside the kernel's flow map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqState {
    /// Bit `i` set: extended sequence `highest - i` has arrived.
    pub window: u64,
    /// Extended sequence (`cycles << 16 | seq`) of the first packet of the
    /// current run. Starts at cycle 1 so late packets before it cannot
    /// underflow.
    pub base: u32,
    /// Highest extended sequence number of the current run.
    pub highest: u32,
    /// Packets expected in the runs before the last sender restart.
    pub expected_before_restart: u32,
    /// A suspected restart: `PROBATION_ACTIVE`, `PROBATION_BACKWARD` and the
    /// sequence number that would confirm it.
    pub probation: u32,
    pub duplicates: u32,
    pub out_of_order: u32,
    /// Confirmed sender restarts.
    pub restarts: u32,
    /// Forward jumps too large and too quick to be loss.
    pub jumps: u32,
}
crate::assert_size!(SeqState, 40);

/// What one packet did to the sequence state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    InOrder,
    /// Ahead of the highest by more than one: this many are missing so far.
    Gap(u32),
    Duplicate,
    /// Behind the highest and not seen before.
    Late,
    /// Suspected restart or wild packet; not (yet) part of the run.
    Jump,
    /// Confirmed restart: a new run began.
    Restart,
}

impl SeqState {
    /// State after the first packet of a stream.
    pub const fn new(seq: u16) -> Self {
        let ext = SEQ_MOD + seq as u32;
        Self {
            window: 1,
            base: ext,
            highest: ext,
            expected_before_restart: 0,
            probation: 0,
            duplicates: 0,
            out_of_order: 0,
            restarts: 0,
            jumps: 0,
        }
    }

    /// Packets expected so far (Wireshark's figure, summed over restarts).
    #[inline(always)]
    pub const fn expected(&self) -> u32 {
        self.expected_before_restart
            .wrapping_add(self.highest.wrapping_sub(self.base))
            .wrapping_add(1)
    }

    /// Sequence wrap-arounds in the current run.
    #[inline(always)]
    pub const fn cycles(&self) -> u32 {
        (self.highest >> 16).wrapping_sub(self.base >> 16)
    }

    /// The highest sequence number seen, as carried in the packet.
    #[inline(always)]
    pub const fn highest_seq(&self) -> u16 {
        (self.highest & 0xFFFF) as u16
    }

    /// Accounts one packet. `gap_ns` is the arrival time since the previous
    /// packet of the stream.
    #[inline(always)]
    pub fn update(&mut self, seq: u16, gap_ns: u64) -> SeqEvent {
        let seq = seq as u32;
        let forward = seq.wrapping_sub(self.highest) & 0xFFFF;
        if forward == 0 {
            self.duplicates += 1;
            return SeqEvent::Duplicate;
        }
        if forward < SEQ_MOD / 2 {
            if forward >= MAX_DROPOUT && gap_ns < forward as u64 * MIN_PACKET_INTERVAL_NS {
                return self.suspect(seq, false);
            }
            self.highest = self.highest.wrapping_add(forward);
            self.window = if forward >= WINDOW_BITS {
                1
            } else {
                (self.window << forward) | 1
            };
            self.probation = 0;
            return if forward == 1 {
                SeqEvent::InOrder
            } else {
                SeqEvent::Gap(forward - 1)
            };
        }
        let behind = SEQ_MOD - forward;
        if behind < WINDOW_BITS {
            let bit = 1u64 << behind;
            if self.window & bit != 0 {
                self.duplicates += 1;
                return SeqEvent::Duplicate;
            }
            self.window |= bit;
        } else if behind > MAX_MISORDER {
            return self.suspect(seq, true);
        }
        self.out_of_order += 1;
        SeqEvent::Late
    }

    #[inline(always)]
    fn suspect(&mut self, seq: u32, backward: bool) -> SeqEvent {
        if self.probation & (PROBATION_ACTIVE | PROBATION_SEQ_MASK) == PROBATION_ACTIVE | seq {
            // Two consecutive packets far from the run: the sender restarted.
            // The new run begins with the suspect packet before this one.
            if self.probation & PROBATION_BACKWARD != 0 {
                self.out_of_order = self.out_of_order.saturating_sub(1);
            }
            self.expected_before_restart = self.expected();
            self.base = SEQ_MOD + (seq.wrapping_sub(1) & 0xFFFF);
            self.highest = self.base + 1;
            self.window = 0b11;
            self.probation = 0;
            self.restarts += 1;
            return SeqEvent::Restart;
        }
        self.probation = PROBATION_ACTIVE | ((seq + 1) & PROBATION_SEQ_MASK);
        if backward {
            self.probation |= PROBATION_BACKWARD;
            self.out_of_order += 1;
        } else {
            self.jumps += 1;
        }
        SeqEvent::Jump
    }
}

#[cfg(test)]
mod tests {
    use std::{vec, vec::Vec};

    use super::*;

    const PTIME: u64 = 20_000_000;

    /// Feeds `seqs` 20 ms apart; returns (expected, received, duplicates, late).
    fn account(seqs: &[u16]) -> (u32, u32, u32, u32, SeqState) {
        let mut st = SeqState::new(seqs[0]);
        for &s in &seqs[1..] {
            st.update(s, PTIME);
        }
        (
            st.expected(),
            seqs.len() as u32,
            st.duplicates,
            st.out_of_order,
            st,
        )
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            seqs: Vec<u16>,
            expected: u32,
            duplicates: u32,
            late: u32,
        }
        let cases = [
            Case {
                name: "in order",
                seqs: (100..110).collect(),
                expected: 10,
                duplicates: 0,
                late: 0,
            },
            Case {
                name: "gap of two",
                seqs: vec![1, 2, 5, 6],
                expected: 6,
                duplicates: 0,
                late: 0,
            },
            Case {
                name: "wrap at 65535",
                seqs: vec![65533, 65534, 65535, 0, 1, 2],
                expected: 6,
                duplicates: 0,
                late: 0,
            },
            Case {
                name: "loss across the wrap",
                seqs: vec![65534, 1, 2],
                expected: 5,
                duplicates: 0,
                late: 0,
            },
            Case {
                name: "reorder across the wrap",
                seqs: vec![65534, 0, 65535, 1],
                expected: 4,
                duplicates: 0,
                late: 1,
            },
            Case {
                name: "duplicate of highest",
                seqs: vec![7, 8, 8, 9],
                expected: 3,
                duplicates: 1,
                late: 0,
            },
            Case {
                name: "duplicate of a late packet",
                seqs: vec![7, 9, 8, 8, 10],
                expected: 4,
                duplicates: 1,
                late: 1,
            },
            // rtponly_sipp_dtmf_2833_1.pcap: RFC 4733 end packets sent three times.
            Case {
                name: "dtmf end retransmits",
                seqs: vec![1, 2, 3, 4, 5, 6, 6, 6, 7, 8],
                expected: 8,
                duplicates: 2,
                late: 0,
            },
            Case {
                name: "late before the first",
                seqs: vec![10, 11, 9, 12],
                expected: 3,
                duplicates: 0,
                late: 1,
            },
        ];
        for c in cases {
            let (expected, received, dups, late, _) = account(&c.seqs);
            assert_eq!(expected, c.expected, "{}: expected", c.name);
            assert_eq!(dups, c.duplicates, "{}: duplicates", c.name);
            assert_eq!(late, c.late, "{}: late", c.name);
            let lost = i64::from(expected) - i64::from(received);
            assert_eq!(
                lost,
                i64::from(c.expected) - c.seqs.len() as i64,
                "{}: lost",
                c.name
            );
        }
    }

    #[test]
    fn many_wraps_count_cycles() {
        let seqs: Vec<u16> = (0..200_000u32).map(|i| (i % 65536) as u16).collect();
        let (expected, received, _, _, st) = account(&seqs);
        assert_eq!(expected, received);
        assert_eq!(st.cycles(), 3);
    }

    #[test]
    fn big_quick_jump_then_continuation_is_a_restart() {
        let mut st = SeqState::new(1000);
        for s in 1001..1010 {
            st.update(s, PTIME);
        }
        assert_eq!(st.update(40_000, PTIME), SeqEvent::Jump);
        assert_eq!(st.update(40_001, PTIME), SeqEvent::Restart);
        assert_eq!(st.update(40_002, PTIME), SeqEvent::InOrder);
        // 10 in the old run, 3 in the new one: nothing lost.
        assert_eq!(st.expected(), 13);
        assert_eq!(st.restarts, 1);
    }

    #[test]
    fn backward_restart_does_not_count_late() {
        let mut st = SeqState::new(30_000);
        st.update(30_001, PTIME);
        assert_eq!(st.update(5, PTIME), SeqEvent::Jump);
        assert_eq!(st.update(6, PTIME), SeqEvent::Restart);
        assert_eq!(st.out_of_order, 0);
        assert_eq!(st.expected(), 4);
    }

    #[test]
    fn a_single_wild_packet_is_not_a_restart() {
        let mut st = SeqState::new(100);
        st.update(101, PTIME);
        assert_eq!(st.update(50_000, PTIME), SeqEvent::Jump);
        assert_eq!(st.update(102, PTIME), SeqEvent::InOrder);
        assert_eq!(st.expected(), 3);
        assert_eq!(st.restarts, 0);
    }

    #[test]
    fn long_outage_is_loss_not_a_restart() {
        // 70 s without packets at 50 pps: 3500 packets missing, then it resumes.
        let mut st = SeqState::new(0);
        st.update(1, PTIME);
        assert_eq!(st.update(3502, 70_000_000_000), SeqEvent::Gap(3500));
        assert_eq!(st.update(3503, PTIME), SeqEvent::InOrder);
        assert_eq!(st.expected(), 3504);
    }

    #[test]
    fn gap_then_wrap_sets_window() {
        let mut st = SeqState::new(65500);
        assert_eq!(st.update(10, PTIME), SeqEvent::Gap(45));
        assert_eq!(st.update(65530, PTIME), SeqEvent::Late);
        assert_eq!(st.update(65530, PTIME), SeqEvent::Duplicate);
        assert_eq!(st.cycles(), 1);
        assert_eq!(st.expected(), 47);
    }
}
