package headers

import (
	"slices"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

const config = `{
	"request_set": {"X-Env": "prod", "x-two": "2"},
	"request_add": {"via": "weft"},
	"request_remove": ["cookie"],
	"response_set": {"x-frame-options": "DENY"},
	"response_remove": ["server"]
}`

func TestHeaderRewriter(t *testing.T) {
	tests := []struct {
		name     string
		req      [][2]string
		resp     [][2]string
		wantReq  map[string][]string
		wantResp map[string][]string
	}{
		{
			name:     "empty request",
			wantReq:  map[string][]string{"x-env": {"prod"}, "x-two": {"2"}, "via": {"weft"}, "cookie": nil},
			wantResp: map[string][]string{"x-frame-options": {"DENY"}, "server": nil},
		},
		{
			name:     "replaces and removes",
			req:      [][2]string{{"cookie", "a=1"}, {"Cookie", "b=2"}, {"x-env", "dev"}, {"via", "proxy"}},
			resp:     [][2]string{{"server", "nginx"}, {"x-frame-options", "SAMEORIGIN"}, {"x-keep", "1"}},
			wantReq:  map[string][]string{"x-env": {"prod"}, "via": {"proxy", "weft"}, "cookie": nil},
			wantResp: map[string][]string{"x-frame-options": {"DENY"}, "server": nil, "x-keep": {"1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := wefttest.MustNew(t, "header-rewriter", config)
			x := h.Request(wefttest.Request{Headers: tt.req})
			if res := x.RequestHeaders(); res.Code != wefttest.OK {
				t.Fatalf("request headers: %v %s", res.Code, res.Invalid)
			}
			for name, want := range tt.wantReq {
				if got := x.RequestHeaderValues(name); !slices.Equal(got, want) {
					t.Errorf("request %s = %q, want %q", name, got, want)
				}
			}
			x.Response(200, tt.resp)
			if res := x.ResponseHeaders(); res.Code != wefttest.OK {
				t.Fatalf("response headers: %v %s", res.Code, res.Invalid)
			}
			for name, want := range tt.wantResp {
				if got := x.ResponseHeaderValues(name); !slices.Equal(got, want) {
					t.Errorf("response %s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func TestDeterministicOrder(t *testing.T) {
	h := wefttest.MustNew(t, "header-rewriter", `{"request_set": {"b": "2", "a": "1", "c": "3"}}`)
	for i := 0; i < 5; i++ {
		res := h.Request(wefttest.Request{}).RequestHeaders()
		var names []string
		for _, m := range res.Mutations {
			names = append(names, m.A)
		}
		if !slices.Equal(names, []string{"a", "b", "c"}) {
			t.Fatalf("order %v", names)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := wefttest.New("header-rewriter", `{"request_sett": {}}`, 1); err == nil {
		t.Error("unknown field accepted")
	}
	if _, err := wefttest.New("header-rewriter", nil, 1); err != nil {
		t.Errorf("empty config: %v", err)
	}
}
