package weft_test

import (
	"context"
	"errors"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"reflect"
	"strconv"
	"testing"

	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft"
	"github.com/weftrs/weft/cgo/weft/wefttest"
)

// contexts receives the context.Context of each call of weft-test-ctx, to check after the call.
var contexts = make(chan context.Context, 4)

func init() {
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name: "weft-test-client",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.SetRequestHeader("x-ip", ctx.ClientIP().String())
			ctx.SetRequestHeader("x-port", strconv.Itoa(int(ctx.ClientPort())))
		},
	})
	weft.Register(weft.Plugin[struct{}, struct{}]{
		Name: "weft-test-ctx",
		RequestHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			contexts <- ctx.Context()
		},
		ResponseHeaders: func(ctx *weft.Context, _ *struct{}, _ *struct{}) {
			ctx.Go(func(ctx *weft.Context) error {
				c := ctx.Context()
				if c.Err() != nil {
					return errors.New("context cancelled while the call runs")
				}
				contexts <- c
				return nil
			})
		},
	})
}

func TestClientIP(t *testing.T) {
	h := wefttest.MustNew(t, "weft-test-client", nil)
	tests := []struct{ addr, ip, port string }{
		{"192.0.2.7:5000", "192.0.2.7", "5000"},
		{"[2001:db8::1]:443", "2001:db8::1", "443"},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1", "80"}, // one client, one key
		{"not an address", "invalid IP", "0"},
	}
	for _, tt := range tests {
		x := h.Request(wefttest.Request{ClientAddr: tt.addr})
		if res := x.RequestHeaders(); res.Code != wefttest.OK {
			t.Fatalf("%s: %+v", tt.addr, res)
		}
		ip, _ := x.RequestHeader("x-ip")
		port, _ := x.RequestHeader("x-port")
		if ip != tt.ip || port != tt.port {
			t.Errorf("%s: ip %q port %q, want %q %q", tt.addr, ip, port, tt.ip, tt.port)
		}
	}
}

// The call's context.Context lives exactly as long as the call, synchronous or deferred.
func TestContextEndsWithTheCall(t *testing.T) {
	h := wefttest.MustNew(t, "weft-test-ctx", nil)
	x := h.Request(wefttest.Request{})
	for _, run := range []func() wefttest.Result{x.RequestHeaders, x.ResponseHeaders} {
		if res := run(); res.Code != wefttest.OK {
			t.Fatalf("%+v", res)
		}
		c := <-contexts
		if c.Err() == nil || !errors.Is(context.Cause(c), weft.ErrCallFinished) {
			t.Errorf("after the call: err %v cause %v, want cancelled with ErrCallFinished", c.Err(), context.Cause(c))
		}
	}
}

// go doc shows the API a plugin author uses: Context, Deferred and Plugin are types of this
// package (not aliases of internal ones), and each of their exported methods is documented.
func TestDocShowsTheAPI(t *testing.T) {
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	pkgs, err := parser.ParseDir(fset, ".", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range pkgs["weft"].Files {
		files[name] = f
	}
	p := doc.New(&ast.Package{Name: "weft", Files: files}, "github.com/weftrs/weft/cgo/weft", 0)
	want := map[string]int{"Context": 40, "Deferred": 2, "Plugin": 0}
	for _, typ := range p.Types {
		min, ok := want[typ.Name]
		if !ok {
			continue
		}
		delete(want, typ.Name)
		if typ.Decl.Specs[0].(*ast.TypeSpec).Assign.IsValid() {
			t.Errorf("%s is an alias: go doc shows none of its methods", typ.Name)
		}
		if len(typ.Methods) < min {
			t.Errorf("%s has %d documented methods, want at least %d", typ.Name, len(typ.Methods), min)
		}
		for _, m := range typ.Methods {
			if m.Doc == "" {
				t.Errorf("%s.%s has no doc comment", typ.Name, m.Name)
			}
		}
	}
	for name := range want {
		t.Errorf("type %s not found in package weft", name)
	}
}

// weft.Plugin mirrors core.Plugin field for field (so go doc shows it) and Register copies each
// one: a field added to the core must be added here too, or Register would drop it.
func TestPluginMirrorsTheCore(t *testing.T) {
	fields := func(v any) []string {
		var out []string
		for f := range reflect.TypeOf(v).Fields() {
			out = append(out, f.Name)
		}
		return out
	}
	pub, inner := fields(weft.Plugin[struct{}, struct{}]{}), fields(core.Plugin[struct{}, struct{}]{})
	if !reflect.DeepEqual(pub, inner) {
		t.Fatalf("weft.Plugin fields %v, core.Plugin fields %v", pub, inner)
	}
}
