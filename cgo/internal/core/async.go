package core

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Asynchronous completion (WEFT_RESULT_PENDING).
//
// A handler calls Context.Defer (or Context.Go, which wraps it) and returns; Dispatch then
// answers ResultPending and the phase call stays open until the continuation calls
// Deferred.Done or Deferred.Fail from any goroutine, which hands the result to the host's
// complete function. Until then the host keeps the view and the output bytes of the call for
// the plugin, so the Context's accessors and mutation methods keep working on that goroutine.
//
// Ownership of the per-slot Context. Each slot of an instance has its own *Context, reused by
// every synchronous call on that slot (no allocation on the fast path). Defer detaches the
// handler's Context from the slot: the slot gets a fresh Context for later calls and the
// detached one belongs to the continuation for good. It is never handed to another request,
// so a continuation (or a goroutine that wrongly keeps the Context after Done) can only ever
// see its own request; after completion the detached Context reads as an empty request and
// drops mutations instead of touching host memory.
//
// Re-entry. The host does not call a slot again before the pending call is completed. A call
// that arrives anyway (a forged or buggy re-entry) would reset the per-request state S the
// continuation is still using, so the slot is marked held from Defer until the completion is
// handed to the host, and Dispatch refuses a call on a held slot with ResultInvalidArgument
// before touching anything. The synchronous path pays one atomic load for this check. (Two
// host threads calling one slot at the same time is outside the contract and, as before, not
// defended against.)
//
// Lost handles. A Deferred dropped without Done or Fail would keep the host's slot forever; a
// runtime cleanup on the detached Context completes such a call with ResultHandlerFailed (or
// ResultPanic, if the handler panicked) once the garbage collector finds it unreachable, and
// logs an error. Once nothing references the Context, nothing can still write into the
// call's memory, so completing it then is safe.

// CompleteFunc finishes a pending phase call on the host (the host's complete function, or a
// test host's): instance, slot and call name the call, result is never ResultPending, outLen
// is the number of mutation bytes written at the call's output location. It returns the
// host's answer: ResultOK, ResultStaleHandle, ResultAlreadyCompleted, ResultCancelled or
// ResultInvalidArgument.
type CompleteFunc func(instance uint64, slot, call uint32, result Result, outLen uint32) Result

var defaultCompleter atomic.Pointer[CompleteFunc]

// SetCompleter installs the completion function used by instances initialised without their
// own (InitOptions.Complete). nil makes asynchronous completion unavailable: Defer then
// returns ErrAsyncUnavailable.
func SetCompleter(f CompleteFunc) {
	if f == nil {
		defaultCompleter.Store(nil)
		return
	}
	defaultCompleter.Store(&f)
}

// Errors of the asynchronous API.
var (
	// ErrAsyncUnavailable: the host has no complete function (an older host), or did not name
	// the call (view.call is 0). The handler must finish synchronously.
	ErrAsyncUnavailable = errors.New("weft: asynchronous completion is not available with this host")
	// ErrNotInCall: Defer was called outside a handler call (on a Context after its handler
	// returned, or after the deferred call was completed).
	ErrNotInCall = errors.New("weft: Defer called outside a handler call")
	// ErrAlreadyDeferred: Defer (or Go) was called a second time in one phase call. The phase
	// fails with ResultHandlerFailed when the first Deferred completes.
	ErrAlreadyDeferred = errors.New("weft: Defer called twice in one phase call")
	// ErrAlreadyCompleted: Done or Fail was called on a Deferred that was completed already.
	ErrAlreadyCompleted = errors.New("weft: the deferred phase call was completed already")
	// ErrCancelled: the host had stopped waiting for the call (phase deadline, client gone) and
	// discarded the result. Not a failure of the plugin.
	ErrCancelled = errors.New("weft: the host stopped waiting for this call")
)

// Async states of a deferred call.
const (
	asyncRunning  uint32 = iota + 1 // Defer called; the handler has not returned yet
	asyncPending                    // the handler returned and Dispatch answered ResultPending
	asyncEarly                      // Done/Fail before the handler returned: Dispatch answers inline
	asyncFinished                   // completed; the call's memory is the host's again
)

// asyncCall is the bookkeeping of one deferred call. It must not reference the Context (it is
// the argument of the Context's cleanup).
type asyncCall struct {
	state    atomic.Uint32
	claimed  atomic.Bool // Done/Fail (or the cleanup) won the right to complete
	panicked atomic.Bool // the handler panicked after Defer: the result is ResultPanic
	misused  atomic.Bool // Defer/Go was called twice: the result is ResultHandlerFailed
	inst     *instance
	phase    Phase
	slot     uint32
	call     uint32
	complete CompleteFunc
	cleanup  runtime.Cleanup

	// The host's cancel of this call and the continuation's context.Context meet here:
	// whichever comes second cancels the context (CancelCall, Context.StdContext).
	mu        sync.Mutex
	gaveUp    bool                    // the host stopped waiting for the call
	stdCancel context.CancelCauseFunc // the continuation's context, once made
}

// asyncState is a Context's part in asynchronous completion.
type asyncState struct {
	owner *instance // the instance whose slot array the Context was made for; set once
	d     Deferred  // Defer's handle; d.a != nil from Defer on (never reset)
}

// Deferred is the handle of a phase call whose handler returned before finishing (see
// Context.Defer). Exactly one Done or Fail completes the call; later calls return
// ErrAlreadyCompleted. It is safe to call from any goroutine.
type Deferred struct {
	ctx *Context
	a   *asyncCall
}

// Defer detaches the phase call from the handler's return: the handler returns, the host waits
// (without blocking any thread) and the call finishes when Done or Fail is called, from any
// goroutine. Between Defer and Done, the goroutine that continues the work may use the
// Context's accessors and mutation methods and the handler's *S state as in the handler; the
// Context must not be used by two goroutines at once (after handing it over, the handler
// should just return), nor at all after Done or Fail.
//
// Defer must be called by the handler itself, before it returns. It fails with
// ErrAsyncUnavailable on a host without asynchronous completion (the handler should then
// finish synchronously or call Fail), with ErrAlreadyDeferred the second time in one call,
// and with ErrNotInCall outside a handler call. Prefer Go, which also recovers panics.
func (c *Context) Defer() (*Deferred, error) {
	inst := c.async.owner
	if c.base == nil || c.view == nil || inst == nil || c.view == &deadView {
		return nil, ErrNotInCall
	}
	if a := c.async.d.a; a != nil {
		if a.state.Load() == asyncRunning {
			a.misused.Store(true)
			hostLog(LogError, c.instance, fmt.Sprintf("plugin %q called Defer twice in %s", inst.name, c.phase))
			return nil, ErrAlreadyDeferred
		}
		return nil, ErrNotInCall
	}
	complete := inst.completer()
	slot, call := c.view.Slot, c.view.Call
	if complete == nil || call == 0 {
		return nil, ErrAsyncUnavailable
	}
	if slot >= uint32(len(inst.ctxs)) || inst.ctxs[slot] != c {
		return nil, ErrNotInCall
	}
	a := &asyncCall{inst: inst, phase: c.phase, slot: slot, call: call, complete: complete, stdCancel: c.cancel}
	a.state.Store(asyncRunning)
	inst.deferred[slot].Store(a)
	// The slot is held until the completion is handed to the host, and gets a fresh Context:
	// this one now belongs to the continuation.
	inst.held[slot].Store(1)
	inst.ctxs[slot] = inst.newContext()
	c.async.d = Deferred{ctx: c, a: a}
	a.cleanup = runtime.AddCleanup(c, (*asyncCall).lost, a)
	return &c.async.d, nil
}

// Go runs fn on a new goroutine as the continuation of this phase call: the handler returns
// right after calling Go, and the call completes when fn returns, with the mutations fn (or
// the handler before it) made, or as a handler failure if fn returns an error. fn receives
// this Context. A panic in fn is recovered, logged, and completes the call with
// ResultPanic.
//
// On a host without asynchronous completion Go does not run fn and fails the phase with
// ErrAsyncUnavailable. At most one Defer or Go per call: a second one fails the phase.
func (c *Context) Go(fn func(ctx *Context) error) {
	if fn == nil {
		c.Fail(errors.New("weft: Context.Go called with a nil function"))
		return
	}
	d, err := c.Defer()
	switch {
	case err == nil:
		go d.run(fn)
	case errors.Is(err, ErrAsyncUnavailable):
		c.Fail(err)
	default:
		// ErrAlreadyDeferred: the first continuation owns the Context and will report the
		// failure; ErrNotInCall: there is no call to fail.
		hostLog(LogError, c.instance, "weft: Context.Go: "+err.Error())
	}
}

func (d *Deferred) run(fn func(ctx *Context) error) {
	defer func() {
		if r := recover(); r != nil {
			logPanic(d.a.inst, d.a.phase, r)
			_ = d.finish(nil, true)
		}
	}()
	if err := fn(d.ctx); err != nil {
		_ = d.Fail(err)
		return
	}
	_ = d.Done()
}

// Done completes the call with the mutations made on the Context (or as a failure if
// Context.Fail was called, or an overflow if the records did not fit). It returns nil when
// the host took the result (or will: if the handler has not returned yet, Dispatch answers
// with the result directly), ErrCancelled if the host had given up on the call,
// ErrAlreadyCompleted on a second call, or another error the host answered. After Done the
// Context and the per-request state must not be used any more.
func (d *Deferred) Done() error { return d.finish(nil, false) }

// Fail completes the call as a handler failure: err is logged, the mutations are discarded
// and the instance's failure policy applies. If Context.Fail was called before, that error
// is the one reported. It returns what Done returns.
func (d *Deferred) Fail(err error) error {
	if err == nil {
		err = errors.New("handler failed")
	}
	return d.finish(err, false)
}

func (d *Deferred) finish(failure error, panicked bool) error {
	if d == nil || d.a == nil {
		return ErrNotInCall
	}
	a := d.a
	if !a.claimed.CompareAndSwap(false, true) {
		return ErrAlreadyCompleted
	}
	// Only the claimant gets here, and it still owns the Context.
	if failure != nil {
		d.ctx.Fail(failure)
	}
	if panicked {
		a.panicked.Store(true)
	}
	for {
		switch a.state.Load() {
		case asyncRunning:
			if a.state.CompareAndSwap(asyncRunning, asyncEarly) {
				return nil // the handler is still running: Dispatch returns the result inline
			}
		case asyncPending:
			if a.state.CompareAndSwap(asyncPending, asyncFinished) {
				res, n := a.outcome(d.ctx)
				return a.send(res, n)
			}
		default:
			return ErrAlreadyCompleted
		}
	}
}

// handlerReturned is called by Dispatch when the handler of a deferred call returned (or
// panicked). It answers ResultPending, or the result itself if the continuation finished
// first.
func (a *asyncCall) handlerReturned(c *Context, panicked bool) (Result, uint32) {
	if panicked {
		// Another goroutine may still use the Context: the call stays open until it calls Done
		// or Fail (or drops the handle), and then fails with ResultPanic.
		a.panicked.Store(true)
	}
	if a.state.CompareAndSwap(asyncRunning, asyncPending) {
		return ResultPending, 0
	}
	a.state.Store(asyncFinished)
	res, n := a.outcome(c)
	a.inst.deferred[a.slot].CompareAndSwap(a, nil)
	a.inst.held[a.slot].Store(0)
	return res, n
}

// outcome turns the detached Context into the call's result and retires it: from now on it
// reads as an empty request and drops mutations, without touching host memory.
func (a *asyncCall) outcome(c *Context) (Result, uint32) {
	a.cleanup.Stop()
	var res Result
	var n uint32
	switch {
	case a.panicked.Load():
		res = ResultPanic
	case a.misused.Load():
		hostLog(LogError, a.inst.id, fmt.Sprintf("plugin %q failed in %s: %v", a.inst.name, a.phase, ErrAlreadyDeferred))
		res = ResultHandlerFailed
	default:
		res, n = c.result(a.inst)
	}
	c.retire()
	return res, n
}

// send releases the slot and hands the result to the host. The slot is released first: once
// the host has the result it may call the slot again at once.
func (a *asyncCall) send(res Result, n uint32) error {
	a.inst.deferred[a.slot].CompareAndSwap(a, nil)
	a.inst.held[a.slot].Store(0)
	got := a.complete(a.inst.id, a.slot, a.call, res, n)
	switch got {
	case ResultOK:
		return nil
	case ResultCancelled:
		return ErrCancelled
	case ResultAlreadyCompleted:
		return ErrAlreadyCompleted
	}
	hostLog(LogWarn, a.inst.id, fmt.Sprintf("plugin %q: the host refused the completion of a %s call: %v", a.inst.name, a.phase, got))
	return fmt.Errorf("weft: the host refused the completion: %v", got)
}

// lost runs (as a runtime cleanup) when a deferred Context became unreachable without Done or
// Fail. Nothing can touch the call's memory any more, so it completes the call as a failure.
func (a *asyncCall) lost() {
	defer func() { _ = recover() }()
	if !a.claimed.CompareAndSwap(false, true) || !a.state.CompareAndSwap(asyncPending, asyncFinished) {
		return
	}
	res := ResultHandlerFailed
	if a.panicked.Load() {
		res = ResultPanic
	}
	hostLog(LogError, a.inst.id, fmt.Sprintf("plugin %q: a deferred %s call was dropped without Done or Fail; failing it", a.inst.name, a.phase))
	_ = a.send(res, 0)
}

// deadView is what a retired Context reads: an empty request.
var deadView = RequestView{Size: SizeofRequestView}

// retire makes c read as an empty request and drop mutations, for good.
func (c *Context) retire() {
	c.endStd()
	c.base = unsafe.Pointer(&deadView)
	c.view = &deadView
	c.size = deadView.Size
	c.malformed = false
	c.out = nil
	c.n = 0
	c.overflow = true
	c.failure = nil
}

// completer returns the instance's completion function, or nil when async is unavailable.
func (inst *instance) completer() CompleteFunc {
	if inst.complete != nil {
		return inst.complete
	}
	if f := defaultCompleter.Load(); f != nil {
		return *f
	}
	return nil
}

// newContext allocates a Context for one of the instance's slots. Each is a separate
// allocation so that a detached one can be collected (and its cleanup run) on its own.
func (inst *instance) newContext() *Context {
	return &Context{async: asyncState{owner: inst}, shown: inst.shown}
}

// CancelCall is the host's notice that it stopped waiting for a pending call (its deadline
// passed, or the request went away): the context.Context of the call's continuation is
// cancelled with ErrCancelled. A call that is not pending any more, or an unknown one, is
// ignored: the notice may cross the continuation's own completion.
func CancelCall(instance uint64, slot, call uint32) {
	inst := lookupInstance(instance)
	if inst == nil || slot >= uint32(len(inst.deferred)) {
		return
	}
	if a := inst.deferred[slot].Load(); a != nil && a.call == call {
		a.hostGaveUp()
	}
}

func (a *asyncCall) hostGaveUp() {
	a.mu.Lock()
	a.gaveUp = true
	cancel := a.stdCancel
	a.mu.Unlock()
	if cancel != nil {
		cancel(ErrCancelled)
	}
}

// deferredStd links a deferred call's freshly made context to the host's cancel: it is
// cancelled at once if the host already gave up, or later by CancelCall.
func (a *asyncCall) deferredStd(cancel context.CancelCauseFunc) {
	a.mu.Lock()
	a.stdCancel = cancel
	gaveUp := a.gaveUp
	a.mu.Unlock()
	if gaveUp {
		cancel(ErrCancelled)
	}
}
