//! Helpers for tests that need root: network namespaces, veth pairs, child
//! processes and RTP senders, each in a guard that cleans up on drop, also
//! when the test fails.
//!
//! Privileged tests do not skip: without root they fail, naming what is
//! missing, so CI can never count them as passed without running them.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod packets;

/// Panics unless running as root: privileged tests fail loudly, never skip.
pub fn require_root() {
    // SAFETY: a plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, XDP, TC): run `cargo xtask test` as root"
    );
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `../shared/corpus` beside the project.
pub fn corpus_dir() -> PathBuf {
    let dir = workspace_root().join("../shared/corpus");
    assert!(
        dir.join("ground_truth.json").exists(),
        "the capture corpus is missing at {} (../shared/corpus beside the project)",
        dir.display()
    );
    dir
}

/// The `detector` binary: `DETECTOR_BIN`, else target/release/detector
/// (`cargo xtask test` builds it first).
pub fn detector_bin() -> PathBuf {
    built_binary("DETECTOR_BIN", "detector")
}

/// A second build of the agent, told apart by its build label, that stands
/// for the version an upgrade replaces: `DETECTOR_PREVIOUS_BIN`, else
/// target/release/detector-previous (`cargo xtask test` builds it first).
pub fn previous_detector_bin() -> PathBuf {
    built_binary("DETECTOR_PREVIOUS_BIN", "detector-previous")
}

/// The binary `env` names, else target/release/`name`; it must exist.
fn built_binary(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release").join(name));
    assert!(
        path.exists(),
        "{} not built: run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct NetNs {
    pub name: String,
    /// Deleted on drop (false for a [`NetNs::handle`]).
    owned: bool,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        require_root();
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Another handle on this namespace, for a thread of the test; only the
    /// owner deletes the namespace.
    pub fn handle(&self) -> Self {
        Self {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command in this namespace's network that keeps the host's mounts:
    /// `ip netns exec` mounts a sysfs of its own over /sys, hiding bpffs,
    /// where an agent pins what must outlive it.
    pub fn agent_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it
    /// opens live there).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: a "media server" and its peer.
pub struct Link {
    pub server: NetNs,
    pub peer: NetNs,
    pub server_if: String,
    pub peer_if: String,
    pub server_addr: String,
    pub peer_addr: String,
}

impl Link {
    /// Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking), used only
    /// inside the namespaces this creates.
    pub fn new() -> Self {
        let server = NetNs::new("dms");
        let peer = NetNs::new("dpe");
        let server_if = unique("vs");
        let peer_if = unique("vp");
        run(Command::new("ip").args([
            "link",
            "add",
            &server_if,
            "netns",
            &server.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            &peer.name,
        ]));
        let (server_addr, peer_addr) = ("198.18.0.1".to_string(), "198.18.0.2".to_string());
        server.ip(&["addr", "add", "198.18.0.1/24", "dev", &server_if]);
        peer.ip(&["addr", "add", "198.18.0.2/24", "dev", &peer_if]);
        server.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:198:18::1/64",
            "dev",
            &server_if,
            "nodad",
        ]);
        peer.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:198:18::2/64",
            "dev",
            &peer_if,
            "nodad",
        ]);
        server.ip(&["link", "set", &server_if, "up"]);
        peer.ip(&["link", "set", &peer_if, "up"]);
        Self {
            server,
            peer,
            server_if,
            peer_if,
            server_addr,
            peer_addr,
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// A child process, terminated (SIGTERM, then SIGKILL) on drop.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// An agent's own state directory and bpffs pins, removed on drop
    /// (removing the pins detaches its programs).
    pub agent_dirs: Option<AgentDirs>,
}

/// Where a test's agent keeps its journal and pins: its own, so agents of
/// tests running at once keep apart, and nothing outlives the test.
#[derive(Clone, Debug)]
pub struct AgentDirs {
    pub state_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
}

impl AgentDirs {
    /// Fresh directories named after `name`.
    pub fn new(name: &str) -> Self {
        let dirs = Self {
            state_dir: std::env::temp_dir().join(format!("{name}-state")),
            bpf_pin_dir: PathBuf::from(format!("/sys/fs/bpf/detector-tests/{name}")),
        };
        dirs.remove();
        dirs
    }

    /// `--state-dir DIR --bpf-pin-dir DIR`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--bpf-pin-dir".into(),
            self.bpf_pin_dir.display().to_string(),
        ]
    }

    /// Removes both (the pins first: that detaches the programs).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.bpf_pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }

    /// `detector agent --cleanup` for `iface` inside `ns`; its output.
    pub fn cleanup(&self, ns: &NetNs, iface: &str) -> String {
        run(ns
            .agent_command(detector_bin())
            .args(["agent", "--iface", iface, "--cleanup"])
            .args(self.args()))
    }
}

impl ChildGuard {
    pub fn new(child: Child, log: PathBuf) -> Self {
        Self {
            child: Some(child),
            log,
            agent_dirs: None,
        }
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.terminate().is_some() && thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
        if let Some(dirs) = &self.agent_dirs {
            dirs.remove();
        }
    }
}

/// Starts `detector agent` inside `ns` on `iface` and waits until its API answers.
pub fn start_agent(ns: &NetNs, iface: &str, extra: &[&str]) -> ChildGuard {
    let mut args = vec!["--iface", iface];
    args.extend_from_slice(extra);
    start_agent_with(ns, &args)
}

/// Starts `detector agent ARGS` inside `ns` and waits until its API answers.
pub fn start_agent_with(ns: &NetNs, args: &[&str]) -> ChildGuard {
    start_agent_env(ns, args, &[])
}

/// As [`start_agent_with`], with environment variables set for the agent.
pub fn start_agent_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    start_agent_polling(ns, "100ms", args, env)
}

/// Starts `detector agent --poll-interval POLL ARGS` inside `ns`, with `env`
/// set, and waits until its API answers. 100 ms suits single calls; the
/// scale tests run the agent's own default, 1 s.
pub fn start_agent_polling(
    ns: &NetNs,
    poll: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> ChildGuard {
    start_agent_build(ns, &detector_bin(), poll, args, env)
}

/// As [`start_agent_polling`], with the agent binary `bin`.
pub fn start_agent_build(
    ns: &NetNs,
    bin: &Path,
    poll: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> ChildGuard {
    let log = std::env::temp_dir().join(format!("{}-agent.log", ns.name));
    let file = File::create(&log).expect("agent log");
    let mut cmd = ns.agent_command(bin);
    cmd.args(["agent", "--poll-interval", poll])
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file);
    // Unless the test keeps them itself (to restart an agent on them), the
    // agent's journal and pins are its own and go with it.
    let own_dirs = (!args.contains(&"--bpf-pin-dir")).then(|| AgentDirs::new(&ns.name));
    if let Some(dirs) = &own_dirs {
        cmd.args(dirs.args());
    }
    let child = cmd.spawn().expect("spawn agent");
    let mut guard = ChildGuard::new(child, log);
    guard.agent_dirs = own_dirs;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if api_get(ns, "/healthz").is_some() {
            return guard;
        }
        if let Some(Ok(Some(status))) = guard.child.as_mut().map(Child::try_wait) {
            panic!("agent exited early ({status}):\n{}", guard.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "agent API never came up:\n{}",
            guard.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// GET on the agent's API inside `ns` (default address); `None` if it does not answer.
pub fn api_get(ns: &NetNs, path: &str) -> Option<serde_json::Value> {
    api_get_within(ns, path, None)
}

/// As [`api_get`], `None` also without a whole answer within `timeout`
/// (a test of an overloaded agent must not hang on it). JSON, or the text.
pub fn api_get_within(
    ns: &NetNs,
    path: &str,
    timeout: Option<Duration>,
) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:9477{path}");
    ns.enter(move || {
        let mut response = ureq::get(&url)
            .config()
            .timeout_global(timeout)
            .build()
            .call()
            .ok()?;
        let text = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .ok()?;
        serde_json::from_str(&text)
            .ok()
            .or(Some(serde_json::Value::String(text)))
    })
}

/// GET `url` from inside `ns`: status and body, 4xx included.
pub fn http_get(ns: &NetNs, url: &str) -> (u16, String) {
    let url = url.to_string();
    ns.enter(move || {
        let mut response = ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .expect("server answers");
        // No 10 MB cap (ureq's default): an answer about 20,000 calls is larger.
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .expect("a whole answer");
        (response.status().as_u16(), body)
    })
}

/// GET on the agent's API inside `ns`: status and JSON body, 4xx included.
pub fn api_status(ns: &NetNs, path: &str) -> (u16, serde_json::Value) {
    let (status, text) = http_get(ns, &format!("http://127.0.0.1:9477{path}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Polls `path` until `check` holds (or panics after `timeout` with the last answer).
pub fn wait_for_api(
    ns: &NetNs,
    path: &str,
    timeout: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = api_get(ns, path);
        if let Some(v) = &value {
            if check(v) {
                return v.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {path}; last answer: {value:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// (kind, direction) of every flag in a call record.
pub fn flag_pairs(call: &serde_json::Value) -> Vec<(String, String)> {
    call["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("?").to_string(),
                f["direction"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// What to send as one RTP stream.
#[derive(Clone, Debug)]
pub struct RtpStream {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ssrc: u32,
    pub first_seq: u16,
    pub count: u32,
    pub payload_type: u8,
    /// Pause between packets.
    pub interval: Duration,
}

/// Sends `stream` from inside `ns`; returns the number of packets sent.
pub fn send_rtp(ns: &NetNs, stream: RtpStream) -> u32 {
    ns.enter(move || {
        let socket = UdpSocket::bind(stream.src).expect("bind sender");
        let mut next = Instant::now();
        for i in 0..stream.count {
            let seq = stream.first_seq.wrapping_add(i as u16);
            let packet = packets::rtp_payload(
                stream.payload_type,
                seq,
                i.wrapping_mul(160),
                stream.ssrc,
                160,
            );
            socket.send_to(&packet, stream.dst).expect("send rtp");
            next += stream.interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        stream.count
    })
}

/// Sends one UDP datagram from inside `ns`.
pub fn send_udp(ns: &NetNs, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
    ns.enter(move || {
        let socket = UdpSocket::bind(src).expect("bind");
        socket.send_to(&payload, dst).expect("send");
    });
}

/// Loads an nftables ruleset inside `ns`.
pub fn nft(ns: &NetNs, ruleset: &str) {
    use std::io::Write;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (install nftables: cargo xtask setup)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft failed: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets counted by the nftables counter named `name` (in any table of `ns`).
pub fn nft_counter(ns: &NetNs, name: &str) -> u64 {
    let text = run(ns.command("nft").args(["-j", "list", "counters"]));
    let json: serde_json::Value = serde_json::from_str(&text).expect("nft json");
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| {
            let c = &item["counter"];
            (c["name"] == name).then(|| c["packets"].as_u64()).flatten()
        })
        .unwrap_or_else(|| panic!("no nft counter {name}: {text}"))
}

/// Sending those frames live through AF_PACKET sockets on a veth pair.
pub mod afpacket;
/// Calls as crafted frames: the load generator's model, shared by `loadgen`
/// and the benchmark.
pub mod callgen;
