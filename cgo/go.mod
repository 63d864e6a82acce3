module github.com/weftrs/weft/cgo

go 1.24
