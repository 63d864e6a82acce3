// Package auth is the bearer-auth example plugin: it answers 401 to requests without a valid
// "authorization: Bearer <token>" header and marks accepted ones with "x-weft-auth: ok".
//
//	{"tokens": ["s3cret"], "realm": "weft"}
package auth

import (
	"errors"
	"strings"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the bearer-auth instance configuration.
type Config struct {
	// Tokens are the accepted bearer tokens; at least one is required.
	Tokens []string `json:"tokens"`
	// Realm goes into the www-authenticate challenge; default "weft".
	Realm string `json:"realm"`

	challenge string // derived by Init
}

var (
	bodyMissing = []byte(`{"error":"unauthorized","reason":"missing bearer token"}`)
	bodyInvalid = []byte(`{"error":"unauthorized","reason":"invalid token"}`)
)

func initConfig(c *Config) error {
	if len(c.Tokens) == 0 {
		return errors.New("bearer-auth: config.tokens must list at least one token")
	}
	for _, t := range c.Tokens {
		if t == "" {
			return errors.New("bearer-auth: config.tokens must not contain an empty token")
		}
	}
	if c.Realm == "" {
		c.Realm = "weft"
	}
	c.challenge = `Bearer realm="` + c.Realm + `"`
	return nil
}

// bearerToken extracts the token of an "authorization: Bearer <token>" value (the scheme is
// case-insensitive).
func bearerToken(v string) (string, bool) {
	const prefix = "bearer "
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", false
	}
	t := strings.TrimSpace(v[len(prefix):])
	return t, t != ""
}

// valid compares tok with every configured token in time independent of where they differ.
func (c *Config) valid(tok string) bool {
	ok := 0
	for _, t := range c.Tokens {
		ok |= constantTimeEqual(t, tok)
	}
	return ok == 1
}

func constantTimeEqual(a, b string) int {
	if len(a) != len(b) {
		return 0
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	if v == 0 {
		return 1
	}
	return 0
}

func requestHeaders(ctx *weft.Context, c *Config, _ *struct{}) {
	v, _ := ctx.RequestHeader("authorization")
	tok, ok := bearerToken(v)
	switch {
	case !ok:
		c.deny(ctx, bodyMissing)
	case !c.valid(tok):
		c.deny(ctx, bodyInvalid)
	default:
		ctx.SetRequestHeader("x-weft-auth", "ok")
	}
}

func (c *Config) deny(ctx *weft.Context, body []byte) {
	ctx.Reply(401, body, "content-type", "application/json", "www-authenticate", c.challenge)
}

func init() {
	weft.Register(weft.Plugin[Config, struct{}]{
		Name:           "bearer-auth",
		Init:           initConfig,
		RequestHeaders: requestHeaders,
		// The one header it reads: the host copies only its lines into the views.
		ViewHeaders: []string{"authorization"},
	})
}
