package core

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// completion is one call of a test completer.
type completion struct {
	instance   uint64
	slot, call uint32
	res        Result
	n          uint32
}

// recorder is a test host's completion function: it records every call and answers answer.
type recorder struct {
	mu     sync.Mutex
	got    []completion
	ch     chan completion
	answer Result
}

func newRecorder() *recorder { return &recorder{ch: make(chan completion, 64)} }

func (r *recorder) complete(instance uint64, slot, call uint32, res Result, n uint32) Result {
	r.mu.Lock()
	c := completion{instance, slot, call, res, n}
	r.got = append(r.got, c)
	answer := r.answer
	r.mu.Unlock()
	r.ch <- c
	return answer
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// next waits for the next completion; the bound only keeps a broken test from hanging.
func (r *recorder) next(t *testing.T) completion {
	t.Helper()
	select {
	case c := <-r.ch:
		return c
	case <-time.After(30 * time.Second):
		t.Fatal("no completion")
	}
	return completion{}
}

// asyncProbe is driven by asyncScript, set by each test before dispatching.
type asyncProbeState struct {
	fromAsync string
	calls     int
}

type asyncScript struct {
	mode    string
	release chan struct{} // the continuation waits for it (if non-nil)
	done    chan error    // what Done/Fail returned
	second  chan error    // what a second Done returned
	after   chan struct{} // closed when the continuation has finished touching ctx
	ctx     chan *Context // the continuation's Context, after completion
}

var (
	scriptMu sync.Mutex
	scripts  = map[uint64]*asyncScript{}
)

func scriptFor(id uint64) *asyncScript {
	scriptMu.Lock()
	defer scriptMu.Unlock()
	return scripts[id]
}

func init() {
	Register(Plugin[struct{}, asyncProbeState]{
		Name: "async-probe",
		RequestHeaders: func(ctx *Context, _ *struct{}, st *asyncProbeState) {
			st.calls++
			sc := scriptFor(ctx.instance)
			mode := sc.mode // the test may change sc.mode while a continuation runs
			switch mode {
			case "sync":
				ctx.SetRequestHeader("x-sync", "1")
			case "later", "fail", "twice", "cancelled":
				d, err := ctx.Defer()
				if err != nil {
					ctx.Fail(err)
					return
				}
				go func() {
					<-sc.release
					ua, _ := ctx.RequestHeader("user-agent") // still valid: the call is open
					st.fromAsync = "async:" + strings.Clone(ua)
					ctx.SetRequestHeader("x-async", ua)
					var err error
					if mode == "fail" {
						err = d.Fail(errors.New("upstream said no"))
					} else {
						err = d.Done()
					}
					sc.done <- err
					if mode == "twice" {
						sc.second <- d.Fail(errors.New("too late"))
					}
					ctx.SetRequestHeader("x-after-done", "dropped") // a retired Context drops it
					if v := ctx.Path(); v != "" {
						panic("a retired Context still reads the view: " + v)
					}
					sc.ctx <- ctx
				}()
			case "early":
				d, _ := ctx.Defer()
				done := make(chan struct{})
				go func() {
					ctx.SetRequestHeader("x-early", "1")
					sc.done <- d.Done()
					close(done)
				}()
				<-done // the continuation completes before the handler returns
			case "go":
				ctx.Go(func(ctx *Context) error {
					<-sc.release
					ctx.SetRequestHeader("x-go", "1")
					st.fromAsync = "go"
					return nil
				})
			case "ctx-then-cancel", "cancel-then-ctx":
				early := mode == "ctx-then-cancel"
				if early {
					_ = ctx.StdContext() // made by the handler, before Go
				}
				ctx.Go(func(ctx *Context) error {
					if !early {
						<-sc.release // the host's cancel comes first
					}
					std := ctx.StdContext()
					select {
					case <-std.Done():
						sc.done <- context.Cause(std)
					case <-time.After(30 * time.Second):
						sc.done <- errors.New("the context was not cancelled")
					}
					return nil
				})
			case "go-error":
				ctx.Go(func(ctx *Context) error { <-sc.release; return errors.New("backend down") })
			case "go-panic":
				ctx.Go(func(ctx *Context) error { <-sc.release; panic("async boom") })
			case "panic-after-defer":
				d, _ := ctx.Defer()
				go func() { <-sc.release; ctx.SetRequestHeader("x-lost", "1"); sc.done <- d.Done() }()
				panic("handler boom after Defer")
			case "defer-twice":
				d, _ := ctx.Defer()
				_, err := ctx.Defer()
				sc.done <- err
				go func() { <-sc.release; _ = d.Done() }()
			case "go-twice":
				ctx.Go(func(ctx *Context) error { <-sc.release; return nil })
				ctx.Go(func(ctx *Context) error { panic("the second Go must not run") })
			case "lost":
				_, _ = ctx.Defer() // dropped: the cleanup must complete the call
			case "unavailable":
				_, err := ctx.Defer()
				sc.done <- err
				ctx.Go(func(ctx *Context) error { panic("Go must not run without a completer") })
			}
		},
		ResponseHeaders: func(ctx *Context, _ *struct{}, st *asyncProbeState) {
			ctx.SetResponseHeader("x-from-async", st.fromAsync)
		},
	})
}

func newScript(mode string) *asyncScript {
	return &asyncScript{mode: mode, release: make(chan struct{}), done: make(chan error, 1),
		second: make(chan error, 1), ctx: make(chan *Context, 1)}
}

// newAsyncInstance initialises async-probe with complete (nil: no completer at all).
func newAsyncInstance(t *testing.T, sc *asyncScript, complete CompleteFunc, slots uint32) uint64 {
	t.Helper()
	idx, ok := Lookup("async-probe")
	if !ok {
		t.Fatal("async-probe not registered")
	}
	scriptMu.Lock()
	nextID++
	id := nextID
	scripts[id] = sc
	scriptMu.Unlock()
	if err := InitWith(idx, id, nil, slots, InitOptions{Complete: complete}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Shutdown(id) })
	return id
}

// call is one dispatched phase with its own view and output memory (kept alive by the test).
type call struct {
	view []uint64
	out  []byte
	res  Result
	n    uint32
}

func dispatchCall(id uint64, phase Phase, slot, gen, callID uint32, headers [][2]string) *call {
	c := &call{view: testView(phase, slot, gen, "/p", headers, nil), out: make([]byte, 512)}
	viewOf(c.view).Call = callID
	c.res, c.n = Dispatch(id, uint32(phase), unsafe.Pointer(&c.view[0]), unsafe.Pointer(&c.out[0]), uint32(len(c.out)))
	return c
}

func TestAsyncCompletesLater(t *testing.T) {
	rc := newRecorder()
	sc := newScript("later")
	id := newAsyncInstance(t, sc, rc.complete, 4)
	c := dispatchCall(id, PhaseRequestHeaders, 2, 1, 77, [][2]string{{"user-agent", "ua-1"}})
	if c.res != ResultPending || c.n != 0 {
		t.Fatalf("dispatch: %v %d, want pending", c.res, c.n)
	}
	// While the call is open, its slot is refused; other slots work.
	if again := dispatchCall(id, PhaseRequestHeaders, 2, 1, 78, nil); again.res != ResultInvalidArgument {
		t.Errorf("re-entry on a held slot: %v, want invalid argument", again.res)
	}
	sc.mode = "sync"
	if other := dispatchCall(id, PhaseRequestHeaders, 3, 1, 79, nil); other.res != ResultOK {
		t.Errorf("another slot: %v", other.res)
	}
	sc.mode = "later"
	if rc.count() != 0 {
		t.Fatal("completed before the continuation ran")
	}
	close(sc.release)
	got := rc.next(t)
	if err := <-sc.done; err != nil {
		t.Fatalf("Done: %v", err)
	}
	if got != (completion{id, 2, 77, ResultOK, got.n}) {
		t.Fatalf("completion %+v", got)
	}
	recs := decode(t, c.out[:got.n])
	if len(recs) != 1 || recs[0] != (rec{OpSetRequestHeader, 0, "x-async", "ua-1"}) {
		t.Fatalf("records %+v", recs)
	}
	// The retired Context wrote nothing more into the host's buffer.
	<-sc.ctx
	for _, b := range c.out[got.n:] {
		if b != 0 {
			t.Fatal("a mutation after Done reached the host's buffer")
		}
	}
	// The next phase of the request runs on the slot and sees the state the continuation set.
	resp := dispatchCall(id, PhaseResponseHeaders, 2, 1, 80, nil)
	if resp.res != ResultOK {
		t.Fatalf("response phase: %v", resp.res)
	}
	if recs := decode(t, resp.out[:resp.n]); len(recs) != 1 || recs[0].b != "async:ua-1" {
		t.Fatalf("response records %+v: the continuation's state is lost", recs)
	}
	if rc.count() != 1 {
		t.Errorf("%d completions, want 1", rc.count())
	}
}

func TestAsyncDoneBeforeHandlerReturns(t *testing.T) {
	rc := newRecorder()
	sc := newScript("early")
	id := newAsyncInstance(t, sc, rc.complete, 2)
	c := dispatchCall(id, PhaseRequestHeaders, 0, 1, 5, nil)
	if c.res != ResultOK {
		t.Fatalf("result %v, want the result inline", c.res)
	}
	if err := <-sc.done; err != nil {
		t.Fatalf("Done: %v", err)
	}
	if recs := decode(t, c.out[:c.n]); len(recs) != 1 || recs[0].a != "x-early" {
		t.Fatalf("records %+v", recs)
	}
	if rc.count() != 0 {
		t.Error("the host was called although the result was returned inline")
	}
	// The slot is free again.
	if again := dispatchCall(id, PhaseResponseHeaders, 0, 1, 6, nil); again.res != ResultOK {
		t.Errorf("next phase: %v", again.res)
	}
}

func TestAsyncResults(t *testing.T) {
	tests := []struct {
		mode    string
		want    Result
		log     string
		records []string
	}{
		{"go", ResultOK, "", []string{"x-go"}},
		{"fail", ResultHandlerFailed, `plugin "async-probe" failed in request_headers: upstream said no`, nil},
		{"go-error", ResultHandlerFailed, "failed in request_headers: backend down", nil},
		{"go-panic", ResultPanic, `plugin "async-probe" panicked in request_headers: async boom`, nil},
		{"panic-after-defer", ResultPanic, "handler boom after Defer", nil},
		{"defer-twice", ResultHandlerFailed, "called Defer twice", nil},
		{"go-twice", ResultHandlerFailed, "called Defer twice", nil},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			logs.mu.Lock()
			logs.lines = nil
			logs.mu.Unlock()
			rc := newRecorder()
			sc := newScript(tt.mode)
			id := newAsyncInstance(t, sc, rc.complete, 2)
			c := dispatchCall(id, PhaseRequestHeaders, 1, 1, 9, nil)
			if c.res != ResultPending {
				t.Fatalf("dispatch: %v, want pending", c.res)
			}
			close(sc.release)
			got := rc.next(t)
			if got.res != tt.want || got.slot != 1 || got.call != 9 {
				t.Fatalf("completion %+v, want %v", got, tt.want)
			}
			var names []string
			for _, r := range decode(t, c.out[:got.n]) {
				names = append(names, r.a)
			}
			if strings.Join(names, ",") != strings.Join(tt.records, ",") {
				t.Errorf("records %v, want %v", names, tt.records)
			}
			if tt.want != ResultOK && got.n != 0 {
				t.Errorf("%d mutation bytes with %v", got.n, got.res)
			}
			logs.mu.Lock()
			joined := strings.Join(logs.lines, "\n")
			logs.mu.Unlock()
			if !strings.Contains(joined, tt.log) {
				t.Errorf("logs %q do not contain %q", joined, tt.log)
			}
			if tt.mode == "defer-twice" {
				if err := <-sc.done; !errors.Is(err, ErrAlreadyDeferred) {
					t.Errorf("second Defer: %v", err)
				}
			}
			if tt.mode == "fail" {
				if err := <-sc.done; err != nil {
					t.Errorf("Fail: %v", err)
				}
			}
			// Exactly one completion, and the slot is usable again.
			if again := dispatchCall(id, PhaseResponseHeaders, 1, 1, 10, nil); again.res != ResultOK {
				t.Errorf("next phase: %v", again.res)
			}
			if n := rc.count(); n != 1 {
				t.Errorf("%d completions, want 1", n)
			}
		})
	}
}

func TestAsyncCompletingTwice(t *testing.T) {
	rc := newRecorder()
	sc := newScript("twice")
	id := newAsyncInstance(t, sc, rc.complete, 1)
	if c := dispatchCall(id, PhaseRequestHeaders, 0, 1, 3, nil); c.res != ResultPending {
		t.Fatalf("dispatch: %v", c.res)
	}
	close(sc.release)
	if err := <-sc.done; err != nil {
		t.Fatalf("first Done: %v", err)
	}
	if err := <-sc.second; !errors.Is(err, ErrAlreadyCompleted) {
		t.Fatalf("second completion: %v, want ErrAlreadyCompleted", err)
	}
	<-sc.ctx
	if n := rc.count(); n != 1 {
		t.Fatalf("the host was called %d times", n)
	}
	var nilHandle *Deferred
	if err := nilHandle.Done(); err == nil {
		t.Error("Done on a nil Deferred succeeded")
	}
}

func TestAsyncHostAnswersCancelled(t *testing.T) {
	rc := newRecorder()
	rc.answer = ResultCancelled
	sc := newScript("later")
	id := newAsyncInstance(t, sc, rc.complete, 1)
	if c := dispatchCall(id, PhaseRequestHeaders, 0, 1, 3, nil); c.res != ResultPending {
		t.Fatalf("dispatch: %v", c.res)
	}
	close(sc.release)
	if err := <-sc.done; !errors.Is(err, ErrCancelled) {
		t.Fatalf("Done: %v, want ErrCancelled", err)
	}
	rc.answer = ResultOK
	sc.mode = "sync"
	if again := dispatchCall(id, PhaseRequestHeaders, 0, 2, 4, nil); again.res != ResultOK {
		t.Errorf("the slot after a cancelled call: %v", again.res)
	}
}

// The host's cancel reaches the continuation's context.Context, whether the context was made
// before the notice (and is cancelled by it) or after (and starts cancelled); a notice for
// another call or slot, or for an unknown instance, changes nothing.
func TestAsyncHostCancelReachesTheContext(t *testing.T) {
	for _, mode := range []string{"ctx-then-cancel", "cancel-then-ctx"} {
		t.Run(mode, func(t *testing.T) {
			rc := newRecorder()
			sc := newScript(mode)
			id := newAsyncInstance(t, sc, rc.complete, 2)
			if c := dispatchCall(id, PhaseRequestHeaders, 1, 1, 9, nil); c.res != ResultPending {
				t.Fatalf("dispatch: %v", c.res)
			}
			CancelCall(id, 1, 8)      // another call
			CancelCall(id, 0, 9)      // another slot
			CancelCall(id+1000, 1, 9) // no such instance
			CancelCall(id, 1<<30, 9)  // slot out of range
			select {
			case err := <-sc.done:
				t.Fatalf("cancelled by a notice for another call: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
			CancelCall(id, 1, 9)
			close(sc.release)
			if err := <-sc.done; !errors.Is(err, ErrCancelled) {
				t.Fatalf("context cause %v, want ErrCancelled", err)
			}
			if got := rc.next(t); got.slot != 1 || got.call != 9 || got.res != ResultOK {
				t.Fatalf("completion %+v", got)
			}
		})
	}
}

func TestAsyncWithoutCompleter(t *testing.T) {
	SetCompleter(nil)
	sc := newScript("unavailable")
	id := newAsyncInstance(t, sc, nil, 1)
	c := dispatchCall(id, PhaseRequestHeaders, 0, 1, 3, nil)
	if err := <-sc.done; !errors.Is(err, ErrAsyncUnavailable) {
		t.Fatalf("Defer: %v", err)
	}
	if c.res != ResultHandlerFailed {
		t.Fatalf("Go without a completer: %v, want a failed phase", c.res)
	}

	// A completer, but a host that did not name the call (view.call 0): unavailable too.
	rc := newRecorder()
	sc2 := newScript("unavailable")
	id2 := newAsyncInstance(t, sc2, rc.complete, 1)
	if c := dispatchCall(id2, PhaseRequestHeaders, 0, 1, 0, nil); c.res != ResultHandlerFailed {
		t.Fatalf("call 0: %v", c.res)
	}
	if err := <-sc2.done; !errors.Is(err, ErrAsyncUnavailable) {
		t.Fatalf("Defer with call 0: %v", err)
	}

	// Outside a call.
	var ctx Context
	if _, err := ctx.Defer(); !errors.Is(err, ErrNotInCall) {
		t.Errorf("Defer outside a call: %v", err)
	}
}

func TestAsyncLostDeferredIsFailedByTheCleanup(t *testing.T) {
	rc := newRecorder()
	sc := newScript("lost")
	id := newAsyncInstance(t, sc, rc.complete, 1)
	if c := dispatchCall(id, PhaseRequestHeaders, 0, 1, 3, nil); c.res != ResultPending {
		t.Fatalf("dispatch: %v", c.res)
	}
	// Collect until the cleanup ran (cleanups run on their own goroutine after a GC).
	deadline := time.Now().Add(30 * time.Second)
	for rc.count() == 0 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	got := rc.next(t)
	if got.res != ResultHandlerFailed || got.call != 3 {
		t.Fatalf("completion %+v", got)
	}
	sc.mode = "sync"
	if again := dispatchCall(id, PhaseRequestHeaders, 0, 2, 4, nil); again.res != ResultOK {
		t.Errorf("the slot after the cleanup: %v", again.res)
	}
}

// The synchronous path allocates nothing, also with the async machinery in place.
func TestSyncDispatchZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	rc := newRecorder()
	sc := newScript("sync")
	id := newAsyncInstance(t, sc, rc.complete, 2)
	view := testView(PhaseRequestHeaders, 1, 1, "/p", [][2]string{{"user-agent", "x"}}, nil)
	viewOf(view).Call = 1
	out := make([]byte, 256)
	allocs := testing.AllocsPerRun(1000, func() {
		if res, _ := Dispatch(id, uint32(PhaseRequestHeaders), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 256); res != ResultOK {
			t.Fatal(res)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per synchronous dispatch, want 0", allocs)
	}
}

// The asynchronous path allocates a little (a fresh Context for the slot, the call's record,
// the runtime cleanup, the goroutine); reported, and bounded loosely against regressions.
func TestAsyncDispatchAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	rc := newRecorder()
	sc := newScript("go")
	close(sc.release)
	id := newAsyncInstance(t, sc, rc.complete, 1)
	view := testView(PhaseRequestHeaders, 0, 1, "/p", nil, nil)
	viewOf(view).Call = 1
	out := make([]byte, 256)
	allocs := testing.AllocsPerRun(200, func() {
		res, _ := Dispatch(id, uint32(PhaseRequestHeaders), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 256)
		if res == ResultPending {
			<-rc.ch
		}
	})
	t.Logf("%v allocations per asynchronous call (Context.Go)", allocs)
	if allocs > 12 {
		t.Errorf("%v allocations per asynchronous call", allocs)
	}
}

// BenchmarkDispatchSync is the synchronous fast path (one mutation), for comparison with
// BenchmarkDispatchAsync.
func BenchmarkDispatchSync(b *testing.B) {
	benchDispatch(b, "sync")
}

// BenchmarkDispatchAsync is a call whose handler goes asynchronous with Context.Go and whose
// continuation completes at once (one mutation): Dispatch, the goroutine, the completion.
func BenchmarkDispatchAsync(b *testing.B) {
	benchDispatch(b, "go")
}

func benchDispatch(b *testing.B, mode string) {
	rc := newRecorder()
	rc.ch = make(chan completion, 1)
	sc := newScript(mode)
	close(sc.release)
	idx, _ := Lookup("async-probe")
	scriptMu.Lock()
	nextID++
	id := nextID
	scripts[id] = sc
	scriptMu.Unlock()
	if err := InitWith(idx, id, nil, 1, InitOptions{Complete: func(_ uint64, _, _ uint32, res Result, n uint32) Result {
		rc.ch <- completion{res: res, n: n}
		return ResultOK
	}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = Shutdown(id) })
	view := testView(PhaseRequestHeaders, 0, 1, "/p", [][2]string{{"user-agent", "x"}}, nil)
	viewOf(view).Call = 1
	out := make([]byte, 256)
	b.ReportAllocs()
	for b.Loop() {
		res, _ := Dispatch(id, uint32(PhaseRequestHeaders), unsafe.Pointer(&view[0]), unsafe.Pointer(&out[0]), 256)
		if res == ResultPending {
			res = (<-rc.ch).res
		}
		if res != ResultOK {
			b.Fatal(res)
		}
	}
}
