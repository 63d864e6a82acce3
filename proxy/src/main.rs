use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::info;
use weft_proxy::Proxy;
use weft_proxy::config::Config;
use weft_proxy::demo;
use weft_proxy::plugins::Plugins;
use weft_proxy::server::tokio_runtime;

/// mimalloc: per-thread free lists for the blocks a request allocates and frees on its serving
/// thread (its boxed future among them). Go and C plugins keep their own allocators; no memory
/// crosses the ABI to be freed on the other side. Through `weft_runtime::alloc`, which takes
/// mimalloc's aligned entry points only for the alignments that need them.
#[global_allocator]
static GLOBAL: weft_runtime::alloc::MiMalloc = weft_runtime::alloc::MiMalloc;

/// weft reverse proxy: hyper in front of upstreams, Go plugins in the middle.
#[derive(Parser)]
#[command(version = weft_proxy::version::long_version(), about)]
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
        /// The HTTPS listener, with a self-signed certificate made at start.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen_tls: SocketAddr,
        /// Example plugin library; without it (or if missing) the demo runs without plugins.
        #[arg(long, default_value = "target/weft-plugins/libweft_plugins.so")]
        library: PathBuf,
    },
    /// Print the version, the plugin ABI version and, with a config, the runtime (Go version)
    /// of each plugin library it loads.
    Version {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run only the demo upstream (answers every request with a JSON description of it).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
    /// Write a Go plugin project in DIR (created, or empty): plugin package with a test,
    /// c-shared main package, weft.yaml, README.
    NewPlugin {
        dir: PathBuf,
        /// Plugin name (a-z, 0-9, '-'); default: DIR's last component.
        #[arg(long)]
        name: Option<String>,
        /// Go module path of the project; default: example.com/NAME.
        #[arg(long)]
        module: Option<String>,
        /// The SDK's Go module (the cgo/ folder of a weft checkout); default: this build's checkout.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` sets up logging once it has read `log.level` from its config. The guard writes out
    // queued log lines when main returns.
    let _log = if matches!(cli.command, Command::Run { .. }) {
        None
    } else {
        weft_proxy::logging::init_tracing(None)
    };
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Demo {
            listen,
            listen_tls,
            library,
        } => run_demo(listen, listen_tls, &library),
        Command::Upstream { listen } => run_upstream(listen),
        Command::Version { config } => version(config.as_deref()),
        Command::NewPlugin { dir, name, module, sdk } => new_plugin(dir, name, module, sdk),
    };
    // Queued log lines first, then the error.
    drop(_log);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let _log = weft_proxy::logging::init_tracing(config.log.as_ref().and_then(|l| l.level.as_deref()));
    for w in weft_proxy::lint::warnings(&config) {
        tracing::warn!("{}: {w}", path.display());
    }
    // Plugins load before the serving threads start so each can register with them.
    let proxy = Proxy::from_config(&config).map_err(|e| {
        let problems = weft_proxy::reload::locate_plugin_problems(path, &config, &e);
        format!("cannot start: failed to load plugins:\n{problems}")
    })?;
    weft_proxy::reload::run_blocking(&config, Some(path.to_path_buf()), proxy, None)
}

fn check(path: &Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(admin) = &config.admin {
        weft_proxy::admin::read_token(admin).map_err(|e| format!("config error in {}: {e}", path.display()))?;
    }
    let tls = weft_proxy::tls::check(&config)
        .map_err(|e| format!("certificate problems:\n{}", weft_proxy::tls::reload::locate(path, &e)))?;
    for line in tls {
        println!("{line}");
    }
    let plugins = Plugins::load(&config).map_err(|e| {
        format!(
            "plugin problems:\n{}",
            weft_proxy::reload::locate_plugin_problems(path, &config, &e)
        )
    })?;
    for lib in &plugins.libraries {
        let go = plugins
            .runtime
            .as_ref()
            .and_then(|rt| rt.library_runtime(&lib.name))
            .map(|(_, v)| v);
        println!(
            "library {} ({}): plugins {}",
            lib.name,
            go.unwrap_or_default(),
            lib.plugins.join(", ")
        );
    }
    for inst in &plugins.ffi {
        println!("ffi instance {}: {}", inst.name, inst.how);
    }
    for inst in &plugins.remote {
        println!(
            "nats instance {}: phase mask {:#x}; served by: {}",
            inst.name, inst.phases, inst.worker_command
        );
    }
    for w in weft_proxy::lint::warnings(&config) {
        println!("warning: {w}");
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

fn version(path: Option<&Path>) -> Result<(), String> {
    println!("weft-proxy {}", weft_proxy::version::long_version());
    if let Some(path) = path {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        for line in weft_proxy::version::library_versions(&config)? {
            println!("{line}");
        }
    }
    Ok(())
}

fn new_plugin(dir: PathBuf, name: Option<String>, module: Option<String>, sdk: Option<PathBuf>) -> Result<(), String> {
    use weft_proxy::new_plugin as np;
    let name = name.unwrap_or_else(|| np::name_from_dir(&dir));
    let module = module.unwrap_or_else(|| format!("example.com/{name}"));
    let sdk = sdk
        .or_else(np::default_sdk)
        .ok_or("the weft checkout this binary was built from is gone: give the SDK with --sdk PATH/cgo")?;
    let p = np::NewPlugin { dir, name, module, sdk };
    for f in np::write(&p)? {
        println!("wrote {}", p.dir.join(f).display());
    }
    println!(
        "\nnext:\n  cd {}\n  go test ./...\n  go build -buildmode=c-shared -o lib{}.so ./cmd/plugin\n  weft-proxy run -c weft.yaml",
        p.dir.display(),
        p.name
    );
    Ok(())
}

fn run_demo(listen: SocketAddr, listen_tls: SocketAddr, library: &Path) -> Result<(), String> {
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
    // Made fresh each start, in a directory of this process.
    let cert_dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let (cert, key) = demo::write_demo_certificate(&cert_dir, listen_tls.ip())?;
    let text =
        demo::demo_config(listen, upstream_addr, library.as_deref()) + &demo::demo_tls_config(listen_tls, &cert, &key);
    let config = Config::parse(&text, "<demo config>", Path::new(".")).map_err(|e| e.to_string())?;
    let proxy = Proxy::from_config(&config).map_err(|e| format!("cannot start: failed to load plugins:\n{e}"))?;

    println!("demo upstream on http://{upstream_addr}; generated config:\n\n{text}");
    println!("try:");
    for line in demo::demo_curl_lines(listen, library.is_some()) {
        println!("  {line}");
    }
    println!("  {}    # HTTPS, HTTP/2", demo::demo_https_line(listen_tls, &cert));
    println!();

    let start_upstream = Box::new(move || {
        let listener = TcpListener::from_std(upstream).expect("tokio listener");
        tokio::spawn(demo::serve_demo_upstream(listener));
    });
    let result = weft_proxy::reload::run_blocking(&config, None, proxy, Some(start_upstream));
    let _ = std::fs::remove_dir_all(&cert_dir);
    result
}

fn run_upstream(listen: SocketAddr) -> Result<(), String> {
    let rt = tokio_runtime().map_err(|e| format!("cannot start tokio: {e}"))?;
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
