//! Installs what the build and the tests need, idempotently, printing each
//! install. See ../shared/TOOLCHAIN.md for why these pieces.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::step;

/// Compiles Rust for bpfel-unknown-none (rustc-web with a precompiled core)
/// and the LLVM that bpf-linker links against.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
];
/// The real peers and tools the tests and the benchmark drive.
const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "bpftool",
    "tshark",
    "sip-tester",
    "tcpreplay",
    "tcpdump",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Makes sure the build prerequisites (and the test peers) are installed.
pub fn ensure(test_peers: bool) -> Result<()> {
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if test_peers {
        wanted.extend_from_slice(TEST_PACKAGES);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages present");
    } else {
        install_packages(&missing)?;
    }
    ensure_bpf_linker()
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install_packages(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages: {} (run as root, or: sudo apt-get install {})",
            packages.join(" "),
            packages.join(" ")
        );
    }
    step("apt-get update (package lists)");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    step(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if current
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        step(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
    ));
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        // Without LLVM 22 first on PATH it finds LLVM 14's llvm-config.
        .env("PATH", path))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: a plain syscall.
    unsafe { libc::geteuid() == 0 }
}
