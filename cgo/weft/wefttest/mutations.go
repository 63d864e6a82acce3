package wefttest

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/weftrs/weft/cgo/internal/core"
)

// Op is a mutation operation.
type Op = core.MutationOp

// Mutation operations, as decoded into Mutation.Op.
const (
	OpSetRequestHeader     = core.OpSetRequestHeader
	OpAddRequestHeader     = core.OpAddRequestHeader
	OpRemoveRequestHeader  = core.OpRemoveRequestHeader
	OpSetPath              = core.OpSetPath
	OpSetQuery             = core.OpSetQuery
	OpSetResponseHeader    = core.OpSetResponseHeader
	OpAddResponseHeader    = core.OpAddResponseHeader
	OpRemoveResponseHeader = core.OpRemoveResponseHeader
	OpSetStatus            = core.OpSetStatus
	OpLocalReply           = core.OpLocalReply
	OpLocalReplyHeader     = core.OpLocalReplyHeader
)

// Mutation is one decoded mutation record: operation, numeric argument (a status code) and
// the operands a and b (header name and value, path, query or reply body).
type Mutation struct {
	Op  Op
	Arg uint32
	A   string
	B   string
}

// String renders the mutation as op(arg, "a", "b") for test failure messages.
func (m Mutation) String() string {
	return fmt.Sprintf("%s(%d, %q, %q)", m.Op, m.Arg, m.A, m.B)
}

// decodeMutations parses the records a plugin wrote into buf.
func decodeMutations(buf []byte) ([]Mutation, error) {
	var out []Mutation
	for len(buf) > 0 {
		if len(buf) < core.SizeofMutation {
			return out, fmt.Errorf("truncated record header (%d bytes)", len(buf))
		}
		op := binary.NativeEndian.Uint32(buf[0:])
		arg := binary.NativeEndian.Uint32(buf[4:])
		aLen := uint64(binary.NativeEndian.Uint32(buf[8:]))
		bLen := uint64(binary.NativeEndian.Uint32(buf[12:]))
		size := uint64(core.SizeofMutation) + (aLen+bLen+3)&^3
		if size > uint64(len(buf)) {
			return out, fmt.Errorf("record of %d bytes overruns the buffer (%d left)", size, len(buf))
		}
		body := buf[core.SizeofMutation:size]
		for _, b := range body[aLen+bLen:] {
			if b != 0 {
				return out, fmt.Errorf("non-zero padding")
			}
		}
		out = append(out, Mutation{
			Op:  Op(op),
			Arg: arg,
			A:   string(body[:aLen]),
			B:   string(body[aLen : aLen+bLen]),
		})
		buf = buf[size:]
	}
	return out, nil
}

// Limits of the host's mutation validation (runtime/src/mutation.rs): the header's WEFT_MAX_*
// constants, through core; the status range is the host's own rule.
const (
	maxRecords    = core.MaxMutationRecords
	maxNameLen    = core.MaxHeaderNameLen
	maxValueLen   = core.MaxHeaderValueLen
	maxPathLen    = core.MaxPathLen
	minStatusCode = 200
	maxStatusCode = 599
)

// reservedHeaders may not be set, added or removed by a plugin: framing and hop-by-hop fields,
// and the forwarding headers the proxy sets itself. The host's list (is_reserved in
// runtime/src/mutation.rs) is the source; runtime/tests/go_test_host.rs fails when they differ.
var reservedHeaders = map[string]bool{
	"content-length": true, "transfer-encoding": true, "connection": true, "keep-alive": true,
	"proxy-connection": true, "te": true, "trailer": true, "upgrade": true, "expect": true,
	"proxy-authenticate": true, "proxy-authorization": true, "host": true,
	"x-forwarded-for": true, "x-forwarded-host": true, "x-forwarded-proto": true,
	"forwarded": true, "x-real-ip": true,
}

// checkMutations mirrors the host's validation of a mutation batch (runtime/src/mutation.rs):
// which ops each phase allows, header name and value syntax, reserved headers, path and query
// characters, status range, one local reply per batch. The host stays the authority.
func checkMutations(phase core.Phase, ms []Mutation) error {
	if len(ms) > maxRecords {
		return fmt.Errorf("more than %d mutation records", maxRecords)
	}
	replied := false
	for i, m := range ms {
		if !allowed(m.Op, phase) {
			return fmt.Errorf("record %d: %s is not allowed in the %s phase", i, m.Op, phase)
		}
		switch m.Op {
		case OpSetRequestHeader, OpAddRequestHeader, OpSetResponseHeader, OpAddResponseHeader, OpLocalReplyHeader:
			if err := checkHeader(i, m.A, m.B); err != nil {
				return err
			}
			if m.Op == OpLocalReplyHeader && !replied {
				return fmt.Errorf("record %d: %s without a preceding local_reply", i, m.Op)
			}
		case OpRemoveRequestHeader, OpRemoveResponseHeader:
			if m.B != "" {
				return fmt.Errorf("record %d: %s with a second operand", i, m.Op)
			}
			if err := checkHeader(i, m.A, ""); err != nil {
				return err
			}
		case OpSetPath:
			if m.B != "" || !strings.HasPrefix(m.A, "/") || len(m.A) > maxPathLen || !uriBytesOK(m.A, false) {
				return fmt.Errorf("record %d: invalid path %q", i, m.A)
			}
		case OpSetQuery:
			if m.B != "" || len(m.A) > maxPathLen || !uriBytesOK(m.A, true) {
				return fmt.Errorf("record %d: invalid query %q", i, m.A)
			}
		case OpSetStatus:
			if m.A != "" || m.B != "" {
				return fmt.Errorf("record %d: %s with operands", i, m.Op)
			}
			if err := checkStatus(i, m.Arg); err != nil {
				return err
			}
		case OpLocalReply:
			if m.B != "" {
				return fmt.Errorf("record %d: %s with a second operand", i, m.Op)
			}
			if replied {
				return fmt.Errorf("record %d: second local_reply in one batch", i)
			}
			replied = true
			if err := checkStatus(i, m.Arg); err != nil {
				return err
			}
		}
	}
	return nil
}

func allowed(op Op, phase core.Phase) bool {
	if bodyAllowed(op, phase) {
		return true
	}
	switch phase {
	case core.PhaseRequestHeaders:
		switch op {
		case OpSetRequestHeader, OpAddRequestHeader, OpRemoveRequestHeader, OpSetPath, OpSetQuery,
			OpLocalReply, OpLocalReplyHeader:
			return true
		}
	case core.PhaseResponseHeaders:
		switch op {
		case OpSetResponseHeader, OpAddResponseHeader, OpRemoveResponseHeader, OpSetStatus,
			OpLocalReply, OpLocalReplyHeader:
			return true
		}
	}
	return false
}

func checkHeader(i int, name, value string) error {
	if len(name) > maxNameLen || !core.IsToken(name) {
		return fmt.Errorf("record %d: invalid header name %q", i, name)
	}
	if reservedHeaders[strings.ToLower(name)] {
		return fmt.Errorf("record %d: header %q is reserved to the proxy", i, strings.ToLower(name))
	}
	if len(value) > maxValueLen || !validHeaderValue(value) {
		return fmt.Errorf("record %d: invalid value for header %q", i, name)
	}
	return nil
}

func checkStatus(i int, code uint32) error {
	if code < minStatusCode || code > maxStatusCode {
		return fmt.Errorf("record %d: invalid status %d", i, code)
	}
	return nil
}

// uriBytesOK allows printable ASCII without space and '#', and '?' only in a query.
func uriBytesOK(s string, allowQuestion bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '#' || (c == '?' && !allowQuestion) {
			return false
		}
	}
	return true
}

// validHeaderValue refuses control characters other than HTAB, as http::HeaderValue does.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
