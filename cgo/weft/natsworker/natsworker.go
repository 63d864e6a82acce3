// Package natsworker serves registered weft plugins to remote hosts over NATS: the same
// handlers that run in-process in the proxy run here in a worker process, one nats.go micro
// service per plugin instance.
//
// Protocol (schema: nats-bridge/schema/weft_wire.fbs; host side: the weft-nats-bridge crate):
//
//   - weft.<instance>.<phase> (queue group weft-<instance>): the first phase of a request,
//     answered by any worker of the instance.
//   - weft.<instance>.w.<worker-id>.<phase> (no queue group): the later phases of a request,
//     sent by the host to the worker that answered the first (reply header Weft-Worker), so
//     per-request state in handlers works as in-process.
//   - <phase> is request_headers, response_headers or log; the log phase is published without a
//     reply subject and answered with nothing. Body and WebSocket phases are not served over NATS
//     (a host refuses an instance whose plugin has body phases; see Worker.Serve).
//   - The payload is a weft.wire.PhaseRequest; the reply a weft.wire.PhaseResponse whose
//     mutations are ABI mutation records, validated by the host as for an in-process call. Both
//     carry the file identifier "WEFT" and their sender's wire version; a request without the
//     identifier or of a version this worker does not speak is answered with result AbiMismatch
//     and a message naming both versions.
//   - Headers: Weft-Phase (phase number), Weft-Timeout-Ms (the time the host gave the call when
//     it sent it; counted from arrival here, so clocks need not agree; older hosts send
//     Weft-Deadline-Ms, an absolute unix ms), Weft-Host (host id; request ids are unique per host
//     only), traceparent (passed through). A reply (wire version 2) names the request id and phase
//     it answers; the host uses no other.
//
// Each instance's service metadata carries weft.plugin, weft.instance, weft.phases (the plugin's
// phase mask, decimal, body and WebSocket bits included so a host can refuse what it cannot
// run remotely), weft.served_phases (the phases with endpoints here), weft.worker and
// weft.wire_version, so a host can read an instance's phases from $SRV.INFO. The micro service
// holds the queue-group endpoints (listed in $SRV.INFO, counted in $SRV.STATS); the direct
// subjects are plain subscriptions of the worker, so that Drain can stop taking new requests
// while it still serves the later phases of the requests it has.
package natsworker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// WireVersion is the version of the wire messages this worker writes, and the highest it reads.
const WireVersion = 2

// WireVersionMin is the lowest wire version this worker reads.
const WireVersionMin = 1

// wireIdentifier is the file identifier of every wire message (weft_wire.fbs file_identifier).
var wireIdentifier = []byte(wire.PhaseRequestIdentifier)

// natsPhases are the phases served over NATS, in request order.
var natsPhases = [...]core.Phase{core.PhaseRequestHeaders, core.PhaseResponseHeaders, core.PhaseLog}

// NATSPhaseMask is the mask of the phases served over NATS.
const NATSPhaseMask = 1<<core.PhaseRequestHeaders | 1<<core.PhaseResponseHeaders | 1<<core.PhaseLog

// NATS header names.
const (
	HeaderPhase    = "Weft-Phase"
	HeaderTimeout  = "Weft-Timeout-Ms"
	HeaderDeadline = "Weft-Deadline-Ms" // older hosts: an absolute unix ms
	HeaderHost     = "Weft-Host"
	HeaderWorker   = "Weft-Worker"
)

// Instance is one plugin instance to serve.
type Instance struct {
	// Plugin is the registered plugin name, e.g. "header-rewriter".
	Plugin string `json:"plugin"`
	// Name is the instance name the host calls (subjects weft.<name>.*); default Plugin.
	Name string `json:"name"`
	// Config is the instance's JSON config, as in the proxy config.
	Config json.RawMessage `json:"config"`
}

// Options configure a Worker. Zero values get defaults.
type Options struct {
	// Concurrency bounds the handlers running at once (default 4 × GOMAXPROCS). When all are
	// busy, delivery waits: requests queue in the NATS client, not in goroutines.
	Concurrency int
	// Slots is the number of requests per instance that may hold per-request state at once
	// (default 4096); beyond it the oldest request's state is dropped (see slotPool).
	Slots int
	// StateIdle is how long a request that holds per-request state may go without a phase call
	// before Drain counts it as abandoned (default 30 s): a request that never reaches the
	// plugin's last phase (an upstream error, a client gone) is not told apart otherwise.
	StateIdle time.Duration
	// Logf receives worker and plugin log lines (default log.Printf).
	Logf func(format string, args ...any)
}

// Worker serves plugin instances on one NATS connection.
type Worker struct {
	nc   *nats.Conn
	id   string
	opts Options
	sem  chan struct{}
	// active counts deliveries from taking one to the end of its handler (waiting for a pool
	// token included); queued those waiting for a token.
	active, queued atomic.Int64
	last           atomic.Int64 // unix nanos of the last delivery
	mu             sync.Mutex
	servers        []*server
	services       []micro.Service
	direct         []*nats.Subscription
	stopped        bool
}

var nextInstanceID atomic.Uint64

var (
	loggersMu sync.Mutex
	loggers   = map[uint64]func(core.Level, string){}
	setLogger sync.Once
)

// New creates a worker on nc with a fresh worker id. Add instances with Serve.
func New(nc *nats.Conn, opts Options) *Worker {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4 * runtime.GOMAXPROCS(0)
	}
	if opts.Slots <= 0 {
		opts.Slots = 4096
	}
	if opts.StateIdle <= 0 {
		opts.StateIdle = 30 * time.Second
	}
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	setLogger.Do(func() {
		core.SetLogger(func(level core.Level, instance uint64, msg string) {
			loggersMu.Lock()
			f := loggers[instance]
			loggersMu.Unlock()
			if f != nil {
				f(level, msg)
			}
		})
	})
	return &Worker{nc: nc, id: nuid.Next(), opts: opts, sem: make(chan struct{}, opts.Concurrency)}
}

// ID is the worker id used in direct subjects and the Weft-Worker reply header.
func (w *Worker) ID() string { return w.id }

// Serve initialises inst (core.Init, as the in-process host does) and registers its micro
// service with one queue-group endpoint, and one direct subscription, per phase the plugin
// declares of those served over NATS (request_headers, response_headers, log). A plugin's body
// and WebSocket phases are not served; they stay in weft.phases, so a host sees them (the proxy
// refuses a type: nats instance with body phases). A plugin with none of the NATS phases (e.g.
// one with WebSocket phases only) is refused: there would be nothing to serve.
func (w *Worker) Serve(inst Instance) error {
	if inst.Name == "" {
		inst.Name = inst.Plugin
	}
	index, phases, err := servedPlugin(inst)
	if err != nil {
		return err
	}
	s, err := w.initServer(inst, index, phases)
	if err != nil {
		return err
	}
	svc, direct, err := w.subscribe(s)
	if err != nil {
		_ = core.Shutdown(s.id)
		return fmt.Errorf("instance %q: %w", inst.Name, err)
	}
	w.mu.Lock()
	w.servers = append(w.servers, s)
	w.services = append(w.services, svc)
	w.direct = append(w.direct, direct...)
	w.mu.Unlock()
	return nil
}

// servedPlugin finds inst's plugin among those registered: its index and phases. A plugin with
// none of the phases served over NATS is refused.
func servedPlugin(inst Instance) (index uint32, phases uint32, err error) {
	if err := core.LoadError(); err != nil {
		return 0, 0, err
	}
	index, ok := core.Lookup(inst.Plugin)
	if !ok {
		return 0, 0, fmt.Errorf("no plugin %q is registered in this worker", inst.Plugin)
	}
	for _, p := range core.Plugins() {
		if p.Name == inst.Plugin {
			phases = p.Phases
		}
	}
	if phases&NATSPhaseMask == 0 {
		return 0, 0, fmt.Errorf("instance %q: plugin %q has no phase served over NATS (it has %s; NATS serves "+
			"request_headers, response_headers and log): load it in-process instead", inst.Name, inst.Plugin,
			PhaseNames(phases))
	}
	return index, phases, nil
}

// initServer initialises the instance (core.Init, as the in-process host does) with its own
// logger, and the server that answers its calls.
func (w *Worker) initServer(inst Instance, index uint32, phases uint32) (*server, error) {
	id := nextInstanceID.Add(1)
	name := inst.Name
	loggersMu.Lock()
	loggers[id] = func(level core.Level, msg string) { w.opts.Logf("[%s] %s: %s", level, name, msg) }
	loggersMu.Unlock()
	s := &server{w: w, inst: inst, id: id, phases: phases, slots: newSlotPool(w.opts.Slots),
		waiting: make([]atomic.Pointer[callBuf], w.opts.Slots)}
	if err := core.InitWith(index, id, inst.Config, uint32(w.opts.Slots), core.InitOptions{Complete: s.complete}); err != nil {
		return nil, fmt.Errorf("instance %q: %w", inst.Name, err)
	}
	// The last phase that will come over NATS: a body phase never does, so a plugin with a
	// response body phase still frees its state after response_headers (or log).
	for _, p := range natsPhases {
		if phases&NATSPhaseMask&p.Mask() != 0 {
			s.lastPhase = p
		}
	}
	return s, nil
}

// subscribe registers s's micro service, with one queue-group endpoint per served phase, and
// one direct subscription per served phase; on an error, what it registered is removed.
func (w *Worker) subscribe(s *server) (micro.Service, []*nats.Subscription, error) {
	inst, served := s.inst, s.phases&NATSPhaseMask
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:        inst.Name,
		Version:     "0.1.0",
		Description: "weft plugin " + inst.Plugin,
		QueueGroup:  "weft-" + inst.Name,
		Metadata: map[string]string{
			"weft.plugin":        inst.Plugin,
			"weft.instance":      inst.Name,
			"weft.phases":        strconv.FormatUint(uint64(s.phases), 10),
			"weft.served_phases": strconv.FormatUint(uint64(served), 10),
			"weft.worker":        w.id,
			"weft.wire_version":  strconv.Itoa(WireVersion),
		},
		StatsHandler: func(*micro.Endpoint) any { return s.stats() },
	})
	if err != nil {
		return nil, nil, err
	}
	shared := svc.AddGroup("weft." + inst.Name)
	var direct []*nats.Subscription
	fail := func(err error) (micro.Service, []*nats.Subscription, error) {
		_ = svc.Stop()
		for _, sub := range direct {
			_ = sub.Unsubscribe()
		}
		return nil, nil, err
	}
	for _, p := range natsPhases {
		if served&p.Mask() == 0 {
			continue
		}
		h := micro.HandlerFunc(func(r micro.Request) {
			s.handle(message{subject: r.Subject(), reply: r.Reply(), header: nats.Header(r.Headers()), data: r.Data()})
		})
		if err := shared.AddEndpoint(p.String(), h); err != nil {
			return fail(err)
		}
		sub, err := w.nc.Subscribe("weft."+inst.Name+".w."+w.id+"."+p.String(), func(m *nats.Msg) {
			s.handle(message{subject: m.Subject, reply: m.Reply, header: m.Header, data: m.Data})
		})
		if err != nil {
			return fail(err)
		}
		direct = append(direct, sub)
	}
	return svc, direct, nil
}

// PhaseNames lists the phases of a mask by name, e.g. "request_headers, response_body".
func PhaseNames(mask uint32) string {
	var names []string
	for p := core.Phase(0); p < 32; p++ {
		if mask&p.Mask() != 0 {
			names = append(names, p.String())
		}
	}
	if len(names) == 0 {
		return "no phases"
	}
	return strings.Join(names, ", ")
}

// drainQuiet is how long Drain waits after the last delivery before it takes the queue-group
// subscriptions as drained: messages the server routed here before it processed the
// unsubscription are still delivered, and micro does not say when its subscriptions are done.
const drainQuiet = 100 * time.Millisecond

// Drain stops the worker in three steps, taking at most timeout for the first two:
//
//  1. No new requests: the micro services stop, which unsubscribes the queue-group endpoints
//     (the server sends first phases to the instance's other workers from then on) and the
//     $SRV handlers.
//  2. The requests this worker has finish: Drain waits until no handler runs or waits for a
//     pool token, and no request holds per-request state, i.e. every request that ran a phase
//     here got its instance's last phase (log, or the last phase the plugin declares). The direct
//     subjects stay subscribed meanwhile, so those later phases reach this worker and its state.
//     A request with no phase call for Options.StateIdle counts as abandoned.
//  3. The direct subscriptions drain, the replies are flushed and the instances shut down.
//
// A request still in flight at the timeout is reported in the error.
func (w *Worker) Drain(timeout time.Duration) error {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return nil
	}
	w.stopped = true
	svcs, servers, direct := w.services, w.servers, w.direct
	w.mu.Unlock()
	end := time.Now().Add(timeout)
	var errs []error
	for _, s := range svcs {
		errs = append(errs, s.Stop())
	}
	// After the flush the server has processed the unsubscriptions: every first phase it sent
	// here is in this client already.
	errs = append(errs, w.nc.FlushTimeout(max(time.Until(end), time.Millisecond)))

	holding := func() (n int) {
		for _, s := range servers {
			n += s.slots.live(w.opts.StateIdle)
		}
		return n
	}
	for {
		quiet := time.Since(time.Unix(0, w.last.Load())) >= drainQuiet
		if w.active.Load() == 0 && quiet && holding() == 0 {
			break
		}
		if !time.Now().Before(end) {
			errs = append(errs, fmt.Errorf("drain timeout: %d handlers running or queued, %d requests holding state",
				w.active.Load(), holding()))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Late phases of abandoned requests get no responders from here on.
	for _, sub := range direct {
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, err)
		}
	}
	grace := time.Now().Add(time.Second)
	for time.Now().Before(end) || time.Now().Before(grace) {
		valid := false
		for _, sub := range direct {
			valid = valid || sub.IsValid()
		}
		if !valid && w.active.Load() == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := w.active.Load(); n != 0 {
		errs = append(errs, fmt.Errorf("drain: %d handlers still running", n))
	}
	errs = append(errs, w.nc.Flush())
	for _, s := range servers {
		errs = append(errs, core.Shutdown(s.id))
	}
	return errors.Join(errs...)
}

// server is one served instance.
type server struct {
	w         *Worker
	inst      Instance
	id        uint64
	phases    uint32
	lastPhase core.Phase
	slots     *slotPool
	// waiting[slot] is the call of the slot whose completion serve waits for (asynchronous
	// handlers: Context.Defer/Go), or nil.
	waiting  []atomic.Pointer[callBuf]
	nextCall atomic.Uint32

	requests, failures, panics, expired, evicted atomic.Uint64
}

// stats is the data of the instance's endpoints in $SRV.STATS: this instance's counters (first
// and later phases) and the worker's pool.
func (s *server) stats() any {
	return map[string]any{
		"requests":      s.requests.Load(),
		"failures":      s.failures.Load(),
		"panics":        s.panics.Load(),
		"expired":       s.expired.Load(),
		"evicted":       s.evicted.Load(),
		"slots_in_use":  s.slots.inUse(),
		"in_flight_all": len(s.w.sem),
		"queued_all":    s.w.queued.Load(),
	}
}

// message is one delivered request, from a micro endpoint or a direct subscription.
type message struct {
	subject, reply string
	header         nats.Header
	data           []byte
}

// handle runs on the subscription's delivery goroutine: it takes a pool token (waiting when all
// are busy, so further requests queue in the NATS client, not in goroutines) and runs the
// request on its own goroutine.
func (s *server) handle(m message) {
	w := s.w
	w.active.Add(1)
	w.last.Store(time.Now().UnixNano())
	w.queued.Add(1)
	w.sem <- struct{}{}
	w.queued.Add(-1)
	go func() {
		defer func() {
			<-w.sem
			w.active.Add(-1)
		}()
		s.serve(m)
	}()
}

// checkRequest checks that data is a PhaseRequest this worker reads and points req at it: the
// result and message to answer otherwise.
func checkRequest(data []byte, req *wire.PhaseRequest) (core.Result, error) {
	if len(data) < 8 {
		return core.ResultInvalidArgument, errors.New("short message")
	}
	if string(data[4:8]) != string(wireIdentifier) {
		return core.ResultABIMismatch, fmt.Errorf("not a weft wire message (no file identifier %q)", wireIdentifier)
	}
	req.Init(data, flatbuffers.GetUOffsetT(data))
	if v := req.Version(); v < WireVersionMin || v > WireVersion {
		return core.ResultABIMismatch, fmt.Errorf("unsupported wire version %d (this worker speaks %d to %d)",
			v, WireVersionMin, WireVersion)
	}
	return core.ResultOK, nil
}

// callBuf is the per-call scratch memory: view, mutation buffer, reply builder, and the
// completion of an asynchronous call.
type callBuf struct {
	view viewBuilder
	out  []uint64
	fbb  *flatbuffers.Builder
	req  wire.PhaseRequest
	call atomic.Uint32  // the call id of the view; atomic: a stale completion may read it
	done chan asyncDone // capacity 1
}

type asyncDone struct {
	res core.Result
	n   uint32
}

// defaultAsyncWait bounds the wait for an asynchronous handler when the request carries no
// deadline.
const defaultAsyncWait = 30 * time.Second

// outCap is the mutation buffer capacity of one call.
const outCap = 32 * 1024

var bufs = sync.Pool{New: func() any {
	return &callBuf{out: make([]uint64, outCap/8), fbb: flatbuffers.NewBuilder(1024), done: make(chan asyncDone, 1)}
}}

func (s *server) serve(req message) {
	s.requests.Add(1)
	// Where the answer goes and what it answers: the request id once the message is read, so
	// that the host can tell a reply to this request from any other.
	reply := replyTo{subject: req.reply}
	if p, err := strconv.ParseUint(req.header.Get(HeaderPhase), 10, 32); err == nil {
		reply.phase = uint32(p)
	}
	b := bufs.Get().(*callBuf)
	keep := true // false: an unfinished continuation may still use b's view and output
	defer func() {
		if keep {
			bufs.Put(b)
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			// Handler panics are recovered by core.Dispatch; this is a malformed message or a bug
			// here. Either way the host gets an error reply, and the worker lives on.
			s.panics.Add(1)
			s.w.opts.Logf("[error] %s: recovered panic serving %s: %v", s.inst.Name, req.subject, r)
			s.respond(b, reply, core.ResultPanic, nil, fmt.Sprint("worker panic: ", r))
		}
	}()
	deadline, expired := requestDeadline(req.header, time.Now())
	if expired {
		s.expired.Add(1)
		return // the host has given up on it already
	}
	if res, err := checkRequest(req.data, &b.req); err != nil {
		s.failures.Add(1)
		s.w.opts.Logf("[warn] %s: refused %s: %v", s.inst.Name, req.subject, err)
		s.respond(b, reply, res, nil, err.Error())
		return
	}
	phase := core.Phase(b.req.Phase())
	reply.requestID, reply.phase = b.req.RequestId(), uint32(phase)
	key := req.header.Get(HeaderHost) + "/" + strconv.FormatUint(b.req.RequestId(), 10)
	slot, gen, evicted, ok := s.slots.acquire(key)
	if !ok {
		s.failures.Add(1)
		s.respond(b, reply, core.ResultBusy, nil, "no free request slot: every slot has a call in flight")
		return
	}
	defer s.slots.done(slot)
	if evicted {
		s.evicted.Add(1)
	}
	if phase >= s.lastPhase {
		defer s.slots.release(key)
	}
	keep = s.call(b, reply, phase, slot, gen, deadline)
}

// call lays out the view of the checked request in b for phase on slot, calls the plugin and
// answers with what it wrote (awaiting a pending answer until deadline). It returns false when
// the call is left to an unfinished continuation, which may still use b.
func (s *server) call(b *callBuf, reply replyTo, phase core.Phase, slot, gen uint32, deadline time.Time) bool {
	view, err := b.view.build(&b.req, phase, slot, gen)
	if err != nil {
		s.respond(b, reply, core.ResultInvalidArgument, nil, err.Error())
		return true
	}
	call := s.nextCall.Add(1)
	if call == 0 {
		call = s.nextCall.Add(1)
	}
	b.call.Store(call)
	(*core.RequestView)(view).Call = call
	// The slot's call: exactly one at a time. Another call holding it (the same (host, request
	// id) sent twice, both peer-supplied) is refused here; it never displaces that call's wait.
	if !s.waiting[slot].CompareAndSwap(nil, b) {
		s.failures.Add(1)
		s.respond(b, reply, core.ResultBusy, nil, "another call of this request is in flight (duplicate request id?)")
		return true
	}
	res, n := core.Dispatch(s.id, uint32(phase), view, unsafe.Pointer(&b.out[0]), outCap)
	if res == core.ResultPending {
		var ok bool
		if res, n, ok = s.await(slot, b, deadline); !ok {
			s.expired.Add(1)
			return false // past the host's deadline: it has given up, and a late completion is discarded
		}
	} else {
		s.waiting[slot].CompareAndSwap(b, nil)
	}
	if res != core.ResultOK {
		s.failures.Add(1)
		msg := "plugin returned " + res.String()
		if res == core.ResultPanic {
			s.panics.Add(1)
			msg = "handler panicked"
		}
		s.respond(b, reply, res, nil, msg)
		return true
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(&b.out[0])), n)
	s.respond(b, reply, core.ResultOK, out, "")
	return true
}

// await waits for the completion of the asynchronous call b on slot until deadline; false if
// it did not come (the call is then cancelled: its late completion gets ResultCancelled).
func (s *server) await(slot uint32, b *callBuf, deadline time.Time) (core.Result, uint32, bool) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case d := <-b.done:
		return d.res, d.n, true
	case <-t.C:
	}
	if s.waiting[slot].CompareAndSwap(b, nil) {
		return 0, 0, false
	}
	// Only complete takes b off the slot once it is there (serve never displaces it), and it
	// sends right after: the answer is in the channel or about to be. Bounded all the same.
	t.Reset(completionGrace)
	select {
	case d := <-b.done:
		return d.res, d.n, true
	case <-t.C:
		s.w.opts.Logf("[error] %s: slot %d: a completion claimed the call but sent nothing", s.inst.Name, slot)
		return 0, 0, false
	}
}

// completionGrace bounds the wait for a completion that has claimed its call (see await).
const completionGrace = time.Second

// complete is the instance's completion function (core.InitOptions.Complete).
func (s *server) complete(_ uint64, slot, call uint32, res core.Result, n uint32) core.Result {
	if slot >= uint32(len(s.waiting)) {
		return core.ResultStaleHandle
	}
	b := s.waiting[slot].Load()
	switch {
	case b == nil:
		return core.ResultCancelled // serve stopped waiting
	case b.call.Load() != call:
		return core.ResultStaleHandle
	case res == core.ResultPending:
		return core.ResultInvalidArgument
	case !s.waiting[slot].CompareAndSwap(b, nil):
		return core.ResultAlreadyCompleted
	}
	b.done <- asyncDone{res, n}
	return core.ResultOK
}

// replyTo is where an answer goes and which request and phase it answers.
type replyTo struct {
	subject   string
	requestID uint64
	phase     uint32
}

// maxTimeoutMs caps Weft-Timeout-Ms (an hour): a larger value would overflow a time.Duration.
const maxTimeoutMs = 3600 * 1000

// requestDeadline is when the host stops waiting for the request: now plus Weft-Timeout-Ms (a
// duration, so the host's and this worker's clocks need not agree), or the older absolute
// Weft-Deadline-Ms; expired when that has passed already. Without either, defaultAsyncWait.
func requestDeadline(h nats.Header, now time.Time) (deadline time.Time, expired bool) {
	if ms, err := strconv.ParseInt(h.Get(HeaderTimeout), 10, 64); err == nil {
		return now.Add(time.Duration(min(ms, maxTimeoutMs)) * time.Millisecond), ms <= 0
	}
	if ms, err := strconv.ParseInt(h.Get(HeaderDeadline), 10, 64); err == nil {
		return time.UnixMilli(ms), now.UnixMilli() > ms
	}
	return now.Add(defaultAsyncWait), false
}

func (s *server) respond(b *callBuf, reply replyTo, res core.Result, mutations []byte, errMsg string) {
	if reply.subject == "" {
		return // log phase: published without a reply subject
	}
	fbb := b.fbb
	fbb.Reset()
	m := fbb.CreateByteVector(mutations)
	var e flatbuffers.UOffsetT
	if errMsg != "" {
		e = fbb.CreateString(errMsg)
	}
	wire.PhaseResponseStart(fbb)
	wire.PhaseResponseAddVersion(fbb, WireVersion)
	wire.PhaseResponseAddRequestId(fbb, reply.requestID)
	wire.PhaseResponseAddPhase(fbb, reply.phase)
	wire.PhaseResponseAddResult(fbb, uint32(res))
	wire.PhaseResponseAddMutations(fbb, m)
	if errMsg != "" {
		wire.PhaseResponseAddError(fbb, e)
	}
	fbb.FinishWithFileIdentifier(wire.PhaseResponseEnd(fbb), wireIdentifier)
	msg := &nats.Msg{
		Subject: reply.subject,
		Header:  nats.Header{HeaderWorker: []string{s.w.id}},
		Data:    fbb.FinishedBytes(),
	}
	if err := s.w.nc.PublishMsg(msg); err != nil {
		s.w.opts.Logf("[warn] %s: reply failed: %v", s.inst.Name, err)
	}
}

// slotPool hands each live request of one instance a (slot, generation) for core's per-request
// state. A request keeps its slot from its first phase to the instance's last declared phase.
// A request that never gets there (a local reply, an upstream error, a host that went away) is
// not told apart from a live one: when every slot is taken, the request that took its slot
// first loses it (its state is reset if it ever comes back), so the pool never runs dry and
// never grows. With Slots far above the requests in flight at once, only dead requests go.
type slotPool struct {
	mu    sync.Mutex
	free  []uint32
	gens  []uint32
	busy  []int32 // calls running on each slot (acquire to done): such a slot is never evicted
	inuse map[string]liveEntry
	order []orderEntry // acquisition order, oldest first; may hold released entries
	head  int
}

type slotEntry struct{ slot, gen uint32 }

// liveEntry is a request's slot and when it last had a phase call (unix nanos).
type liveEntry struct {
	slotEntry
	touched int64
}

type orderEntry struct {
	key string
	slotEntry
}

func newSlotPool(n int) *slotPool {
	p := &slotPool{free: make([]uint32, n), gens: make([]uint32, n), busy: make([]int32, n), inuse: make(map[string]liveEntry, n)}
	for i := range p.free {
		p.free[i] = uint32(n - 1 - i)
	}
	return p
}

// acquire gives key's slot (the one it has, or a free one, evicting the oldest idle request
// when none is free) and counts a call on it until done; ok is false when every slot has a
// call running.
func (p *slotPool) acquire(key string) (slot, gen uint32, evicted, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().UnixNano()
	if e, ok := p.inuse[key]; ok {
		e.touched = now
		p.inuse[key] = e
		p.busy[e.slot]++
		return e.slot, e.gen, false, true
	}
	for len(p.free) == 0 {
		i, found := p.evictable()
		if !found {
			return 0, 0, evicted, false
		}
		o := p.order[i]
		p.order[i] = orderEntry{}
		delete(p.inuse, o.key)
		p.free = append(p.free, o.slot)
		evicted = true
	}
	slot = p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.gens[slot]++
	if p.gens[slot] == 0 {
		p.gens[slot] = 1
	}
	e := slotEntry{slot: slot, gen: p.gens[slot]}
	p.inuse[key] = liveEntry{slotEntry: e, touched: now}
	p.order = append(p.order, orderEntry{key: key, slotEntry: e})
	if p.head > len(p.order)/2 && p.head > 1024 || len(p.order)-p.head > 2*len(p.gens)+1024 {
		p.compact()
	}
	p.busy[e.slot]++
	return e.slot, e.gen, evicted, true
}

// evictable is the index in order of the oldest live request with no call running.
func (p *slotPool) evictable() (int, bool) {
	for p.head < len(p.order) && !p.isLive(p.order[p.head]) {
		p.order[p.head] = orderEntry{}
		p.head++
	}
	for i := p.head; i < len(p.order); i++ {
		if o := p.order[i]; p.isLive(o) && p.busy[o.slot] == 0 {
			return i, true
		}
	}
	return 0, false
}

// isLive: o is the current acquisition of its key (not released or evicted since).
func (p *slotPool) isLive(o orderEntry) bool {
	e, ok := p.inuse[o.key]
	return ok && o.key != "" && e.slotEntry == o.slotEntry
}

// done ends a call counted by acquire.
func (p *slotPool) done(slot uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy[slot]--
}

// compact drops consumed and released entries from the order queue.
func (p *slotPool) compact() {
	live := p.order[:0]
	for _, o := range p.order[p.head:] {
		if p.isLive(o) {
			live = append(live, o)
		}
	}
	clear(p.order[len(live):])
	p.order, p.head = live, 0
}

func (p *slotPool) release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.inuse[key]; ok {
		delete(p.inuse, key)
		p.free = append(p.free, e.slot)
	}
}

// live counts the requests holding a slot that had a phase call within idle.
func (p *slotPool) live(idle time.Duration) (n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	since := time.Now().Add(-idle).UnixNano()
	for _, e := range p.inuse {
		if e.touched >= since {
			n++
		}
	}
	return n
}

func (p *slotPool) inUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inuse)
}
