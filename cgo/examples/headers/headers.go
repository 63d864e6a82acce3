// Package headers is the header-rewriter example plugin: it sets, adds and removes request and
// response headers as configured.
//
//	{"request_set": {"x-env": "prod"}, "request_add": {"via": "weft"}, "request_remove": ["cookie"],
//	 "response_set": {"x-frame-options": "DENY"}, "response_remove": ["server"], "set_path": "/v2/items"}
//
// In each phase removals are applied first, then sets, then adds, each in name order;
// set_path (if given) replaces the request path.
package headers

import (
	"sort"
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the header-rewriter instance configuration.
type Config struct {
	RequestSet     map[string]string `json:"request_set"`
	RequestAdd     map[string]string `json:"request_add"`
	RequestRemove  []string          `json:"request_remove"`
	ResponseSet    map[string]string `json:"response_set"`
	ResponseRemove []string          `json:"response_remove"`
	SetPath        string            `json:"set_path"`

	// Derived by Init: lowercase names in a stable order.
	reqSet, reqAdd, respSet []pair
	reqRemove, respRemove   []string
}

type pair struct{ name, value string }

func sorted(m map[string]string) []pair {
	out := make([]pair, 0, len(m))
	for k, v := range m {
		out = append(out, pair{strings.ToLower(k), v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func lowered(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	sort.Strings(out)
	return out
}

func initConfig(c *Config) error {
	c.reqSet, c.reqAdd, c.respSet = sorted(c.RequestSet), sorted(c.RequestAdd), sorted(c.ResponseSet)
	c.reqRemove, c.respRemove = lowered(c.RequestRemove), lowered(c.ResponseRemove)
	return nil
}

func requestHeaders(ctx *weft.Context, c *Config, _ *struct{}) {
	for _, n := range c.reqRemove {
		ctx.RemoveRequestHeader(n)
	}
	for _, p := range c.reqSet {
		ctx.SetRequestHeader(p.name, p.value)
	}
	for _, p := range c.reqAdd {
		ctx.AddRequestHeader(p.name, p.value)
	}
	if c.SetPath != "" {
		ctx.SetPath(c.SetPath)
	}
}

func responseHeaders(ctx *weft.Context, c *Config, _ *struct{}) {
	for _, n := range c.respRemove {
		ctx.RemoveResponseHeader(n)
	}
	for _, p := range c.respSet {
		ctx.SetResponseHeader(p.name, p.value)
	}
}

func init() {
	weft.Register(weft.Plugin[Config, struct{}]{
		Name:            "header-rewriter",
		Init:            initConfig,
		RequestHeaders:  requestHeaders,
		ResponseHeaders: responseHeaders,
		// It writes headers but reads none: the host copies no header line into its views.
		ViewHeaders: []string{},
	})
}
