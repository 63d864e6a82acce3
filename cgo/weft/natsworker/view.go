package natsworker

import (
	"unsafe"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker/wire"
)

// viewBuilder lays a PhaseRequest out as a request view like the host's (core.ViewBuilder), so
// core.Dispatch and the handlers cannot tell a remote call from an in-process one. It is reused
// across calls (one per in-flight call, from a sync.Pool).
type viewBuilder struct {
	core.ViewBuilder[[]byte]
	hdr wire.Header
}

// build lays out req for phase in slot/generation and returns a pointer to the 8-byte aligned
// view, valid until the next build.
func (w *viewBuilder) build(req *wire.PhaseRequest, phase core.Phase, slot, generation uint32) (unsafe.Pointer, error) {
	header := func(get func(*wire.Header, int) bool) func(int) ([]byte, []byte, bool) {
		return func(i int) ([]byte, []byte, bool) {
			if !get(&w.hdr, i) {
				return nil, nil, false
			}
			return w.hdr.NameBytes(), w.hdr.ValueBytes(), true
		}
	}
	w.Begin(phase, req.RequestId(), slot, generation)
	w.RequestHeaders(req.RequestHeadersLength(), header(req.RequestHeaders))
	w.Request(req.Method(), req.Path(), req.Query(), req.Host(), req.ClientAddr(), req.Scheme(), req.HttpVersion())
	if n := req.ResponseHeadersLength(); n > 0 || req.Status() != 0 {
		w.ResponseHeaders(uint32(req.Status()), n, header(req.ResponseHeaders))
	}
	words, err := w.Finish()
	if err != nil {
		return nil, err
	}
	return unsafe.Pointer(&words[0]), nil
}
