package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Errors returned by Init and Shutdown; InitResult maps them to result codes.
var (
	ErrUnknownPlugin   = errors.New("unknown plugin")
	ErrInvalidArgument = errors.New("invalid argument")
)

// handlers is a plugin instance with its type parameters erased.
type handlers interface {
	run(ctx *Context, slot, generation uint32)
	shutdown()
}

// typedInstance is one configured instance of a Plugin[C, S]: its config and the per-slot
// request state. states[i] belongs to the request that holds slot i in generation gens[i].
type typedInstance[C any, S any] struct {
	p      *Plugin[C, S]
	cfg    *C
	states []S
	gens   []uint32
}

func newTypedInstance[C any, S any](p *Plugin[C, S], config []byte, slotCount uint32) (handlers, error) {
	cfg := new(C)
	if err := decodeConfig(config, cfg); err != nil {
		return nil, err
	}
	if p.Init != nil {
		if err := p.Init(cfg); err != nil {
			return nil, err
		}
	}
	return &typedInstance[C, S]{
		p:      p,
		cfg:    cfg,
		states: make([]S, slotCount),
		gens:   make([]uint32, slotCount),
	}, nil
}

// decodeConfig decodes one JSON value from config into cfg, rejecting unknown fields and
// trailing data. An empty config leaves cfg at its zero value.
func decodeConfig(config []byte, cfg any) error {
	if len(bytes.TrimSpace(config)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("invalid config: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("invalid config: trailing data after the JSON value")
	}
	return nil
}

func (t *typedInstance[C, S]) run(ctx *Context, slot, generation uint32) {
	if t.gens[slot] != generation {
		var zero S
		t.states[slot] = zero
		t.gens[slot] = generation
	}
	state := &t.states[slot]
	switch ctx.phase {
	case PhaseRequestHeaders:
		t.p.RequestHeaders(ctx, t.cfg, state)
	case PhaseResponseHeaders:
		t.p.ResponseHeaders(ctx, t.cfg, state)
	case PhaseLog:
		t.p.Log(ctx, t.cfg, state)
	case PhaseRequestBody:
		t.p.RequestBody(ctx, t.cfg, state)
	case PhaseResponseBody:
		t.p.ResponseBody(ctx, t.cfg, state)
	case PhaseWebSocketOpen, PhaseWebSocketMessage, PhaseWebSocketClose:
		t.runWS(ctx, state)
	}
}

func (t *typedInstance[C, S]) shutdown() {
	if t.p.Shutdown != nil {
		t.p.Shutdown(t.cfg)
	}
}

// instance is one initialised plugin instance as the dispatcher sees it.
type instance struct {
	id        uint64
	name      string // plugin name, for log lines
	phases    uint32
	slotCount uint32
	// shown is the plugin's ViewHeaders (lowercase); nil: every header.
	shown []string
	h     handlers
	// One reusable Context per slot: handlers get a pointer without allocating. Defer replaces
	// a slot's Context (the old one goes with the continuation; see async.go).
	ctxs []*Context
	// held[slot] is 1 while a deferred call of the slot is not completed: Dispatch refuses the
	// slot meanwhile (async.go, "Re-entry").
	held []atomic.Uint32
	// deferred[slot] is the slot's deferred call while it is not completed, so the host's
	// cancel can reach its context.Context (async.go, CancelCall).
	deferred []atomic.Pointer[asyncCall]
	complete CompleteFunc // nil: the default completer (SetCompleter)
}

// The instance table is copy-on-write: Init and Shutdown (rare, serialised by instancesMu)
// publish a new table; Dispatch reads it with one atomic load and no lock. The in-process host
// numbers its instances 0, 1, 2, ... (one more per reload), so ids below denseIDs are an index
// into a slice (no hashing per call); any other id (test hosts, remote workers) is in a map.
var (
	instancesMu sync.Mutex
	instances   atomic.Pointer[instanceTable]
)

// denseIDs bounds the slice part of the table (a pointer per id up to the largest one used).
const denseIDs = 1 << 16

type instanceTable struct {
	dense []*instance
	other map[uint64]*instance
}

func lookupInstance(id uint64) *instance {
	t := instances.Load()
	if t == nil {
		return nil
	}
	if id < uint64(len(t.dense)) {
		return t.dense[id]
	}
	return t.other[id]
}

// publishInstance publishes a copy of the table with id set to inst (nil: removed). Callers
// hold instancesMu.
func publishInstance(id uint64, inst *instance) {
	next := &instanceTable{other: make(map[uint64]*instance)}
	if old := instances.Load(); old != nil {
		next.dense = append([]*instance(nil), old.dense...)
		for k, v := range old.other {
			next.other[k] = v
		}
	}
	switch {
	case id < denseIDs:
		for uint64(len(next.dense)) <= id {
			next.dense = append(next.dense, nil)
		}
		next.dense[id] = inst
	case inst != nil:
		next.other[id] = inst
	default:
		delete(next.other, id)
	}
	instances.Store(next)
}

// Init creates instance id of the plugin with index plugin (an index into Plugins()), decoding
// config (JSON) into the plugin's config type and allocating state for slotCount slots. It is
// called by the host once per configured instance before any traffic. Use InitResult to turn
// the error into a result code.
func Init(plugin uint32, id uint64, config []byte, slotCount uint32) error {
	return InitWith(plugin, id, config, slotCount, InitOptions{})
}

// InitOptions are per-instance settings of a host that is not the in-process C host.
type InitOptions struct {
	// Complete finishes the instance's pending calls; nil means the default completer
	// (SetCompleter), which the C host installs.
	Complete CompleteFunc
}

// InitWith is Init with per-instance options (test hosts, remote workers).
func InitWith(plugin uint32, id uint64, config []byte, slotCount uint32, opts InitOptions) (err error) {
	def, err := defaultRegistry.definition(plugin)
	if err != nil {
		return err
	}
	instancesMu.Lock()
	defer instancesMu.Unlock()
	if lookupInstance(id) != nil {
		return fmt.Errorf("%w: instance %d is already initialised", ErrInvalidArgument, id)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("plugin %q panicked during init: %v", def.info.Name, r)
		}
	}()
	h, err := def.newInstance(config, slotCount)
	if err != nil {
		return err
	}
	inst := &instance{
		id:        id,
		name:      def.info.Name,
		phases:    def.info.Phases,
		slotCount: slotCount,
		shown:     def.info.ViewHeaders,
		h:         h,
		ctxs:      make([]*Context, slotCount),
		held:      make([]atomic.Uint32, slotCount),
		deferred:  make([]atomic.Pointer[asyncCall], slotCount),
		complete:  opts.Complete,
	}
	for i := range inst.ctxs {
		inst.ctxs[i] = inst.newContext()
	}
	publishInstance(id, inst)
	return nil
}

// InitResult maps an error returned by Init to the result code the host expects.
func InitResult(err error) Result {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrUnknownPlugin):
		return ResultUnknownPlugin
	case errors.Is(err, ErrInvalidArgument):
		return ResultInvalidArgument
	}
	return ResultInitFailed
}

// Shutdown runs the plugin's Shutdown hook for instance id and forgets the instance.
func Shutdown(id uint64) error {
	instancesMu.Lock()
	inst := lookupInstance(id)
	if inst != nil {
		publishInstance(id, nil)
	}
	instancesMu.Unlock()
	if inst == nil {
		return fmt.Errorf("%w: no instance %d", ErrUnknownPlugin, id)
	}
	defer func() {
		if r := recover(); r != nil {
			hostLog(LogError, id, fmt.Sprintf("plugin %q panicked during shutdown: %v", inst.name, r))
		}
	}()
	inst.h.shutdown()
	return nil
}

// Dispatch runs phase of the request described by view through instance id. view points to a
// host-laid-out request view (WeftRequestView at offset 0, view.size bytes in all); out points
// to outCap writable bytes for mutation records. It returns the result code and the number of
// bytes of mutation records written (0 unless the result is ResultOK).
//
// A malformed view (a fixed string or a header array outside view.size, a misaligned array, a
// slot out of range, a phase that differs from view.phase) gives ResultInvalidArgument without
// running the handler. A header name or value outside view.size is found when the handler
// reads it: it reads as absent (empty), and the call's result is ResultInvalidArgument with its
// mutations discarded. A handler panic is recovered into ResultPanic and logged through the host.
//
// A handler that calls Context.Defer (or Go) makes Dispatch answer ResultPending, unless the
// continuation finished before the handler returned (then its result is returned directly).
// Until that call is completed, a call on the same slot is refused with ResultInvalidArgument.
func Dispatch(id uint64, phase uint32, view unsafe.Pointer, out unsafe.Pointer, outCap uint32) (res Result, outLen uint32) {
	inst := lookupInstance(id)
	if inst == nil {
		return ResultUnknownPlugin, 0
	}
	p := Phase(phase)
	if inst.phases&p.Mask() == 0 {
		return ResultUnsupportedPhase, 0
	}
	if view == nil || uintptr(view)%8 != 0 || (out == nil && outCap > 0) {
		return ResultInvalidArgument, 0
	}
	v := (*RequestView)(view)
	if v.Phase != phase || v.Slot >= inst.slotCount || !validView(v) || !validBody(p, v) {
		return ResultInvalidArgument, 0
	}
	if inst.held[v.Slot].Load() != 0 {
		return ResultInvalidArgument, 0 // a deferred call of this slot is not completed yet
	}
	ctx := inst.ctxs[v.Slot]
	ctx.begin(view, v.Size, p, id, out, outCap)
	defer func() {
		r := recover()
		if r != nil {
			logPanic(inst, p, r)
			res, outLen = ResultPanic, 0
		}
		if a := ctx.async.d.a; a != nil {
			// Deferred: the Context belongs to the continuation now (async.go).
			res, outLen = a.handlerReturned(ctx, r != nil)
			return
		}
		ctx.end()
	}()
	inst.h.run(ctx, v.Slot, v.Generation)
	if ctx.async.d.a != nil {
		return ResultPending, 0 // replaced by the deferred function above
	}
	return ctx.result(inst)
}

// result is the phase result of a handler that has finished with ctx.
func (c *Context) result(inst *instance) (Result, uint32) {
	switch {
	case c.malformed:
		hostLog(LogError, inst.id, fmt.Sprintf("plugin %q in %s: the host's view has a string outside its size", inst.name, c.phase))
		return ResultInvalidArgument, 0
	case c.failure != nil:
		hostLog(LogError, inst.id, fmt.Sprintf("plugin %q failed in %s: %v", inst.name, c.phase, c.failure))
		return ResultHandlerFailed, 0
	case c.overflow:
		return ResultMutationOverflow, 0
	}
	return ResultOK, uint32(c.n)
}

func logPanic(inst *instance, p Phase, r any) {
	hostLog(LogError, inst.id, fmt.Sprintf("plugin %q panicked in %s: %v", inst.name, p, r))
	hostLog(LogDebug, inst.id, string(debug.Stack()))
}

// validView checks, in constant time, what every accessor relies on: the view is at least a
// RequestView, its fixed strings lie within v.Size bytes and both header arrays (the entries,
// not the strings they point to) lie within v.Size bytes, 4-aligned. A header's name and value
// are checked by the accessor that reads them (Context.str), so a call costs the same however
// many headers the request has, and a bad entry no handler reads costs nothing.
func validView(v *RequestView) bool {
	size := uint64(v.Size)
	if size < SizeofRequestView {
		return false
	}
	// The largest end of the fixed strings, without a branch per string.
	last := max(v.Method.end(), v.Path.end(), v.Query.end(), v.Host.end(),
		v.ClientAddr.end(), v.Scheme.end(), v.Version.end(), v.ServerName.end())
	return last <= size &&
		validHeaders(size, v.ReqHeadersOff, v.ReqHeaderCount) &&
		validHeaders(size, v.RespHeadersOff, v.RespHeaderCount)
}

func validHeaders(size uint64, off, count uint32) bool {
	return count == 0 || (off%4 == 0 && uint64(off)+uint64(count)*SizeofHeader <= size)
}

// LogFunc receives plugin log lines: the host's log callback, or a test host's recorder.
type LogFunc func(level Level, instance uint64, msg string)

var logger atomic.Pointer[LogFunc]

// SetLogger installs the function log lines of all instances go to.
func SetLogger(f LogFunc) { logger.Store(&f) }

func hostLog(level Level, instance uint64, msg string) {
	if f := logger.Load(); f != nil && *f != nil {
		(*f)(level, instance, msg)
	}
}
