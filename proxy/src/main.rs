use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::info;
use weft_proxy::config::Config;
use weft_proxy::demo;
use weft_proxy::server::{Plugins, Proxy, serve, tokio_runtime};

/// weft reverse proxy: hyper in front of upstreams, Go plugins in the middle.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the config and load its plugins; print every problem found.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the demo upstream and a proxy in front of it using the example plugins.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Example plugin library; without it (or if missing) the demo runs without plugins.
        #[arg(long, default_value = "target/weft-plugins/libweft_plugins.so")]
        library: PathBuf,
    },
    /// Run only the demo upstream (answers every request with a JSON description of it).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = match Cli::parse().command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Demo { listen, library } => run_demo(listen, &library),
        Command::Upstream { listen } => run_upstream(listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn load_proxy(path: &Path) -> Result<(Config, Proxy), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let proxy = Proxy::from_config(&config).map_err(|e| format!("cannot start: failed to load plugins:\n{e}"))?;
    Ok((config, proxy))
}

fn run(path: &Path) -> Result<(), String> {
    // Plugins load before tokio starts so its worker threads can be registered with them.
    let (config, proxy) = load_proxy(path)?;
    serve_blocking(config.listen_addr(), proxy, None)
}

fn check(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let plugins = Plugins::load(&config).map_err(|e| format!("plugin problems:\n{e}"))?;
    for (lib, names) in &plugins.libraries {
        println!("library {lib}: plugins {}", names.join(", "));
    }
    println!(
        "{}: OK ({} routes, {} upstreams, {} libraries, {} plugin instances)",
        path.display(),
        config.routes.len(),
        config.upstreams.len(),
        config.libraries.len(),
        config.plugins.len()
    );
    Ok(())
}

/// Runs the proxy on a fresh tokio runtime until Ctrl-C. `before` runs inside the runtime
/// first (the demo uses it to start its upstream).
fn serve_blocking(listen: SocketAddr, proxy: Proxy, before: Option<Box<dyn FnOnce() + Send>>) -> Result<(), String> {
    let plugins = proxy.runtime().cloned();
    let rt = tokio_runtime(plugins.clone()).map_err(|e| format!("cannot start tokio: {e}"))?;
    let result = rt.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        if let Some(f) = before {
            f();
        }
        info!(%listen, "weft-proxy listening");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            info!("shutting down");
        };
        serve(listener, Arc::new(proxy), shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    // Connections are drained: give plugin instances their shutdown hooks.
    if let Some(plugins) = plugins {
        plugins.shutdown();
    }
    result
}

fn run_demo(listen: SocketAddr, library: &Path) -> Result<(), String> {
    // Bind the upstream now so its port can go into the generated config.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot bind demo upstream: {e}"))?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;

    let library = if library.exists() {
        Some(std::path::absolute(library).map_err(|e| e.to_string())?)
    } else {
        eprintln!(
            "note: plugin library {} not found; running the demo without plugins",
            library.display()
        );
        None
    };
    let text = demo::demo_config(listen, upstream_addr, library.as_deref());
    let config = Config::parse(&text, "<demo config>", Path::new(".")).map_err(|e| e.to_string())?;
    let proxy = Proxy::from_config(&config).map_err(|e| format!("cannot start: failed to load plugins:\n{e}"))?;

    println!("demo upstream on http://{upstream_addr}; generated config:\n\n{text}");
    println!("try:");
    for line in demo::demo_curl_lines(listen, library.is_some()) {
        println!("  {line}");
    }
    println!();

    let start_upstream = Box::new(move || {
        let listener = TcpListener::from_std(upstream).expect("tokio listener");
        tokio::spawn(demo::serve_demo_upstream(listener));
    });
    serve_blocking(listen, proxy, Some(start_upstream))
}

fn run_upstream(listen: SocketAddr) -> Result<(), String> {
    let rt = tokio_runtime(None).map_err(|e| format!("cannot start tokio: {e}"))?;
    rt.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        info!(%listen, "demo upstream listening");
        tokio::select! {
            () = demo::serve_demo_upstream(listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
