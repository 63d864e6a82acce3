//go:build linux

package core

import (
	"encoding/binary"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// guarded returns n bytes that end exactly at a PROT_NONE page, 8-byte aligned at the start
// (n is rounded up to 8): any read or write past the end faults instead of silently touching
// neighbouring heap memory, which is what an SDK bug would do with a hostile view.
func guarded(t testing.TB, n int) []byte {
	n = (n + 7) &^ 7
	page := syscall.Getpagesize()
	pages := (n+page-1)/page + 1
	mem, err := syscall.Mmap(-1, 0, pages*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(mem) })
	guard := (pages - 1) * page
	if err := syscall.Mprotect(mem[guard:], syscall.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	return mem[guard-n : guard : guard]
}

// fuzzReader touches everything a handler can read, then writes a few records.
func init() {
	Register(Plugin[struct{}, struct{}]{
		Name: "fuzz-reader",
		RequestHeaders: func(ctx *Context, _ *struct{}, _ *struct{}) {
			sum := len(ctx.Method()) + len(ctx.Path()) + len(ctx.Query()) + len(ctx.Host()) +
				len(ctx.ClientAddr()) + len(ctx.Scheme()) + len(ctx.Version()) + ctx.Status()
			for n, v := range ctx.RequestHeaders() {
				sum += len(strings.ToLower(n)) + len(strings.Clone(v))
			}
			for n, v := range ctx.ResponseHeaders() {
				sum += len(n) + len(v)
			}
			_, _ = ctx.RequestHeader("X-Any")
			_, _ = ctx.ResponseHeader("content-type")
			for v := range ctx.RequestHeaderValues("host") {
				sum += len(v)
			}
			ctx.SetRequestHeader("x-sum", strings.Repeat("s", sum%64))
			ctx.SetPath(ctx.Path())
		},
	})
}

func viewBytes(w []uint64) []byte {
	v := viewOf(w)
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), int(v.Size))
}

// FuzzDispatchView hands Dispatch arbitrary view bytes the way a broken or hostile host would:
// any offset, length or count. Dispatch must reject what is out of bounds (ResultInvalidArgument)
// and never read past view.size (the page after the view is unmapped) nor write past outCap.
func FuzzDispatchView(f *testing.F) {
	f.Add(viewBytes(testView(PhaseRequestHeaders, 0, 1, "/a", [][2]string{{"host", "x"}}, nil)), uint16(256))
	f.Add(viewBytes(testView(PhaseRequestHeaders, 1, 2, "/p", [][2]string{{"a", "b"}, {"c", "d"}}, [][2]string{{"e", "f"}})), uint16(40))
	f.Add(make([]byte, SizeofRequestView), uint16(0))
	const slots = 2
	idx, ok := Lookup("fuzz-reader")
	if !ok {
		f.Fatal("fuzz-reader not registered")
	}
	id := uint64(900_000)
	if err := Init(idx, id, nil, slots); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = Shutdown(id) })
	f.Fuzz(func(t *testing.T, data []byte, outCap uint16) {
		if len(data) < SizeofRequestView || len(data) > 1<<16 {
			return
		}
		view := guarded(t, len(data))
		copy(view, data)
		v := (*RequestView)(unsafe.Pointer(&view[0]))
		// What the host guarantees and Dispatch checks before anything else: the phase matches
		// and size bytes are readable. Everything else stays as the fuzzer made it.
		v.Phase = uint32(PhaseRequestHeaders)
		v.Slot %= slots
		if int(v.Size) > len(view) {
			v.Size = uint32(len(view))
		}
		out := guarded(t, int(outCap))[:outCap]
		var outPtr unsafe.Pointer
		if outCap > 0 {
			outPtr = unsafe.Pointer(&out[0])
		}
		res, n := Dispatch(id, uint32(PhaseRequestHeaders), unsafe.Pointer(&view[0]), outPtr, uint32(outCap))
		switch res {
		case ResultOK:
			if int(n) > int(outCap) {
				t.Fatalf("wrote %d bytes into a %d-byte buffer", n, outCap)
			}
			checkRecords(t, out[:n])
		case ResultInvalidArgument, ResultMutationOverflow:
			if n != 0 {
				t.Fatalf("%v with %d bytes", res, n)
			}
		default:
			t.Fatalf("unexpected result %v", res)
		}
	})
}

// checkRecords walks mutation records exactly as the host does and fails on any framing error.
func checkRecords(t *testing.T, b []byte) {
	for len(b) > 0 {
		if len(b) < SizeofMutation {
			t.Fatalf("torn record header: %d bytes", len(b))
		}
		op := MutationOp(binary.NativeEndian.Uint32(b[0:]))
		aLen := int(binary.NativeEndian.Uint32(b[8:]))
		bLen := int(binary.NativeEndian.Uint32(b[12:]))
		size := RecordSize(aLen, bLen)
		if op.String() == "unknown_op" || size > len(b) {
			t.Fatalf("bad record: op %d, a %d, b %d, %d bytes left", op, aLen, bLen, len(b))
		}
		for _, pad := range b[SizeofMutation+aLen+bLen : size] {
			if pad != 0 {
				t.Fatal("non-zero padding")
			}
		}
		b = b[size:]
	}
}

// FuzzMutationEncoding drives the Context's mutation methods with arbitrary names, values and
// buffer capacities: records either fit and parse back exactly, or the phase reports
// ResultMutationOverflow; nothing is written past outCap (the next page is unmapped).
func FuzzMutationEncoding(f *testing.F) {
	f.Add("x-a", "v", "/p", 3, uint16(64))
	f.Add("", "", "", 0, uint16(0))
	f.Add(strings.Repeat("n", 300), strings.Repeat("v", 5000), "/", 9, uint16(512))
	f.Fuzz(func(t *testing.T, name, value, path string, count int, outCap uint16) {
		count = count & 15
		out := guarded(t, int(outCap))[:outCap]
		c := &Context{}
		var outPtr unsafe.Pointer
		if outCap > 0 {
			outPtr = unsafe.Pointer(&out[0])
		}
		view := testView(PhaseRequestHeaders, 0, 1, "/", nil, nil)
		c.begin(unsafe.Pointer(&view[0]), viewOf(view).Size, PhaseRequestHeaders, 1, outPtr, uint32(outCap))
		want := 0
		for i := 0; i < count; i++ {
			switch i % 4 {
			case 0:
				c.SetRequestHeader(name, value)
				want += RecordSize(len(name), len(value))
			case 1:
				c.RemoveRequestHeader(name)
				want += RecordSize(len(name), 0)
			case 2:
				c.SetPath(path)
				want += RecordSize(len(path), 0)
			case 3:
				c.Reply(200+i, []byte(value), name, value)
				want += RecordSize(len(value), 0) + RecordSize(len(name), len(value))
			}
		}
		n, overflow := c.n, c.overflow
		c.end()
		if n > int(outCap) {
			t.Fatalf("wrote %d bytes into %d", n, outCap)
		}
		if overflow != (want > int(outCap)) {
			t.Fatalf("overflow=%v but records need %d of %d bytes", overflow, want, outCap)
		}
		if !overflow {
			if n != want {
				t.Fatalf("wrote %d bytes, records need %d", n, want)
			}
			checkRecords(t, out[:n])
		}
	})
}
