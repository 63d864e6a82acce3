//go:build weft_testplugins

package main

// The host's test and bench plugins, linked only into the test build (-tags weft_testplugins).
import _ "github.com/weftrs/weft/cgo/internal/testplugins"
