// Package nylon implements the Go plugin API of Nylon (github.com/AssetsArt/nylon, package
// sdk/go/sdk) on weft: the same types and calls, carried out on weft's in-place request view
// and mutation batch, so a Nylon plugin runs in weft with its import path changed. A c-shared
// plugin library imports package nylon/sdk (which also links the C ABI); a NATS worker, or a
// library that has its own cabi import, imports this package.
//
//	plugin := sdk.NewNylonPlugin()
//	plugin.AddPhaseHandler("authz", func(phase *sdk.PhaseHandler) {
//		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
//			if ctx.Request().Header("authorization") == "" {
//				ctx.Response().SetStatus(401)
//				ctx.Response().BodyText("unauthorized")
//				ctx.End()
//				return
//			}
//			ctx.Next()
//		})
//	})
//
// Each AddPhaseHandler entry becomes a weft plugin of that name; a plugin instance of weft.yaml
// names it (plugin: authz) and its config is the entry's payload. The phase handler runs once
// per request (at its first phase call) and its filters run in weft's phases:
//
//	RequestFilter       request_headers
//	ResponseFilter      response_headers
//	ResponseBodyFilter  response_body, buffered (the whole body in one call)
//	Logging             log
//
// A response body streams past untouched when the request sets no ResponseBodyFilter and no
// body. Strings the Request returns are copies, valid after the call (as in Nylon), so this
// layer allocates where weft's own API does not; see the benchmark in this package for the
// cost per phase.
//
// # What each call maps to
//
//	Nylon                                   weft
//	NewNylonPlugin                          one handle per library
//	NewInitializer[T]                       config map decoded into T through JSON
//	Initialize(fn)                          fn(config) in each instance's Init; a panic refuses startup
//	Shutdown(fn)                            fn once, when the last instance shuts down
//	AddPhaseHandler(name, fn)               weft.Register of plugin "name"; fn per request
//	PhaseHandler.SessionId                  Context.RequestID, truncated to int32
//	GetPayload                              the instance config (a map shared by all requests: read-only)
//	Next                                    the phase ends normally when the filter returns
//	End (request filter)                    Context.Reply with the status (200 default), headers, body set
//	Request().Header / Headers              RequestHeader / RequestHeaders (copied; repeats joined ", ")
//	Request().Path / Query / Method / Host  Path / Query / Method / Host (copied)
//	Request().URL                           Scheme + "://" + Host + Path + "?" + Query
//	Request().ClientIP                      Context.ClientIP().String()
//	Request().Timestamp                     when this plugin first saw the request (Unix ms)
//	Response().SetHeader / RemoveHeader     request filter: kept and applied to the reply or the
//	                                        upstream's response; later: Set/RemoveResponseHeader
//	Response().SetStatus                    request filter: the reply's status; later: SetStatus
//	Response().BodyRaw / BodyJSON / ...     request filter: the reply's body; body filter: ReplaceBody
//	Response().ReadBody                     a copy of Context.Body in the body filter
//	Response().Status / Headers             Context.Status / ResponseHeaders (copied)
//	Response().Duration                     milliseconds since Timestamp
//	PhaseResponseFilter.SetResponseHeader,  SetResponseHeader, RemoveResponseHeader, SetStatus,
//	  RemoveResponseHeader, SetResponseStatus,  RequestHeader
//	  GetRequestHeader(s)
//
// # What has no equivalent, and why
//
//	Request().Params           empty map: weft routes match path prefixes, without parameters
//	Request().RawBody          nil: a weft request-headers phase has no body; Nylon has no
//	                           request-body filter to map weft's request-body phase to
//	Request().Bytes,           0 / 0 / "": the proxy does not give plugins byte counts or
//	  Response().Bytes, Error    the failure of a request
//	Response().Stream          error: a weft plugin answers with one body, not a stream
//	WebSocketUpgrade (and      error: weft hands a route's WebSocket connections to
//	  WebSocketConn)             WebSocket handlers declared up front (weft.Plugin.WebSocketOpen
//	                             and the rest), not upgraded from a request filter
//	Content-Length,            ignored when set or removed: weft frames a changed body itself
//	  Transfer-Encoding          (the proxy refuses plugin changes to framing headers)
//	Next or End after the      logged and ignored: a weft phase ends when its filter returns;
//	  filter returned            slow work goes to weft's Context.Go (the filter's Weft method)
//	NylonMethod* constants     not provided: Nylon's wire protocol between plugin and host
//
// A filter that returns without Next or End continues as if it had called Next (in Nylon the
// request would wait forever). Every context also has Weft, the call's *weft.Context, for what
// Nylon's API does not offer.
package nylon
