// Package sdk lets a Nylon Go plugin build as a weft plugin library by changing one import:
//
//	import "github.com/AssetsArt/nylon/sdk/go/sdk"   // before
//	import "github.com/weftrs/weft/cgo/weft/nylon/sdk" // after
//
// then go build -buildmode=c-shared as before. It re-exports package
// github.com/weftrs/weft/cgo/weft/nylon (see its documentation for what each Nylon call maps
// to and what has no equivalent) and links the weft C ABI (package weft/cabi) into the
// library. Plugins that also run in a NATS worker import package nylon instead, which does
// not link the C ABI.
package sdk

import (
	"github.com/weftrs/weft/cgo/weft/nylon"
	// The C ABI of the library: a Nylon plugin's main package imports only this package.
	_ "github.com/weftrs/weft/cgo/weft/cabi"
)

// The types of Nylon's SDK; documented in package nylon.
type (
	NylonPlugin             = nylon.NylonPlugin
	PhaseHandler            = nylon.PhaseHandler
	PhaseRequestFilter      = nylon.PhaseRequestFilter
	PhaseResponseFilter     = nylon.PhaseResponseFilter
	PhaseResponseBodyFilter = nylon.PhaseResponseBodyFilter
	PhaseLogging            = nylon.PhaseLogging
	Request                 = nylon.Request
	Response                = nylon.Response
	Headers                 = nylon.Headers
	ResponseStream          = nylon.ResponseStream
	WebSocketConn           = nylon.WebSocketConn
	WebSocketCallbacks      = nylon.WebSocketCallbacks
)

// NewNylonPlugin returns the plugin library's handle; see nylon.NewNylonPlugin.
func NewNylonPlugin() *NylonPlugin { return nylon.NewNylonPlugin() }

// NewInitializer adapts a typed initializer; see nylon.NewInitializer.
func NewInitializer[T any](fn func(config T)) func(map[string]any) { return nylon.NewInitializer(fn) }

// Status codes, content types and header names of Nylon's SDK.
const (
	StatusOK                  = nylon.StatusOK
	StatusFound               = nylon.StatusFound
	StatusBadRequest          = nylon.StatusBadRequest
	StatusUnauthorized        = nylon.StatusUnauthorized
	StatusForbidden           = nylon.StatusForbidden
	StatusNotFound            = nylon.StatusNotFound
	StatusTooManyRequests     = nylon.StatusTooManyRequests
	StatusInternalServerError = nylon.StatusInternalServerError

	ContentTypeJSON = nylon.ContentTypeJSON
	ContentTypeText = nylon.ContentTypeText
	ContentTypeHTML = nylon.ContentTypeHTML

	HeaderContentType      = nylon.HeaderContentType
	HeaderContentLength    = nylon.HeaderContentLength
	HeaderLocation         = nylon.HeaderLocation
	HeaderTransferEncoding = nylon.HeaderTransferEncoding
)
