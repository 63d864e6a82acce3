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
