package main

import (
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weftrs/weft/cgo/internal/core"
)

// blankImports returns the packages a Go file imports for their side effects (plugin
// registrations), except the C ABI shim.
func blankImports(t *testing.T, path string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if imp.Name != nil && imp.Name.Name == "_" && p != "github.com/weftrs/weft/cgo/weft/cabi" {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// The worker registers the very same plugins as the c-shared library cmd/weft-plugins, so any
// plugin of the library can be moved to a worker by config alone.
func TestRegistersTheSamePluginsAsTheLibrary(t *testing.T) {
	for _, file := range []string{"main.go", "testplugins.go"} {
		lib := blankImports(t, "../weft-plugins/"+file)
		worker := blankImports(t, file)
		if len(lib) == 0 || !slices.Equal(lib, worker) {
			t.Fatalf("%s: plugin packages differ:\n  weft-plugins: %v\n  weft-worker:  %v", file, lib, worker)
		}
	}
	var names []string
	for _, p := range core.Plugins() {
		names = append(names, p.Name)
	}
	for _, want := range []string{"chat", "json-rewriter", "redactor", "bearer-auth", "ext-auth", "header-rewriter",
		"timing-logger"} {
		if !slices.Contains(names, want) {
			t.Errorf("plugin %s is not registered in the worker (registered: %v)", want, names)
		}
	}
}

// -list says, per plugin, what is served over NATS.
func TestListSaysWhatIsServed(t *testing.T) {
	var b strings.Builder
	listPlugins(&b)
	out := b.String()
	for _, want := range []string{
		"chat                 not served over NATS",
		"json-rewriter        served: response_headers; not over NATS: response_body",
		"timing-logger        served: request_headers, response_headers, log\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("-list lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(out, "\n"); got != len(core.Plugins()) {
		t.Errorf("%d lines for %d plugins", got, len(core.Plugins()))
	}
}
