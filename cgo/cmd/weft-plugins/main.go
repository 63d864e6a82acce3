// Command weft-plugins is the plugin library of the weft repository: the example plugins and
// the host's test plugins, built as one shared library:
//
//	cd cgo && go build -buildmode=c-shared -o ../target/weft-plugins/libweft_plugins.so ./cmd/weft-plugins
package main

import (
	_ "github.com/weftrs/weft/cgo/examples/auth"
	_ "github.com/weftrs/weft/cgo/examples/chat"
	_ "github.com/weftrs/weft/cgo/examples/extauth"
	_ "github.com/weftrs/weft/cgo/examples/headers"
	_ "github.com/weftrs/weft/cgo/examples/jsonrewrite"
	_ "github.com/weftrs/weft/cgo/examples/redact"
	_ "github.com/weftrs/weft/cgo/examples/timing"
	_ "github.com/weftrs/weft/cgo/internal/testplugins"
	_ "github.com/weftrs/weft/cgo/weft/cabi"
)

func main() {}
