package wefttest

import (
	"encoding/binary"
	"strings"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
)

// viewWriter appends to a view under construction.
type viewWriter struct{ buf []byte }

func (w *viewWriter) str(s string) core.Str {
	st := core.Str{Off: uint32(len(w.buf)), Len: uint32(len(s))}
	w.buf = append(w.buf, s...)
	return st
}

// headers writes a 4-byte aligned header array followed by the strings of its entries, as the
// host does, and returns the array offset.
func (w *viewWriter) headers(hs [][2]string) uint32 {
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
	off := len(w.buf)
	w.buf = append(w.buf, make([]byte, len(hs)*core.SizeofHeader)...)
	for i, h := range hs {
		name, value := w.str(h[0]), w.str(h[1])
		at := w.buf[off+i*core.SizeofHeader:]
		binary.NativeEndian.PutUint32(at[0:], name.Off)
		binary.NativeEndian.PutUint32(at[4:], name.Len)
		binary.NativeEndian.PutUint32(at[8:], value.Off)
		binary.NativeEndian.PutUint32(at[12:], value.Len)
	}
	return uint32(off)
}

// buildView lays out a request view byte for byte like the host (runtime/src/view.rs):
//
//	[WeftRequestView][request header array][request header strings][method, path, query,
//	host, client address, scheme, version][pad to 4][response header array][response strings]
//
// Without a response, resp_headers_off is the end of the request section and the status 0.
// The result is 8-byte aligned memory (dst is reused when large enough).
func buildView(dst []uint64, phase core.Phase, requestID uint64, slot, generation uint32, req *Request, resp *Response) []uint64 {
	w := viewWriter{buf: make([]byte, core.SizeofRequestView, 512)}
	v := core.RequestView{
		Phase:      uint32(phase),
		RequestID:  requestID,
		Slot:       slot,
		Generation: generation,
	}
	v.ReqHeadersOff, v.ReqHeaderCount = w.headers(req.Headers), uint32(len(req.Headers))
	v.Method = w.str(req.Method)
	v.Path = w.str(req.Path)
	v.Query = w.str(req.Query)
	host := req.Host
	if host == "" {
		host, _ = first(req.Headers, "host")
	}
	v.Host = w.str(host)
	v.ClientAddr = w.str(req.ClientAddr)
	v.Scheme = w.str(req.Scheme)
	v.Version = w.str(req.Version)
	v.RespHeadersOff = uint32(len(w.buf))
	if resp != nil {
		v.RespHeadersOff, v.RespHeaderCount = w.headers(resp.Headers), uint32(len(resp.Headers))
		v.Status = uint32(resp.Status)
	}
	v.Size = uint32(len(w.buf))

	words := (len(w.buf) + 7) / 8
	if cap(dst) < words {
		dst = make([]uint64, words)
	}
	dst = dst[:words]
	clear(dst)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), words*8), w.buf)
	*(*core.RequestView)(unsafe.Pointer(&dst[0])) = v
	return dst
}

// lowerNames returns a copy of headers with lowercase names, as the host presents them.
func lowerNames(headers [][2]string) [][2]string {
	if headers == nil {
		return nil
	}
	out := make([][2]string, len(headers))
	for i, h := range headers {
		out[i] = [2]string{strings.ToLower(h[0]), h[1]}
	}
	return out
}
