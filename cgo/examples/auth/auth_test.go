package auth

import (
	"strings"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

func TestBearerAuth(t *testing.T) {
	tests := []struct {
		name       string
		auth       string
		wantStatus int // 0: passes
		wantReason string
	}{
		{"valid", "Bearer s3cret", 0, ""},
		{"second token", "Bearer other", 0, ""},
		{"scheme case-insensitive", "bearer s3cret", 0, ""},
		{"missing", "", 401, "missing bearer token"},
		{"basic", "Basic dXNlcjpwYXNz", 401, "missing bearer token"},
		{"empty token", "Bearer ", 401, "missing bearer token"},
		{"wrong token", "Bearer s3cre", 401, "invalid token"},
		{"token prefix", "Bearer s3cretX", 401, "invalid token"},
	}
	h := wefttest.MustNew(t, "bearer-auth", Config{Tokens: []string{"s3cret", "other"}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdrs [][2]string
			if tt.auth != "" {
				hdrs = [][2]string{{"Authorization", tt.auth}}
			}
			x := h.Request(wefttest.Request{Headers: hdrs})
			res := x.RequestHeaders()
			if res.Code != wefttest.OK {
				t.Fatalf("code %v %s", res.Code, res.Invalid)
			}
			if tt.wantStatus == 0 {
				if res.Reply != nil {
					t.Fatalf("unexpected reply %d %s", res.Reply.Status, res.Reply.Body)
				}
				if v, _ := x.RequestHeader("x-weft-auth"); v != "ok" {
					t.Errorf("x-weft-auth %q", v)
				}
				if v, _ := x.RequestHeader("authorization"); v != tt.auth {
					t.Errorf("authorization header changed to %q", v)
				}
				return
			}
			r := res.Reply
			if r == nil || r.Status != tt.wantStatus {
				t.Fatalf("reply %+v, want status %d", r, tt.wantStatus)
			}
			if want := `{"error":"unauthorized","reason":"` + tt.wantReason + `"}`; string(r.Body) != want {
				t.Errorf("body %s, want %s", r.Body, want)
			}
			if v, _ := r.Header("content-type"); v != "application/json" {
				t.Errorf("content-type %q", v)
			}
			if v, _ := r.Header("www-authenticate"); v != `Bearer realm="weft"` {
				t.Errorf("www-authenticate %q", v)
			}
		})
	}
}

func TestRealm(t *testing.T) {
	h := wefttest.MustNew(t, "bearer-auth", `{"tokens": ["t"], "realm": "api"}`)
	res := h.Request(wefttest.Request{}).RequestHeaders()
	if v, _ := res.Reply.Header("www-authenticate"); v != `Bearer realm="api"` {
		t.Errorf("www-authenticate %q", v)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		config string
		want   string
	}{
		{`{}`, "config.tokens must list at least one token"},
		{`{"tokens": []}`, "config.tokens must list at least one token"},
		{`{"tokens": [""]}`, "empty token"},
		{`{"tokens": ["a"], "realms": "x"}`, `unknown field "realms"`},
	}
	for _, tt := range tests {
		_, err := wefttest.New("bearer-auth", tt.config, 1)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config %s: error %v, want %q", tt.config, err, tt.want)
		}
	}
}
