package core

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"unsafe"
)

// Context is a handler's view of one phase call: read accessors over the host's request view
// and mutation methods that encode records straight into the host's output buffer.
//
// A Context and every string it returns are valid only until the handler returns (for a
// deferred call: until Done or Fail): the strings point into host memory that is reused
// afterwards. Copy what you keep (strings.Clone).
// A Context must not be used from other goroutines, except by the continuation of a
// deferred call (Defer, Go), which owns it until it calls Done or Fail.
type Context struct {
	base     unsafe.Pointer // start of the view; nil outside a call
	view     *RequestView
	size     uint32 // view.Size as read once at the start of the call: every string is within it
	phase    Phase
	instance uint64
	out      []byte // host output buffer, len == cap
	n        int    // bytes of records written to out
	overflow bool
	// malformed: an accessor met a string outside the view (Dispatch checked the arrays, not
	// every header's strings); the call fails with ResultInvalidArgument.
	malformed bool
	failure   error
	async     asyncState // Defer/Go (async.go); only the owner is set on the synchronous path
	// shown is the plugin's ViewHeaders (lowercase), fixed for the instance: the header
	// accessors see only these names, whatever else the host laid out for other plugins. nil:
	// every header.
	shown []string
	// std is the call's context.Context, made on first use (StdContext) so that calls which
	// never ask for one do not allocate; cancel ends it when the call finishes.
	std    context.Context
	cancel context.CancelCauseFunc
}

func (c *Context) begin(view unsafe.Pointer, size uint32, p Phase, instance uint64, out unsafe.Pointer, outCap uint32) {
	c.base = view
	c.view = (*RequestView)(view)
	c.size = size
	c.phase = p
	c.instance = instance
	if out != nil {
		c.out = unsafe.Slice((*byte)(out), outCap)
	} else {
		c.out = nil
	}
	c.n = 0
	c.overflow = false
	c.malformed = false
	c.failure = nil
}

func (c *Context) end() {
	c.endStd()
	c.base = nil
	c.view = nil
	c.size = 0
	c.out = nil
	c.failure = nil
}

// str returns the view bytes s refers to, without copying. s is a copy, so the host cannot
// change it between this check and the read: a string outside the view reads as "" and marks
// the call malformed.
func (c *Context) str(s Str) string {
	if uint64(s.Off)+uint64(s.Len) > uint64(c.size) {
		c.malformed = true
		return ""
	}
	if s.Len == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Add(c.base, s.Off)), s.Len)
}

// field returns the view bytes s refers to and whether they lie within the view.
func (c *Context) field(s Str) (string, bool) {
	v := c.str(s)
	return v, !c.malformed
}

func (c *Context) header(off uint32, i uint32) *Header {
	return (*Header)(unsafe.Add(c.base, uintptr(off)+uintptr(i)*SizeofHeader))
}

// Phase returns the phase being run.
func (c *Context) Phase() Phase { return c.phase }

// RequestID returns the request's id, unique within the host process and never 0.
func (c *Context) RequestID() uint64 { return c.view.RequestID }

// Method returns the request method, e.g. "GET".
func (c *Context) Method() string { return c.str(c.view.Method) }

// Path returns the request path without the query string; it starts with "/".
func (c *Context) Path() string { return c.str(c.view.Path) }

// Query returns the query string without the leading "?", or "" when absent.
func (c *Context) Query() string { return c.str(c.view.Query) }

// Host returns the host the client asked for (:authority or the host header), or "".
func (c *Context) Host() string { return c.str(c.view.Host) }

// ClientAddr returns the client's socket address as "ip:port" ("[ip]:port" for IPv6).
func (c *Context) ClientAddr() string { return c.str(c.view.ClientAddr) }

// ClientIP returns the client's IP address (the port dropped), or the zero Addr when the host
// gave no parsable address. IPv4-mapped IPv6 addresses are unmapped, so one client has one key.
func (c *Context) ClientIP() netip.Addr {
	ap, err := netip.ParseAddrPort(c.ClientAddr())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// ClientPort returns the client's source port, or 0 when the host gave no parsable address.
func (c *Context) ClientPort() uint16 {
	ap, err := netip.ParseAddrPort(c.ClientAddr())
	if err != nil {
		return 0
	}
	return ap.Port()
}

// ErrCallFinished is the cause of a call's context.Context once the call has finished.
var ErrCallFinished = errors.New("weft: the phase call has finished")

// StdContext returns a context.Context for the call, cancelled (cause ErrCallFinished) when
// the call finishes: when the handler returns, or for a deferred call when Done or Fail
// completes it; and for a deferred call, cancelled (cause ErrCancelled) as soon as the host
// stops waiting for it (its deadline passed, or the request went away). The first use in a
// call allocates; calls that never use it do not.
func (c *Context) StdContext() context.Context {
	if c.std == nil {
		c.std, c.cancel = context.WithCancelCause(context.Background())
		if a := c.async.d.a; a != nil {
			a.deferredStd(c.cancel)
		}
	}
	return c.std
}

func (c *Context) endStd() {
	if c.cancel != nil {
		c.cancel(ErrCallFinished)
		c.std, c.cancel = nil, nil
	}
}

// Scheme returns "http" or "https" as seen by the proxy.
func (c *Context) Scheme() string { return c.str(c.view.Scheme) }

// ServerName returns the TLS server name (SNI) the client sent, or "" on plain HTTP and when a
// TLS client sent none (e.g. it connected by IP address).
func (c *Context) ServerName() string { return c.str(c.view.ServerName) }

// Version returns the protocol version, e.g. "HTTP/1.1".
func (c *Context) Version() string { return c.str(c.view.Version) }

// Status returns the response status, or 0 before the response-headers phase.
func (c *Context) Status() int { return int(c.view.Status) }

// RequestHeader returns the first value of request header name, matched case-insensitively.
func (c *Context) RequestHeader(name string) (string, bool) {
	return c.lookup(c.view.ReqHeadersOff, c.view.ReqHeaderCount, name)
}

// RequestHeaderValues yields every value of request header name in order.
func (c *Context) RequestHeaderValues(name string) iter.Seq[string] {
	return func(yield func(string) bool) {
		c.values(c.view.ReqHeadersOff, c.view.ReqHeaderCount, name, yield)
	}
}

// RequestHeaders yields every request header as (lowercase name, value), in order; repeated
// headers appear once per value.
func (c *Context) RequestHeaders() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		c.all(c.view.ReqHeadersOff, c.view.ReqHeaderCount, yield)
	}
}

// ResponseHeader returns the first value of response header name, matched case-insensitively.
// There are no response headers before the response-headers phase.
func (c *Context) ResponseHeader(name string) (string, bool) {
	return c.lookup(c.view.RespHeadersOff, c.view.RespHeaderCount, name)
}

// ResponseHeaderValues yields every value of response header name in order.
func (c *Context) ResponseHeaderValues(name string) iter.Seq[string] {
	return func(yield func(string) bool) {
		c.values(c.view.RespHeadersOff, c.view.RespHeaderCount, name, yield)
	}
}

// ResponseHeaders yields every response header as (lowercase name, value), in order.
func (c *Context) ResponseHeaders() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		c.all(c.view.RespHeadersOff, c.view.RespHeaderCount, yield)
	}
}

func (c *Context) lookup(off, count uint32, name string) (string, bool) {
	if c.shown != nil && !c.declared(name) {
		return "", false
	}
	// Host names are lowercase, so a lowercase name matches byte for byte; whether name needs
	// folding is found out only when an entry of its length is not equal to it (a scan of the
	// name per call cost more than the loop).
	fold := unknownFold
	for i := range count {
		h := *c.header(off, i)
		if h.Name.Len != uint32(len(name)) {
			continue
		}
		if n := c.str(h.Name); n == name || c.folds(&fold, n, name) {
			return c.field(h.Value)
		}
	}
	return "", false
}

func (c *Context) values(off, count uint32, name string, yield func(string) bool) {
	if c.shown != nil && !c.declared(name) {
		return
	}
	fold := unknownFold
	for i := range count {
		h := *c.header(off, i)
		if h.Name.Len != uint32(len(name)) {
			continue
		}
		if n := c.str(h.Name); n == name || c.folds(&fold, n, name) {
			v, ok := c.field(h.Value)
			if !ok || !yield(v) {
				return
			}
		}
	}
}

// Whether a looked-up name has capitals to fold: not known until it is needed.
const (
	unknownFold = iota
	noFold
	doFold
)

// folds reports whether n, not byte-equal to name, matches it case-insensitively. Only a name
// with capitals is folded (host names are lowercase, so a lowercase name matches itself only);
// fold caches whether name has any, looked at once per lookup and only when needed.
func (c *Context) folds(fold *int, n, name string) bool {
	if *fold == unknownFold {
		*fold = noFold
		if !isLowerASCII(name) {
			*fold = doFold
		}
	}
	return *fold == doFold && equalFoldASCII(n, name)
}

func (c *Context) all(off, count uint32, yield func(string, string) bool) {
	for i := range count {
		h := *c.header(off, i)
		n, v := c.str(h.Name), c.str(h.Value)
		if c.malformed {
			return
		}
		if c.shown != nil && !slices.Contains(c.shown, n) {
			continue
		}
		if !yield(n, v) {
			return
		}
	}
}

// declared reports whether name (any case) is one of the plugin's ViewHeaders.
func (c *Context) declared(name string) bool {
	for _, n := range c.shown {
		if len(n) == len(name) && (n == name || equalFoldASCII(n, name)) {
			return true
		}
	}
	return false
}

func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return false
		}
	}
	return true
}

// equalFoldASCII reports whether a and b are equal under ASCII case folding (only A-Z fold,
// unlike strings.EqualFold, which also folds e.g. the Kelvin sign to k).
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// record appends one mutation record to the host buffer. Once a record does not fit, the
// phase result becomes ResultMutationOverflow and later records are dropped.
func (c *Context) record(op MutationOp, arg uint32, a, b string) {
	if c.overflow {
		return
	}
	need := RecordSize(len(a), len(b))
	if need > len(c.out)-c.n || uint64(len(a)) > 1<<32-1 || uint64(len(b)) > 1<<32-1 {
		c.overflow = true
		return
	}
	rec := c.out[c.n : c.n+need : c.n+need]
	_ = rec[SizeofMutation-1] // one bounds check for the four fields below
	binary.NativeEndian.PutUint32(rec[0:4], uint32(op))
	binary.NativeEndian.PutUint32(rec[4:8], arg)
	binary.NativeEndian.PutUint32(rec[8:12], uint32(len(a)))
	binary.NativeEndian.PutUint32(rec[12:16], uint32(len(b)))
	k := SizeofMutation + copy(rec[SizeofMutation:], a)
	k += copy(rec[k:], b)
	// At most three bytes of padding: a loop, not a call into the runtime's memclr.
	for ; k < len(rec); k++ {
		rec[k] = 0
	}
	c.n += need
}

// SetRequestHeader replaces all values of request header name with value.
func (c *Context) SetRequestHeader(name, value string) {
	c.record(OpSetRequestHeader, 0, name, value)
}

// AddRequestHeader appends a value for request header name.
func (c *Context) AddRequestHeader(name, value string) {
	c.record(OpAddRequestHeader, 0, name, value)
}

// RemoveRequestHeader removes every value of request header name.
func (c *Context) RemoveRequestHeader(name string) {
	c.record(OpRemoveRequestHeader, 0, name, "")
}

// SetPath replaces the request path (must start with "/" and hold no query).
func (c *Context) SetPath(path string) { c.record(OpSetPath, 0, path, "") }

// SetQuery replaces the query string (without "?"; "" removes it).
func (c *Context) SetQuery(query string) { c.record(OpSetQuery, 0, query, "") }

// SetResponseHeader replaces all values of response header name with value.
func (c *Context) SetResponseHeader(name, value string) {
	c.record(OpSetResponseHeader, 0, name, value)
}

// AddResponseHeader appends a value for response header name.
func (c *Context) AddResponseHeader(name, value string) {
	c.record(OpAddResponseHeader, 0, name, value)
}

// RemoveResponseHeader removes every value of response header name.
func (c *Context) RemoveResponseHeader(name string) {
	c.record(OpRemoveResponseHeader, 0, name, "")
}

// SetStatus sets the response status (response-headers phase).
func (c *Context) SetStatus(code int) { c.record(OpSetStatus, uint32(code), "", "") }

// Reply ends the request with a local reply: status, body and headers given as name, value
// pairs. The upstream is not contacted (request phase) or its response is discarded (response
// phase). An odd number of header strings fails the phase.
func (c *Context) Reply(status int, body []byte, headers ...string) {
	if len(headers)%2 != 0 {
		c.Fail(errOddReplyHeaders)
		return
	}
	c.record(OpLocalReply, uint32(status), unsafe.String(unsafe.SliceData(body), len(body)), "")
	for i := 0; i+1 < len(headers); i += 2 {
		c.record(OpLocalReplyHeader, 0, headers[i], headers[i+1])
	}
}

var errOddReplyHeaders = errors.New("weft: Reply called with an odd number of header strings")

// Fail ends the phase with a handler failure: the mutations of this phase are discarded, err
// is logged through the host and the instance's failure policy applies. The handler should
// return after calling Fail; the first failure of a phase is the one reported.
func (c *Context) Fail(err error) {
	if err == nil {
		err = errors.New("handler failed")
	}
	if c.failure == nil {
		c.failure = err
	}
}

// Log writes msg through the host's logger at level, tagged with this plugin instance.
func (c *Context) Log(level Level, msg string) { hostLog(level, c.instance, msg) }

// Logf formats a message like fmt.Sprintf and logs it at level.
func (c *Context) Logf(level Level, format string, args ...any) {
	hostLog(level, c.instance, fmt.Sprintf(format, args...))
}
