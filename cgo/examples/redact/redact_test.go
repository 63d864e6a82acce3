package redact

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

// reference masks the whole body at once: what any chunking must produce.
func reference(body string, patterns []string, mask byte) string {
	b := []byte(body)
	ps := make([][]byte, len(patterns))
	for i, p := range patterns {
		ps[i] = []byte(p)
	}
	Mask(b, ps, mask)
	return string(b)
}

func TestPatternSplitAcrossEveryChunkBoundary(t *testing.T) {
	patterns := []string{"4111-1111-1111-1111", "s3cr3t"}
	h := wefttest.MustNew(t, "redactor", map[string]any{"patterns": patterns, "mask": "#"})
	body := "card 4111-1111-1111-1111 and s3cr3t, again s3cr3ts3cr3t; end 4111-1111-1111-1111"
	want := reference(body, patterns, '#')
	if strings.Contains(want, "s3cr3t") || strings.Contains(want, "4111") {
		t.Fatalf("reference did not mask: %q", want)
	}
	for size := 1; size <= len(body)+1; size++ {
		x := h.Request(wefttest.Request{})
		if res := x.RequestHeaders(); res.Code != wefttest.OK {
			t.Fatal(res.Code)
		}
		x.Response(200, nil)
		x.ResponseHeaders()
		got, err := x.StreamResponseBody([]byte(body), size)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Fatalf("chunk size %d:\n got %q\nwant %q", size, got, want)
		}
	}
}

func TestRandomChunkingMatchesWholeBody(t *testing.T) {
	patterns := []string{"abcab", "bb"}
	h := wefttest.MustNew(t, "redactor", map[string]any{"patterns": patterns, "request": true})
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var sb strings.Builder
		for i := 0; i < r.IntN(300); i++ {
			sb.WriteByte("abc"[r.IntN(3)])
		}
		body := sb.String()
		x := h.Request(wefttest.Request{Method: "POST"})
		x.RequestHeaders()
		var out bytes.Buffer
		rest := []byte(body)
		for {
			n := min(len(rest), r.IntN(9))
			end := n == len(rest)
			res := x.RequestBody(rest[:n], end)
			if res.Code != wefttest.OK || res.Skipped {
				t.Fatalf("code %v skipped %v %s", res.Code, res.Skipped, res.Invalid)
			}
			out.Write(res.Out)
			rest = rest[n:]
			if end {
				break
			}
		}
		if want := reference(body, patterns, '*'); out.String() != want {
			t.Fatalf("body %q:\n got %q\nwant %q", body, out.String(), want)
		}
	}
}

func TestRequestBodySkippedByDefault(t *testing.T) {
	h := wefttest.MustNew(t, "redactor", `{"patterns": ["x"]}`)
	x := h.Request(wefttest.Request{Method: "POST"})
	res := x.RequestHeaders()
	if len(res.Mutations) != 1 || res.Mutations[0].Op != wefttest.OpSkipBody {
		t.Fatalf("want one skip_body, got %v", res.Mutations)
	}
	if got := x.RequestBody([]byte("xxx"), true); !got.Skipped || string(got.Out) != "xxx" {
		t.Fatalf("request body must pass untouched: %+v", got)
	}
}

func TestBadConfig(t *testing.T) {
	for _, cfg := range []string{`{}`, `{"patterns": [""]}`, `{"patterns": ["a"], "mask": "ab"}`} {
		if _, err := wefttest.New("redactor", cfg, 1); err == nil {
			t.Errorf("config %s accepted", cfg)
		}
	}
}
