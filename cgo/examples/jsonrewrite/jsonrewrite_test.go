package jsonrewrite

import (
	"encoding/json"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

func TestRewritesJSONObject(t *testing.T) {
	h := wefttest.MustNew(t, "json-rewriter", `{"set": {"served_by": "weft", "n": 2}, "remove": ["secret"]}`)
	x := h.Request(wefttest.Request{})
	x.Response(200, [][2]string{{"content-type", "application/json; charset=utf-8"}})
	if res := x.ResponseHeaders(); res.Code != wefttest.OK || len(res.Mutations) != 0 {
		t.Fatalf("JSON response must not be skipped: %+v", res)
	}
	res := x.ResponseBodyBuffered([]byte(`{"a": 1, "secret": "x", "n": 1}`))
	if res.Code != wefttest.OK {
		t.Fatalf("%v %s", res.Code, res.Invalid)
	}
	var got map[string]any
	if err := json.Unmarshal(res.Out, &got); err != nil {
		t.Fatalf("output %q: %v", res.Out, err)
	}
	if got["a"] != 1.0 || got["served_by"] != "weft" || got["n"] != 2.0 || got["secret"] != nil {
		t.Fatalf("rewritten body %s", res.Out)
	}
	if v, _ := x.ResponseHeader("x-json-rewritten"); v != "1" {
		t.Fatalf("x-json-rewritten = %q", v)
	}
}

func TestSkipsNonJSONAndErrors(t *testing.T) {
	h := wefttest.MustNew(t, "json-rewriter", `{"remove": ["a"]}`)
	for _, tc := range []struct {
		status int
		ct     string
	}{{200, "text/html"}, {404, "application/json"}, {200, ""}} {
		x := h.Request(wefttest.Request{})
		x.Response(tc.status, [][2]string{{"content-type", tc.ct}})
		res := x.ResponseHeaders()
		if len(res.Mutations) != 1 || res.Mutations[0].Op != wefttest.OpSkipBody {
			t.Errorf("%d %q: want skip_body, got %v", tc.status, tc.ct, res.Mutations)
		}
		if b := x.ResponseBodyBuffered([]byte(`{"a":1}`)); !b.Skipped || string(b.Out) != `{"a":1}` {
			t.Errorf("%d %q: body must pass untouched, got %+v", tc.status, tc.ct, b)
		}
	}
}

func TestNotAnObjectPassesUnchanged(t *testing.T) {
	h := wefttest.MustNew(t, "json-rewriter", `{"remove": ["a"]}`)
	for _, body := range []string{`[1,2]`, `not json`, `null`} {
		x := h.Request(wefttest.Request{})
		x.Response(200, [][2]string{{"content-type", "application/problem+json"}})
		x.ResponseHeaders()
		res := x.ResponseBodyBuffered([]byte(body))
		if res.Code != wefttest.OK || string(res.Out) != body || len(res.Mutations) != 0 {
			t.Errorf("%q: %+v", body, res)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []string{`{}`, `{"set": {"a": }}`} {
		if _, err := wefttest.New("json-rewriter", cfg, 1); err == nil {
			t.Errorf("config %s accepted", cfg)
		}
	}
}
