//! Voice quality as the ITU-T G.107 E-model computes it, in the simplified
//! form call monitors use (rtpengine, VoIPmonitor): only packet loss,
//! its burstiness and the one-way delay vary; every other impairment keeps
//! G.107's default, which puts the basic signal-to-noise term at 93.2.
//!
//! - R = 93.2 − Id − Ie,eff (G.107 7.1; Is = 0 and A = 0 by default)
//! - Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl / BurstR + Bpl), Ppl in percent
//!   (G.107 7.5)
//! - Id = 0.024 d + 0.11 (d − 177.3) H(d − 177.3), d the one-way delay in
//!   ms (the simplified delay term of Cole and Rosenbluth, 2001, which
//!   monitors use instead of G.107's full Idd/Idte/Idle)
//! - MOS = 1 + 0.035 R + 7·10⁻⁶ R (R − 60)(100 − R), 1 below R = 0, 4.5
//!   above R = 100 (G.107 Annex B)
//!
//! Codec figures (Ie, Bpl) are from ITU-T G.113 Appendix I (11/2007),
//! tables I.1 and I.3, where it gives them; see [`Codec`].

/// G.107's R for a connection with default values everywhere: Ro − Is.
pub const R_DEFAULT: f64 = 93.2;
/// One-way delay used when no RTCP round trip is known: 0 ms, so the delay
/// term drops out (a passive monitor cannot measure one-way delay; G.711
/// without loss then rates 4.41, the figure other monitors show).
pub const DEFAULT_ONE_WAY_DELAY_MS: f64 = 0.0;

/// A codec's equipment impairment (Ie) and packet-loss robustness (Bpl).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Codec {
    pub name: &'static str,
    pub ie: f64,
    pub bpl: f64,
}

/// G.711 with packet loss concealment: Ie 0 (G.113 I.1), Bpl 25.1 (G.113 I.3).
pub const G711: Codec = Codec {
    name: "G.711",
    ie: 0.0,
    bpl: 25.1,
};
/// G.729A with VAD: Ie 11 (G.113 I.1), Bpl 19.0 (G.113 I.3).
pub const G729A: Codec = Codec {
    name: "G.729A",
    ie: 11.0,
    bpl: 19.0,
};
/// G.723.1 at 6.3 kbit/s with VAD: Ie 15 (G.113 I.1), Bpl 16.1 (G.113 I.3).
pub const G723_1: Codec = Codec {
    name: "G.723.1",
    ie: 15.0,
    bpl: 16.1,
};
/// GSM 06.10 full rate: Ie 20 (G.113 I.1). G.113 gives no Bpl for it;
/// assumed 10, its table's figure for GSM-EFR (the nearest codec listed).
pub const GSM_FR: Codec = Codec {
    name: "GSM-FR",
    ie: 20.0,
    bpl: 10.0,
};
/// G.726 at 32 kbit/s: Ie 7 (G.113 I.1). No Bpl in G.113; assumed
/// G.711's 25.1 (a sample-based codec with the same concealment).
pub const G726_32: Codec = Codec {
    name: "G.726-32",
    ie: 7.0,
    bpl: 25.1,
};
/// Every other codec (G.722, Opus, iLBC, Speex, L16, unknown dynamic
/// types): assumed G.711's figures. The narrowband E-model has no figures
/// for wideband codecs (G.107.1 rates them on another scale), so they rate
/// as a good narrowband codec would: an assumption, not a measurement.
pub const OTHER: Codec = Codec {
    name: "other (as G.711)",
    ie: 0.0,
    bpl: 25.1,
};

/// The codec of an RTP payload type: static types by RFC 3551, dynamic
/// ones by the encoding name their SDP gave (`a=rtpmap`), if known.
pub fn codec(payload_type: u8, encoding: Option<&str>) -> Codec {
    match payload_type {
        0 | 8 => G711,
        3 => GSM_FR,
        4 => G723_1,
        18 => G729A,
        2 => G726_32,
        _ => match encoding {
            Some(name) if name.eq_ignore_ascii_case("G726-32") => G726_32,
            Some(name) if name.eq_ignore_ascii_case("G729") => G729A,
            _ => OTHER,
        },
    }
}

/// Ie,eff: the codec's impairment under `ppl_pct` percent packet loss with
/// burst ratio `burst_r` (G.107 7.5).
pub fn effective_ie(codec: &Codec, ppl_pct: f64, burst_r: f64) -> f64 {
    let ppl = ppl_pct.clamp(0.0, 100.0);
    let burst_r = burst_r.max(1.0);
    codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst_r + codec.bpl)
}

/// Id: the delay impairment of `one_way_ms` ms of one-way delay.
pub fn delay_impairment(one_way_ms: f64) -> f64 {
    let d = one_way_ms.max(0.0);
    let beyond = if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    0.024 * d + beyond
}

/// The transmission rating R.
pub fn r_factor(codec: &Codec, ppl_pct: f64, burst_r: f64, one_way_ms: f64) -> f64 {
    R_DEFAULT - delay_impairment(one_way_ms) - effective_ie(codec, ppl_pct, burst_r)
}

/// The estimated mean opinion score (conversational quality) for R.
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
    }
}

/// BurstR from what was observed: the mean length of the loss runs over the
/// mean length random loss of the same rate would give, 1 / (1 − p)
/// (G.107 7.5's definition; with a two-state Markov model it is
/// 1 / (p + q)). 1 when nothing was lost, and never below 1: fewer, shorter
/// runs than random loss gives are taken as random.
pub fn burst_ratio(lost: u64, loss_runs: u64, expected: u64) -> f64 {
    if lost == 0 || loss_runs == 0 || expected == 0 {
        return 1.0;
    }
    let p = (lost as f64 / expected as f64).min(1.0);
    let mean_run = lost as f64 / loss_runs as f64;
    (mean_run * (1.0 - p)).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, what: &str) {
        assert!(
            (got - want) < 0.0005 && (want - got) < 0.0005,
            "{what}: {got} != {want}"
        );
    }

    /// R and MOS by hand from the formulas above, without delay (d = 0,
    /// Id = 0), BurstR 1 unless stated:
    ///
    /// G.711 (Ie 0, Bpl 25.1): Ie,eff = 95 P / (P + 25.1)
    /// - 0 %: R = 93.2; MOS = 1 + 3.262 + 7e-6·93.2·33.2·6.8 = 4.4093
    /// - 1 %: Ie,eff = 95/26.1 = 3.6398; R = 89.5602; MOS = 4.3281
    /// - 2 %: Ie,eff = 190/27.1 = 7.0111; R = 86.1889; MOS = 4.2348
    /// - 5 %: Ie,eff = 475/30.1 = 15.7807; R = 77.4193; MOS = 3.9228
    /// - 10 %: Ie,eff = 950/35.1 = 27.0655; R = 66.1345; MOS = 3.4109
    /// - 20 %: Ie,eff = 1900/45.1 = 42.1286; R = 51.0714; MOS = 2.6313
    /// - 5 %, BurstR 2: Ie,eff = 475/(2.5 + 25.1) = 17.2101; R = 75.9899;
    ///   MOS = 3.8639
    ///
    /// G.729A (Ie 11, Bpl 19.0): Ie,eff = 11 + 84 P / (P + 19)
    /// - 0 %: R = 82.2; MOS = 4.1044
    /// - 1 %: Ie,eff = 11 + 84/20 = 15.2; R = 78.0; MOS = 3.9462
    /// - 2 %: Ie,eff = 11 + 168/21 = 19.0; R = 74.2; MOS = 3.7873
    /// - 5 %: Ie,eff = 11 + 420/24 = 28.5; R = 64.7; MOS = 3.3396
    /// - 10 %: Ie,eff = 11 + 840/29 = 39.9655; R = 53.2345; MOS = 2.7453
    /// - 20 %: Ie,eff = 11 + 1680/39 = 54.0769; R = 39.1231; MOS = 2.0213
    /// - 5 %, BurstR 2: Ie,eff = 11 + 420/(2.5 + 19) = 30.5349;
    ///   R = 62.6651; MOS = 3.2369
    #[test]
    fn g711_and_g729a_table() {
        let table: &[(Codec, f64, f64, f64, f64)] = &[
            (G711, 0.0, 1.0, 93.2, 4.4093),
            (G711, 1.0, 1.0, 89.5602, 4.3281),
            (G711, 2.0, 1.0, 86.1889, 4.2348),
            (G711, 5.0, 1.0, 77.4193, 3.9228),
            (G711, 10.0, 1.0, 66.1345, 3.4109),
            (G711, 20.0, 1.0, 51.0714, 2.6313),
            (G711, 5.0, 2.0, 75.9899, 3.8639),
            (G729A, 0.0, 1.0, 82.2, 4.1044),
            (G729A, 1.0, 1.0, 78.0, 3.9462),
            (G729A, 2.0, 1.0, 74.2, 3.7873),
            (G729A, 5.0, 1.0, 64.7, 3.3396),
            (G729A, 10.0, 1.0, 53.2345, 2.7453),
            (G729A, 20.0, 1.0, 39.1231, 2.0213),
            (G729A, 5.0, 2.0, 62.6651, 3.2369),
        ];
        for &(codec, loss, burst, want_r, want_mos) in table {
            let what = std::format!("{} {loss} % BurstR {burst}", codec.name);
            let r = r_factor(&codec, loss, burst, 0.0);
            close(r, want_r, &what);
            close(mos(r), want_mos, &what);
        }
    }

    /// Id = 0.024 d below 177.3 ms, plus 0.11 (d − 177.3) above:
    /// 100 ms: 2.4; 200 ms: 4.8 + 2.497 = 7.297; 300 ms: 7.2 + 13.497 = 20.697.
    #[test]
    fn delay_term() {
        close(delay_impairment(0.0), 0.0, "0 ms");
        close(delay_impairment(100.0), 2.4, "100 ms");
        close(delay_impairment(200.0), 7.297, "200 ms");
        close(delay_impairment(300.0), 20.697, "300 ms");
        // G.711 without loss at 200 ms: R = 93.2 - 7.297 = 85.903, MOS 4.2262.
        close(
            mos(r_factor(&G711, 0.0, 1.0, 200.0)),
            4.2262,
            "G.711 at 200 ms",
        );
    }

    #[test]
    fn mos_is_clamped() {
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(0.0), 1.0);
        assert_eq!(mos(100.0), 4.5);
        assert_eq!(mos(120.0), 4.5);
        // Total loss: Ie,eff = 9500/125.1 = 75.9392, R = 17.2608, MOS 1.1768.
        close(mos(r_factor(&G711, 100.0, 1.0, 0.0)), 1.1768, "all lost");
    }

    /// BurstR = mean run × (1 − p): 10 lost of 100 in 2 runs of 5 is
    /// 5 × 0.9 = 4.5; 10 lost in 10 runs (random-like) is 1 × 0.9, taken as 1.
    #[test]
    fn burst_ratio_from_runs() {
        close(burst_ratio(10, 2, 100), 4.5, "two runs of five");
        close(burst_ratio(10, 10, 100), 1.0, "single losses");
        close(burst_ratio(0, 0, 100), 1.0, "no loss");
        close(burst_ratio(5, 0, 0), 1.0, "nothing expected");
    }

    #[test]
    fn codecs_by_payload_type_and_name() {
        assert_eq!(codec(0, None), G711);
        assert_eq!(codec(8, Some("PCMA")), G711);
        assert_eq!(codec(18, None), G729A);
        assert_eq!(codec(3, None), GSM_FR);
        assert_eq!(codec(4, None), G723_1);
        assert_eq!(codec(2, None), G726_32);
        assert_eq!(codec(97, Some("g726-32")), G726_32);
        assert_eq!(codec(111, Some("opus")), OTHER);
        assert_eq!(codec(9, None), OTHER);
    }
}
