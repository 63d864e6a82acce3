//! The subject permissions a deployment needs: a real nats-server running
//! `nats-bridge/nats-permissions.conf` as shipped, a real Go worker with the worker user and the
//! host transport with the host user. The real flow works (discovery, a first phase on the queue
//! subject, a later phase on the worker's direct subject); a client holding the worker's
//! credentials cannot answer a call it was not given, pose as a host, or reach a WebSocket room;
//! a client without credentials cannot connect.

mod common;

use weft_test_support::require_nats;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use weft_abi::WeftPhase;
use weft_nats_bridge::{NatsAuth, NatsOptions, NatsPluginOptions, NatsTransport};

use common::*;

const RH: WeftPhase = WeftPhase::RequestHeaders;
const RS: WeftPhase = WeftPhase::ResponseHeaders;
const CONFIG: &str = r#"{"request_set":{"x-acl":"1"},"response_set":{"x-acl-resp":"1"}}"#;

/// A server running the shipped permissions file.
fn acl_server() -> NatsServer {
    let conf = repo_root().join("nats-bridge/nats-permissions.conf");
    NatsServer::start_with(&["-c", conf.to_str().unwrap()])
}

fn worker_flags() -> [&'static str; 4] {
    ["-user", "weft-worker", "-password", "change-me-worker"]
}

async fn host(url: &str) -> Arc<NatsTransport> {
    NatsTransport::connect(NatsOptions {
        url: url.to_owned(),
        auth: NatsAuth::UserPassword {
            user: "weft-host".into(),
            password: "change-me-host".into(),
        },
        ..NatsOptions::default()
    })
    .await
    .expect("the host user connects")
}

/// A raw client with the worker's credentials whose server errors (permission violations) come
/// out of the receiver.
async fn worker_client(url: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password("weft-worker".into(), "change-me-worker".into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("the worker user connects");
    (client, rx)
}

/// Waits (at most 5 s) for a permission violation naming `what` and `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let want = format!("permissions violation for {what} to \"{subject}\"");
    let got = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap_or_else(|_| panic!("no permission violation for {what} to {subject}: the server allowed it"))
        .expect("error channel open");
    assert!(
        got.to_lowercase().contains(&want.to_lowercase()),
        "got {got:?}, want {want:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_permissions_let_hosts_and_workers_do_their_work() {
    require_nats!();
    let srv = acl_server();
    let w = Worker::start_with(&srv.url(), "header-rewriter", "acl", CONFIG, &worker_flags());
    let t = host(&srv.url()).await;

    let info = weft_nats_bridge::discover(&t, "acl", Duration::from_secs(5))
        .await
        .expect("discovery through $SRV.INFO with the host user");
    assert_eq!(
        (info.plugin.as_str(), info.workers),
        ("header-rewriter", vec![w.id.clone()])
    );

    let plugin = t.plugin("acl", NatsPluginOptions::default());
    let (view, request_end) = request_view(7, RH as u32, "/", &[("host", "h")]);
    let bytes = plugin
        .call(RH, &view, None)
        .await
        .expect("a first phase over the queue subject");
    let batch = weft_runtime::mutation::decode(&bytes, bytes.len(), RH).unwrap();
    let mut req = http::Request::builder().uri("/").body(()).unwrap().into_parts().0;
    batch.apply_to_request(&mut req);
    assert_eq!(req.headers["x-acl"], "1");

    // The later phase goes to the worker that took the first, on its direct subject.
    let view = with_response(view, request_end, RS as u32, 200, &[]);
    let bytes = plugin
        .call(RS, &view, None)
        .await
        .expect("a later phase over the worker's direct subject");
    let batch = weft_runtime::mutation::decode(&bytes, bytes.len(), RS).unwrap();
    let mut resp = http::Response::builder().body(()).unwrap().into_parts().0;
    batch.apply_to_response(&mut resp);
    assert_eq!(resp.headers["x-acl-resp"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_credentials_cannot_spoof_replies_pose_as_a_host_or_reach_rooms() {
    require_nats!();
    let srv = acl_server();
    let (rogue, mut errors) = worker_client(&srv.url()).await;

    // A host listening to a room: what the rogue publishes there never arrives.
    let observer = host(&srv.url()).await;
    let mut room = subscribe_live(observer.client(), "weft.ws.room.*", None).await;

    for subject in ["_INBOX.guessed.1", "weft.acl.request_headers", "weft.ws.room.lobby"] {
        rogue.publish(subject, "forged".into()).await.unwrap();
        rogue.flush().await.unwrap();
        violation(&mut errors, "publish", subject).await;
    }
    observer
        .client()
        .publish("weft.ws.room.lobby", "from a host".into())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), room.next())
        .await
        .expect("the host's own broadcast arrives")
        .unwrap();
    assert_eq!(
        &first.payload[..],
        b"from a host",
        "the rogue's broadcast reached the room"
    );

    for subject in ["_INBOX.>", "weft.ws.room.*", "weft.>"] {
        let _sub = rogue.subscribe(subject).await.unwrap();
        rogue.flush().await.unwrap();
        violation(&mut errors, "subscription", subject).await;
    }

    // Without credentials nothing connects.
    let anonymous = NatsTransport::connect(NatsOptions {
        url: srv.url(),
        ..NatsOptions::default()
    })
    .await;
    assert!(anonymous.is_err(), "a client without credentials connected");
}
