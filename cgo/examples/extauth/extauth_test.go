package extauth

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/weftrs/weft/cgo/weft/wefttest"
)

// authService answers by the request's authorization header: "Bearer alice" passes as alice,
// "Bearer anon" passes without a user, "Bearer slow" waits until release is closed, "Bearer
// broken" gets a 500, anything else a 401 with a JSON body. It records what it received.
type authService struct {
	mu      sync.Mutex
	got     []http.Header
	release chan struct{}
}

func (s *authService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.got = append(s.got, r.Header.Clone())
	s.mu.Unlock()
	switch r.Header.Get("authorization") {
	case "Bearer alice":
		w.Header().Set("x-auth-user", "alice")
	case "Bearer anon":
	case "Bearer slow":
		select {
		case <-s.release:
		case <-r.Context().Done():
		}
	case "Bearer broken":
		w.WriteHeader(http.StatusInternalServerError)
	default:
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"who are you"}`))
	}
}

func (s *authService) last() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[len(s.got)-1]
}

func newService(t *testing.T) (*authService, *httptest.Server) {
	s := &authService{release: make(chan struct{})}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		close(s.release)
		srv.Close()
	})
	return s, srv
}

func TestExtAuth(t *testing.T) {
	svc, srv := newService(t)
	h := wefttest.MustNew(t, "ext-auth", Config{URL: srv.URL + "/check", Headers: []string{"Authorization", "cookie"}})
	tests := []struct {
		name      string
		auth      string
		wantCode  wefttest.Code
		wantReply int
		wantUser  string
	}{
		{"allowed with a user", "Bearer alice", wefttest.OK, 0, "alice"},
		{"allowed without a user", "Bearer anon", wefttest.OK, 0, ""},
		{"denied", "Bearer mallory", wefttest.OK, 403, ""},
		{"service error", "Bearer broken", wefttest.HandlerFailed, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := h.Request(wefttest.Request{Method: "PUT", Path: "/docs/1", Query: "v=2", Host: "app.example",
				Headers: [][2]string{{"authorization", tt.auth}, {"cookie", "a=1"}, {"cookie", "b=2"},
					{"x-auth-user", "forged"}, {"x-other", "not forwarded"}}})
			res := x.RequestHeaders()
			if res.Code != tt.wantCode {
				t.Fatalf("code %v (%s), want %v; logs %+v", res.Code, res.Invalid, tt.wantCode, res.Logs)
			}
			if !res.Pending {
				t.Error("the check did not run asynchronously")
			}
			got := svc.last()
			if got.Get("authorization") != tt.auth || strings.Join(got.Values("cookie"), ",") != "a=1,b=2" ||
				got.Get("x-other") != "" || got.Get("x-forwarded-method") != "PUT" ||
				got.Get("x-forwarded-uri") != "/docs/1?v=2" || got.Get("x-forwarded-host") != "app.example" {
				t.Errorf("service received %v", got)
			}
			if tt.wantCode != wefttest.OK {
				return
			}
			if tt.wantReply != 0 {
				r := x.Reply()
				if r == nil || r.Status != tt.wantReply || string(r.Body) != `{"error":"who are you"}` {
					t.Fatalf("reply %+v", r)
				}
				if ct, _ := r.Header("content-type"); ct != "application/json" {
					t.Errorf("reply content-type %q", ct)
				}
				return
			}
			if x.Reply() != nil {
				t.Fatalf("unexpected reply %+v", x.Reply())
			}
			if v, _ := x.RequestHeader("x-ext-auth"); v != "ok" {
				t.Errorf("x-ext-auth %q", v)
			}
			user, ok := x.RequestHeader("x-auth-user")
			if tt.wantUser == "" && ok || user != tt.wantUser {
				t.Errorf("x-auth-user %q (present %v), want %q: the client's value must never pass", user, ok, tt.wantUser)
			}
		})
	}
}

func TestExtAuthTimeoutAndUnreachable(t *testing.T) {
	_, srv := newService(t)
	h := wefttest.MustNew(t, "ext-auth", Config{URL: srv.URL, TimeoutMs: 50})
	res := h.Request(wefttest.Request{Headers: [][2]string{{"authorization", "Bearer slow"}}}).RequestHeaders()
	if res.Code != wefttest.HandlerFailed || len(res.Logs) == 0 || !strings.Contains(res.Logs[0].Msg, "deadline exceeded") {
		t.Errorf("slow service: code %v logs %+v, want a failed phase naming the deadline", res.Code, res.Logs)
	}

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	h2 := wefttest.MustNew(t, "ext-auth", Config{URL: "http://" + addr + "/"})
	if res := h2.Request(wefttest.Request{}).RequestHeaders(); res.Code != wefttest.HandlerFailed {
		t.Errorf("unreachable service: code %v", res.Code)
	}
}

func TestExtAuthConfig(t *testing.T) {
	for _, cfg := range []string{`{}`, `{"url": "ftp://x/"}`, `{"url": "http://"}`, `{"url": "http://x/", "timeout_ms": -1}`, `{"url": "http://x/", "bogus": 1}`} {
		if _, err := wefttest.New("ext-auth", cfg, 1); err == nil {
			t.Errorf("config %s accepted", cfg)
		}
	}
}
