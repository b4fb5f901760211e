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
/// Every external program that the tests, the benchmark and the demo start,
/// with the Debian package that installs it. Setup installs exactly these
/// packages; `tests::every_spawned_program_is_provisioned` fails when a test
/// starts a program missing here, so a fresh machine cannot fall behind.
pub const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("bridge", "iproute2"),
    ("tc", "iproute2"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("tshark", "tshark"),
    ("sipp", "sip-tester"),
    ("tcpreplay", "tcpreplay"),
    ("tcpdump", "tcpdump"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Makes sure the build prerequisites (and the test peers) are installed.
pub fn ensure(test_peers: bool) -> Result<()> {
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if test_peers {
        for (_, package) in TEST_PROGRAMS {
            if !wanted.contains(package) {
                wanted.push(package);
            }
        }
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages present");
    } else {
        install_packages(&missing)?;
    }
    if test_peers {
        let absent: Vec<&str> = TEST_PROGRAMS
            .iter()
            .filter(|(program, _)| !on_path(program))
            .map(|(program, _)| *program)
            .collect();
        if !absent.is_empty() {
            bail!(
                "installed, yet not on PATH: {} (check the packages in TEST_PROGRAMS)",
                absent.join(" ")
            );
        }
    }
    ensure_bpf_linker()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs, path::Path};

    use super::TEST_PROGRAMS;

    /// Literal program names in `Command::new("x")` and `ns.command("x")`
    /// (the namespace helper) in one source file.
    fn spawned_programs(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for opener in ["Command::new(\"", ".command(\""] {
            let mut rest = source;
            while let Some(at) = rest.find(opener) {
                rest = &rest[at + opener.len()..];
                if let Some(end) = rest.find('"') {
                    found.push(rest[..end].to_string());
                }
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn finds_both_spawn_forms() {
        let source = r#"run(Command::new("ip").args(["a"])); ns.command("sipp").arg("-sf");"#;
        assert_eq!(spawned_programs(source), ["ip", "sipp"]);
    }

    #[test]
    fn every_spawned_program_is_provisioned() {
        let tests = crate::root().join("tests");
        let mut files = Vec::new();
        rust_files(&tests, &mut files);
        assert!(files.len() > 5, "found the test sources under {tests:?}");
        let provisioned: BTreeSet<&str> = TEST_PROGRAMS.iter().map(|(p, _)| *p).collect();
        // Part of every Debian system (coreutils and dash are Essential).
        let essential = ["true", "sleep", "kill", "sh"];
        let mut missing = BTreeSet::new();
        let mut seen = 0;
        for file in &files {
            let source = fs::read_to_string(file).unwrap();
            for program in spawned_programs(&source) {
                seen += 1;
                if !provisioned.contains(program.as_str()) && !essential.contains(&program.as_str())
                {
                    missing.insert(format!("{program} ({})", file.display()));
                }
            }
        }
        assert!(seen > 10, "the scan found the tests' spawns ({seen})");
        assert!(
            missing.is_empty(),
            "tests start programs that setup does not install; add them to TEST_PROGRAMS: {missing:?}"
        );
    }
}
