package wefttest

import (
	"strings"

	"github.com/weftrs/weft/cgo/internal/core"
)

// buildView lays out a request view like the host (core.ViewBuilder). Without a response,
// resp_headers_off is the end of the request section and the status 0. The result is 8-byte
// aligned memory (dst is reused when large enough).
func buildView(dst []uint64, phase core.Phase, requestID uint64, slot, generation uint32, req *Request, resp *Response) []uint64 {
	var w core.ViewBuilder[string]
	w.Begin(phase, requestID, slot, generation)
	w.RequestHeaders(len(req.Headers), entries(req.Headers))
	host := req.Host
	if host == "" {
		host, _ = first(req.Headers, "host")
	}
	w.ServerName(req.ServerName)
	w.Request(req.Method, req.Path, req.Query, host, req.ClientAddr, req.Scheme, req.Version)
	if resp != nil {
		w.ResponseHeaders(uint32(resp.Status), len(resp.Headers), entries(resp.Headers))
	}
	words, err := w.Finish()
	if err != nil {
		panic("wefttest: " + err.Error()) // a test's request of more than 2 GiB
	}
	if cap(dst) < len(words) {
		dst = make([]uint64, len(words))
	}
	dst = dst[:len(words)]
	copy(dst, words)
	return dst
}

func entries(hs [][2]string) func(int) (string, string, bool) {
	return func(i int) (string, string, bool) { return hs[i][0], hs[i][1], true }
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
