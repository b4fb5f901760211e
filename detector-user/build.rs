//! Builds the eBPF programs (detector-ebpf) and hands the object to the agent.
//!
//! Two ways to compile Rust for bpfel-unknown-none, preferring the first
//! present (see ../shared/TOOLCHAIN.md):
//! 1. a rustup nightly with `rust-src` (the upstream aya way: `-Z build-std=core`);
//! 2. Debian's rustc-web with its precompiled `core` for the bpf target
//!    (`/usr/bin/rustc` + `/usr/lib/rustlib/bpfel-unknown-none`).
//!
//! Both link with bpf-linker. `cargo xtask setup` installs what is missing.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let ebpf = root.join("detector-ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for dir in [
        "detector-ebpf/src",
        "detector-ebpf/Cargo.toml",
        "detector-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=DETECTOR_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=DETECTOR_SKIP_EBPF");
    if env::var_os("DETECTOR_SKIP_EBPF").is_some() {
        // Builds that only need the parsers (the fuzz targets, under a
        // sanitizer toolchain) skip the kernel object; the agent then refuses
        // to start and says why.
        std::fs::write(out.join("detector.bpf.o"), []).expect("write empty object");
        return;
    }

    let target_dir = out.join("ebpf-target");
    let mut cmd = match choose_toolchain() {
        Toolchain::Nightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            c
        }
        Toolchain::Debian => {
            let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.arg("build");
            c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            c
        }
        Toolchain::Missing(why) => panic!(
            "\n\ncannot build the eBPF programs: {why}.\n\
             Run `cargo xtask setup` (installs rustc-web, libstd-rust-web-dev-bpf, llvm-22 and bpf-linker).\n\n"
        ),
    };
    cmd.current_dir(&ebpf)
        .args(["--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The host build's settings must not leak into the bpf build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    if matches!(choose_toolchain(), Toolchain::Nightly) {
        cmd.env_remove("RUSTC");
    }
    let rustflags = [
        "-C",
        "debuginfo=2",
        "-C",
        "link-arg=--btf",
        // v3: the atomic compare-and-swap and exchange the flow table's
        // slot claims use (kernels since 5.12).
        "-C",
        "target-cpu=v3",
        "--cfg",
        "bpf_target_arch=\"x86_64\"",
    ]
    .join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the eBPF build: {e}"));
    assert!(
        status.success(),
        "building detector-ebpf failed (see the errors above)"
    );
    let object = target_dir.join(TARGET).join("release").join("detector");
    std::fs::copy(&object, out.join("detector.bpf.o"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
}

enum Toolchain {
    Nightly,
    Debian,
    Missing(String),
}

fn choose_toolchain() -> Toolchain {
    match env::var("DETECTOR_EBPF_TOOLCHAIN").as_deref() {
        Ok("nightly") => return Toolchain::Nightly,
        Ok("debian") => return Toolchain::Debian,
        _ => {}
    }
    if nightly_has_rust_src() {
        return Toolchain::Nightly;
    }
    if !Path::new(DEBIAN_RUSTC).exists() || !Path::new(DEBIAN_BPF_CORE).exists() {
        return Toolchain::Missing(
            "neither a nightly with rust-src nor Debian's rustc-web with the precompiled bpf core is installed".into(),
        );
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Toolchain::Missing("bpf-linker is not on PATH".into());
    }
    Toolchain::Debian
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src")
        })
}
