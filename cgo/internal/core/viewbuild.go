package core

import (
	"encoding/binary"
	"errors"
	"unsafe"
)

// ErrViewTooLarge: the request does not fit the 32-bit offsets of a view.
var ErrViewTooLarge = errors.New("request view too large")

// ViewBuilder lays out a request view byte for byte like the host (runtime/src/view.rs), for
// the hosts written in Go (the test host, the NATS worker), so Dispatch and the handlers cannot
// tell them from the proxy:
//
//	[WeftRequestView][request header array][request header strings][method, path, query,
//	host, client address, scheme, version][pad to 4][response header array][response strings]
//
// Calls go in that order: Begin, RequestHeaders, Request, ResponseHeaders (only with a
// response), Finish. T is string or []byte, whichever the caller's source holds. A builder
// is reused across views; it is not safe for concurrent use.
type ViewBuilder[T ~string | ~[]byte] struct {
	buf   []byte
	words []uint64 // the 8-byte aligned copy Finish returns
	view  RequestView
}

// Begin starts a view for phase of request requestID in slot/generation.
func (w *ViewBuilder[T]) Begin(phase Phase, requestID uint64, slot, generation uint32) {
	w.buf = append(w.buf[:0], make([]byte, SizeofRequestView)...)
	w.view = RequestView{Phase: uint32(phase), RequestID: requestID, Slot: slot, Generation: generation}
}

func (w *ViewBuilder[T]) str(s T) Str {
	st := Str{Off: uint32(len(w.buf)), Len: uint32(len(s))}
	w.buf = append(w.buf, s...)
	return st
}

// headers writes a 4-byte aligned array of n entries followed by their strings; at returns
// entry i, or ok false to leave it empty.
func (w *ViewBuilder[T]) headers(n int, at func(i int) (name, value T, ok bool)) (off, count uint32) {
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
	start := len(w.buf)
	w.buf = append(w.buf, make([]byte, n*SizeofHeader)...)
	for i := range n {
		name, value, ok := at(i)
		if !ok {
			continue
		}
		ns, vs := w.str(name), w.str(value)
		e := w.buf[start+i*SizeofHeader:]
		binary.NativeEndian.PutUint32(e[0:], ns.Off)
		binary.NativeEndian.PutUint32(e[4:], ns.Len)
		binary.NativeEndian.PutUint32(e[8:], vs.Off)
		binary.NativeEndian.PutUint32(e[12:], vs.Len)
	}
	return uint32(start), uint32(n)
}

// RequestHeaders writes the request's n headers (names lowercase, as the host gives them).
func (w *ViewBuilder[T]) RequestHeaders(n int, at func(i int) (name, value T, ok bool)) {
	w.view.ReqHeadersOff, w.view.ReqHeaderCount = w.headers(n, at)
}

// ServerName writes the TLS server name (SNI); without it the field is empty (plain HTTP, or
// no SNI). Call it before Request, so that the request section stays one run of bytes.
func (w *ViewBuilder[T]) ServerName(name T) { w.view.ServerName = w.str(name) }

// Request writes the request's strings. Without a later ResponseHeaders the view has no
// response: resp_headers_off is the end of the request section and the status 0.
func (w *ViewBuilder[T]) Request(method, path, query, host, clientAddr, scheme, version T) {
	v := &w.view
	v.Method, v.Path, v.Query, v.Host = w.str(method), w.str(path), w.str(query), w.str(host)
	v.ClientAddr, v.Scheme, v.Version = w.str(clientAddr), w.str(scheme), w.str(version)
	v.RespHeadersOff = uint32(len(w.buf))
}

// ResponseHeaders writes the response's status and n headers.
func (w *ViewBuilder[T]) ResponseHeaders(status uint32, n int, at func(i int) (name, value T, ok bool)) {
	w.view.RespHeadersOff, w.view.RespHeaderCount = w.headers(n, at)
	w.view.Status = status
}

// Finish returns the view as 8-byte aligned words (its padding zeroed), valid until the next
// Begin; ErrViewTooLarge when it does not fit a view's 32-bit offsets.
func (w *ViewBuilder[T]) Finish() ([]uint64, error) {
	if uint64(len(w.buf)) > 1<<31 {
		return nil, ErrViewTooLarge
	}
	w.view.Size = uint32(len(w.buf))
	words := (len(w.buf) + 7) / 8
	if cap(w.words) < words {
		w.words = make([]uint64, words+words/2)
	}
	w.words = w.words[:words]
	w.words[words-1] = 0
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&w.words[0])), words*8), w.buf)
	*(*RequestView)(unsafe.Pointer(&w.words[0])) = w.view
	return w.words, nil
}
