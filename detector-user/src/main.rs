use std::process::ExitCode;

use clap::Parser;
use detector_user::{
    agent,
    analyze::{analyze_file, AnalyzeOptions},
    cli::{AgentArgs, AnalyzeArgs, Cli, Command},
    client,
    config::AgentConfig,
    flows::render_table,
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
                &args.agent,
                args.flagged,
                args.call.as_deref(),
                args.sort,
                args.json,
            )
        })
        .map_err(Into::into),
        Command::Calls(args) => client::maybe_watch(args.watch, || {
            client::calls(&args.agent, args.flagged, args.json)
        })
        .map_err(Into::into),
        Command::Call(args) => client::call(&args.agent, &args.call_id, args.json)
            .map(|out| print!("{out}"))
            .map_err(Into::into),
        Command::Status(args) => client::status(&args.agent, args.json)
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
    let cfg = AgentConfig {
        iface: args.iface,
        xdp_mode: args.xdp_mode,
        rtp_ports: args.rtp_ports,
        sip_ports: args.sip_ports,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        poll_interval: args.poll_interval,
        flow_idle_timeout: args.flow_idle_timeout,
        detect: args.detect.config(),
        max_dialog_age: args.max_dialog_age,
        calls_log: args.calls_log,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(cfg, async {
        if let Err(e) = shutdown::signalled().await {
            tracing::error!(error = %e, "cannot listen for signals");
        }
    }))
}

fn run_analyze(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let opts = AnalyzeOptions {
        rtp_ports: args.rtp_ports.map(|r| (r.min, r.max)),
        sip_ports: args.sip_ports.clone(),
        detect: args.detect.config(),
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
