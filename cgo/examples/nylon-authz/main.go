// Command nylon-authz is a Nylon Go plugin, shaped like the "authz" entry of Nylon's
// examples/go, built for weft: the only change from Nylon is the SDK's import path. Build it
// as its own plugin library (a process holds one Go runtime, so it is not part of
// cmd/weft-plugins):
//
//	go build -buildmode=c-shared -o libnylon_authz.so ./examples/nylon-authz
//
// and name the entry in weft.yaml: { name: authz, library: nylon, plugin: authz,
// config: { token: ... } } (the config is the entry's Nylon payload).
package main

import "C"

import (
	"log"

	"github.com/weftrs/weft/cgo/weft/nylon/sdk"
)

type PluginConfig struct {
	Debug bool   `json:"debug"`
	Token string `json:"token"`
}

func main() {}

func init() {
	plugin := sdk.NewNylonPlugin()

	plugin.Initialize(sdk.NewInitializer(func(config PluginConfig) {
		log.Printf("[NylonPlugin] initialized, debug=%v", config.Debug)
	}))

	plugin.Shutdown(func() {
		log.Printf("[NylonPlugin] shutdown")
	})

	plugin.AddPhaseHandler("authz", func(phase *sdk.PhaseHandler) {
		// Per-request state, shared by this request's filters.
		myPhaseState := map[string]bool{"authz": false}

		phase.RequestFilter(func(ctx *sdk.PhaseRequestFilter) {
			token, _ := ctx.GetPayload()["token"].(string)
			if ctx.Request().Header("Authorization") != "Bearer "+token {
				res := ctx.Response()
				res.SetStatus(sdk.StatusUnauthorized)
				res.BodyJSON(map[string]string{"error": "unauthorized"})
				ctx.End()
				return
			}
			myPhaseState["authz"] = true
			ctx.Response().SetHeader("X-RequestFilter", "authz-1")
			ctx.Next()
		})

		phase.ResponseFilter(func(ctx *sdk.PhaseResponseFilter) {
			ctx.SetResponseHeader("X-ResponseFilter", "authz-2")
			if myPhaseState["authz"] {
				ctx.SetResponseHeader("X-Authz", "passed")
			}
			// To change the body, Nylon plugins drop the length and stream it.
			ctx.RemoveResponseHeader("Content-Length")
			ctx.SetResponseHeader("Transfer-Encoding", "chunked")
			ctx.Next()
		})

		phase.ResponseBodyFilter(func(ctx *sdk.PhaseResponseBodyFilter) {
			res := ctx.Response()
			body := res.ReadBody()
			res.BodyRaw(append(body, []byte("\n<!-- Modified by Authz plugin -->")...))
			ctx.Next()
		})

		phase.Logging(func(ctx *sdk.PhaseLogging) {
			req, res := ctx.Request(), ctx.Response()
			log.Printf("Authz[Go] Log: %s %s | Status: %d | Client: %s | authz=%v",
				req.Method(), req.Path(), res.Status(), req.ClientIP(), myPhaseState["authz"])
			ctx.Next()
		})
	})
}
