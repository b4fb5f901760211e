//! Project tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! Every task first makes sure what it needs is installed (Debian packages,
//! bpf-linker), installing what is missing and saying so, so a fresh machine
//! needs nothing but the commands in README.md.

mod fuzz;
mod setup;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run, test and benchmark the detector")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building (and, with --test-peers, testing) needs.
    Setup {
        /// Also install the peers the tests drive (nftables, tshark, SIPp, ...).
        #[arg(long)]
        test_peers: bool,
    },
    /// Build the eBPF programs and the `detector` binary (release).
    Build,
    /// Build and run `detector agent ARGS...` (as root).
    Run {
        /// Arguments for `detector agent`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: formatting, clippy, the fuzz targets (bounded), unit
    /// tests and the privileged integration tests.
    Test,
    /// Print the benchmark figures (BPF_PROG_TEST_RUN timings, analyser vs tshark).
    Bench,
    /// Show the detector flagging faulty SIPp calls live, in namespaces it
    /// sets up and removes (about a minute, as root).
    Demo,
    /// Run the fuzz targets (SIP, SDP, packet parsing) on their seeds.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
    },
}

/// Errors end the task with one line (never a backtrace: a failing child
/// already said why above it).
fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup { test_peers } => setup::ensure(test_peers),
        Task::Build => {
            setup::ensure(false)?;
            cargo(&["build", "--release", "--package", "detector-user"])
        }
        Task::Run { args } => {
            setup::ensure(false)?;
            cargo(&["build", "--release", "--package", "detector-user"])?;
            let bin = root().join("target/release/detector");
            // SAFETY: a plain syscall.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("xtask: the agent loads eBPF programs: run this as root");
            }
            step(&format!("detector agent {}", args.join(" ")));
            let status = Command::new(&bin)
                .arg("agent")
                .args(&args)
                .status()
                .context("run detector")?;
            if !status.success() {
                bail!("detector agent exited with {status}");
            }
            Ok(())
        }
        Task::Test => test(),
        Task::Fuzz { seconds } => fuzz::run_all(seconds),
        Task::Demo => {
            setup::ensure(true)?;
            cargo(&["build", "--package", "detector-user"])?;
            cargo(&[
                "run",
                "--quiet",
                "--package",
                "integration-tests",
                "--bin",
                "demo",
            ])
        }
        Task::Bench => {
            setup::ensure(true)?;
            cargo(&["build", "--release", "--package", "detector-user"])?;
            cargo(&[
                "run",
                "--release",
                "--package",
                "integration-tests",
                "--bin",
                "bench",
            ])
        }
    }
}

fn test() -> Result<()> {
    setup::ensure(true)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The kernel crate is outside the workspace (its own target and lock).
    cargo(&[
        "fmt",
        "--manifest-path",
        "detector-ebpf/Cargo.toml",
        "--",
        "--check",
    ])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The fuzz targets run before the test suite so its summary closes the run.
    fuzz::run_all(fuzz::TEST_SECONDS)?;
    // The restart tests upgrade a running agent: a second build, labelled
    // so that it tells apart, stands for the version being replaced.
    let previous = root().join("target/release/detector-previous");
    step("a labelled build of the agent (DETECTOR_BUILD_LABEL=previous) for the upgrade test");
    cargo_env(
        &["build", "--release", "--package", "detector-user"],
        &[("DETECTOR_BUILD_LABEL", "previous")],
    )?;
    std::fs::copy(root().join("target/release/detector"), &previous)
        .with_context(|| format!("copy the labelled build to {}", previous.display()))?;
    // The agent the tests start is the release build operators run: the
    // scale test's 20,000 calls are beyond what an unoptimised build keeps
    // up with.
    cargo(&["build", "--release", "--package", "detector-user"])?;
    let bin = root().join("target/release/detector");
    step("cargo test --workspace");
    let mut child = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["test", "--workspace"])
        .env("DETECTOR_BIN", &bin)
        .env("DETECTOR_PREVIOUS_BIN", &previous)
        .stdout(Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    // Pass the output through and add up every test binary's result line.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("wait for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// (passed, failed) from a libtest line `test result: ok. 6 passed; 0 failed; ...`.
fn result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let end = rest.find(word)?;
        rest[..end]
            .trim_end()
            .rsplit([' ', '.'])
            .next()?
            .parse()
            .ok()
    };
    Some((number_before(" passed")?, number_before(" failed")?))
}

/// Runs cargo in the workspace root, printing the step.
fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// As [`cargo`], with environment variables set for it.
fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn step(what: &str) {
    eprintln!("xtask: {what}");
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::result_counts;

    #[test]
    fn reads_libtest_result_lines() {
        let line = "test result: ok. 24 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(result_counts(line), Some((24, 0)));
        let line = "test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.87s";
        assert_eq!(result_counts(line), Some((9, 1)));
        assert_eq!(result_counts("running 3 tests"), None);
    }
}
