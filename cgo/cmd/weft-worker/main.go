// Command weft-worker serves the example plugins (the very same registrations as the c-shared
// library in cmd/weft-plugins; a test checks the imports match; with -tags weft_testplugins the
// test plugins too) to weft proxies over NATS:
//
//	go run ./cmd/weft-worker -nats nats://127.0.0.1:4222 -plugin header-rewriter \
//	    -instance rewrite -config '{"request_set": {"x-env": "prod"}}'
//	go run ./cmd/weft-worker -nats nats://127.0.0.1:4222 -instances instances.json
//	go run ./cmd/weft-worker -list
//
// instances.json lists instances: [{"plugin": "bearer-auth", "name": "auth", "config": {...}}].
// The worker prints "weft-worker ready id=<worker-id>" once it serves.
//
// Over NATS only the request_headers, response_headers and log phases are served. Body and
// WebSocket phases are not: a plugin with body phases (json-rewriter, redactor) is served with
// its header and log phases, and the proxy refuses a type: nats instance of it at start-up; a
// plugin with none of the three (chat: WebSocket phases only) is refused here. -list prints every
// registered plugin with its phases and what of it is served.
//
// SIGTERM or SIGINT drains: the worker stops taking new requests (its queue-group subscriptions
// go), finishes the requests it has, including their later phases, which the proxy sends to this
// worker's direct subjects (kept until every request that holds state here got its last phase,
// or -drain-timeout), then exits 0.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	// The same plugin packages as cmd/weft-plugins (TestRegistersTheSamePluginsAsTheLibrary).
	_ "github.com/weftrs/weft/cgo/examples/auth"
	_ "github.com/weftrs/weft/cgo/examples/chat"
	_ "github.com/weftrs/weft/cgo/examples/extauth"
	_ "github.com/weftrs/weft/cgo/examples/headers"
	_ "github.com/weftrs/weft/cgo/examples/jsonrewrite"
	_ "github.com/weftrs/weft/cgo/examples/redact"
	_ "github.com/weftrs/weft/cgo/examples/timing"
	"github.com/weftrs/weft/cgo/internal/core"
	"github.com/weftrs/weft/cgo/weft/natsworker"
)

const usageHead = `Usage: weft-worker -nats URL (-plugin NAME [-instance NAME] [-config JSON] | -instances FILE) [flags]
       weft-worker -list

Serves weft Go plugins to weft proxies over NATS (instances "type: nats" in the proxy config).

Served over NATS: the request_headers, response_headers and log phases. Body and WebSocket
phases are not: a plugin with body phases is served with its other phases, and the proxy refuses
a type: nats instance of it at start-up (load it in-process, type: ffi); a plugin with none of
the three phases (e.g. chat, WebSocket only) is refused. -list shows every registered plugin.

SIGTERM/SIGINT drains: no new requests, the later phases of the requests this worker has still
reach it until each got its last phase (or -drain-timeout), then the worker exits 0.

Flags:
`

// listPlugins prints every registered plugin, its phases and what of it is served over NATS.
func listPlugins(out io.Writer) {
	for _, p := range core.Plugins() {
		served := p.Phases & natsworker.NATSPhaseMask
		note := "served: " + natsworker.PhaseNames(served)
		switch {
		case served == 0:
			note = "not served over NATS (no request_headers, response_headers or log phase)"
		case p.Phases&^natsworker.NATSPhaseMask != 0:
			note += "; not over NATS: " + natsworker.PhaseNames(p.Phases&^natsworker.NATSPhaseMask)
		}
		fmt.Fprintf(out, "%-20s %s\n", p.Name, note)
	}
}

// connFlags are the flags of the NATS connection: its authentication and TLS.
type connFlags struct {
	user, password, token, nkey, creds *string
	tlsCA, tlsCert, tlsKey             *string
}

func main() {
	var (
		url         = flag.String("nats", nats.DefaultURL, "NATS server URL(s), comma separated")
		plugin      = flag.String("plugin", "", "plugin to serve (with -instance and -config)")
		instance    = flag.String("instance", "", "instance name the proxy calls (default: the plugin name)")
		config      = flag.String("config", "", "the instance's JSON config")
		instances   = flag.String("instances", "", "JSON file listing instances: [{\"plugin\":..., \"name\":..., \"config\":{...}}]")
		concurrency = flag.Int("concurrency", 0, "handlers running at once (default 4 x GOMAXPROCS)")
		slots       = flag.Int("slots", 0, "requests per instance holding state at once (default 4096)")
		drain       = flag.Duration("drain-timeout", 10*time.Second, "how long SIGTERM waits for in-flight requests")
		stateIdle   = flag.Duration("state-idle", 30*time.Second,
			"while draining, a request with state here and no phase call for this long counts as abandoned")
		listOnly = flag.Bool("list", false, "print the registered plugins and what of each is served, then exit")
		conn     = connFlags{
			user:     flag.String("user", "", "NATS user (with -password)"),
			password: flag.String("password", "", "NATS password"),
			token:    flag.String("token", "", "NATS token"),
			nkey:     flag.String("nkey", "", "NATS nkey seed file"),
			creds:    flag.String("creds", "", "NATS credentials file"),
			tlsCA:    flag.String("tls-ca", "", "CA certificate file for the server's TLS certificate"),
			tlsCert:  flag.String("tls-cert", "", "client certificate file (mutual TLS, with -tls-key)"),
			tlsKey:   flag.String("tls-key", "", "client key file"),
		}
	)
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usageHead)
		flag.PrintDefaults()
	}
	flag.Parse()
	if *listOnly {
		listPlugins(os.Stdout)
		return
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	list := instanceList(*instances, natsworker.Instance{Plugin: *plugin, Name: *instance, Config: json.RawMessage(*config)})
	opts, err := conn.options()
	if err != nil {
		log.Fatalf("weft-worker: %v", err)
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		log.Fatalf("weft-worker: connect %s: %v", *url, err)
	}
	w := natsworker.New(nc, natsworker.Options{Concurrency: *concurrency, Slots: *slots, StateIdle: *stateIdle})
	for _, inst := range list {
		if err := w.Serve(inst); err != nil {
			log.Fatalf("weft-worker: %v", err)
		}
	}
	if err := nc.Flush(); err != nil {
		log.Fatalf("weft-worker: %v", err)
	}
	fmt.Printf("weft-worker ready id=%s\n", w.ID())
	serveUntilSignal(w, nc, *drain)
}

// instanceList is what to serve: the instances of the -instances file, then the one of -plugin
// (when given). It exits when the file cannot be read or the list is empty.
func instanceList(file string, flagged natsworker.Instance) []natsworker.Instance {
	var list []natsworker.Instance
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			log.Fatalf("weft-worker: %v", err)
		}
		if err := json.Unmarshal(data, &list); err != nil {
			log.Fatalf("weft-worker: %s: %v", file, err)
		}
	}
	if flagged.Plugin != "" {
		list = append(list, flagged)
	}
	if len(list) == 0 {
		log.Fatal("weft-worker: nothing to serve: give -plugin or -instances")
	}
	return list
}

// options are the NATS connection's options: a worker reconnects forever with a short backoff,
// and authenticates as the flags say.
func (f connFlags) options() ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("weft-worker"),
		// Find a restarted server quickly: short, bounded reconnect backoff, forever.
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.ReconnectJitter(25*time.Millisecond, 25*time.Millisecond),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Printf("weft-worker: disconnected: %v", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Printf("weft-worker: reconnected to %s", nc.ConnectedUrl()) }),
	}
	if *f.user != "" {
		opts = append(opts, nats.UserInfo(*f.user, *f.password))
	}
	if *f.token != "" {
		opts = append(opts, nats.Token(*f.token))
	}
	if *f.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(*f.nkey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if *f.creds != "" {
		opts = append(opts, nats.UserCredentials(*f.creds))
	}
	if *f.tlsCA != "" {
		opts = append(opts, nats.RootCAs(*f.tlsCA))
	}
	if *f.tlsCert != "" {
		opts = append(opts, nats.ClientCert(*f.tlsCert, *f.tlsKey))
	}
	return opts, nil
}

// serveUntilSignal waits for SIGTERM or SIGINT, then drains the worker (up to drain for the
// requests in flight) and the connection.
func serveUntilSignal(w *natsworker.Worker, nc *nats.Conn, drain time.Duration) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Printf("weft-worker: %v: draining", s)
	if err := w.Drain(drain); err != nil {
		log.Printf("weft-worker: drain: %v", err)
	}
	if err := nc.Drain(); err != nil {
		log.Printf("weft-worker: %v", err)
	}
	for nc.IsDraining() {
		time.Sleep(10 * time.Millisecond)
	}
	log.Print("weft-worker: stopped")
}
