// Package weft is the Go SDK for writing weft HTTP plugins: Go code that a Rust proxy runs
// in-process through the weft C ABI.
//
// A plugin is a [Plugin] value registered from an init function:
//
//	type Config struct{ Greeting string `json:"greeting"` }
//	type State struct{ seen bool }
//
//	func init() {
//		weft.Register(weft.Plugin[Config, State]{
//			Name: "hello",
//			RequestHeaders: func(ctx *weft.Context, cfg *Config, st *State) {
//				ctx.SetRequestHeader("x-greeting", cfg.Greeting)
//			},
//		})
//	}
//
// Plugin packages are linked into one shared library together with package weft/cabi (see
// cmd/weft-plugins) and built with go build -buildmode=c-shared. Handlers are unit-tested
// without a proxy through package weft/wefttest.
//
// # Ownership and lifetime
//
// Everything a [Context] returns (method, path, header names and values, ...) is a string over
// host memory, not a copy: it is valid only until the handler returns. Use strings.Clone to
// keep one, e.g. in the per-request state. Mutations are encoded straight into a host buffer;
// the SDK does not validate header syntax (the host validates the whole batch and rejects
// it as a unit).
//
// # Concurrency
//
// Handlers of one instance run concurrently for different requests. The per-request state S
// is private to its request (the phases of one request never overlap), so it needs no locking;
// the config C is shared and must be treated as read-only after Init. The Log phase may run on
// a different OS thread than the earlier phases, but always after them.
//
// # Asynchronous handlers
//
// A handler must not block the host's thread. To wait for something (an HTTP call, a
// database), it hands the phase call to a goroutine and returns; the host waits without
// blocking any thread and the request continues when the goroutine is done:
//
//	RequestHeaders: func(ctx *weft.Context, cfg *Config, st *State) {
//		ctx.Go(func(ctx *weft.Context) error {
//			token, _ := ctx.RequestHeader("authorization") // valid until the call completes
//			user, err := cfg.lookup(token)                  // may take a while
//			if err != nil {
//				return err // the phase fails: logged, the instance's failure policy applies
//			}
//			st.user = user // the per-request state is usable here too
//			ctx.SetRequestHeader("x-user", user)
//			return nil // the call completes with the mutations made on ctx
//		})
//	},
//
// Until the goroutine returns, the Context (its accessors, whose strings stay valid, and its
// mutation methods) and the state belong to it; the handler should return right after Go. A
// panic in the goroutine is recovered, logged and fails the phase with a panic result. Go is a
// wrapper around [Context.Defer], which returns a [Deferred] handle for code that completes
// from elsewhere (a callback, a batching loop): exactly one [Deferred.Done] or [Deferred.Fail]
// completes the call; a second one returns [ErrAlreadyCompleted] and does nothing. After it,
// neither the Context nor the state may be used. The host may have given up meanwhile (phase
// deadline, client gone): Done then returns [ErrCancelled] and the result is discarded. A
// Deferred that is dropped without Done or Fail is failed when the garbage collector finds it.
//
// Asynchronous completion needs a host with the complete function; with an older host Defer
// returns [ErrAsyncUnavailable] and Go fails the phase. The synchronous path is unchanged and
// does not allocate; going asynchronous costs a few small allocations and a goroutine.
//
// # Blocking plugins
//
// A plugin whose handlers block (synchronous I/O, cgo calls, locks held for long) sets
// Blocking in its [Plugin]. The host then never calls it on its I/O threads: each phase call is
// posted to a shared-memory ring, and the SDK runs the handler on a bounded pool of goroutines
// (at most 256 at once over all rings, or the number in the environment variable
// WEFT_BLOCKING_WORKERS) and reports the result to the host. The handlers are written exactly
// as for inline plugins (they may even use Go). It costs a hand-off between threads per call
// (microseconds), so use it only for handlers that do block.
package weft

import "github.com/weftrs/weft/cgo/internal/core"

// Plugin describes a plugin: its name and handlers. C is the instance configuration, decoded
// from the instance's JSON config with unknown fields rejected; S is the per-request state,
// reset to its zero value for every new request. The phases a plugin runs in are those whose
// handler is non-nil.
type Plugin[C any, S any] = core.Plugin[C, S]

// Context is a handler's access to the current phase call; see the package documentation for
// the lifetime of the strings it returns.
type Context = core.Context

// Phase identifies an HTTP processing phase.
type Phase = core.Phase

// Phases passed to handlers (Context.Phase).
const (
	PhaseRequestHeaders  = core.PhaseRequestHeaders
	PhaseResponseHeaders = core.PhaseResponseHeaders
	PhaseRequestBody     = core.PhaseRequestBody
	PhaseResponseBody    = core.PhaseResponseBody
	PhaseLog             = core.PhaseLog
)

// Level is a host log level for Context.Log.
type Level = core.Level

// Log levels.
const (
	LogError = core.LogError
	LogWarn  = core.LogWarn
	LogInfo  = core.LogInfo
	LogDebug = core.LogDebug
)

// Register adds p to the library. Call it from an init function. Invalid registrations (empty
// or duplicate name, no handler) do not panic: the library reports them to the host, which
// refuses to load it with that message.
func Register[C any, S any](p Plugin[C, S]) { core.Register(p) }

// Deferred is the handle of a phase call that finishes after its handler returned; see
// [Context.Defer] and the package documentation.
type Deferred = core.Deferred

// Errors of the asynchronous API.
var (
	// ErrAsyncUnavailable: the host cannot complete calls asynchronously (an older host).
	ErrAsyncUnavailable = core.ErrAsyncUnavailable
	// ErrNotInCall: Defer was called outside a handler call.
	ErrNotInCall = core.ErrNotInCall
	// ErrAlreadyDeferred: Defer or Go was called twice in one phase call.
	ErrAlreadyDeferred = core.ErrAlreadyDeferred
	// ErrAlreadyCompleted: Done or Fail on a call that was completed already.
	ErrAlreadyCompleted = core.ErrAlreadyCompleted
	// ErrCancelled: the host had stopped waiting for the call; the result was discarded.
	ErrCancelled = core.ErrCancelled
)
