//go:build linux

package core

import (
	"testing"
	"unsafe"
)

// FuzzRunJob hands RunJob arbitrary jobs over arbitrary slot contents, as a broken or hostile
// host could post them: every job must be answered with a result code, every read must stay
// inside the arena (the page after it is unmapped) and every write inside the job's output
// location (from OutOff to the end of OutSlot).
func FuzzRunJob(f *testing.F) {
	const slots, slotSize = 2, 512
	valid := testView(PhaseRequestHeaders, 1, 7, "/a", [][2]string{{"user-agent", "x"}, {"host", "h"}}, nil)
	viewOf(valid).Call = 9
	f.Add(viewBytes(valid), uint32(1), uint32(7), uint32(PhaseRequestHeaders), uint32(9), uint32(0), uint32(0), true)
	f.Add(viewBytes(valid), uint32(1), uint32(7), uint32(PhaseRequestHeaders), uint32(9), uint32(1), uint32(256), true)
	f.Add(viewBytes(valid), uint32(0), uint32(7), uint32(PhaseRequestHeaders), uint32(9), uint32(0), uint32(8), true)
	f.Add(make([]byte, SizeofRequestView), uint32(1), uint32(0), uint32(PhaseLog), uint32(0), uint32(1), uint32(3), false)
	idx, ok := Lookup("fuzz-reader")
	if !ok {
		f.Fatal("fuzz-reader not registered")
	}
	id := uint64(900_001)
	if err := Init(idx, id, nil, slots); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = Shutdown(id) })
	f.Fuzz(func(t *testing.T, data []byte, slot, gen, phase, call, outSlot, outOff uint32, known bool) {
		mem := guarded(t, slots*slotSize)
		copy(mem[slotSize:], data) // slot 1 holds the fuzzer's bytes, slot 0 stays zero
		a := Arena{Base: unsafe.Pointer(&mem[0]), SlotSize: slotSize, SlotCount: slots}
		inst := id
		if !known {
			inst = 123
		}
		j := Job{Slot: slot, Generation: gen, Instance: inst, Phase: phase, Call: call, OutSlot: outSlot, OutOff: outOff}
		before := append([]byte(nil), mem...)
		res, n := RunJob(j, a)
		switch res {
		case ResultOK:
			if uint64(outOff)+uint64(n) > slotSize {
				t.Fatalf("out_len %d at offset %d past the slot", n, outOff)
			}
			if v := (*RequestView)(unsafe.Pointer(&mem[slot*slotSize])); outSlot == slot && outOff < v.Size {
				t.Fatalf("output at %d over the view of %d bytes was accepted", outOff, v.Size)
			}
			checkRecords(t, mem[outSlot*slotSize+outOff:][:n])
			// Nothing but the output location changed.
			for i := range mem {
				if (uint32(i) < outSlot*slotSize+outOff || uint32(i) >= (outSlot+1)*slotSize) && mem[i] != before[i] {
					t.Fatalf("byte %d outside the output location changed", i)
				}
			}
		case ResultInvalidArgument, ResultUnknownPlugin, ResultUnsupportedPhase, ResultMutationOverflow:
			if n != 0 {
				t.Fatalf("%v with %d bytes", res, n)
			}
		default:
			t.Fatalf("unexpected result %v for %+v", res, j)
		}
	})
}
