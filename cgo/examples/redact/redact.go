// Package redact is an example weft plugin with a streamed body: it masks every occurrence of
// configured byte patterns in request and/or response bodies, also where a pattern is split
// across two chunks, while holding back at most (longest pattern - 1) bytes.
//
//	plugins:
//	  - name: redact
//	    library: examples
//	    plugin: redactor
//	    config: { patterns: ["4111-1111-1111-1111", "s3cr3t"], mask: "#", response: true }
//
// Each call masks the matches in carry+chunk, sends everything but the last len(longest)-1
// bytes (a match that starts there may continue in the next chunk) and keeps those as the
// carry for the next call; the end-of-stream call flushes the carry. Masked output has the
// input's length, so the stream keeps its size.
package redact

import (
	"bytes"
	"errors"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the instance configuration.
type Config struct {
	// Patterns are the byte strings to mask (non-empty, at most 1024 bytes each).
	Patterns []string `json:"patterns"`
	// Mask is the byte written over each matched byte (default "*").
	Mask string `json:"mask"`
	// Request and Response choose the bodies to redact (default: response only).
	Request  bool  `json:"request"`
	Response *bool `json:"response"`

	patterns [][]byte
	keep     int
	mask     byte
	response bool
}

// State is one body's carry (the bytes held back from the previous chunk) and a reused buffer.
type State struct {
	carry [2][]byte
	buf   []byte
}

func init() {
	weft.Register(weft.Plugin[Config, State]{
		Name: "redactor",
		Init: func(cfg *Config) error {
			if len(cfg.Patterns) == 0 {
				return errors.New("redactor: patterns must not be empty")
			}
			for _, p := range cfg.Patterns {
				if p == "" || len(p) > 1024 {
					return errors.New("redactor: a pattern must have 1 to 1024 bytes")
				}
				cfg.patterns = append(cfg.patterns, []byte(p))
				cfg.keep = max(cfg.keep, len(p)-1)
			}
			cfg.mask = '*'
			if cfg.Mask != "" {
				if len(cfg.Mask) != 1 {
					return errors.New("redactor: mask must be one byte")
				}
				cfg.mask = cfg.Mask[0]
			}
			cfg.response = cfg.Response == nil || *cfg.Response
			return nil
		},
		RequestHeaders: func(ctx *weft.Context, cfg *Config, _ *State) {
			if !cfg.Request {
				ctx.SkipBody()
			}
		},
		ResponseHeaders: func(ctx *weft.Context, cfg *Config, _ *State) {
			if !cfg.response {
				ctx.SkipBody()
			}
		},
		// Reads no header line: the host lays out none.
		ViewHeaders:  []string{},
		RequestBody:  body,
		ResponseBody: body,
	})
}

func body(ctx *weft.Context, cfg *Config, st *State) {
	side := 0
	if ctx.Phase() == weft.PhaseResponseBody {
		side = 1
	}
	chunk := ctx.Body()
	if len(st.carry[side]) == 0 && len(chunk) == 0 {
		return // nothing held back, nothing new: pass (the empty end-of-stream call)
	}
	data := append(append(st.buf[:0], st.carry[side]...), chunk...)
	Mask(data, cfg.patterns, cfg.mask)
	emit := len(data)
	if !ctx.EndOfStream() {
		emit = max(0, len(data)-cfg.keep)
	}
	ctx.ReplaceBody(data[:emit])
	st.carry[side] = append(st.carry[side][:0], data[emit:]...)
	st.buf = data
}

// Mask overwrites every occurrence of each pattern in data with mask, scanning left to right.
func Mask(data []byte, patterns [][]byte, mask byte) {
	for _, p := range patterns {
		for i := 0; ; {
			j := bytes.Index(data[i:], p)
			if j < 0 {
				break
			}
			for k := i + j; k < i+j+len(p); k++ {
				data[k] = mask
			}
			i += j + len(p)
		}
	}
}
