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
//     reply subject and answered with nothing.
//   - The payload is a weft.wire.PhaseRequest; the reply a weft.wire.PhaseResponse whose
//     mutations are ABI mutation records, validated by the host as for an in-process call.
//   - Headers: Weft-Phase (phase number), Weft-Deadline-Ms (absolute unix ms; a request that
//     arrives after its deadline is dropped unrun), Weft-Host (host id; request ids are unique per
//     host only), traceparent (passed through).
//
// Each instance's service metadata carries weft.plugin, weft.instance, weft.phases (the phase
// mask, decimal) and weft.worker, so a host can read an instance's phases from $SRV.INFO.
package natsworker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"runtime"
	"strconv"
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

// WireVersion is the version of the wire messages this worker writes.
const WireVersion = 1

// NATS header names.
const (
	HeaderPhase    = "Weft-Phase"
	HeaderDeadline = "Weft-Deadline-Ms"
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
	// Logf receives worker and plugin log lines (default log.Printf).
	Logf func(format string, args ...any)
}

// Worker serves plugin instances on one NATS connection.
type Worker struct {
	nc       *nats.Conn
	id       string
	opts     Options
	sem      chan struct{}
	wg       sync.WaitGroup
	last     atomic.Int64 // unix nanos of the last request start
	mu       sync.Mutex
	servers  []*server
	services []micro.Service
	stopped  bool
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
// service with one queue-group endpoint and one direct endpoint per phase the plugin declares.
func (w *Worker) Serve(inst Instance) error {
	if inst.Name == "" {
		inst.Name = inst.Plugin
	}
	if err := core.LoadError(); err != nil {
		return err
	}
	index, ok := core.Lookup(inst.Plugin)
	if !ok {
		return fmt.Errorf("no plugin %q is registered in this worker", inst.Plugin)
	}
	var phases uint32
	for _, p := range core.Plugins() {
		if p.Name == inst.Plugin {
			phases = p.Phases
		}
	}
	id := nextInstanceID.Add(1)
	name := inst.Name
	loggersMu.Lock()
	loggers[id] = func(level core.Level, msg string) { w.opts.Logf("[%s] %s: %s", level, name, msg) }
	loggersMu.Unlock()
	s := &server{w: w, inst: inst, id: id, phases: phases, slots: newSlotPool(w.opts.Slots),
		waiting: make([]atomic.Pointer[callBuf], w.opts.Slots)}
	if err := core.InitWith(index, id, inst.Config, uint32(w.opts.Slots), core.InitOptions{Complete: s.complete}); err != nil {
		return fmt.Errorf("instance %q: %w", inst.Name, err)
	}
	for p := core.PhaseLog; ; p-- {
		if phases&p.Mask() != 0 {
			s.lastPhase = p
			break
		}
		if p == 0 {
			break
		}
	}
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:        inst.Name,
		Version:     "0.1.0",
		Description: "weft plugin " + inst.Plugin,
		QueueGroup:  "weft-" + inst.Name,
		Metadata: map[string]string{
			"weft.plugin":       inst.Plugin,
			"weft.instance":     inst.Name,
			"weft.phases":       strconv.FormatUint(uint64(phases), 10),
			"weft.worker":       w.id,
			"weft.wire_version": strconv.Itoa(WireVersion),
		},
		StatsHandler: func(*micro.Endpoint) any { return s.stats() },
	})
	if err != nil {
		_ = core.Shutdown(id)
		return fmt.Errorf("instance %q: %w", inst.Name, err)
	}
	shared := svc.AddGroup("weft." + inst.Name)
	direct := svc.AddGroup("weft."+inst.Name+".w."+w.id, micro.WithGroupQueueGroupDisabled())
	for _, p := range []core.Phase{core.PhaseRequestHeaders, core.PhaseResponseHeaders, core.PhaseLog} {
		if phases&p.Mask() == 0 {
			continue
		}
		h := micro.HandlerFunc(s.handle)
		if err := shared.AddEndpoint(p.String(), h); err != nil {
			_ = svc.Stop()
			return err
		}
		if err := direct.AddEndpoint(p.String()+"_direct", h, micro.WithEndpointSubject(p.String())); err != nil {
			_ = svc.Stop()
			return err
		}
	}
	w.mu.Lock()
	w.servers = append(w.servers, s)
	w.services = append(w.services, svc)
	w.mu.Unlock()
	return nil
}

// Drain stops taking requests (the micro services unsubscribe), lets every accepted request
// finish and answer, and shuts the instances down. It waits at most timeout for in-flight work.
func (w *Worker) Drain(timeout time.Duration) error {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return nil
	}
	w.stopped = true
	svcs, servers := w.services, w.servers
	w.mu.Unlock()
	var errs []error
	for _, s := range svcs {
		errs = append(errs, s.Stop())
	}
	// Subscriptions drain asynchronously: wait until nothing is running and nothing new started
	// for a short quiet period, then flush the replies.
	end := time.Now().Add(timeout)
	for time.Now().Before(end) {
		done := make(chan struct{})
		go func() { w.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Until(end)):
		}
		if time.Since(time.Unix(0, w.last.Load())) > 100*time.Millisecond && len(w.sem) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(w.sem) != 0 {
		errs = append(errs, errors.New("drain timeout: requests still running"))
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

func (s *server) stats() any {
	return map[string]any{
		"requests":      s.requests.Load(),
		"failures":      s.failures.Load(),
		"panics":        s.panics.Load(),
		"expired":       s.expired.Load(),
		"evicted":       s.evicted.Load(),
		"slots_in_use":  s.slots.inUse(),
		"in_flight_all": len(s.w.sem),
	}
}

// handle runs on the subscription's delivery goroutine: it takes a pool token (waiting when all
// are busy) and runs the request on its own goroutine.
func (s *server) handle(req micro.Request) {
	s.w.sem <- struct{}{}
	s.w.wg.Add(1)
	s.w.last.Store(time.Now().UnixNano())
	go func() {
		defer func() {
			<-s.w.sem
			s.w.wg.Done()
		}()
		s.serve(req)
	}()
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

func (s *server) serve(req micro.Request) {
	s.requests.Add(1)
	reply := req.Reply()
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
			s.w.opts.Logf("[error] %s: recovered panic serving %s: %v", s.inst.Name, req.Subject(), r)
			s.respond(b, reply, core.ResultPanic, nil, fmt.Sprint("worker panic: ", r))
		}
	}()
	deadline := time.Now().Add(defaultAsyncWait)
	if ms, err := strconv.ParseInt(req.Headers().Get(HeaderDeadline), 10, 64); err == nil {
		if time.Now().UnixMilli() > ms {
			s.expired.Add(1)
			return // the host has given up on it already
		}
		deadline = time.UnixMilli(ms)
	}
	data := req.Data()
	if len(data) < 8 {
		s.respond(b, reply, core.ResultInvalidArgument, nil, "short message")
		return
	}
	b.req.Init(data, flatbuffers.GetUOffsetT(data))
	phase := core.Phase(b.req.Phase())
	key := req.Headers().Get(HeaderHost) + "/" + strconv.FormatUint(b.req.RequestId(), 10)
	slot, gen, evicted := s.slots.acquire(key)
	if evicted {
		s.evicted.Add(1)
	}
	if phase >= s.lastPhase {
		defer s.slots.release(key)
	}
	view, err := b.view.build(&b.req, phase, slot, gen)
	if err != nil {
		s.respond(b, reply, core.ResultInvalidArgument, nil, err.Error())
		return
	}
	call := s.nextCall.Add(1)
	if call == 0 {
		call = s.nextCall.Add(1)
	}
	b.call.Store(call)
	(*core.RequestView)(view).Call = call
	s.waiting[slot].Store(b)
	res, n := core.Dispatch(s.id, uint32(phase), view, unsafe.Pointer(&b.out[0]), outCap)
	if res == core.ResultPending {
		var ok bool
		if res, n, ok = s.await(slot, b, deadline); !ok {
			keep = false
			s.expired.Add(1)
			return // past the host's deadline: it has given up, and a late completion is discarded
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
		return
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(&b.out[0])), n)
	s.respond(b, reply, core.ResultOK, out, "")
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
	d := <-b.done // the completion won the race: it is sent already
	return d.res, d.n, true
}

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

func (s *server) respond(b *callBuf, reply string, res core.Result, mutations []byte, errMsg string) {
	if reply == "" {
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
	wire.PhaseResponseAddResult(fbb, uint32(res))
	wire.PhaseResponseAddMutations(fbb, m)
	if errMsg != "" {
		wire.PhaseResponseAddError(fbb, e)
	}
	fbb.Finish(wire.PhaseResponseEnd(fbb))
	msg := &nats.Msg{
		Subject: reply,
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
	inuse map[string]slotEntry
	order []orderEntry // acquisition order, oldest first; may hold released entries
	head  int
}

type slotEntry struct{ slot, gen uint32 }

type orderEntry struct {
	key string
	slotEntry
}

func newSlotPool(n int) *slotPool {
	p := &slotPool{free: make([]uint32, n), gens: make([]uint32, n), inuse: make(map[string]slotEntry, n)}
	for i := range p.free {
		p.free[i] = uint32(n - 1 - i)
	}
	return p
}

func (p *slotPool) acquire(key string) (slot, gen uint32, evicted bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.inuse[key]; ok {
		return e.slot, e.gen, false
	}
	for len(p.free) == 0 {
		// Evict the oldest live request; skip entries released since.
		o := p.order[p.head]
		p.order[p.head] = orderEntry{}
		p.head++
		if e, ok := p.inuse[o.key]; ok && e == o.slotEntry {
			delete(p.inuse, o.key)
			p.free = append(p.free, e.slot)
			evicted = true
		}
	}
	slot = p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.gens[slot]++
	if p.gens[slot] == 0 {
		p.gens[slot] = 1
	}
	e := slotEntry{slot: slot, gen: p.gens[slot]}
	p.inuse[key] = e
	p.order = append(p.order, orderEntry{key: key, slotEntry: e})
	if p.head > len(p.order)/2 && p.head > 1024 || len(p.order)-p.head > 2*len(p.gens)+1024 {
		p.compact()
	}
	return e.slot, e.gen, evicted
}

// compact drops consumed and released entries from the order queue.
func (p *slotPool) compact() {
	live := p.order[:0]
	for _, o := range p.order[p.head:] {
		if e, ok := p.inuse[o.key]; ok && e == o.slotEntry {
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

func (p *slotPool) inUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inuse)
}
