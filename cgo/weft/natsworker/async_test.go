package natsworker

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

var (
	natsGate    = make(chan struct{})
	natsStarted = make(chan struct{}, 4)
	natsResults = make(chan error, 4)
)

func init() {
	core.Register(core.Plugin[struct{}, struct{}]{
		Name: "natsworker-async",
		RequestHeaders: func(ctx *core.Context, _ *struct{}, _ *struct{}) {
			if _, ok := ctx.RequestHeader("x-stuck"); ok {
				d, err := ctx.Defer()
				if err != nil {
					ctx.Fail(err)
					return
				}
				natsStarted <- struct{}{}
				go func() { <-natsGate; natsResults <- d.Done() }()
				return
			}
			ctx.Go(func(ctx *core.Context) error {
				time.Sleep(5 * time.Millisecond)
				ua, _ := ctx.RequestHeader("user-agent")
				ctx.SetRequestHeader("x-async", ua)
				return nil
			})
		},
	})
}

// startNATS runs a nats-server on a free loopback port for the test. Without nats-server the
// test is skipped, unless WEFT_REQUIRE_NATS=1.
func startNATS(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("WEFT_REQUIRE_NATS") == "1" {
			t.Fatal("nats-server not found and WEFT_REQUIRE_NATS=1")
		}
		t.Skip("nats-server not found")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Server is ready") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("nats-server did not start")
	}
	return "nats://127.0.0.1:" + strconv.Itoa(port)
}

func TestAsyncHandlerOverNATS(t *testing.T) {
	url := startNATS(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	w := New(nc, Options{Slots: 8, Logf: t.Logf})
	if err := w.Serve(Instance{Plugin: "natsworker-async", Name: "async"}); err != nil {
		t.Fatal(err)
	}
	defer w.Drain(5 * time.Second)

	call := func(headers [][2]string, deadline time.Duration) (*nats.Msg, error) {
		msg := nats.NewMsg("weft.async.request_headers")
		msg.Data = phaseRequest(core.PhaseRequestHeaders, 0, headers, nil)
		msg.Header.Set(HeaderPhase, "0")
		msg.Header.Set(HeaderHost, "test-host")
		msg.Header.Set(HeaderDeadline, strconv.FormatInt(time.Now().Add(deadline).UnixMilli(), 10))
		return nc.RequestMsg(msg, deadline+time.Second)
	}

	reply, err := call([][2]string{{"user-agent", "ua-7"}}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp := wire.GetRootAsPhaseResponse(reply.Data, 0)
	if core.Result(resp.Result()) != core.ResultOK {
		t.Fatalf("result %v: %s", core.Result(resp.Result()), resp.Error())
	}
	want := make([]byte, core.RecordSize(len("x-async"), len("ua-7")))
	if got := resp.MutationsBytes(); len(got) != len(want) || !strings.Contains(string(got), "x-async") || !strings.Contains(string(got), "ua-7") {
		t.Fatalf("mutations %q", got)
	}

	// A continuation that outlives the request's deadline: no reply (the host has given up),
	// and the late completion is told the call was cancelled.
	if _, err := call([][2]string{{"x-stuck", "1"}}, time.Second); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("stuck call: %v, want a timeout", err)
	}
	select {
	case <-natsStarted:
	default:
		// Delivered after its deadline on a loaded machine: dropped unrun, nothing to cancel.
		t.Skip("the stuck request arrived after its deadline and was not run")
	}
	natsGate <- struct{}{}
	if err := <-natsResults; !errors.Is(err, core.ErrCancelled) {
		t.Errorf("late Done: %v, want ErrCancelled", err)
	}
}
