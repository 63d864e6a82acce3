//! The headers phases: the request head is laid out in the slot, each instance that declared the
//! phase is called in turn ([`Exchange::call`]), and its batch is applied before the next one
//! sees the head. One async path; the synchronous methods drive it on the calling thread.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::{Response, StatusCode};

use super::call::Begun;
use super::failure::{CallError, call_failure_response, failure_response, no_slot_response};
use super::timer::ParkedCaller;
use super::{Exchange, Flow, Instance};
use crate::abi::WeftPhase;
use crate::mutation;
use crate::view::{self, RequestHead};

/// The phases that read the view after the request-headers phase (the WebSocket ones read the
/// upgrade request's head as the request-headers plugins left it).
const LATER_THAN_REQUEST_HEADERS: u32 = WeftPhase::RequestBody.mask()
    | WeftPhase::ResponseHeaders.mask()
    | WeftPhase::ResponseBody.mask()
    | WeftPhase::Log.mask()
    | WeftPhase::WebSocketOpen.mask()
    | WeftPhase::WebSocketMessage.mask()
    | WeftPhase::WebSocketClose.mask();

impl Exchange {
    /// Runs the request-headers phase of every instance that declared it, in chain order, on
    /// this thread: [`request_headers_async`](Self::request_headers_async) driven to its end.
    /// In-process instances run inline; a pending answer or a worker job parks the thread until
    /// it completes (or its deadline), and with remote instances on the chain the thread blocks
    /// for their replies (and must be inside the transport's async runtime), so async callers
    /// use the async method.
    pub fn request_headers(&mut self, parts: &mut http::request::Parts) -> Flow {
        block_on(self.request_headers_async(parts))
    }

    /// Runs the response-headers phase on this thread; see [`request_headers`](Self::request_headers).
    pub fn response_headers<H: ResponseHead + ?Sized>(&mut self, head: &mut H) -> Flow {
        block_on(self.response_headers_async(head))
    }

    /// Whether a phase after the request headers (request body, response headers or body, log,
    /// the WebSocket phases) reads this exchange. When none does, the caller can drop it as soon as the
    /// request-headers phases are done: its arena slot goes back then, not after the upstream's
    /// answer, and the next request on the thread lays its view out in that same slot.
    pub fn needed_after_request_headers(&self) -> bool {
        self.chain.phases & LATER_THAN_REQUEST_HEADERS != 0
    }

    /// Runs the request-headers phase of every instance that declared it, in chain order.
    /// In-process instances are called inline; a pending answer, a worker job or a remote call is
    /// awaited (the future is ready at its first poll when there is none).
    pub async fn request_headers_async(&mut self, parts: &mut http::request::Parts) -> Flow {
        const PHASE: WeftPhase = WeftPhase::RequestHeaders;
        if self.lease.is_none() {
            // The slot went to a cancelled call (its phase future was dropped) and none was free.
            return Flow::Respond(no_slot_response());
        }
        // Encoded even when no instance handles this phase: the response and log phases show it.
        if let Err(e) = self.encode_request(parts, PHASE) {
            return self.request_too_large(e);
        }
        if self.chain.phases & PHASE.mask() == 0 {
            return Flow::Continue;
        }
        // The view follows a plugin's changes only when someone will still read it: the next
        // plugin, or the later phases. Changed headers are written into the view in place
        // (`patch_view`) or, when they do not fit, the headers are laid out again (the request
        // line's strings stay where they are); a changed URI lays it all out again.
        let mut stale = Stale::No;
        let instances = Arc::clone(&self.chain.instances);
        let handles = |i: &Instance| i.phases & PHASE.mask() != 0;
        for (k, inst) in instances.iter().enumerate().filter(|(_, i)| handles(i)) {
            if stale != Stale::No {
                if let Err(e) = self.lay_out_again(parts, PHASE, stale) {
                    return self.request_too_large(e);
                }
                stale = Stale::No;
            }
            // The batch is matched in place and handed around by reference: each move of it is
            // a memcpy on the hot path. An inline answer does not pass through a nested future.
            let result = match self.begin_call(inst, PHASE) {
                Begun::Done(r) => r,
                Begun::Later(later) => Box::pin(self.finish_call(inst, PHASE, later)).await,
            };
            match result {
                Ok(mut batch) => {
                    if let Some(resp) = self.headers_reply(inst, PHASE, &mut batch) {
                        return Flow::Respond(resp);
                    }
                    if !batch.is_empty() {
                        let read_after =
                            instances[k + 1..].iter().any(|i| handles(i)) || self.needed_after_request_headers();
                        let patched = read_after && self.patch_view(&batch, view::Section::Request, PHASE);
                        stale = match batch.apply_to_request(parts) {
                            mutation::UriChange::Changed => Stale::All,
                            mutation::UriChange::Unchanged if patched => Stale::No,
                            mutation::UriChange::Unchanged => Stale::Headers,
                        };
                    }
                }
                Err(err) => {
                    if let Some(resp) = self.headers_failure(inst, PHASE, &err) {
                        return Flow::Respond(resp);
                    }
                }
            }
        }
        if stale != Stale::No && self.needed_after_request_headers() {
            if let Err(e) = self.lay_out_again(parts, PHASE, stale) {
                return self.request_too_large(e);
            }
        }
        Flow::Continue
    }

    /// Runs the response-headers phase of every instance that declared it, in reverse chain order
    /// (the first plugin on the way in is the last on the way out), on `head`: an
    /// `http::response::Parts`, or the host's own form of a response head.
    pub async fn response_headers_async<H: ResponseHead + ?Sized>(&mut self, head: &mut H) -> Flow {
        const PHASE: WeftPhase = WeftPhase::ResponseHeaders;
        if let Some(flow) = self.lay_out_response(head) {
            return flow;
        }
        let instances = Arc::clone(&self.chain.instances);
        let later = self.chain.phases & (WeftPhase::ResponseBody.mask() | WeftPhase::Log.mask()) != 0;
        let handles = |i: &Instance| i.phases & PHASE.mask() != 0;
        for (k, inst) in instances.iter().enumerate().rev().filter(|(_, i)| handles(i)) {
            let result = match self.begin_call(inst, PHASE) {
                Begun::Done(r) => r,
                Begun::Later(later) => Box::pin(self.finish_call(inst, PHASE, later)).await,
            };
            match result {
                Ok(mut batch) => {
                    if let Some(resp) = self.headers_reply(inst, PHASE, &mut batch) {
                        return Flow::Respond(resp);
                    }
                    // The view is laid out again only when someone still reads it: the next plugin
                    // (earlier in the chain) or a later phase.
                    if !batch.is_empty() {
                        let read_after = later || instances[..k].iter().any(|i| handles(i));
                        let patched = read_after && self.patch_view(&batch, view::Section::Response, PHASE);
                        head.apply(batch);
                        if read_after
                            && !patched
                            && let Err(e) = self.encode_response(head, PHASE)
                        {
                            tracing::warn!(plugin = %inst.name, "{e}; answering 502");
                            return response_too_large();
                        }
                    }
                }
                Err(err) => {
                    if let Some(resp) = self.headers_failure(inst, PHASE, &err) {
                        return Flow::Respond(resp);
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Before the response-headers calls: appends the response section to the view when a
    /// phase will read it. `Some`: the phase ends here with this flow.
    fn lay_out_response<H: ResponseHead + ?Sized>(&mut self, head: &H) -> Option<Flow> {
        const PHASE: WeftPhase = WeftPhase::ResponseHeaders;
        if self.request_end == 0 {
            // request_headers was never called; nothing to show.
            return Some(Flow::Continue);
        }
        let phases = self.chain.phases;
        if self.lease.is_none() {
            // The slot went to a cancelled call and none was free: no plugin can see this phase.
            let handled = phases & PHASE.mask() != 0;
            return Some(if handled {
                Flow::Respond(no_slot_response())
            } else {
                Flow::Continue
            });
        }
        if phases & (PHASE.mask() | WeftPhase::ResponseBody.mask() | WeftPhase::Log.mask()) == 0 {
            return Some(Flow::Continue);
        }
        if let Err(e) = self.encode_response(head, PHASE) {
            tracing::warn!(request_id = self.ident.request_id, "{e}; answering 502");
            return Some(response_too_large());
        }
        (phases & PHASE.mask() == 0).then_some(Flow::Continue)
    }

    /// Before a headers-phase batch is applied: notes a skip-body answer; a local reply ends the
    /// phase with that response (which is what the log phase sees as the response).
    #[inline]
    fn headers_reply(
        &mut self,
        inst: &Instance,
        phase: WeftPhase,
        batch: &mut mutation::Batch,
    ) -> Option<Response<Bytes>> {
        if batch.take_skip_body() {
            self.note_skip_body(inst, phase);
        }
        let reply = batch.take_reply()?;
        let (rparts, body) = reply.into_response().into_parts();
        let _ = self.encode_response(&rparts, WeftPhase::Log);
        Some(Response::from_parts(rparts, body))
    }

    /// A failed headers-phase call follows the instance's policy: `Some` answer ends the phase
    /// (fail closed, or no slot left to go on with), `None` goes on unchanged (fail open).
    fn headers_failure(&self, inst: &Instance, phase: WeftPhase, err: &CallError) -> Option<Response<Bytes>> {
        self.note_failure(inst, phase, err);
        // Without a slot (a cancelled call kept it, none was free) nothing can go on.
        (!inst.fail_open || self.lease.is_none()).then(|| call_failure_response(err))
    }

    fn request_too_large(&self, e: view::ViewTooLarge) -> Flow {
        tracing::warn!(request_id = self.ident.request_id, "{e}; answering 431");
        Flow::Respond(failure_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        ))
    }

    /// Lays out the request section of the view (and so drops any response section).
    pub(super) fn encode_request(
        &mut self,
        parts: &http::request::Parts,
        phase: WeftPhase,
    ) -> Result<(), view::ViewTooLarge> {
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            headers: &parts.headers,
        };
        // Only `Drop` takes the lease out.
        let lease = self.lease.as_mut().expect("exchange lease taken before drop");
        let shown = self.chain.instances.shown();
        let end = view::encode_request_shown(lease.bytes_mut(), &self.ident, phase as u32, &head, shown)?;
        // Slot offsets fit in u32 (the view's own offsets are u32).
        self.request_fixed_end = end.fixed_end as u32;
        self.request_end = end.size as u32;
        self.view_end = end.size as u32;
        self.last_headers = end.headers;
        Ok(())
    }

    /// Lays the request section out again as far as a plugin's batch made it `stale`: nothing,
    /// the headers (after the request line's strings, which stay), or all of it.
    fn lay_out_again(
        &mut self,
        parts: &http::request::Parts,
        phase: WeftPhase,
        stale: Stale,
    ) -> Result<(), view::ViewTooLarge> {
        let fixed_end = match stale {
            Stale::No => return Ok(()),
            Stale::Headers if self.request_fixed_end != 0 => self.request_fixed_end as usize,
            Stale::Headers | Stale::All => return self.encode_request(parts, phase),
        };
        let lease = self.lease.as_mut().expect("exchange lease taken before drop");
        let shown = self.chain.instances.shown();
        let end = view::encode_request_headers(lease.bytes_mut(), fixed_end, phase as u32, &parts.headers, shown)?;
        self.request_end = end.size as u32;
        self.view_end = end.size as u32;
        self.last_headers = end.headers;
        Ok(())
    }

    /// Writes `batch`'s changes into the view's last laid-out `section` in place, before the
    /// batch is applied to the head (`view::patch_headers`); false when they do not fit there,
    /// and the caller lays the section out again after applying it.
    fn patch_view(&mut self, batch: &mutation::Batch, section: view::Section, phase: WeftPhase) -> bool {
        let request_is_last = self.view_end == self.request_end;
        if request_is_last != (section == view::Section::Request) {
            return false;
        }
        let (array, end) = (self.last_headers, self.view_end as usize);
        let Some(lease) = self.lease.as_mut() else {
            return false;
        };
        // Lines of a name the chain does not read stay out of the view. A short head was laid
        // out whole, so such a name may have lines there already: a set removes them (the view
        // never shows a value the head no longer has), and removes go through, unless the
        // section has no line to remove (a chain that reads no header line: nothing to write).
        let shown = self.chain.instances.shown();
        let empty = array.count == 0;
        if empty && shown == view::Shown::Named(&[]) {
            // A chain that reads no header line, over a section without one: every edit below
            // would be dropped.
            return true;
        }
        let edits = batch.view_edits().filter_map(|e| match e {
            view::HeaderEdit::Remove(_) if empty => None,
            view::HeaderEdit::Set(name, _) if !shown.includes(name) => {
                (!empty).then_some(view::HeaderEdit::Remove(name))
            }
            view::HeaderEdit::Add(name, _) if !shown.includes(name) => None,
            e => Some(e),
        });
        let mut edits = edits.peekable();
        if edits.peek().is_none() {
            // Nothing to write: the view was laid out (or patched) for this phase's calls.
            return true;
        }
        let Some(done) = view::patch_headers(lease.bytes_mut(), section, array, end, phase as u32, edits) else {
            return false;
        };
        if section == view::Section::Request {
            self.request_end = done.size as u32;
        }
        self.view_end = done.size as u32;
        self.last_headers = done.headers;
        true
    }

    /// Lays out the response section of the view after the request section.
    pub(super) fn encode_response<H: ResponseHead + ?Sized>(
        &mut self,
        head: &H,
        phase: WeftPhase,
    ) -> Result<(), view::ViewTooLarge> {
        let end = self.request_end as usize;
        let shown = self.chain.instances.shown();
        // Only `Drop` takes the lease out.
        let lease = self.lease.as_mut().expect("exchange lease taken before drop");
        let done = view::encode_response_fields(
            lease.bytes_mut(),
            end,
            phase as u32,
            head.status().as_u16(),
            head.fields(),
            shown,
        )?;
        self.view_end = done.size as u32;
        self.last_headers = done.headers;
        Ok(())
    }
}

/// A response head the response-headers phase reads and changes: `http::response::Parts`, or a
/// host's own form of one (the proxy keeps the fields of an upstream's HTTP/1.1 response as its
/// lines, [`view::Fields::Lines`], when no plugin streams the response body).
pub trait ResponseHead {
    fn status(&self) -> StatusCode;
    /// The fields, as the view lays them out.
    fn fields(&self) -> view::Fields<'_>;
    /// Makes a plugin's changes: each [`mutation::ResponseChange`] in order, as
    /// [`mutation::Batch::apply_to_response`] makes them to a map.
    fn apply(&mut self, batch: mutation::Batch);
}

impl ResponseHead for http::response::Parts {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn fields(&self) -> view::Fields<'_> {
        view::Fields::Map(&self.headers)
    }

    fn apply(&mut self, batch: mutation::Batch) {
        batch.apply_to_response(self);
    }
}

/// How much of the request section a plugin's changes left out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    No,
    /// Headers only: the request line's strings are still right.
    Headers,
    /// The URI changed too.
    All,
}

fn response_too_large() -> Flow {
    Flow::Respond(failure_response(
        StatusCode::BAD_GATEWAY,
        "response header fields too large\n",
    ))
}

/// Drives a phase future on this thread. Without a pending answer or a remote instance it is
/// ready on the first poll (no allocation, no parking); otherwise the thread parks until the
/// completion, the reply or the deadline wakes it. Inlined so the phase future is built in
/// place rather than copied in.
#[inline(always)]
fn block_on<F: Future>(fut: F) -> F::Output {
    // Set before the first poll, which is where a waiting call picks its deadline timer.
    let _parked = ParkedCaller::enter();
    let mut fut = pin!(fut);
    if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A waker that unparks a thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The phase futures must be `Send`: servers hold them across awaits on multi-threaded runtimes.
#[allow(dead_code)]
fn phase_futures_are_send(x: &mut Exchange, req: &mut http::request::Parts, resp: &mut http::response::Parts) {
    fn send<T: Send>(_: T) {}
    send(x.request_headers_async(req));
    send(x.response_headers_async(resp));
}
