// Package extauth is the ext-auth example plugin: it asks an external HTTP service whether a
// request may pass. The call runs on a goroutine (Context.Go), so no proxy thread waits for it.
//
//	{"url": "http://127.0.0.1:9001/check", "timeout_ms": 500, "headers": ["authorization", "cookie"]}
//
// For every request it sends GET <url> with the configured request headers (default:
// authorization) and x-forwarded-method, x-forwarded-uri (path and query) and
// x-forwarded-host. The service's answer decides:
//
//   - 2xx: the request passes with x-ext-auth: ok; the service's x-auth-user response header,
//     if any, becomes the request's x-auth-user (a client-supplied x-auth-user is always
//     removed, so the upstream can trust it);
//   - 401 or 403: the proxy answers 403 with the service's body (at most 4 KiB) and content
//     type;
//   - anything else, a timeout (timeout_ms, default 1000) or a connection error: the phase
//     fails, which the instance's failure policy turns into a 500 (fail closed, the default) or
//     lets the request pass unchanged (fail open).
package extauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/weftrs/weft/cgo/weft"
)

// Config is the ext-auth instance configuration.
type Config struct {
	// URL of the authorization service (http or https); required.
	URL string `json:"url"`
	// TimeoutMs bounds each check, connection included; default 1000.
	TimeoutMs int `json:"timeout_ms"`
	// Headers are the request headers forwarded to the service; default ["authorization"].
	Headers []string `json:"headers"`

	timeout time.Duration
	client  *http.Client
}

// maxDenyBody bounds the service's body copied into a 403 reply.
const maxDenyBody = 4 << 10

func initConfig(c *Config) error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("ext-auth: config.url must be an http(s) URL, got %q", c.URL)
	}
	if c.TimeoutMs < 0 {
		return errors.New("ext-auth: config.timeout_ms must not be negative")
	}
	if c.TimeoutMs == 0 {
		c.TimeoutMs = 1000
	}
	if c.Headers == nil {
		c.Headers = []string{"authorization"}
	}
	for i, h := range c.Headers {
		c.Headers[i] = strings.ToLower(h)
	}
	c.timeout = time.Duration(c.TimeoutMs) * time.Millisecond
	c.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil, // talk to the service directly, whatever the environment says
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		// A redirect is an answer of the service, not something to follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
}

func requestHeaders(ctx *weft.Context, c *Config, _ *struct{}) {
	ctx.Go(func(ctx *weft.Context) error { return c.check(ctx) })
}

// check runs on its own goroutine; the Context stays valid until it returns.
func (c *Config) check(ctx *weft.Context) error {
	rctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return err
	}
	// net/http may keep header strings beyond the call: send copies, not view memory.
	for _, name := range c.Headers {
		for v := range ctx.RequestHeaderValues(name) {
			req.Header.Add(name, strings.Clone(v))
		}
	}
	uri := ctx.Path()
	if q := ctx.Query(); q != "" {
		uri += "?" + q
	}
	req.Header.Set("x-forwarded-method", strings.Clone(ctx.Method()))
	req.Header.Set("x-forwarded-uri", uri)
	req.Header.Set("x-forwarded-host", strings.Clone(ctx.Host()))

	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("ext-auth: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDenyBody)) // keep the connection
		if user := resp.Header.Get("x-auth-user"); user != "" {
			ctx.SetRequestHeader("x-auth-user", user)
		} else {
			ctx.RemoveRequestHeader("x-auth-user")
		}
		ctx.SetRequestHeader("x-ext-auth", "ok")
		return nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxDenyBody))
		if err != nil {
			return fmt.Errorf("ext-auth: reading the denial: %w", err)
		}
		ct := resp.Header.Get("content-type")
		if ct == "" {
			ct = "text/plain; charset=utf-8"
		}
		ctx.Reply(http.StatusForbidden, body, "content-type", ct)
		return nil
	}
	return fmt.Errorf("ext-auth: the service answered %s", resp.Status)
}

func shutdown(c *Config) {
	if t, ok := c.client.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

func init() {
	weft.Register(weft.Plugin[Config, struct{}]{
		Name:           "ext-auth",
		Init:           initConfig,
		RequestHeaders: requestHeaders,
		Shutdown:       shutdown,
	})
}
