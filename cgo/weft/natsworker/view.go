package natsworker

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// errViewTooLarge: the request does not fit the 32-bit offsets of a view (never in practice:
// NATS payloads are far smaller).
var errViewTooLarge = errors.New("request view too large")

// viewBuilder lays a PhaseRequest out as a request view byte for byte like the host
// (runtime/src/view.rs), so core.Dispatch and the handlers cannot tell a remote call from an
// in-process one:
//
//	[WeftRequestView][request header array][request header strings][method, path, query,
//	host, client address, scheme, version][pad to 4][response header array][response strings]
//
// It is reused across calls (one per in-flight call, from a sync.Pool).
type viewBuilder struct {
	buf   []byte
	words []uint64 // 8-byte aligned copy handed to core.Dispatch
	hdr   wire.Header
}

func (w *viewBuilder) str(b []byte) core.Str {
	s := core.Str{Off: uint32(len(w.buf)), Len: uint32(len(b))}
	w.buf = append(w.buf, b...)
	return s
}

// headers writes a 4-byte aligned header array followed by the strings of its entries.
func (w *viewBuilder) headers(n int, at func(h *wire.Header, i int) bool) (off, count uint32) {
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
	start := len(w.buf)
	for range n * core.SizeofHeader {
		w.buf = append(w.buf, 0)
	}
	for i := range n {
		if !at(&w.hdr, i) {
			continue
		}
		name, value := w.str(w.hdr.NameBytes()), w.str(w.hdr.ValueBytes())
		e := w.buf[start+i*core.SizeofHeader:]
		binary.NativeEndian.PutUint32(e[0:], name.Off)
		binary.NativeEndian.PutUint32(e[4:], name.Len)
		binary.NativeEndian.PutUint32(e[8:], value.Off)
		binary.NativeEndian.PutUint32(e[12:], value.Len)
	}
	return uint32(start), uint32(n)
}

// build lays out req for phase in slot/generation and returns a pointer to the 8-byte aligned
// view, valid until the next build.
func (w *viewBuilder) build(req *wire.PhaseRequest, phase core.Phase, slot, generation uint32) (unsafe.Pointer, error) {
	w.buf = append(w.buf[:0], make([]byte, core.SizeofRequestView)...)
	v := core.RequestView{
		Phase:      uint32(phase),
		RequestID:  req.RequestId(),
		Slot:       slot,
		Generation: generation,
	}
	v.ReqHeadersOff, v.ReqHeaderCount = w.headers(req.RequestHeadersLength(), req.RequestHeaders)
	v.Method = w.str(req.Method())
	v.Path = w.str(req.Path())
	v.Query = w.str(req.Query())
	v.Host = w.str(req.Host())
	v.ClientAddr = w.str(req.ClientAddr())
	v.Scheme = w.str(req.Scheme())
	v.Version = w.str(req.HttpVersion())
	v.RespHeadersOff = uint32(len(w.buf))
	if n := req.ResponseHeadersLength(); n > 0 || req.Status() != 0 {
		v.RespHeadersOff, v.RespHeaderCount = w.headers(n, req.ResponseHeaders)
		v.Status = uint32(req.Status())
	}
	if uint64(len(w.buf)) > 1<<31 {
		return nil, errViewTooLarge
	}
	v.Size = uint32(len(w.buf))
	words := (len(w.buf) + 7) / 8
	if cap(w.words) < words {
		w.words = make([]uint64, words+words/2)
	}
	w.words = w.words[:words]
	w.words[words-1] = 0
	dst := unsafe.Slice((*byte)(unsafe.Pointer(&w.words[0])), words*8)
	copy(dst, w.buf)
	*(*core.RequestView)(unsafe.Pointer(&w.words[0])) = v
	return unsafe.Pointer(&w.words[0]), nil
}
