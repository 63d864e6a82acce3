package wefttest_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

type asyncState struct{ user string }

// asyncGate lets a test hold a continuation until it has checked something.
var asyncGate = make(chan struct{})

// asyncResults receives what the plugin's Done/Fail calls returned.
var asyncResults = make(chan []error, 16)

func init() {
	weft.Register(weft.Plugin[struct{}, asyncState]{
		Name: "wefttest-async",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, st *asyncState) {
			mode, _ := ctx.RequestHeader("x-mode")
			switch mode {
			case "go":
				ctx.Go(func(ctx *weft.Context) error {
					<-asyncGate
					user, _ := ctx.RequestHeader("x-user") // the view is still valid
					st.user = strings.Clone(user)
					ctx.SetRequestHeader("x-checked", user)
					return nil
				})
			case "fail":
				ctx.Go(func(ctx *weft.Context) error { return errors.New("backend said no") })
			case "panic":
				ctx.Go(func(ctx *weft.Context) error { panic("continuation boom") })
			case "twice":
				d, err := ctx.Defer()
				if err != nil {
					ctx.Fail(err)
					return
				}
				go func() {
					ctx.SetRequestHeader("x-once", "1")
					first := d.Done()
					second := d.Done()
					third := d.Fail(errors.New("late"))
					asyncResults <- []error{first, second, third}
				}()
			case "never":
				d, _ := ctx.Defer()
				go func() {
					<-asyncGate
					asyncResults <- []error{d.Done()}
				}()
			}
		},
		ResponseHeaders: func(ctx *weft.Context, _ *struct{}, st *asyncState) {
			ctx.SetResponseHeader("x-user-seen", st.user)
		},
	})
}

func TestAsyncCompletesLater(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-async", nil)
	x := h.Request(wefttest.Request{Headers: [][2]string{{"x-mode", "go"}, {"x-user", "alice"}}})
	done := make(chan wefttest.Result, 1)
	go func() { done <- x.RequestHeaders() }()
	select {
	case res := <-done:
		t.Fatalf("the phase finished (%v) before its continuation ran", res.Code)
	case <-time.After(20 * time.Millisecond):
	}
	asyncGate <- struct{}{}
	res := <-done
	if res.Code != wefttest.OK || !res.Pending {
		t.Fatalf("result %v pending=%v", res.Code, res.Pending)
	}
	if v, _ := x.RequestHeader("x-checked"); v != "alice" {
		t.Errorf("x-checked %q", v)
	}
	if res := x.ResponseHeaders(); res.Code != wefttest.OK || res.Pending {
		t.Fatalf("response phase %v pending=%v", res.Code, res.Pending)
	}
	if v, _ := x.ResponseHeader("x-user-seen"); v != "alice" {
		t.Errorf("the continuation's state did not reach the next phase: %q", v)
	}
}

func TestAsyncFailAndPanic(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-async", nil)
	tests := []struct {
		mode string
		code wefttest.Code
		log  string
	}{
		{"fail", wefttest.HandlerFailed, "backend said no"},
		{"panic", wefttest.Panic, `panicked in request_headers: continuation boom`},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			res := h.Request(wefttest.Request{Headers: [][2]string{{"x-mode", tt.mode}}}).RequestHeaders()
			if res.Code != tt.code || len(res.Mutations) != 0 {
				t.Fatalf("result %v %v, want %v", res.Code, res.Mutations, tt.code)
			}
			if len(res.Logs) == 0 || !strings.Contains(res.Logs[0].Msg, tt.log) || res.Logs[0].Level != weft.LogError {
				t.Errorf("logs %+v, want an error containing %q", res.Logs, tt.log)
			}
		})
	}
}

func TestAsyncCompletingTwice(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-async", nil)
	x := h.Request(wefttest.Request{Headers: [][2]string{{"x-mode", "twice"}}})
	res := x.RequestHeaders()
	if res.Code != wefttest.OK {
		t.Fatalf("result %v", res.Code)
	}
	if v, _ := x.RequestHeader("x-once"); v != "1" {
		t.Errorf("x-once %q", v)
	}
	errs := <-asyncResults
	// The first Done may run before the handler returned (the result then goes back inline).
	if errs[0] != nil || !errors.Is(errs[1], weft.ErrAlreadyCompleted) || !errors.Is(errs[2], weft.ErrAlreadyCompleted) {
		t.Errorf("Done, Done, Fail returned %v", errs)
	}
}

func TestAsyncTimeoutCancels(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-async", nil)
	h.AsyncTimeout = 10 * time.Millisecond
	x := h.Request(wefttest.Request{Headers: [][2]string{{"x-mode", "never"}}})
	if res := x.RequestHeaders(); res.Code != wefttest.Cancelled || !res.Pending {
		t.Fatalf("result %v pending=%v, want cancelled", res.Code, res.Pending)
	}
	// The slot stays held until the late completion, which is told it was cancelled.
	if res := x.ResponseHeaders(); res.Code != wefttest.InvalidArgument {
		t.Errorf("a call on the held slot: %v", res.Code)
	}
	asyncGate <- struct{}{}
	if errs := <-asyncResults; !errors.Is(errs[0], weft.ErrCancelled) {
		t.Errorf("late Done: %v, want ErrCancelled", errs[0])
	}
	if res := x.ResponseHeaders(); res.Code != wefttest.OK {
		t.Errorf("the slot after the late completion: %v", res.Code)
	}
}

func TestPreparedAsync(t *testing.T) {
	h := wefttest.MustNew(t, "wefttest-async", nil)
	p := h.Prepare(weft.PhaseRequestHeaders, wefttest.Request{Headers: [][2]string{{"x-mode", "fail"}}}, nil)
	for range 3 {
		if code, n := p.Dispatch(); code != wefttest.HandlerFailed || n != 0 {
			t.Fatalf("prepared async dispatch: %v %d", code, n)
		}
	}
}
