//! What the host believes of what arrives over NATS, against a real
//! nats-server with a raw client in the role of a peer on the bus:
//! - a reply captured from one request does not answer another (replies name their request and
//!   phase, wire version 2);
//! - reply subjects cannot be guessed from one seen before (random tokens, not a counter);
//! - a worker id that would change a subject's meaning never goes into one;
//! - one `$SRV.INFO` answer alone (maybe a rogue's) does not decide an instance's phases.

mod common;

use weft_test_support::require_nats;

use std::time::Duration;

use futures_util::StreamExt as _;
use weft_abi::WeftPhase;
use weft_nats_bridge::{NatsPluginOptions, RemoteError, wire};

use common::{NatsServer, Worker, connect, fake_deadline, next_msg, request_view, subscribe_live, with_response};

const RH: WeftPhase = WeftPhase::RequestHeaders;
const RS: WeftPhase = WeftPhase::ResponseHeaders;

/// A mutation batch of one SetRequestHeader record (what a worker's "allow" looks like).
fn one_record() -> Vec<u8> {
    let mut b = Vec::new();
    weft_runtime::mutation::encode_record(
        &mut b,
        weft_abi::WeftMutationOp::SetRequestHeader as u32,
        0,
        b"x-allowed",
        b"1",
    );
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_captured_from_one_request_cannot_answer_another() {
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let peer = async_nats::connect(srv.url()).await.unwrap();
    let mut sub = subscribe_live(&peer, "weft.replay.request_headers", None).await;
    peer.flush().await.unwrap();
    let plugin = t.plugin("replay", NatsPluginOptions::default());

    // Request 1 is answered properly; the peer keeps a copy of that answer.
    let (view, _) = request_view(101, RH as u32, "/a", &[]);
    let (res, captured) = tokio::join!(plugin.call(RH, &view, fake_deadline()), async {
        let msg = next_msg(&mut sub).await;
        let req = flatbuffers::root::<wire::PhaseRequest>(&msg.payload).unwrap();
        let answer = wire::encode_response(req.request_id(), req.phase(), 0, &one_record(), "");
        peer.publish(msg.reply.unwrap(), answer.clone()).await.unwrap();
        answer
    });
    res.expect("the answer to request 1");

    // Request 2: the peer replays request 1's answer on request 2's reply subject.
    let (view, _) = request_view(102, RH as u32, "/b", &[]);
    let (res, ()) = tokio::join!(plugin.call(RH, &view, fake_deadline()), async {
        let msg = next_msg(&mut sub).await;
        peer.publish(msg.reply.unwrap(), captured).await.unwrap();
    });
    match res {
        Err(RemoteError::BadReply(m)) => assert!(m.contains("answers request 101"), "{m}"),
        other => panic!("a replayed reply was taken for request 102's answer: {other:?}"),
    }

    // The right request but another phase is refused too.
    let (view, end) = request_view(103, RH as u32, "/c", &[]);
    let view = with_response(view, end, RS as u32, 200, &[]);
    let mut rs_sub = subscribe_live(&peer, "weft.replay.response_headers", None).await;
    peer.flush().await.unwrap();
    let (res, ()) = tokio::join!(plugin.call(RS, &view, fake_deadline()), async {
        let msg = next_msg(&mut rs_sub).await;
        let answer = wire::encode_response(103, RH as u32, 0, &[], "");
        peer.publish(msg.reply.unwrap(), answer).await.unwrap();
    });
    assert!(matches!(res, Err(RemoteError::BadReply(_))), "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_subjects_cannot_be_guessed_from_earlier_ones() {
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let peer = async_nats::connect(srv.url()).await.unwrap();
    let mut sub = subscribe_live(&peer, "weft.guess.request_headers", None).await;
    peer.flush().await.unwrap();
    let plugin = t.plugin("guess", NatsPluginOptions::default());
    let mut tokens = Vec::new();
    for i in 0..8 {
        let (view, _) = request_view(200 + i, RH as u32, "/", &[]);
        let (res, ()) = tokio::join!(plugin.call(RH, &view, fake_deadline()), async {
            let msg = next_msg(&mut sub).await;
            let reply = msg.reply.unwrap();
            tokens.push(reply.rsplit('.').next().unwrap().parse::<u64>().unwrap());
            let req = flatbuffers::root::<wire::PhaseRequest>(&msg.payload).unwrap();
            let answer = wire::encode_response(req.request_id(), req.phase(), 0, &[], "");
            peer.publish(reply, answer).await.unwrap();
        });
        res.unwrap();
    }
    // A counter would give t, t+1, t+2, ...: here no step is small and all differ.
    for w in tokens.windows(2) {
        assert!(w[0].abs_diff(w[1]) > 1 << 20, "reply tokens in sequence: {tokens:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_id_that_would_change_a_subject_is_never_used() {
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let peer = async_nats::connect(srv.url()).await.unwrap();
    let mut first = subscribe_live(&peer, "weft.pin.request_headers", None).await;
    let mut later = subscribe_live(&peer, "weft.pin.response_headers", None).await;
    let mut any = subscribe_live(&peer, "weft.pin.w.>", None).await;
    peer.flush().await.unwrap();
    let plugin = t.plugin("pin", NatsPluginOptions::default());
    for (i, bad) in ["a.b", "*", ">", "x y", "", &"w".repeat(65)].into_iter().enumerate() {
        let r = 300 + i as u64;
        let (view, end) = request_view(r, RH as u32, "/", &[]);
        let (res, ()) = tokio::join!(plugin.call(RH, &view, fake_deadline()), async {
            let msg = next_msg(&mut first).await;
            let mut h = async_nats::HeaderMap::new();
            h.insert("Weft-Worker", bad);
            let answer = wire::encode_response(r, RH as u32, 0, &[], "");
            peer.publish_with_headers(msg.reply.unwrap(), h, answer).await.unwrap();
        });
        res.unwrap();
        // The next phase goes to the instance's queue subject, not to a subject built from it.
        let view = with_response(view, end, RS as u32, 200, &[]);
        let (res, ()) = tokio::join!(plugin.call(RS, &view, fake_deadline()), async {
            let msg = tokio::time::timeout(Duration::from_secs(5), later.next())
                .await
                .unwrap_or_else(|_| panic!("worker id {bad:?}: the response phase went elsewhere"))
                .unwrap();
            let answer = wire::encode_response(r, RS as u32, 0, &[], "");
            peer.publish(msg.reply.unwrap(), answer).await.unwrap();
        });
        res.unwrap();
        plugin.release(r);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), any.next())
            .await
            .is_err(),
        "nothing was sent to a worker subject"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rogue_service_info_answer_cannot_decide_an_instances_phases() {
    require_nats!();
    let srv = NatsServer::start();
    let t = connect(&srv.url()).await;
    let w1 = Worker::start(&srv.url(), "timing-logger", "disc", "");
    let w2 = Worker::start(&srv.url(), "timing-logger", "disc", "");

    // Every worker's answer is read: two agreeing workers make one answer naming both.
    let info = weft_nats_bridge::discover(&t, "disc", Duration::from_secs(5))
        .await
        .unwrap();
    let mut workers = info.workers.clone();
    workers.sort();
    let mut want = vec![w1.id.clone(), w2.id.clone()];
    want.sort();
    assert_eq!((info.plugin.as_str(), workers), ("timing-logger", want));

    // A peer answers $SRV.INFO.disc too, as the same plugin with request headers switched off.
    let peer = async_nats::connect(srv.url()).await.unwrap();
    let mut info_sub = subscribe_live(&peer, "$SRV.INFO.disc", None).await;
    peer.flush().await.unwrap();
    let rogue = tokio::spawn(async move {
        while let Some(msg) = info_sub.next().await {
            let answer = r#"{"metadata":{"weft.plugin":"timing-logger","weft.phases":"0","weft.worker":"rogue"}}"#;
            peer.publish(msg.reply.unwrap(), answer.into()).await.unwrap();
        }
    });
    let e = weft_nats_bridge::discover(&t, "disc", Duration::from_secs(5))
        .await
        .expect_err("a disagreeing answer must refuse the instance");
    let msg = e.to_string();
    assert!(
        msg.contains("the workers disagree") && msg.contains(r#"workers ["rogue"]"#),
        "{msg}"
    );
    assert!(msg.contains(&w1.id) && msg.contains(&w2.id), "{msg}");
    rogue.abort();
}
