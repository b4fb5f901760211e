use std::{process::ExitCode, time::Duration};

use clap::Parser;
use detector_user::{
    agent,
    cli::{client, render::render_table, AgentArgs, AnalyzeArgs, Cli, Command},
    config::{
        default_route_iface, AgentConfig, FileConfig, DEFAULT_BPF_PIN_DIR, DEFAULT_CONFIG_PATH,
        DEFAULT_STATE_DIR,
    },
    kernel::XdpAttachMode,
    offline::{analyze_file, AnalyzeOptions},
    shutdown,
};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Flows(args) => client::maybe_watch(args.watch, || {
            client::flows(
                &args.client.agent,
                args.flagged,
                args.call.as_deref(),
                args.sort,
                args.client.json,
            )
        })
        .map_err(Into::into),
        Command::Calls(args) => client::maybe_watch(args.watch, || {
            client::calls(&args.client.agent, args.flagged, args.client.json)
        })
        .map_err(Into::into),
        Command::Call(args) => client::call(&args.client.agent, &args.call_id, args.client.json)
            .map(|out| print!("{out}"))
            .map_err(Into::into),
        Command::Status(args) => client::status(&args.client.agent, args.client.json)
            .map(|out| print!("{out}"))
            .map_err(Into::into),
        Command::Analyze(args) => run_analyze(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let cleanup = args.cleanup;
    let cfg = agent_config(args)?;
    if cleanup {
        for removed in agent::cleanup(&cfg)? {
            println!("removed {removed}");
        }
        return Ok(());
    }
    agent::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(cfg, async {
        if let Err(e) = shutdown::signalled().await {
            tracing::error!(error = %e, "cannot listen for signals");
        }
    }))
}

/// Flags over the configuration file over the defaults.
fn agent_config(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    use anyhow::Context;
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
    let file = FileConfig::load(&path, args.config.is_some())?;
    let iface = match args.iface.or(file.iface.clone()) {
        Some(iface) => iface,
        None => default_route_iface()
            .context("no --iface given and no default route to take it from")?,
    };
    let sip_ports = if args.sip_ports.is_empty() {
        file.sip_ports
            .clone()
            .unwrap_or_else(|| vec![detector_common::config::DEFAULT_SIP_PORT])
    } else {
        args.sip_ports
    };
    Ok(AgentConfig {
        iface,
        xdp_mode: args
            .xdp_mode
            .or(file.xdp_mode)
            .unwrap_or(XdpAttachMode::Auto),
        rtp_ports: args.rtp_ports.or(file.rtp_ports).unwrap_or_default(),
        sip_ports,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| ([127, 0, 0, 1], 9477).into()),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        poll_interval: args
            .poll_interval
            .or(file.poll_interval)
            .unwrap_or(Duration::from_secs(1)),
        flow_idle_timeout: args
            .flow_idle_timeout
            .or(file.flow_idle_timeout)
            .unwrap_or(Duration::from_secs(120)),
        flow_table_size: args
            .flow_table_size
            .or(file.flow_table_size)
            .unwrap_or(detector_common::flow::DEFAULT_FLOW_TABLE_SIZE),
        detect: args.detect.config(&file),
        max_dialog_age: args
            .max_dialog_age
            .or(file.max_dialog_age)
            .unwrap_or(Duration::from_secs(4 * 3600)),
        calls_log: args.calls_log.or(file.calls_log),
        state_dir: args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        bpf_pin_dir: args
            .bpf_pin_dir
            .or(file.bpf_pin_dir)
            .unwrap_or_else(|| DEFAULT_BPF_PIN_DIR.into()),
    })
}

fn run_analyze(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let opts = AnalyzeOptions {
        rtp_ports: args.rtp_ports.map(|r| (r.min, r.max)),
        sip_ports: args.sip_ports.clone(),
        detect: args.detect.config(&FileConfig::default()),
        poll_interval_s: args.poll_interval.as_secs_f64(),
    };
    let analysis = analyze_file(&args.file, &opts)?;
    for warning in &analysis.warnings {
        eprintln!("warning: {warning}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&analysis)?);
    } else if analysis.streams.is_empty() {
        println!("no RTP streams in {} frames", analysis.frames);
    } else {
        print!("{}", render_table(&analysis.streams));
    }
    Ok(())
}
