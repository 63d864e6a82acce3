//! Where a call writes its output: the mutation records and the bytes they carry (a replacement
//! body, a local reply body). Giving each call a buffer of its own lets those bytes go to hyper as
//! slices of it ([`CallOut::freeze`]) instead of being copied out of the request's slot, which
//! the next phase writes again.

use std::sync::Arc;

use bytes::Bytes;

use super::Exchange;
use crate::abi::WeftPhase;
use crate::arena::SlotLease;
use crate::budget::{ByteBudget, Charge};

/// The buffers of the call in progress. A call cancelled while the plugin still holds it hands
/// both to the plugin with the slot (`Exchange::abandon`).
#[derive(Default)]
pub(crate) struct CallBuffers {
    /// Where the call writes its records; `None`: after the view in the request's slot.
    pub(super) out: Option<CallOut>,
    /// The body chunk (or WebSocket message) the view points at during the call.
    pub(super) input: Option<Bytes>,
}

impl Drop for CallBuffers {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // A call was abandoned while the plugin may still hold `out` (a cancelled pending
            // call): never hand the memory to another request.
            tracing::warn!("call abandoned in flight; its out buffer is retired");
            std::mem::forget(out);
            // The view may still point at the input: keep its bytes alive too.
            std::mem::forget(self.input.take());
        }
    }
}

/// A call's own output buffer. Body calls always have one; headers-phase calls get an out slot
/// while one is free ([`Exchange::lease_head_out`]).
pub(crate) enum CallOut {
    /// An out slot (every streamed call, buffered calls whose body fits, headers calls), or, for
    /// a buffered call over a body larger than half a slot, a buffer-class slot of at least twice
    /// the body (plus 4 KiB), so a rewrite of a large body fits.
    Lease(SlotLease),
    /// An out slot's size on the heap, when no out slot is free.
    Heap(Box<[u8]>),
    /// A buffered call's buffer of twice the body (plus 4 KiB) when no buffer class has one.
    Mapped(MappedOut),
    /// The buffer after the call's records were decoded and some referred to its bytes: it now
    /// belongs to the `Bytes` slices handed on, and nobody writes it again.
    Frozen(Bytes),
}

impl CallOut {
    /// The writable buffer; empty once frozen (no call is ever given a frozen buffer).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            CallOut::Lease(l) => l.bytes_mut(),
            CallOut::Heap(b) => b,
            CallOut::Mapped(m) => &mut m.map,
            CallOut::Frozen(_) => &mut [],
        }
    }

    /// The arena unit of an out slot: how a worker job names it as its output location. `None`
    /// for the heap and for buffer-class slots (a job then writes after the view and the host
    /// copies).
    pub(crate) fn lease_unit(&self) -> Option<u32> {
        match self {
            CallOut::Lease(l) => l.unit(),
            _ => None,
        }
    }

    /// Makes the buffer a shared `Bytes` owner (no copy) and returns a handle to it; the buffer
    /// goes back to the arena (or the heap) when the last slice of it is dropped.
    pub(crate) fn freeze(&mut self) -> Bytes {
        let owner = match std::mem::replace(self, CallOut::Frozen(Bytes::new())) {
            CallOut::Lease(l) => Bytes::from_owner(l),
            CallOut::Heap(b) => Bytes::from(b),
            CallOut::Mapped(m) => Bytes::from_owner(m),
            CallOut::Frozen(b) => b,
        };
        *self = CallOut::Frozen(owner.clone());
        owner
    }

    /// The buffer as a shared `Bytes` owner (frozen if it was not yet).
    pub(crate) fn into_bytes(mut self) -> Bytes {
        self.freeze()
    }

    /// Back to the spare slot, if it is an out slot (a buffer-class slot goes back to its pool).
    pub(crate) fn into_spare(self) -> Option<SlotLease> {
        match self {
            CallOut::Lease(l) if l.unit().is_some() => Some(l),
            _ => None,
        }
    }
}

/// The out buffer of a buffered call larger than every buffer class: an anonymous private
/// mapping of its own, charged to the budget at its full size (the plugin may write all of it).
/// Fresh anonymous pages read as zero, and the kernel supplies them as they are first written,
/// so nothing is zeroed up front, no other request's bytes can show through, and what is
/// resident is what the plugin wrote. (A zeroed heap buffer of that size is made resident whole
/// once the allocator hands out reused memory, which `calloc` must clear.) Unmapped when the
/// last slice of it is dropped.
pub(crate) struct MappedOut {
    map: memmap2::MmapMut,
    _charge: Charge,
}

impl AsRef<[u8]> for MappedOut {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Why a buffered call got no out buffer or joined copy: the budget is spent (or, rarer, the
/// mapping failed). Counted in [`ByteBudget::refusals`] by the budget.
#[derive(Debug)]
pub(crate) struct OverBudget {
    pub(crate) want: u64,
    pub(crate) what: &'static str,
}

impl MappedOut {
    fn new(len: usize, budget: &Arc<ByteBudget>) -> Result<MappedOut, OverBudget> {
        let over = |what| OverBudget { want: len as u64, what };
        let charge = budget
            .try_charge(len as u64)
            .ok_or_else(|| over("over runtime.max_buffered_bytes_total"))?;
        let map = memmap2::MmapMut::map_anon(len).map_err(|e| {
            tracing::warn!(bytes = len, error = %e, "cannot map a buffered call's out buffer");
            over("mapping failed")
        })?;
        Ok(MappedOut { map, _charge: charge })
    }
}

impl Exchange {
    /// A headers-phase call writes its records into an out slot leased for the call, so the
    /// bytes of a local reply body can go to hyper as slices of that slot (`take_batch`). Without
    /// a free out slot the call writes after the view (and those bytes are copied). Returns
    /// whether it leased one; the caller clears `bufs.out` after the call.
    #[inline]
    pub(super) fn lease_head_out(&mut self, phase: WeftPhase) -> bool {
        if !matches!(phase, WeftPhase::RequestHeaders | WeftPhase::ResponseHeaders) || self.bufs.out.is_some() {
            return false;
        }
        self.bufs.out = self.chain.rt.outs.acquire().map(CallOut::Lease);
        self.bufs.out.is_some()
    }

    /// The out buffer of a streamed call (or a buffered one over at most half a slot): an out
    /// slot; with none free, a heap buffer of the same size (still sent uncopied).
    pub(super) fn slot_out(&mut self) -> CallOut {
        let rt = &self.chain.rt;
        match self.body.spare.take().or_else(|| rt.outs.acquire()) {
            Some(l) => CallOut::Lease(l),
            None => CallOut::Heap(vec![0u8; rt.arena.slot_size()].into_boxed_slice()),
        }
    }

    /// The out buffer of a buffered call over `len` bytes: over half a slot, room for a rewrite
    /// of twice the body (plus 4 KiB) in the smallest buffer class that has a slot free, else a
    /// [`MappedOut`] charged to the budget.
    pub(super) fn buffered_out(&mut self, len: usize) -> Result<CallOut, OverBudget> {
        let rt = &self.chain.rt;
        if len <= rt.arena.slot_size() / 2 {
            return Ok(self.slot_out());
        }
        let want = len.saturating_mul(2).saturating_add(4096);
        if want > u32::MAX as usize {
            return Err(OverBudget {
                want: want as u64,
                what: "larger than a call's output capacity (4 GiB)",
            });
        }
        match rt.lease_buffer(want) {
            Some(l) => Ok(CallOut::Lease(l)),
            None => MappedOut::new(want, rt.buffered_budget()).map(CallOut::Mapped),
        }
    }
}
