package natsworker

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// holds are the completions the natsworker-hold plugin waits for, by x-hold value.
var holds = struct {
	sync.Mutex
	started map[string]chan struct{}
	release map[string]chan struct{}
}{started: map[string]chan struct{}{}, release: map[string]chan struct{}{}}

func holdChans(id string) (started, release chan struct{}) {
	holds.Lock()
	defer holds.Unlock()
	if holds.started[id] == nil {
		holds.started[id] = make(chan struct{}, 1)
		holds.release[id] = make(chan struct{})
	}
	return holds.started[id], holds.release[id]
}

func init() {
	// natsworker-hold defers request headers until the test releases the request's x-hold id.
	core.Register(core.Plugin[struct{}, struct{}]{
		Name: "natsworker-hold",
		RequestHeaders: func(ctx *core.Context, _ *struct{}, _ *struct{}) {
			v, _ := ctx.RequestHeader("x-hold")
			id := strings.Clone(v)
			d, err := ctx.Defer()
			if err != nil {
				ctx.Fail(err)
				return
			}
			started, release := holdChans(id)
			started <- struct{}{}
			go func() {
				<-release
				ctx.SetRequestHeader("x-held", id)
				_ = d.Done()
			}()
		},
	})
}

// holdCall sends request `requestID` with x-hold `id` to the natsworker-hold instance "hold";
// the reply arrives on the returned channel (nil on a timeout).
func holdCall(t *testing.T, nc *nats.Conn, requestID uint64, id string) <-chan *wire.PhaseResponse {
	t.Helper()
	data := phaseRequestAs(WireVersion, true, requestID, core.PhaseRequestHeaders, 0, [][2]string{{"x-hold", id}}, nil)
	m := phaseMsg("weft.hold.request_headers", core.PhaseRequestHeaders, data, time.Now().Add(3*time.Second))
	out := make(chan *wire.PhaseResponse, 1)
	go func() {
		reply, err := nc.RequestMsg(m, 6*time.Second)
		if err != nil {
			t.Logf("request %d (%s): %v", requestID, id, err)
			out <- nil
			return
		}
		out <- wire.GetRootAsPhaseResponse(reply.Data, 0)
	}()
	return out
}

// checkOwnership: request A waits in an asynchronous handler; request B would take A's slot
// (second, with Slots 1: eviction; or the same (host, request id) as A). B must be refused,
// never displace A's wait: A completes with its own answer, nothing stays in flight, and Drain
// finishes. Before the fix A's goroutine waited forever (in_flight_all stuck at 1).
func checkOwnership(t *testing.T, slots int, idA, idB uint64) {
	url := startNATS(t)
	nc, w := testWorker(t, url, Options{Slots: slots, Concurrency: 2}, Instance{Plugin: "natsworker-hold", Name: "hold"})
	host := client(t, url)
	tag := t.Name() + strconv.FormatUint(idA, 10)
	startedA, releaseA := holdChans(tag + "a")
	a := holdCall(t, host, idA, tag+"a")
	select {
	case <-startedA:
	case <-time.After(5 * time.Second):
		t.Fatal("request A never reached its handler")
	}

	b := <-holdCall(t, host, idB, tag+"b")
	if b == nil {
		t.Fatal("request B got no answer")
	}
	if res := core.Result(b.Result()); res == core.ResultOK {
		t.Fatalf("request B was served on a slot A is waiting on")
	}
	t.Logf("B refused: %v: %s", core.Result(b.Result()), b.Error())

	close(releaseA)
	ra := <-a
	if ra == nil {
		t.Fatal("request A got no answer: its wait was displaced by B")
	}
	if res := core.Result(ra.Result()); res != core.ResultOK {
		t.Fatalf("request A: %v: %s", res, ra.Error())
	}
	waitFor(t, "nothing in flight", func() bool {
		st := srvStats(t, nc, "hold")
		return st.Endpoints[0].Data.InFlight == 0
	})
	done := make(chan error, 1)
	go func() { done <- w.Drain(5 * time.Second) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not finish")
	}
}

func TestEvictionNeverDisplacesAWaitingCall(t *testing.T) {
	checkOwnership(t, 1, 1, 2)
}

func TestDuplicateRequestKeyIsRefusedNotDisplacing(t *testing.T) {
	checkOwnership(t, 8, 5, 5)
}

// The deadline a worker keeps is counted from the request's arrival (Weft-Timeout-Ms), so a
// worker whose clock differs from the host's by any amount still serves the call; the older
// absolute Weft-Deadline-Ms is still read.
func TestRequestDeadlineIsARemainingDurationNotAWallClockTime(t *testing.T) {
	now := time.Now()
	h := nats.Header{}
	h.Set(HeaderTimeout, "150")
	if d, expired := requestDeadline(h, now); expired || !d.Equal(now.Add(150*time.Millisecond)) {
		t.Fatalf("Weft-Timeout-Ms 150: deadline %v (expired %v), want now+150ms", d.Sub(now), expired)
	}
	h.Set(HeaderTimeout, "0")
	if _, expired := requestDeadline(h, now); !expired {
		t.Fatal("Weft-Timeout-Ms 0: not expired")
	}
	h.Set(HeaderTimeout, "9223372036854775807")
	if d, expired := requestDeadline(h, now); expired || !d.After(now) {
		t.Fatalf("a huge Weft-Timeout-Ms: deadline %v (expired %v), want a later time", d.Sub(now), expired)
	}
	legacy := nats.Header{}
	legacy.Set(HeaderDeadline, strconv.FormatInt(now.Add(time.Second).UnixMilli(), 10))
	if d, expired := requestDeadline(legacy, now); expired || d.Sub(now) > time.Second || d.Sub(now) < 998*time.Millisecond {
		t.Fatalf("Weft-Deadline-Ms: deadline %v (expired %v)", d.Sub(now), expired)
	}
	if d, expired := requestDeadline(nats.Header{}, now); expired || !d.Equal(now.Add(defaultAsyncWait)) {
		t.Fatalf("no header: deadline %v, want the default wait", d.Sub(now))
	}
}
