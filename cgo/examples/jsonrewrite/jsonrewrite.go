// Package jsonrewrite is an example weft plugin with a buffered response body: it rewrites
// JSON object responses, setting and removing top-level fields.
//
//	plugins:
//	  - name: rewrite-json
//	    library: examples
//	    plugin: json-rewriter
//	    config: { set: { served_by: weft }, remove: [internal_id] }
//
// ResponseHeaders skips every response that is not a 2xx JSON one (Context.SkipBody), so only
// those pay for buffering. ResponseBody gets the whole body in one call (the proxy collects it
// up to max_buffered_body_bytes and answers 502 beyond), replaces it and marks the response
// with x-json-rewritten; the proxy sets the new content-length. A body that is not a JSON
// object is passed through unchanged.
package jsonrewrite

import (
	"encoding/json"
	"errors"
	"mime"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the instance configuration.
type Config struct {
	// Set holds top-level fields to set (added or replaced), with any JSON value.
	Set map[string]json.RawMessage `json:"set"`
	// Remove lists top-level fields to delete.
	Remove []string `json:"remove"`
}

// State is unused: a buffered call sees the whole body at once.
type State struct{}

func init() {
	weft.Register(weft.Plugin[Config, State]{
		Name: "json-rewriter",
		Init: func(cfg *Config) error {
			if len(cfg.Set) == 0 && len(cfg.Remove) == 0 {
				return errors.New("json-rewriter: nothing to do (give set and/or remove)")
			}
			for k, v := range cfg.Set {
				if !json.Valid(v) {
					return errors.New("json-rewriter: set." + k + " is not valid JSON")
				}
			}
			return nil
		},
		ResponseHeaders: responseHeaders,
		// The one header line it reads: the host lays out no other.
		ViewHeaders:          []string{"content-type"},
		ResponseBodyBuffered: true,
		ResponseBody:         responseBody,
	})
}

func responseHeaders(ctx *weft.Context, _ *Config, _ *State) {
	ct, _ := ctx.ResponseHeader("content-type")
	if ctx.Status() < 200 || ctx.Status() > 299 || !isJSON(ct) {
		ctx.SkipBody()
	}
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || (len(mt) > 5 && mt[len(mt)-5:] == "+json")
}

func responseBody(ctx *weft.Context, cfg *Config, _ *State) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(ctx.Body(), &doc); err != nil || doc == nil {
		ctx.Logf(weft.LogDebug, "json-rewriter: body is not a JSON object; passed unchanged")
		return
	}
	for _, k := range cfg.Remove {
		delete(doc, k)
	}
	for k, v := range cfg.Set {
		doc[k] = v
	}
	out, err := json.Marshal(doc)
	if err != nil {
		ctx.Fail(err)
		return
	}
	ctx.ReplaceBody(out)
	ctx.SetResponseHeader("x-json-rewritten", "1")
}
