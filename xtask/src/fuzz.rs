//! cargo-fuzz targets, run for a bounded time on their seed corpus.
//!
//! libFuzzer needs a nightly compiler (sanitizer flags); rustup's nightly on
//! these machines works for host code. The targets only need the parsers, so
//! the eBPF object is skipped (DETECTOR_SKIP_EBPF).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, step};

pub const TARGETS: [&str; 4] = ["sip", "sdp", "packet", "rtcp"];
/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u32 = 20;
/// libFuzzer fails an input that makes the process use more than this.
const RSS_LIMIT_MB: u32 = 1024;
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run_all(seconds: u32) -> Result<()> {
    ensure_tools()?;
    for target in TARGETS {
        let corpus = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        let seeds = root().join("fuzz/seeds").join(target);
        step(&format!(
            "fuzzing {target} for {seconds} s (seeds: fuzz/seeds/{target})"
        ));
        let status = Command::new("rustup")
            .current_dir(root())
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-max_len=16384")
            .arg("-print_final_stats=1")
            .env("DETECTOR_SKIP_EBPF", "1")
            .status()
            .context("run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {target} found a failure (see fuzz/artifacts/{target})");
        }
    }
    Ok(())
}

fn ensure_tools() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!("the fuzz targets need rustup's nightly toolchain, which is not installed");
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        step(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
        let status = Command::new(env!("CARGO"))
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
            ])
            .status()
            .context("cargo install cargo-fuzz")?;
        if !status.success() {
            bail!("installing cargo-fuzz failed");
        }
    }
    Ok(())
}
