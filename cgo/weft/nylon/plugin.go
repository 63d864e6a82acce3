package nylon

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// NylonPlugin is the plugin library; [NewNylonPlugin] returns the one instance.
type NylonPlugin struct{}

var (
	pluginOnce sync.Once
	plugin     *NylonPlugin

	initializeHandler atomic.Pointer[func(map[string]any)]
	shutdownHandler   atomic.Pointer[func()]
	// liveInstances counts the weft instances between Init and Shutdown: Nylon's shutdown
	// handler runs once, when the last one shuts down.
	liveInstances atomic.Int64
)

// NewNylonPlugin returns the plugin library's handle (the same one on every call).
func NewNylonPlugin() *NylonPlugin {
	pluginOnce.Do(func() { plugin = &NylonPlugin{} })
	return plugin
}

// NewInitializer adapts a typed initializer to [NylonPlugin.Initialize]: the config map is
// decoded into a T through JSON.
func NewInitializer[T any](fn func(config T)) func(map[string]any) {
	return func(raw map[string]any) {
		var cfg T
		if data, err := json.Marshal(raw); err == nil {
			_ = json.Unmarshal(data, &cfg)
		}
		fn(cfg)
	}
}

// Initialize sets the handler that runs when a plugin instance starts, with the instance's
// config (the weft instance config, which is also what GetPayload returns). It runs once per
// weft instance, before the instance serves a request; a panic in it refuses startup.
func (p *NylonPlugin) Initialize(fn func(map[string]any)) { initializeHandler.Store(&fn) }

// Shutdown sets the handler that runs once when the host shuts the plugin down (after the last
// instance's shutdown).
func (p *NylonPlugin) Shutdown(fn func()) { shutdownHandler.Store(&fn) }

// AddPhaseHandler registers the entry name as a weft plugin: a plugin instance in weft.yaml
// names it (`plugin: NAME`). phaseHandler runs once per request, at the request's first phase
// call, and sets the request's filters on the PhaseHandler it gets. Call it from an init
// function, like weft.Register.
func (p *NylonPlugin) AddPhaseHandler(name string, phaseHandler func(phase *PhaseHandler)) {
	if phaseHandler == nil {
		phaseHandler = func(*PhaseHandler) {}
	}
	weft.Register(weft.Plugin[map[string]any, session]{
		Name: name,
		Init: initInstance,
		RequestHeaders: func(ctx *weft.Context, cfg *map[string]any, s *session) {
			s.run(ctx, cfg, phaseHandler, (*session).requestFilter)
		},
		ResponseHeaders: func(ctx *weft.Context, cfg *map[string]any, s *session) {
			s.run(ctx, cfg, phaseHandler, (*session).responseFilter)
		},
		// Nylon's body filter reads and replaces the whole response body.
		ResponseBody: func(ctx *weft.Context, cfg *map[string]any, s *session) {
			s.run(ctx, cfg, phaseHandler, (*session).responseBodyFilter)
		},
		ResponseBodyBuffered: true,
		Log: func(ctx *weft.Context, cfg *map[string]any, s *session) {
			s.run(ctx, cfg, phaseHandler, (*session).logging)
		},
		Shutdown: shutdownInstance,
	})
}

func initInstance(cfg *map[string]any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("nylon Initialize handler panicked: %v", r)
		}
	}()
	if fn := initializeHandler.Load(); fn != nil {
		(*fn)(*cfg)
	}
	liveInstances.Add(1) // only an instance that started gets a Shutdown
	return nil
}

func shutdownInstance(*map[string]any) {
	if liveInstances.Add(-1) != 0 {
		return
	}
	if fn := shutdownHandler.Load(); fn != nil {
		defer func() { _ = recover() }() // a failing shutdown hook must not stop the others
		(*fn)()
	}
}

// PhaseHandler holds one request's filters. Filters a request does not set continue at once.
type PhaseHandler struct {
	// SessionId identifies the request (weft's request id, truncated to 32 bits).
	SessionId int32

	requestFilter      func(ctx *PhaseRequestFilter)
	responseFilter     func(ctx *PhaseResponseFilter)
	responseBodyFilter func(ctx *PhaseResponseBodyFilter)
	logging            func(ctx *PhaseLogging)
}

// RequestFilter sets the filter of the request-headers phase; it may answer the request
// itself (Response().SetStatus/BodyRaw, then End).
func (p *PhaseHandler) RequestFilter(fn func(ctx *PhaseRequestFilter)) { p.requestFilter = fn }

// ResponseFilter sets the filter of the response-headers phase.
func (p *PhaseHandler) ResponseFilter(fn func(ctx *PhaseResponseFilter)) { p.responseFilter = fn }

// ResponseBodyFilter sets the filter of the response body (the whole body, in one call).
func (p *PhaseHandler) ResponseBodyFilter(fn func(ctx *PhaseResponseBodyFilter)) {
	p.responseBodyFilter = fn
}

// Logging sets the filter that runs after the response was sent.
func (p *PhaseHandler) Logging(fn func(ctx *PhaseLogging)) { p.logging = fn }

// Status codes, content types and header names of Nylon's SDK.
const (
	StatusOK                  = 200
	StatusFound               = 302
	StatusBadRequest          = 400
	StatusUnauthorized        = 401
	StatusForbidden           = 403
	StatusNotFound            = 404
	StatusTooManyRequests     = 429
	StatusInternalServerError = 500
)

const (
	ContentTypeJSON = "application/json"
	ContentTypeText = "text/plain; charset=utf-8"
	ContentTypeHTML = "text/html; charset=utf-8"
)

const (
	HeaderContentType      = "Content-Type"
	HeaderContentLength    = "Content-Length"
	HeaderLocation         = "Location"
	HeaderTransferEncoding = "Transfer-Encoding"
)

// now is the clock of Timestamp and Duration.
var now = time.Now
