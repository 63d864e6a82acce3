package core

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Plugin describes one plugin: its name and its handlers. C is the instance configuration
// (decoded from the instance's JSON config), S the per-request state.
//
// The phases a plugin handles are those whose handler field is non-nil.
type Plugin[C any, S any] struct {
	// Name identifies the plugin in the host configuration; unique within the library.
	Name string
	// Init is optional. It is called once per instance after the instance's JSON config has been
	// decoded into a fresh C (unknown fields are rejected). An error refuses startup with the
	// error's message. Init may derive unexported fields of C for the handlers.
	Init func(cfg *C) error
	// RequestHeaders runs when the request line and headers have arrived.
	RequestHeaders func(ctx *Context, cfg *C, state *S)
	// ResponseHeaders runs when the upstream's status and headers have arrived.
	ResponseHeaders func(ctx *Context, cfg *C, state *S)
	// RequestBody runs over the request body: once per chunk as it streams (the default), or
	// once with the whole body when RequestBodyBuffered is set. Context.Body returns the bytes
	// (in place, valid during the call), Context.EndOfStream marks the last call; the handler
	// can pass (do nothing), ReplaceBody, PrependBody, AppendBody or DropBody. Declaring it
	// costs only requests whose body it does not skip (Context.SkipBody in RequestHeaders).
	RequestBody func(ctx *Context, cfg *C, state *S)
	// RequestBodyBuffered: RequestBody gets the whole body in one call (up to the proxy's
	// max_buffered_body_bytes; a larger body is answered 413) and may also change the request
	// head or reply locally.
	RequestBodyBuffered bool
	// ResponseBody is RequestBody for the response body (ResponseHeaders can skip it, e.g.
	// by status or content type).
	ResponseBody func(ctx *Context, cfg *C, state *S)
	// ResponseBodyBuffered: ResponseBody gets the whole body in one call (a larger body is
	// answered 502) and may also change the response head or reply locally.
	ResponseBodyBuffered bool
	// Log runs after the response has been sent, off the request path, possibly on another OS
	// thread than the other phases (but always after them). Mutations are not allowed here.
	Log func(ctx *Context, cfg *C, state *S)
	// WebSocketOpen runs when a WebSocket connection of a route served by this plugin has been
	// accepted (see ws.go). The per-request state S lives until the connection closes.
	WebSocketOpen func(ctx *Context, cfg *C, state *S)
	// WebSocketMessage runs once per whole message (Context.WSMessage, WSIsBinary), in order.
	WebSocketMessage func(ctx *Context, cfg *C, state *S)
	// WebSocketError runs, in the close call, before WebSocketClose when the connection ended
	// with an error (Context.WSError).
	WebSocketError func(ctx *Context, cfg *C, state *S)
	// WebSocketClose runs once when the connection has ended (Context.WSCloseCode).
	WebSocketClose func(ctx *Context, cfg *C, state *S)
	// Shutdown is optional and runs once per instance when the host shuts down.
	Shutdown func(cfg *C)
	// Blocking marks handlers that may block (disk, locks, synchronous network calls). The host
	// then never calls them on its I/O threads: it posts each phase call to a worker ring and
	// the SDK runs it on a bounded pool of goroutines (see AttachWorker). Handlers are written
	// exactly as for inline plugins.
	Blocking bool
	// ViewHeaders, when non-nil, names the header lines the handlers read (WeftViewHeaders):
	// the host lays out only those, and the Context's header accessors see only those.
	ViewHeaders []string
}

// MaxViewHeaders is the most names a plugin's ViewHeaders may list (WEFT_MAX_VIEW_HEADERS).
const MaxViewHeaders = 64

// viewHeaders checks a ViewHeaders list and returns it lowercase without repeats (nil stays
// nil: every header), or what is wrong with it.
func viewHeaders(names []string) ([]string, error) {
	if names == nil {
		return nil, nil
	}
	if len(names) > MaxViewHeaders {
		return nil, fmt.Errorf("ViewHeaders lists %d names, more than %d", len(names), MaxViewHeaders)
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !IsToken(n) || len(n) > MaxHeaderNameLen {
			return nil, fmt.Errorf("ViewHeaders: %q is not a header name", n)
		}
		n = strings.ToLower(n)
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// IsToken reports whether s is a non-empty RFC 9110 token (the characters of a header name).
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// phases returns the phase mask implied by the non-nil handlers.
func (p *Plugin[C, S]) phases() uint32 {
	var m uint32
	if p.RequestHeaders != nil {
		m |= PhaseRequestHeaders.Mask()
	}
	if p.ResponseHeaders != nil {
		m |= PhaseResponseHeaders.Mask()
	}
	if p.RequestBody != nil {
		m |= PhaseRequestBody.Mask()
	}
	if p.ResponseBody != nil {
		m |= PhaseResponseBody.Mask()
	}
	if p.Log != nil {
		m |= PhaseLog.Mask()
	}
	return m | wsPhases(p.WebSocketOpen != nil, p.WebSocketMessage != nil, p.WebSocketClose != nil || p.WebSocketError != nil)
}

// PluginInfo is what the registry tells the host about one plugin.
type PluginInfo struct {
	Name   string
	Phases uint32
	// Flags is the WeftPluginInfo.flags bit set (FlagBlocking, ...).
	Flags uint32
	// ViewHeaders is the plugin's WeftViewHeaders list, lowercase; nil: every header.
	ViewHeaders []string
}

// flags returns the WeftPluginInfo.flags bits implied by the plugin's settings.
func (p *Plugin[C, S]) flags() uint32 {
	var f uint32
	if p.Blocking {
		f |= FlagBlocking
	}
	f |= bodyFlags(p.RequestBody != nil && p.RequestBodyBuffered, p.ResponseBody != nil && p.ResponseBodyBuffered)
	return f
}

// definition is a registered plugin with its type parameters erased.
type definition struct {
	info        PluginInfo
	newInstance func(config []byte, slotCount uint32) (handlers, error)
}

// registry holds the plugins of a library, in registration order. The zero value is ready to
// use. Registration errors are recorded rather than panicking (registration runs from init
// functions); they surface as the library's load error.
type registry struct {
	mu     sync.Mutex
	defs   []definition
	byName map[string]int
	errs   []string
}

var defaultRegistry registry

// Register adds p to the library's plugin registry. It is meant to be called from an init
// function. Errors (empty or duplicate name, no handlers) do not panic: they are recorded and
// reported to the host, which then refuses the whole library with that message.
func Register[C any, S any](p Plugin[C, S]) {
	register(&defaultRegistry, p)
}

func register[C any, S any](r *registry, p Plugin[C, S]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case p.Name == "":
		r.errs = append(r.errs, "plugin with an empty name")
		return
	case p.phases() == 0:
		r.errs = append(r.errs, fmt.Sprintf("plugin %q has no phase handler", p.Name))
		return
	}
	shown, err := viewHeaders(p.ViewHeaders)
	if err != nil {
		r.errs = append(r.errs, fmt.Sprintf("plugin %q: %v", p.Name, err))
		return
	}
	if _, dup := r.byName[p.Name]; dup {
		r.errs = append(r.errs, fmt.Sprintf("plugin %q registered twice", p.Name))
		return
	}
	if r.byName == nil {
		r.byName = make(map[string]int)
	}
	r.byName[p.Name] = len(r.defs)
	pp := p // the instance closures keep their own copy
	r.defs = append(r.defs, definition{
		info: PluginInfo{Name: p.Name, Phases: p.phases(), Flags: p.flags(), ViewHeaders: shown},
		newInstance: func(config []byte, slotCount uint32) (handlers, error) {
			return newTypedInstance(&pp, config, slotCount)
		},
	})
}

// Plugins returns the registered plugins in index order (the order of the descriptor's plugin
// array), or nil if registration failed.
func Plugins() []PluginInfo { return defaultRegistry.plugins() }

func (r *registry) plugins() []PluginInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		return nil
	}
	out := make([]PluginInfo, len(r.defs))
	for i, d := range r.defs {
		out[i] = d.info
	}
	return out
}

// LoadError returns the registration failure of the library, or nil.
func LoadError() error { return defaultRegistry.loadError() }

func (r *registry) loadError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return nil
	}
	return errors.New("weft: plugin registration failed: " + strings.Join(r.errs, "; "))
}

// Lookup returns the index of the plugin registered under name.
func Lookup(name string) (index uint32, ok bool) {
	r := &defaultRegistry
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.byName[name]
	return uint32(i), ok
}

func (r *registry) definition(index uint32) (definition, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 || uint64(index) >= uint64(len(r.defs)) {
		return definition{}, fmt.Errorf("%w: no plugin with index %d", ErrUnknownPlugin, index)
	}
	return r.defs[index], nil
}
