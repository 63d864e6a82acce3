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
// [Context.Context] gives the continuation a context.Context to pass to HTTP clients and
// databases; it is cancelled when the call finishes.
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
//
// # The headers a plugin reads
//
// By default the host copies every header line of the request (and of the response, from the
// response-headers phase on) into each call's view. A plugin that reads a few headers names
// them in ViewHeaders; the host then copies only those lines (a short head is still copied
// whole, which is cheaper than finding a few lines in it; reading two of a dozen lines saves
// ~160 instructions a call, reading none ~700: see docs/performance-log.md in the repository). The
// Context's header accessors (RequestHeader, RequestHeaders, ResponseHeader, ...) then see only
// those names, even when another plugin on the same route made the host copy more, so the
// plugin behaves the same in every chain. Host, Path and the other request-line accessors are
// unaffected; setting, adding and removing headers is not limited by the list.
package weft

import "github.com/weftrs/weft/cgo/internal/core"

// Plugin describes a plugin: its name and handlers. C is the instance configuration, decoded
// from the instance's JSON config with unknown fields rejected; S is the per-request state,
// reset to its zero value for every new request (for a WebSocket: per connection). The phases
// a plugin runs in are those whose handler is non-nil. A handler's *Context, *C and *S are
// valid for the call only (see the package documentation).
type Plugin[C any, S any] struct {
	// Name identifies the plugin in the host configuration; unique within the library.
	Name string
	// Init is optional: it runs once per instance after the config was decoded into a fresh C.
	// An error refuses startup with its message. Init may fill unexported fields of C.
	Init func(cfg *C) error
	// RequestHeaders runs when the request line and headers have arrived.
	RequestHeaders func(ctx *Context, cfg *C, state *S)
	// ResponseHeaders runs when the upstream's status and headers have arrived.
	ResponseHeaders func(ctx *Context, cfg *C, state *S)
	// RequestBody runs over the request body: once per chunk as it streams, or once with the
	// whole body when RequestBodyBuffered is set (Context.Body, Context.EndOfStream). It costs
	// only requests whose body it does not skip (Context.SkipBody in RequestHeaders).
	RequestBody func(ctx *Context, cfg *C, state *S)
	// RequestBodyBuffered: RequestBody gets the whole body in one call (up to the proxy's
	// max_buffered_body_bytes; a larger body is answered 413) and may also change the
	// request head or reply locally.
	RequestBodyBuffered bool
	// ResponseBody is RequestBody for the response body.
	ResponseBody func(ctx *Context, cfg *C, state *S)
	// ResponseBodyBuffered: ResponseBody gets the whole body in one call (a larger body is
	// answered 502) and may also change the response head or reply locally.
	ResponseBodyBuffered bool
	// Log runs after the response was sent, off the request path, possibly on another OS
	// thread than the other phases but always after them. Mutations are not allowed.
	Log func(ctx *Context, cfg *C, state *S)
	// WebSocketOpen runs when a WebSocket connection of a route served by this plugin has
	// been accepted.
	WebSocketOpen func(ctx *Context, cfg *C, state *S)
	// WebSocketMessage runs once per whole message (Context.WSMessage), in order.
	WebSocketMessage func(ctx *Context, cfg *C, state *S)
	// WebSocketError runs before WebSocketClose when the connection ended with an error
	// (Context.WSError).
	WebSocketError func(ctx *Context, cfg *C, state *S)
	// WebSocketClose runs once when the connection has ended (Context.WSCloseCode).
	WebSocketClose func(ctx *Context, cfg *C, state *S)
	// Shutdown is optional and runs once per instance when the host shuts down.
	Shutdown func(cfg *C)
	// Blocking marks handlers that may block (disk, locks, synchronous network calls): the
	// host then runs them on a bounded goroutine pool instead of its I/O threads.
	Blocking bool
	// ViewHeaders, when non-nil, names the request and response headers the handlers read (at
	// most 64, matched case-insensitively): the host then copies only those lines into each
	// call's view instead of every line of the head, and the Context's header accessors see
	// only them, whatever other plugins on the route read. nil: every header. An empty,
	// non-nil list: no header (Host, Path and the other request-line fields stay readable).
	ViewHeaders []string
}

// Register adds p to the library. Call it from an init function. Invalid registrations (empty
// or duplicate name, no handler) do not panic: the library reports them to the host, which
// refuses to load it with that message.
func Register[C any, S any](p Plugin[C, S]) {
	core.Register(core.Plugin[C, S]{
		Name:                 p.Name,
		Init:                 p.Init,
		RequestHeaders:       handler(p.RequestHeaders),
		ResponseHeaders:      handler(p.ResponseHeaders),
		RequestBody:          handler(p.RequestBody),
		RequestBodyBuffered:  p.RequestBodyBuffered,
		ResponseBody:         handler(p.ResponseBody),
		ResponseBodyBuffered: p.ResponseBodyBuffered,
		Log:                  handler(p.Log),
		WebSocketOpen:        handler(p.WebSocketOpen),
		WebSocketMessage:     handler(p.WebSocketMessage),
		WebSocketError:       handler(p.WebSocketError),
		WebSocketClose:       handler(p.WebSocketClose),
		Shutdown:             p.Shutdown,
		Blocking:             p.Blocking,
		ViewHeaders:          p.ViewHeaders,
	})
}

// handler adapts a handler to the core's Context type (the same memory, so no copy). A nil
// handler stays nil: the phases a plugin runs in follow from the non-nil ones.
func handler[C, S any](h func(*Context, *C, *S)) func(*core.Context, *C, *S) {
	if h == nil {
		return nil
	}
	return func(c *core.Context, cfg *C, st *S) { h((*Context)(c), cfg, st) }
}

// Phase identifies an HTTP processing phase; its String method gives the name used in logs
// (e.g. "request_headers").
type Phase = core.Phase

// Phases passed to handlers ([Context.Phase]).
const (
	PhaseRequestHeaders  = core.PhaseRequestHeaders
	PhaseRequestBody     = core.PhaseRequestBody
	PhaseResponseHeaders = core.PhaseResponseHeaders
	PhaseResponseBody    = core.PhaseResponseBody
	PhaseLog             = core.PhaseLog
	// PhaseWebSocketOpen: a WebSocket connection was accepted (Plugin.WebSocketOpen).
	PhaseWebSocketOpen = core.PhaseWebSocketOpen
	// PhaseWebSocketMessage: one whole message arrived (Plugin.WebSocketMessage).
	PhaseWebSocketMessage = core.PhaseWebSocketMessage
	// PhaseWebSocketClose: the connection ended (Plugin.WebSocketError, Plugin.WebSocketClose).
	PhaseWebSocketClose = core.PhaseWebSocketClose
)

// Level is a host log level for [Context.Log]; its String method gives the lowercase name.
type Level = core.Level

// Log levels.
const (
	LogError = core.LogError
	LogWarn  = core.LogWarn
	LogInfo  = core.LogInfo
	LogDebug = core.LogDebug
)

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
	// ErrCallFinished: the cause of a call's [Context.Context] once the call has finished.
	ErrCallFinished = core.ErrCallFinished
)
