// Command weft-plugins is the plugin library of the weft repository: the example plugins,
// built as one shared library:
//
//	cd cgo && go build -buildmode=c-shared -o ../target/weft-plugins/libweft_plugins.so ./cmd/weft-plugins
//
// Built with the tag weft_testplugins it also holds the host's test and bench plugins
// (testplugins.go; scripts/build-plugins test). A process loads one Go library, so the tests
// load that build, never this one beside it.
package main

import (
	_ "github.com/weftrs/weft/cgo/examples/auth"
	_ "github.com/weftrs/weft/cgo/examples/chat"
	_ "github.com/weftrs/weft/cgo/examples/extauth"
	_ "github.com/weftrs/weft/cgo/examples/headers"
	_ "github.com/weftrs/weft/cgo/examples/jsonrewrite"
	_ "github.com/weftrs/weft/cgo/examples/redact"
	_ "github.com/weftrs/weft/cgo/examples/timing"
	_ "github.com/weftrs/weft/cgo/weft/cabi"
)

func main() {}
