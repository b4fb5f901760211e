//! RFC 3550 A.8 interarrival jitter, in integer arithmetic so the kernel can
//! run it.
//!
//! The state keeps jitter scaled by 16 in timestamp units, exactly as the RFC's
//! reference code does (`jitter += d - ((jitter + 8) >> 4)`). Arrival times are
//! turned into timestamp units per packet pair, from the arrival gap, so no
//! absolute clock is multiplied and nothing overflows.
//!
//! The conversion runs for every packet in the kernel, where a 64-bit
//! division is the dearest instruction there is; gaps under
//! [`FAST_GAP_LIMIT_NS`] (every packet of a live stream) are converted with a
//! multiply and a shift by the stream's rate in units per ns (x 2^40, rounded
//! up, so the result is the exact quotient or, within 1/256 of a unit of the
//! next integer, one more).

/// Arrival gaps are capped here before conversion: after an hour of silence
/// the jitter estimate is meaningless anyway and the product must fit a u64.
const MAX_GAP_NS: u64 = 3_600_000_000_000;
/// Gaps below this take the multiply-and-shift conversion.
pub const FAST_GAP_LIMIT_NS: u64 = 1 << 32;
/// Clock rates are capped here so both conversions fit a u64 (no RTP payload
/// format uses more than 192 kHz).
pub const MAX_CLOCK_RATE: u32 = 1_000_000;
const RATE_SHIFT: u32 = 40;
/// Caps one packet's transit difference so a wild timestamp cannot overflow
/// the accumulator.
const MAX_D: u64 = 1 << 26;
const NS_PER_S: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterState {
    pub last_arrival_ns: u64,
    pub last_timestamp: u32,
    /// Jitter × 16, in RTP timestamp units.
    pub jitter_q4: u32,
    /// Clock rate of the stream's payload (Hz), at most [`MAX_CLOCK_RATE`].
    pub clock_rate: u32,
    /// `clock_rate` in timestamp units per ns, x 2^40, rounded up.
    pub units_per_ns_q40: u32,
}
crate::assert_size!(JitterState, 24);

impl JitterState {
    pub const fn new(arrival_ns: u64, timestamp: u32, clock_rate: u32) -> Self {
        let clock_rate = if clock_rate > MAX_CLOCK_RATE {
            MAX_CLOCK_RATE
        } else {
            clock_rate
        };
        Self {
            last_arrival_ns: arrival_ns,
            last_timestamp: timestamp,
            jitter_q4: 0,
            clock_rate,
            // At most 1.1e9: fits a u32, and a gap under 2^32 ns times it fits
            // a u64.
            units_per_ns_q40: (((clock_rate as u64) << RATE_SHIFT).div_ceil(NS_PER_S)) as u32,
        }
    }

    /// Timestamp units elapsed in `gap_ns` at this stream's clock rate.
    #[inline(always)]
    pub fn gap_units(&self, gap_ns: u64) -> u64 {
        if gap_ns < FAST_GAP_LIMIT_NS {
            return (gap_ns * self.units_per_ns_q40 as u64) >> RATE_SHIFT;
        }
        let gap_ns = if gap_ns > MAX_GAP_NS {
            MAX_GAP_NS
        } else {
            gap_ns
        };
        gap_ns * self.clock_rate as u64 / NS_PER_S
    }

    /// Restarts the transit reference without touching the estimate (used
    /// when the payload type changes: its timestamps are not comparable).
    #[inline(always)]
    pub fn reseed(&mut self, arrival_ns: u64, timestamp: u32) {
        self.last_arrival_ns = arrival_ns;
        self.last_timestamp = timestamp;
    }

    #[inline(always)]
    pub fn update(&mut self, arrival_ns: u64, timestamp: u32) {
        let arrival_units = self.gap_units(arrival_ns.saturating_sub(self.last_arrival_ns));
        let sent_units = timestamp.wrapping_sub(self.last_timestamp) as i32 as i64;
        let d = (arrival_units as i64 - sent_units).unsigned_abs();
        let d = if d > MAX_D { MAX_D } else { d } as u32;
        self.jitter_q4 = self
            .jitter_q4
            .wrapping_add(d)
            .wrapping_sub((self.jitter_q4 + 8) >> 4);
        self.reseed(arrival_ns, timestamp);
    }

    /// Jitter in timestamp units, as RTCP reports it.
    pub const fn jitter_units(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Jitter in milliseconds (userspace only: the kernel has no floats).
    #[cfg(any(test, feature = "user"))]
    pub fn jitter_ms(&self) -> f64 {
        if self.clock_rate == 0 {
            return 0.0;
        }
        f64::from(self.jitter_q4) / 16.0 / f64::from(self.clock_rate) * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floating-point recurrence straight from RFC 3550 A.8.
    fn reference(arrivals_ms: &[f64], timestamps: &[u32], rate: f64) -> f64 {
        let mut j = 0.0f64;
        for i in 1..arrivals_ms.len() {
            let r = (arrivals_ms[i] - arrivals_ms[i - 1]) / 1000.0 * rate;
            let s = f64::from(timestamps[i].wrapping_sub(timestamps[i - 1]) as i32);
            j += ((r - s).abs() - j) / 16.0;
        }
        j / rate * 1000.0
    }

    fn run(arrivals_ms: &[f64], timestamps: &[u32], rate: u32) -> f64 {
        let ns = |ms: f64| (ms * 1e6) as u64;
        let mut st = JitterState::new(ns(arrivals_ms[0]), timestamps[0], rate);
        for i in 1..arrivals_ms.len() {
            st.update(ns(arrivals_ms[i]), timestamps[i]);
        }
        st.jitter_ms()
    }

    #[test]
    fn perfect_pacing_has_no_jitter() {
        let arrivals: std::vec::Vec<f64> = (0..100).map(|i| f64::from(i) * 20.0).collect();
        let ts: std::vec::Vec<u32> = (0..100).map(|i| i * 160).collect();
        assert_eq!(run(&arrivals, &ts, 8000), 0.0);
    }

    #[test]
    fn one_late_packet_by_hand() {
        // Packet 2 arrives 10 ms late: D = 80 units, J = 80/16 = 5 units;
        // packet 3 on time again: D = 80, J = 5 + (80 - 5)/16 = 9.6875 units.
        let arrivals = [0.0, 30.0, 40.0];
        let ts = [0, 160, 320];
        let ms = run(&arrivals, &ts, 8000);
        assert!((ms - 9.6875 / 8.0).abs() < 0.01, "{ms}");
        assert!((ms - reference(&arrivals, &ts, 8000.0)).abs() < 0.01);
    }

    #[test]
    fn agrees_with_float_reference_on_noisy_stream() {
        let mut arrivals = std::vec::Vec::new();
        let mut ts = std::vec::Vec::new();
        let mut noise: u32 = 12345;
        for i in 0..500u32 {
            noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let wobble = f64::from((noise >> 16) % 800) / 100.0; // 0..8 ms
            arrivals.push(f64::from(i) * 20.0 + wobble);
            ts.push(i * 960u32);
        }
        let got = run(&arrivals, &ts, 48000);
        let want = reference(&arrivals, &ts, 48000.0);
        assert!(
            (got - want).abs() < 0.05 * want.max(0.1),
            "got {got} want {want}"
        );
    }

    #[test]
    fn fast_conversion_matches_the_division() {
        for rate in [8000u32, 16000, 44100, 48000, 90000, 192_000, MAX_CLOCK_RATE] {
            let st = JitterState::new(0, 0, rate);
            let mut gap: u64 = 1;
            let mut inexact = 0;
            let mut tried = 0;
            while gap < 3 * FAST_GAP_LIMIT_NS {
                let exact = gap * u64::from(rate) / NS_PER_S;
                let fast = st.gap_units(gap);
                assert!(
                    fast == exact || fast == exact + 1,
                    "rate {rate} gap {gap}: {fast} vs {exact}"
                );
                inexact += u32::from(fast != exact);
                tried += 1;
                gap = gap * 3 / 2 + 7;
            }
            assert!(
                inexact * 50 < tried,
                "rate {rate}: {inexact} of {tried} off by one"
            );
        }
    }

    #[test]
    fn absurd_clock_rates_are_capped() {
        let st = JitterState::new(0, 0, u32::MAX);
        assert_eq!(st.clock_rate, MAX_CLOCK_RATE);
        // The largest gap and rate still fit: no overflow, no panic.
        assert_eq!(st.gap_units(u64::MAX), MAX_GAP_NS / 1000);
        assert_eq!(
            st.gap_units(FAST_GAP_LIMIT_NS - 1),
            (FAST_GAP_LIMIT_NS - 1) / 1000
        );
    }

    #[test]
    fn timestamp_wrap_is_harmless() {
        let arrivals = [0.0, 20.0, 40.0];
        let ts = [u32::MAX - 159, 0, 160];
        assert_eq!(run(&arrivals, &ts, 8000), 0.0);
    }
}
