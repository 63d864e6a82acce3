package natsworker

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// Test plugins of this file: one that blocks until released, one with a body phase and one
// with WebSocket phases only.
var (
	blockStarted = make(chan string, 8)
	blockRelease = make(chan struct{}, 8)
)

type bodyState struct{ seen int }

func init() {
	core.Register(core.Plugin[struct{}, struct{}]{
		Name: "natsworker-block",
		RequestHeaders: func(ctx *core.Context, _ *struct{}, _ *struct{}) {
			if id, ok := ctx.RequestHeader("x-block"); ok {
				blockStarted <- strings.Clone(id)
				<-blockRelease
			}
		},
	})
	core.Register(core.Plugin[struct{}, bodyState]{
		Name: "natsworker-body",
		RequestHeaders: func(ctx *core.Context, _ *struct{}, st *bodyState) {
			st.seen++
		},
		ResponseHeaders: func(ctx *core.Context, _ *struct{}, st *bodyState) {
			st.seen++
			ctx.SetResponseHeader("x-seen", strconv.Itoa(st.seen))
		},
		ResponseBody: func(ctx *core.Context, _ *struct{}, _ *bodyState) {},
	})
	core.Register(core.Plugin[struct{}, struct{}]{
		Name:          "natsworker-ws-only",
		WebSocketOpen: func(ctx *core.Context, _ *struct{}, _ *struct{}) {},
	})
}

// testWorker connects to url and serves insts with opts.
func testWorker(t *testing.T, url string, opts Options, insts ...Instance) (*nats.Conn, *Worker) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	if opts.StateIdle == 0 {
		opts.StateIdle = 100 * time.Millisecond // requests a test leaves open do not hold its cleanup
	}
	w := New(nc, opts)
	for _, inst := range insts {
		if err := w.Serve(inst); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = w.Drain(5 * time.Second) })
	if err := nc.Flush(); err != nil { // the subscriptions are in place
		t.Fatal(err)
	}
	return nc, w
}

// client is the host's side: a second connection.
func client(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// phaseMsg is a phase request as the host sends it: data on subject with the protocol headers.
func phaseMsg(subject string, phase core.Phase, data []byte, deadline time.Time) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(HeaderPhase, strconv.Itoa(int(phase)))
	m.Header.Set(HeaderHost, "test-host")
	m.Header.Set(HeaderDeadline, strconv.FormatInt(deadline.UnixMilli(), 10))
	return m
}

// request sends a phase request and decodes the reply.
func request(t *testing.T, nc *nats.Conn, m *nats.Msg) (*wire.PhaseResponse, *nats.Msg) {
	t.Helper()
	reply, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", m.Subject, err)
	}
	if !wire.PhaseRequestBufferHasIdentifier(reply.Data) {
		t.Fatalf("reply without the file identifier: %q", reply.Data)
	}
	resp := wire.GetRootAsPhaseResponse(reply.Data, 0)
	if resp.Version() != WireVersion {
		t.Fatalf("reply version %d", resp.Version())
	}
	return resp, reply
}

func okCall(t *testing.T, nc *nats.Conn, m *nats.Msg) *nats.Msg {
	t.Helper()
	resp, reply := request(t, nc, m)
	if res := core.Result(resp.Result()); res != core.ResultOK {
		t.Fatalf("%s: %v: %s", m.Subject, res, resp.Error())
	}
	return reply
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type statsReply struct {
	Name      string `json:"name"`
	Endpoints []struct {
		Name        string `json:"name"`
		Subject     string `json:"subject"`
		NumRequests int    `json:"num_requests"`
		Data        struct {
			Requests  uint64 `json:"requests"`
			Expired   uint64 `json:"expired"`
			Failures  uint64 `json:"failures"`
			SlotsUsed int    `json:"slots_in_use"`
			InFlight  int    `json:"in_flight_all"`
			Queued    int    `json:"queued_all"`
		} `json:"data"`
	} `json:"endpoints"`
}

func srvStats(t *testing.T, nc *nats.Conn, name string) statsReply {
	t.Helper()
	msg, err := nc.Request("$SRV.STATS."+name, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st statsReply
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("%v: %s", err, msg.Data)
	}
	if len(st.Endpoints) == 0 {
		t.Fatalf("no endpoints in %s", msg.Data)
	}
	return st
}

func (st statsReply) numRequests() (n int) {
	for _, e := range st.Endpoints {
		n += e.NumRequests
	}
	return n
}

func TestCheckRequestRefusesForeignMessagesAndUnknownVersions(t *testing.T) {
	var req wire.PhaseRequest
	res, err := checkRequest(phaseRequest(core.PhaseRequestHeaders, 0, nil, nil), &req)
	if res != core.ResultOK || err != nil {
		t.Fatalf("current version refused: %v %v", res, err)
	}
	if req.RequestId() != 77 || req.Version() != WireVersion {
		t.Fatalf("request not read: id %d version %d", req.RequestId(), req.Version())
	}
	noIdent := phaseRequestAs(WireVersion, false, 1, core.PhaseRequestHeaders, 0, nil, nil)
	if res, err := checkRequest(noIdent, &req); res != core.ResultABIMismatch ||
		err == nil || !strings.Contains(err.Error(), `no file identifier "WEFT"`) {
		t.Fatalf("message without identifier: %v %v", res, err)
	}
	for _, v := range []uint16{0, WireVersion + 1, 65535} {
		data := phaseRequestAs(v, true, 1, core.PhaseRequestHeaders, 0, nil, nil)
		res, err := checkRequest(data, &req)
		want := fmt.Sprintf("unsupported wire version %d (this worker speaks %d to %d)", v, WireVersionMin, WireVersion)
		if res != core.ResultABIMismatch || err == nil || err.Error() != want {
			t.Fatalf("version %d: %v %v, want %q", v, res, err, want)
		}
	}
	for _, short := range [][]byte{nil, {1, 2, 3}, []byte("\x08\x00\x00\x00WEF")} {
		if res, err := checkRequest(short, &req); res != core.ResultInvalidArgument || err == nil {
			t.Fatalf("short message %q: %v %v", short, res, err)
		}
	}
}

// $SRV.PING answers with the service (instance) name, $SRV.INFO carries the metadata, and the
// request counts of $SRV.STATS go up with calls. Unknown wire versions are answered with a
// clear error over NATS too.
func TestPingInfoAndStats(t *testing.T) {
	url := startNATS(t)
	_, w := testWorker(t, url, Options{Slots: 8}, Instance{Plugin: "natsworker-echo", Name: "echo"})
	nc := client(t, url)

	msg, err := nc.Request("$SRV.PING.echo", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ping struct {
		Name     string            `json:"name"`
		Type     string            `json:"type"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(msg.Data, &ping); err != nil {
		t.Fatal(err)
	}
	if ping.Name != "echo" || ping.Type != "io.nats.micro.v1.ping_response" || ping.Metadata["weft.worker"] != w.ID() {
		t.Fatalf("ping: %s", msg.Data)
	}
	msg, err = nc.Request("$SRV.INFO.echo", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Metadata  map[string]string `json:"metadata"`
		Endpoints []struct {
			Subject string `json:"subject"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	mask := core.PhaseRequestHeaders.Mask() | core.PhaseResponseHeaders.Mask()
	if info.Metadata["weft.phases"] != strconv.Itoa(int(mask)) ||
		info.Metadata["weft.served_phases"] != strconv.Itoa(int(mask)) ||
		info.Metadata["weft.wire_version"] != strconv.Itoa(WireVersion) || len(info.Endpoints) != 2 {
		t.Fatalf("info: %s", msg.Data)
	}

	before := srvStats(t, nc, "echo")
	if before.Name != "echo" || before.numRequests() != 0 || before.Endpoints[0].Data.Requests != 0 {
		t.Fatalf("stats before any call: %+v", before)
	}
	const calls = 3
	for i := range calls {
		okCall(t, nc, phaseMsg("weft.echo.request_headers", core.PhaseRequestHeaders,
			phaseRequestAs(WireVersion, true, uint64(100+i), core.PhaseRequestHeaders, 0, nil, nil),
			time.Now().Add(10*time.Second)))
	}
	after := srvStats(t, nc, "echo")
	if got := after.Endpoints[0].Data.Requests; got != calls {
		t.Fatalf("stats data requests %d after %d calls", got, calls)
	}
	// micro counts a request once its handler returned, which may be just after the reply.
	waitFor(t, "num_requests to count the calls", func() bool { return srvStats(t, nc, "echo").numRequests() == calls })

	// A request of a version this worker does not speak: a clear error, counted as a failure.
	resp, _ := request(t, nc, phaseMsg("weft.echo.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion+1, true, 200, core.PhaseRequestHeaders, 0, nil, nil),
		time.Now().Add(10*time.Second)))
	if core.Result(resp.Result()) != core.ResultABIMismatch ||
		!strings.Contains(string(resp.Error()), fmt.Sprintf("unsupported wire version %d", WireVersion+1)) {
		t.Fatalf("unknown version: %v %q", core.Result(resp.Result()), resp.Error())
	}
	resp, _ = request(t, nc, phaseMsg("weft.echo.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, false, 201, core.PhaseRequestHeaders, 0, nil, nil), time.Now().Add(10*time.Second)))
	if core.Result(resp.Result()) != core.ResultABIMismatch ||
		!strings.Contains(string(resp.Error()), "not a weft wire message") {
		t.Fatalf("no identifier: %v %q", core.Result(resp.Result()), resp.Error())
	}
	if st := srvStats(t, nc, "echo").Endpoints[0].Data; st.Requests != calls+2 || st.Failures != 2 {
		t.Fatalf("after two refused requests: %+v", st)
	}
}

// With Concurrency 1 a second request waits for a pool token while the first runs: it is queued,
// and its handler starts only after the first one finished.
func TestConcurrencyOneQueuesTheSecondRequest(t *testing.T) {
	url := startNATS(t)
	_, w := testWorker(t, url, Options{Concurrency: 1, Slots: 8}, Instance{Plugin: "natsworker-block", Name: "block"})
	nc := client(t, url)
	call := func(id string, rid uint64) <-chan error {
		done := make(chan error, 1)
		m := phaseMsg("weft.block.request_headers", core.PhaseRequestHeaders,
			phaseRequestAs(WireVersion, true, rid, core.PhaseRequestHeaders, 0, [][2]string{{"x-block", id}}, nil),
			time.Now().Add(30*time.Second))
		go func() {
			reply, err := nc.RequestMsg(m, 30*time.Second)
			if err == nil && core.Result(wire.GetRootAsPhaseResponse(reply.Data, 0).Result()) != core.ResultOK {
				err = errors.New("not ok")
			}
			done <- err
		}()
		return done
	}
	first := call("first", 1)
	if got := <-blockStarted; got != "first" {
		t.Fatalf("started %q", got)
	}
	second := call("second", 2)
	// The second request is delivered and waits for the pool's only token.
	waitFor(t, "the second request to queue", func() bool { return w.queued.Load() == 1 })
	st := srvStats(t, nc, "block").Endpoints[0].Data
	if st.Queued != 1 || st.InFlight != 1 || st.Requests != 1 {
		t.Fatalf("while the first runs: %+v", st)
	}
	select {
	case id := <-blockStarted:
		t.Fatalf("%s started while the first request held the only token", id)
	case err := <-second:
		t.Fatalf("second answered while the first runs: %v", err)
	default:
	}
	blockRelease <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := <-blockStarted; got != "second" {
		t.Fatalf("started %q", got)
	}
	blockRelease <- struct{}{}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if w.queued.Load() != 0 {
		t.Fatal("still queued")
	}
}

// A request that arrives after its deadline is dropped unrun (no reply) and counted as expired.
func TestExpiredRequestIsDroppedAndCounted(t *testing.T) {
	url := startNATS(t)
	testWorker(t, url, Options{Slots: 8}, Instance{Plugin: "natsworker-block", Name: "late"})
	nc := client(t, url)
	stale := phaseMsg("weft.late.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, true, 1, core.PhaseRequestHeaders, 0, [][2]string{{"x-block", "late"}}, nil),
		time.Now().Add(-time.Second))
	if _, err := nc.RequestMsg(stale, 300*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("an expired request was answered: %v", err)
	}
	waitFor(t, "the expired count", func() bool { return srvStats(t, nc, "late").Endpoints[0].Data.Expired == 1 })
	select {
	case id := <-blockStarted:
		t.Fatalf("the handler ran for an expired request (%s)", id)
	default:
	}
	// A live request is still served (and not counted as expired).
	okCall(t, nc, phaseMsg("weft.late.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, true, 2, core.PhaseRequestHeaders, 0, nil, nil), time.Now().Add(10*time.Second)))
	if st := srvStats(t, nc, "late").Endpoints[0].Data; st.Expired != 1 || st.Requests != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// A plugin with body phases is served with its NATS phases (its state is freed after the last
// of those, not kept for a body phase that never comes over NATS) and announces its body phase
// in weft.phases; one with WebSocket phases only is refused with a clear error.
func TestServeBodyAndWebSocketPlugins(t *testing.T) {
	url := startNATS(t)
	nc, w := testWorker(t, url, Options{Slots: 8}, Instance{Plugin: "natsworker-body", Name: "body"})
	err := w.Serve(Instance{Plugin: "natsworker-ws-only", Name: "ws"})
	if err == nil || !strings.Contains(err.Error(), "has no phase served over NATS (it has websocket_open;") {
		t.Fatalf("ws-only plugin: %v", err)
	}
	host := client(t, url)
	msg, err := host.Request("$SRV.INFO.body", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	served := core.PhaseRequestHeaders.Mask() | core.PhaseResponseHeaders.Mask()
	if info.Metadata["weft.phases"] != strconv.Itoa(int(served|core.PhaseResponseBody.Mask())) ||
		info.Metadata["weft.served_phases"] != strconv.Itoa(int(served)) {
		t.Fatalf("metadata %v", info.Metadata)
	}
	if _, err := host.Request("$SRV.PING.ws", nil, 200*time.Millisecond); err == nil {
		t.Fatal("the refused instance answers pings")
	}
	_ = nc

	reply := okCall(t, host, phaseMsg("weft.body.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, true, 5, core.PhaseRequestHeaders, 0, nil, nil), time.Now().Add(10*time.Second)))
	worker := reply.Header.Get(HeaderWorker)
	if worker != w.ID() {
		t.Fatalf("reply names worker %q", worker)
	}
	if st := srvStats(t, host, "body").Endpoints[0].Data; st.SlotsUsed != 1 {
		t.Fatalf("state not kept after the first phase: %+v", st)
	}
	resp, _ := request(t, host, phaseMsg("weft."+"body.w."+worker+".response_headers", core.PhaseResponseHeaders,
		phaseRequestAs(WireVersion, true, 5, core.PhaseResponseHeaders, 200, nil, nil), time.Now().Add(10*time.Second)))
	if core.Result(resp.Result()) != core.ResultOK || !strings.Contains(string(resp.MutationsBytes()), "x-seen") ||
		!strings.Contains(string(resp.MutationsBytes()), "2") {
		t.Fatalf("response phase: %v %q", core.Result(resp.Result()), resp.MutationsBytes())
	}
	if st := srvStats(t, host, "body").Endpoints[0].Data; st.SlotsUsed != 0 {
		t.Fatalf("state kept after response_headers, the last phase over NATS: %+v", st)
	}
}

// Drain stops the queue-group endpoints at once but serves the later phases of a request that
// holds state here on the direct subject, and returns only after its last phase.
func TestDrainServesLaterPhasesOfRequestsItHas(t *testing.T) {
	url := startNATS(t)
	_, w := testWorker(t, url, Options{Slots: 8, StateIdle: time.Minute},
		Instance{Plugin: "natsworker-echo", Name: "drain"})
	host := client(t, url)
	deadline := time.Now().Add(time.Minute)
	reply := okCall(t, host, phaseMsg("weft.drain.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, true, 9, core.PhaseRequestHeaders, 0, nil, nil), deadline))
	worker := reply.Header.Get(HeaderWorker)

	drained := make(chan error, 1)
	go func() { drained <- w.Drain(30 * time.Second) }()
	// No new requests: the queue subject has no responders once the service stopped. (The probe
	// is a short message, answered as such while the endpoint is up: it takes no state.)
	waitFor(t, "the queue group to go", func() bool {
		m := phaseMsg("weft.drain.request_headers", core.PhaseRequestHeaders, []byte{1, 2, 3}, deadline)
		_, err := host.RequestMsg(m, 5*time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	select {
	case err := <-drained:
		t.Fatalf("Drain returned while a request holds state: %v", err)
	default:
	}
	resp, _ := request(t, host, phaseMsg("weft.drain.w."+worker+".response_headers", core.PhaseResponseHeaders,
		phaseRequestAs(WireVersion, true, 9, core.PhaseResponseHeaders, 200, nil, nil), deadline))
	if core.Result(resp.Result()) != core.ResultOK || last.slotState != 2 {
		t.Fatalf("later phase while draining: %v %q, state %d",
			core.Result(resp.Result()), resp.Error(), last.slotState)
	}
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	m := phaseMsg("weft.drain.w."+worker+".response_headers", core.PhaseResponseHeaders,
		phaseRequestAs(WireVersion, true, 9, core.PhaseResponseHeaders, 200, nil, nil), deadline)
	if _, err := host.RequestMsg(m, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("direct subject after the drain: %v", err)
	}
}

// A request that never sends its last phase does not hold the drain beyond StateIdle.
func TestDrainGivesUpOnAbandonedRequests(t *testing.T) {
	url := startNATS(t)
	_, w := testWorker(t, url, Options{Slots: 8, StateIdle: 200 * time.Millisecond},
		Instance{Plugin: "natsworker-echo", Name: "abandon"})
	host := client(t, url)
	okCall(t, host, phaseMsg("weft.abandon.request_headers", core.PhaseRequestHeaders,
		phaseRequestAs(WireVersion, true, 11, core.PhaseRequestHeaders, 0, nil, nil), time.Now().Add(time.Minute)))
	// The timeout is far above StateIdle: a nil error means the drain ended because the request
	// was taken as abandoned, not at the timeout (which reports the request).
	if err := w.Drain(time.Minute); err != nil {
		t.Fatal(err)
	}
	w2 := New(nil, Options{})
	if w2.opts.StateIdle != 30*time.Second {
		t.Fatalf("default StateIdle %v", w2.opts.StateIdle)
	}
}
