package nylon

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// PhaseRequestFilter is the context of a request filter (weft's request-headers phase).
type PhaseRequestFilter struct{ s *session }

// Request returns the request being filtered.
func (p *PhaseRequestFilter) Request() *Request { return &p.s.req }

// Response returns the response being built: headers set here go to the client with the
// upstream's response, or with the local reply when the filter calls End.
func (p *PhaseRequestFilter) Response() *Response { return &p.s.res }

// GetPayload returns the instance config (read-only: every request of the instance shares it).
func (p *PhaseRequestFilter) GetPayload() map[string]any { return p.s.payload() }

// Next continues with the next plugin and the upstream.
func (p *PhaseRequestFilter) Next() { p.s.next() }

// End answers the request with the response built through Response() (status 200 unless set);
// the upstream is not contacted.
func (p *PhaseRequestFilter) End() { p.s.end() }

// WebSocketUpgrade is not supported: a weft route hands WebSocket connections to a plugin's
// WebSocket handlers (weft.Plugin.WebSocketOpen ...), declared up front, not upgraded from a
// request filter. It returns an error; the filter should then call Next, as Nylon's example does.
func (p *PhaseRequestFilter) WebSocketUpgrade(WebSocketCallbacks) error { return errNoEquivalent }

// Weft returns the weft Context of the call, for what Nylon's API lacks (e.g. Go for slow work).
func (p *PhaseRequestFilter) Weft() *weft.Context { return p.s.ctx }

// PhaseResponseFilter is the context of a response filter (weft's response-headers phase).
type PhaseResponseFilter struct{ s *session }

// Request returns the request.
func (p *PhaseResponseFilter) Request() *Request { return &p.s.req }

// Response returns the upstream's response.
func (p *PhaseResponseFilter) Response() *Response { return &p.s.res }

// SetResponseHeader sets a response header (Content-Length and Transfer-Encoding are ignored:
// the proxy frames the body).
func (p *PhaseResponseFilter) SetResponseHeader(key, value string) { p.s.setHeader(key, value, false) }

// RemoveResponseHeader removes a response header.
func (p *PhaseResponseFilter) RemoveResponseHeader(key string) { p.s.setHeader(key, "", true) }

// SetResponseStatus sets the response status.
func (p *PhaseResponseFilter) SetResponseStatus(status uint16) { p.s.setStatus(int(status)) }

// GetRequestHeader returns a request header's value, or "".
func (p *PhaseResponseFilter) GetRequestHeader(key string) string { return p.s.req.Header(key) }

// GetRequestHeaders returns the request headers as a map of lowercase names.
func (p *PhaseResponseFilter) GetRequestHeaders() map[string]string {
	return p.s.req.Headers().GetAll()
}

// GetPayload returns the instance config (read-only).
func (p *PhaseResponseFilter) GetPayload() map[string]any { return p.s.payload() }

// Next continues.
func (p *PhaseResponseFilter) Next() { p.s.next() }

// Weft returns the weft Context of the call.
func (p *PhaseResponseFilter) Weft() *weft.Context { return p.s.ctx }

// PhaseResponseBodyFilter is the context of a response body filter: weft's response-body phase
// in buffered mode, so the filter sees the whole body at once (up to the proxy's
// max_buffered_body_bytes; a larger body is answered 502).
type PhaseResponseBodyFilter struct{ s *session }

// Request returns the request.
func (p *PhaseResponseBodyFilter) Request() *Request { return &p.s.req }

// Response returns the response; ReadBody and BodyRaw read and replace its body.
func (p *PhaseResponseBodyFilter) Response() *Response { return &p.s.res }

// GetPayload returns the instance config (read-only).
func (p *PhaseResponseBodyFilter) GetPayload() map[string]any { return p.s.payload() }

// Next continues.
func (p *PhaseResponseBodyFilter) Next() { p.s.next() }

// Weft returns the weft Context of the call.
func (p *PhaseResponseBodyFilter) Weft() *weft.Context { return p.s.ctx }

// PhaseLogging is the context of a logging filter (weft's log phase, after the response was
// sent); changes to the response have no effect there.
type PhaseLogging struct{ s *session }

// Request returns the request.
func (p *PhaseLogging) Request() *Request { return &p.s.req }

// Response returns the response as sent.
func (p *PhaseLogging) Response() *Response { return &p.s.res }

// GetPayload returns the instance config (read-only).
func (p *PhaseLogging) GetPayload() map[string]any { return p.s.payload() }

// Next continues.
func (p *PhaseLogging) Next() { p.s.next() }

// Weft returns the weft Context of the call.
func (p *PhaseLogging) Weft() *weft.Context { return p.s.ctx }

// Headers is a header map with lowercase names.
type Headers struct {
	headers map[string]string
}

// Get returns the value of the header key, or "".
func (h *Headers) Get(key string) string { return h.headers[strings.ToLower(key)] }

// GetAll returns every header; repeated headers are joined with ", ".
func (h *Headers) GetAll() map[string]string { return h.headers }

// Request reads the request. Its strings are copies, valid after the call too (as in Nylon).
type Request struct{ s *session }

// Header returns the first value of request header key (any case), or "".
func (r *Request) Header(key string) string {
	v, _ := r.s.ctx.RequestHeader(key)
	return strings.Clone(v)
}

// Headers returns every request header.
func (r *Request) Headers() *Headers {
	return &Headers{headers: collect(r.s.ctx.RequestHeaders())}
}

// URL returns scheme://host/path?query.
func (r *Request) URL() string {
	c := r.s.ctx
	u := c.Scheme() + "://" + c.Host() + c.Path()
	if q := c.Query(); q != "" {
		u += "?" + q
	}
	return u
}

// Path returns the request path.
func (r *Request) Path() string { return strings.Clone(r.s.ctx.Path()) }

// Query returns the query string without "?".
func (r *Request) Query() string { return strings.Clone(r.s.ctx.Query()) }

// Params returns an empty map: weft routes match path prefixes and have no path parameters.
func (r *Request) Params() map[string]string { return map[string]string{} }

// Host returns the host the client asked for.
func (r *Request) Host() string { return strings.Clone(r.s.ctx.Host()) }

// ClientIP returns the client's IP address, or "" when unknown.
func (r *Request) ClientIP() string {
	if ip := r.s.ctx.ClientIP(); ip.IsValid() {
		return ip.String()
	}
	return ""
}

// Method returns the request method.
func (r *Request) Method() string { return strings.Clone(r.s.ctx.Method()) }

// Bytes returns 0: weft does not count a request's bytes for plugins.
func (r *Request) Bytes() int64 { return 0 }

// Timestamp returns when this plugin first saw the request, in Unix milliseconds.
func (r *Request) Timestamp() int64 { return r.s.start.UnixMilli() }

// RawBody returns nil: the request body is not available in a request filter (weft plugins
// read it in a request-body phase, which Nylon's API has no filter for).
func (r *Request) RawBody() []byte { return nil }

// Response reads and changes the response; see the phase contexts for what applies when.
type Response struct{ s *session }

// SetHeader sets a response header (Content-Length and Transfer-Encoding are ignored: the proxy
// frames the body).
func (r *Response) SetHeader(key, value string) { r.s.setHeader(key, value, false) }

// RemoveHeader removes a response header.
func (r *Response) RemoveHeader(key string) { r.s.setHeader(key, "", true) }

// SetStatus sets the response status.
func (r *Response) SetStatus(status uint16) { r.s.setStatus(int(status)) }

// BodyRaw sets the response body: the local reply's in a request filter (with End), the
// replacement of the upstream's body in the response and body filters.
func (r *Response) BodyRaw(body []byte) { r.s.setBody(body) }

// BodyJSON sets a JSON body and its content type.
func (r *Response) BodyJSON(v any) *Response {
	r.SetHeader(HeaderContentType, ContentTypeJSON)
	b, _ := json.Marshal(v)
	r.BodyRaw(b)
	return r
}

// BodyText sets a text body and its content type.
func (r *Response) BodyText(s string) *Response {
	r.SetHeader(HeaderContentType, ContentTypeText)
	r.BodyRaw([]byte(s))
	return r
}

// BodyHTML sets an HTML body and its content type.
func (r *Response) BodyHTML(s string) *Response {
	r.SetHeader(HeaderContentType, ContentTypeHTML)
	r.BodyRaw([]byte(s))
	return r
}

// Redirect answers with a redirect to url (302 unless a code is given) and an empty body.
func (r *Response) Redirect(url string, code ...uint16) *Response {
	status := uint16(StatusFound)
	if len(code) > 0 {
		status = code[0]
	}
	r.SetStatus(status)
	r.SetHeader(HeaderLocation, url)
	r.BodyRaw([]byte{})
	return r
}

// Stream is not supported: a weft plugin answers with one body, not a stream. It returns an
// error.
func (r *Response) Stream() (*ResponseStream, error) { return nil, errNoEquivalent }

// ReadBody returns a copy of the response body in a body filter, nil elsewhere.
func (r *Response) ReadBody() []byte {
	if r.s.ctx.Phase() != weft.PhaseResponseBody {
		return nil
	}
	return bytes.Clone(r.s.ctx.Body())
}

// Status returns the response status (in a request filter: the one set, or 0).
func (r *Response) Status() int {
	if r.s.ctx.Phase() == weft.PhaseRequestHeaders {
		return r.s.status
	}
	return r.s.ctx.Status()
}

// Bytes returns 0: weft does not count a response's bytes for plugins.
func (r *Response) Bytes() int64 { return 0 }

// Headers returns the response headers (none before the response filter).
func (r *Response) Headers() map[string]string { return collect(r.s.ctx.ResponseHeaders()) }

// Duration returns the milliseconds since this plugin first saw the request.
func (r *Response) Duration() int64 { return now().Sub(r.s.start).Milliseconds() }

// Error returns "": a weft plugin is not told why a request failed.
func (r *Response) Error() string { return "" }

// ResponseStream is Nylon's streamed response; [Response.Stream] never returns one.
type ResponseStream struct{}

// Write fails: streaming is not supported.
func (s *ResponseStream) Write(p []byte) (int, error) { return 0, errNoEquivalent }

// End fails: streaming is not supported.
func (s *ResponseStream) End() error { return errNoEquivalent }

// WebSocketConn and WebSocketCallbacks exist so Nylon code compiles; WebSocketUpgrade always
// fails, so no callback is ever called.
type WebSocketConn struct{}

// WebSocketCallbacks are the callbacks of Nylon's WebSocketUpgrade.
type WebSocketCallbacks struct {
	OnOpen          func(ws *WebSocketConn)
	OnMessageText   func(ws *WebSocketConn, msg string)
	OnMessageBinary func(ws *WebSocketConn, data []byte)
	OnClose         func(ws *WebSocketConn)
	OnError         func(ws *WebSocketConn, err string)
}

// SendText fails: see WebSocketUpgrade.
func (ws *WebSocketConn) SendText(string) error { return errNoEquivalent }

// SendBinary fails: see WebSocketUpgrade.
func (ws *WebSocketConn) SendBinary([]byte) error { return errNoEquivalent }

// Close fails: see WebSocketUpgrade.
func (ws *WebSocketConn) Close() error { return errNoEquivalent }

// JoinRoom fails: see WebSocketUpgrade.
func (ws *WebSocketConn) JoinRoom(string) error { return errNoEquivalent }

// LeaveRoom fails: see WebSocketUpgrade.
func (ws *WebSocketConn) LeaveRoom(string) error { return errNoEquivalent }

// BroadcastText fails: see WebSocketUpgrade.
func (ws *WebSocketConn) BroadcastText(string, string) error { return errNoEquivalent }

// BroadcastBinary fails: see WebSocketUpgrade.
func (ws *WebSocketConn) BroadcastBinary(string, []byte) error { return errNoEquivalent }

// collect copies headers into a map; repeated names are joined with ", ".
func collect(all func(yield func(string, string) bool)) map[string]string {
	m := map[string]string{}
	for name, value := range all {
		if prev, ok := m[name]; ok {
			m[name] = prev + ", " + value
		} else {
			m[strings.Clone(name)] = strings.Clone(value)
		}
	}
	return m
}
