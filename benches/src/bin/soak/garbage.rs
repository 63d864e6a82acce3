//! The NATS peer that answers garbage: during its window it joins the `/nats` instance's queue
//! group next to the real workers, so a share of the first-phase calls reach it, and it answers
//! each one wrongly, in turn: bytes that are not a weft message, a weft response that answers
//! another request (a spoofed or stale reply), and a response for the right request whose
//! mutation records are garbage. The proxy must turn each into an error answer for that request
//! (or a timeout, for the reply it must not trust) and keep serving: the window ends when the
//! route answers again without the peer.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use weft_nats_bridge::wire;

/// Answers the calls that reach it for `window`; returns how many it answered.
pub async fn answer_garbage(url: &str, instance: &str, window: Duration) -> Result<u64, String> {
    let client = async_nats::ConnectOptions::new()
        .name("soak-garbage-worker")
        .connect(url)
        .await
        .map_err(|e| format!("garbage worker: connect: {e}"))?;
    let subject = format!("weft.{instance}.request_headers");
    let mut sub = client
        .queue_subscribe(subject.clone(), format!("weft-{instance}"))
        .await
        .map_err(|e| format!("garbage worker: subscribe {subject}: {e}"))?;
    let end = Instant::now() + window;
    let mut answered = 0u64;
    while let Ok(Some(msg)) = tokio::time::timeout_at(end.into(), sub.next()).await {
        let Some(reply) = msg.reply.clone() else { continue };
        client
            .publish(reply, garbage(answered, &msg.payload))
            .await
            .map_err(|e| format!("garbage worker: publish: {e}"))?;
        answered += 1;
    }
    // Leaves the queue group before the window closes: the route must then answer again.
    sub.unsubscribe()
        .await
        .map_err(|e| format!("garbage worker: unsubscribe: {e}"))?;
    client
        .flush()
        .await
        .map_err(|e| format!("garbage worker: flush: {e}"))?;
    Ok(answered)
}

/// The `n`th wrong answer to the request in `payload`.
fn garbage(n: u64, payload: &[u8]) -> bytes::Bytes {
    let request = flatbuffers::root::<wire::PhaseRequest>(payload).ok();
    let (id, phase) = request.map_or((0, 0), |r| (r.request_id(), r.phase()));
    match n % 3 {
        0 => bytes::Bytes::from(format!("not a weft message {n} \u{0}\u{ff}").into_bytes()),
        1 => wire::encode_response(id.wrapping_add(1), phase, 0, &[], ""),
        _ => wire::encode_response(id, phase, 0, &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0x7f, 1], ""),
    }
}
