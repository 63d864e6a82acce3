//go:build linux

package core

import (
	"bytes"
	"errors"
	"sort"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// testRing is the producer side of a worker ring, written from the layout in
// runtime/src/ring.rs: the test plays the host.
type testRing struct {
	t     testing.TB
	mem   []byte
	mask  uint32
	tail  uint32 // the producer's private tail
	wakes int    // FUTEX_WAKE calls made
}

func mmap(t testing.TB, n int) []byte {
	page := syscall.Getpagesize()
	mem, err := syscall.Mmap(-1, 0, (n+page-1)/page*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(mem) })
	return mem
}

// newTestRing lays out a ring of capacity descriptors in Go memory (so that the race detector
// sees the ordering its atomics give), or in a shared mapping, as the host maps it (so that a
// process-private futex on the consumer's side would miss the producer's wake).
func newTestRing(t testing.TB, capacity uint32, shared bool) *testRing {
	n := RingOffsetDescriptors + int(capacity)*SizeofJob
	var mem []byte
	if shared {
		mem = mmap(t, n)
	} else {
		words := make([]uint64, (n+128)/8)
		b := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
		skip := (64 - int(uintptr(unsafe.Pointer(&b[0]))%64)) % 64
		mem = b[skip : skip+n]
	}
	r := &testRing{t: t, mem: mem, mask: capacity - 1}
	*r.word(0) = RingMagic
	*r.word(4) = RingVersion
	*r.word(RingOffsetCapacity) = capacity
	*r.word(RingOffsetDescSize) = SizeofJob
	return r
}

func (r *testRing) base() unsafe.Pointer     { return unsafe.Pointer(&r.mem[0]) }
func (r *testRing) word(off uintptr) *uint32 { return (*uint32)(unsafe.Add(r.base(), off)) }

// stage writes jobs without publishing them, waiting while the ring is full.
func (r *testRing) stage(jobs ...Job) {
	for _, j := range jobs {
		deadline := time.Now().Add(30 * time.Second)
		for r.tail-atomic.LoadUint32(r.word(RingOffsetHead)) > r.mask {
			if time.Now().After(deadline) {
				r.t.Fatal("the consumer never gave ring entries back")
			}
			time.Sleep(time.Millisecond)
		}
		*(*Job)(unsafe.Add(r.base(), RingOffsetDescriptors+uintptr(r.tail&r.mask)*SizeofJob)) = j
		r.tail++
	}
}

// publish stores tail and wakes the consumer if it is parked: the producer half of the protocol.
func (r *testRing) publish() {
	atomic.StoreUint32(r.word(RingOffsetTail), r.tail)
	r.wakeIfWaiting()
}

func (r *testRing) send(jobs ...Job) {
	r.stage(jobs...)
	r.publish()
}

func (r *testRing) close() {
	atomic.StoreUint32(r.word(RingOffsetClosed), 1)
	r.wakeIfWaiting()
}

func (r *testRing) wakeIfWaiting() {
	w := r.word(RingOffsetWaiting)
	if atomic.LoadUint32(w) == 1 && atomic.SwapUint32(w, 0) == 1 {
		r.wakes++
		futexWake(w, 1)
	}
}

// testArena is a host arena of request slots.
type testArena struct {
	mem      []byte
	slotSize uint32
	slots    uint32
}

func newTestArena(t testing.TB, slots, slotSize uint32) *testArena {
	return &testArena{mem: mmap(t, int(slots*slotSize)), slotSize: slotSize, slots: slots}
}

func (a *testArena) arena() Arena {
	return Arena{Base: unsafe.Pointer(&a.mem[0]), SlotSize: a.slotSize, SlotCount: a.slots}
}

// put lays out a request-headers view in slot for job j and returns j.
func (a *testArena) put(j Job, headers [][2]string) Job {
	w := testView(Phase(j.Phase), j.Slot, j.Generation, "/ring", headers, nil)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), len(w)*8)
	slot := a.mem[j.Slot*a.slotSize : (j.Slot+1)*a.slotSize]
	clear(slot)
	copy(slot, b[:viewOf(w).Size])
	(*RequestView)(unsafe.Pointer(&slot[0])).Call = j.Call
	// The output location after the view, in the same slot (the host may name another slot).
	j.OutSlot, j.OutOff = j.Slot, (viewOf(w).Size+7)&^7
	return j
}

// out returns the mutation bytes a completion reported for job j.
func (a *testArena) out(j Job, n uint32) []byte {
	return a.mem[j.OutSlot*a.slotSize+j.OutOff:][:n]
}

var ringRelease = make(chan struct{})

func init() {
	Register(Plugin[struct{}, struct{}]{
		Name:     "ring-probe",
		Blocking: true,
		RequestHeaders: func(ctx *Context, _ *struct{}, _ *struct{}) {
			if _, ok := ctx.RequestHeader("x-block"); ok {
				<-ringRelease
			}
			if _, ok := ctx.RequestHeader("x-panic"); ok {
				panic("ring-probe panics")
			}
			if _, ok := ctx.RequestHeader("x-defer"); ok {
				ctx.Go(func(ctx *Context) error { ctx.SetRequestHeader("x-deferred", "1"); return nil })
				return
			}
			ua, _ := ctx.RequestHeader("user-agent")
			ctx.SetRequestHeader("x-ring", ua)
		},
	})
}

// ringSetup initialises ring-probe (completions to rc), a ring and an arena, and starts the
// consumer; exits counts worker exits.
type ringSetup struct {
	id    uint64
	rc    *recorder
	ring  *testRing
	arena *testArena
	w     *ringWorker
	exits atomic.Int32
	exit  chan struct{}
}

func newRingSetup(t *testing.T, capacity uint32) *ringSetup {
	return newRingSetupIn(t, capacity, false)
}

func newRingSetupIn(t *testing.T, capacity uint32, shared bool) *ringSetup {
	t.Helper()
	s := &ringSetup{rc: newRecorder(), ring: newTestRing(t, capacity, shared), arena: newTestArena(t, 8, 1024), exit: make(chan struct{})}
	idx, ok := Lookup("ring-probe")
	if !ok {
		t.Fatal("ring-probe not registered")
	}
	nextID++
	s.id = nextID
	if err := InitWith(idx, s.id, nil, 8, InitOptions{Complete: s.rc.complete}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Shutdown(s.id) })
	w, err := newRingWorker(s.ring.base(), uintptr(len(s.ring.mem)), s.arena.arena(), WorkerHost{
		Complete: s.rc.complete,
		Exit: func() {
			if s.exits.Add(1) == 1 {
				close(s.exit)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.w = w
	go w.run()
	t.Cleanup(func() {
		s.ring.close()
		s.waitExit(t)
	})
	return s
}

func (s *ringSetup) waitExit(t *testing.T) {
	select {
	case <-s.exit:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not exit after close")
	}
}

// waitParked waits until the consumer has committed to its n-th sleep: it set the park flag
// and found the ring still empty on the re-check, so only the producer clears the flag now.
func (s *ringSetup) waitParked(t *testing.T, n uint64) {
	deadline := time.Now().Add(30 * time.Second)
	for s.w.parks.Load() < n || atomic.LoadUint32(s.ring.word(RingOffsetWaiting)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the consumer never parked on an idle ring")
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *ringSetup) job(slot, call uint32) Job {
	return Job{Slot: slot, Generation: 1, Instance: s.id, Phase: uint32(PhaseRequestHeaders), Call: call}
}

func TestRingRunsJobs(t *testing.T) {
	s := newRingSetup(t, 4)
	var jobs []Job
	for i := range uint32(6) { // more jobs than the ring holds: entries are reused
		jobs = append(jobs, s.arena.put(s.job(i, 100+i), [][2]string{{"user-agent", string(rune('a' + i))}}))
	}
	s.ring.send(jobs[:4]...)
	for range 4 {
		s.rc.next(t)
	}
	s.ring.send(jobs[4:]...)
	for range 2 {
		s.rc.next(t)
	}
	got := s.rc.got
	sort.Slice(got, func(i, j int) bool { return got[i].call < got[j].call })
	for i, c := range got {
		j := jobs[i]
		if c.instance != s.id || c.slot != j.Slot || c.call != j.Call || c.res != ResultOK {
			t.Fatalf("completion %+v for job %+v", c, j)
		}
		recs := decode(t, s.arena.out(j, c.n))
		if len(recs) != 1 || recs[0] != (rec{OpSetRequestHeader, 0, "x-ring", string(rune('a' + i))}) {
			t.Errorf("job %d wrote %+v", i, recs)
		}
	}
}

func TestRingParksAndIsWoken(t *testing.T) {
	s := newRingSetupIn(t, 8, true) // a shared mapping, like the host's
	// (Each round uses its own slot: the race detector cannot see the ordering the atomics on
	// this non-Go memory give, so no Context is reused across rounds here.)
	for round := range uint32(3) {
		s.waitParked(t, uint64(round)+1)
		j := s.arena.put(s.job(round, round+1), nil)
		s.ring.send(j)
		if c := s.rc.next(t); c.call != j.Call || c.res != ResultOK {
			t.Fatalf("round %d: %+v", round, c)
		}
	}
	// Each round found the consumer asleep: the producer made one wake per idle→busy
	// transition, and the consumer slept again after each job.
	if s.ring.wakes != 3 {
		t.Errorf("%d wakes for 3 idle→busy transitions", s.ring.wakes)
	}
}

func TestRingCloseDrainsThenExitsOnce(t *testing.T) {
	s := newRingSetup(t, 8)
	var jobs []Job
	for i := range uint32(5) {
		jobs = append(jobs, s.arena.put(s.job(i, 10+i), nil))
	}
	// Published and closed at once: the consumer must still run every job before leaving.
	s.ring.stage(jobs...)
	atomic.StoreUint32(s.ring.word(RingOffsetTail), s.ring.tail)
	s.ring.close()
	s.waitExit(t)
	for range jobs {
		s.rc.next(t)
	}
	if head := atomic.LoadUint32(s.ring.word(RingOffsetHead)); head != 5 {
		t.Errorf("head %d after drain, want 5", head)
	}
	s.ring.close() // the cleanup closes again: still one exit
	if n := s.exits.Load(); n != 1 {
		t.Errorf("worker_exit called %d times", n)
	}

	// A parked consumer is woken by close alone.
	s2 := newRingSetup(t, 2)
	s2.waitParked(t, 1)
	s2.ring.close()
	s2.waitExit(t)
	if s2.rc.count() != 0 {
		t.Error("completions without jobs")
	}
}

func TestRingBadJobsAreAnsweredNotRun(t *testing.T) {
	s := newRingSetup(t, 16)
	good := s.arena.put(s.job(1, 5), nil)
	tooBig := s.arena.put(s.job(2, 6), nil)
	(*RequestView)(unsafe.Pointer(&s.arena.mem[2*s.arena.slotSize])).Size = s.arena.slotSize + 8
	wrongSlot := s.arena.put(s.job(3, 7), nil)
	(*RequestView)(unsafe.Pointer(&s.arena.mem[3*s.arena.slotSize])).Slot = 4
	badHeaders := s.arena.put(s.job(4, 8), [][2]string{{"a", "b"}})
	(*RequestView)(unsafe.Pointer(&s.arena.mem[4*s.arena.slotSize])).ReqHeaderCount = 1 << 20
	panics := s.arena.put(s.job(5, 9), [][2]string{{"x-panic", "1"}})
	stale := s.arena.put(s.job(6, 11), nil)
	stale.Generation = 2 // the view is of generation 1

	tests := []struct {
		name string
		job  Job
		want Result
	}{
		{"slot out of range", Job{Slot: 8, Generation: 1, Instance: s.id, Call: 1}, ResultInvalidArgument},
		{"unknown instance", Job{Slot: 1, Generation: 1, Instance: s.id + 1000, Call: 2}, ResultUnknownPlugin},
		{"undeclared phase", Job{Slot: 1, Generation: 1, Instance: s.id, Phase: uint32(PhaseLog), Call: 3}, ResultUnsupportedPhase},
		{"call 0", Job{Slot: 1, Generation: 1, Instance: s.id}, ResultInvalidArgument},
		{"stale generation", stale, ResultInvalidArgument},
		{"other call", Job{Slot: 1, Generation: 1, Instance: s.id, Call: 4}, ResultInvalidArgument},
		{"view larger than its slot", tooBig, ResultInvalidArgument},
		{"view of another slot", wrongSlot, ResultInvalidArgument},
		{"headers outside the view", badHeaders, ResultInvalidArgument},
		{"handler panic", panics, ResultPanic},
		{"good", good, ResultOK},
	}
	for _, tt := range tests {
		s.ring.stage(tt.job)
	}
	s.ring.publish()
	got := map[uint32]Result{}
	for range tests {
		c := s.rc.next(t)
		got[c.call] = c.res
	}
	for _, tt := range tests {
		if got[tt.job.Call] != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got[tt.job.Call], tt.want)
		}
	}
}

// The host names the output location: usually a second slot it leased for the call, so what
// the handler writes can go to the HTTP library without a copy. RunJob writes there and nowhere
// else, and refuses a location outside the arena, unaligned, or over the view.
func TestRunJobWritesWhereTheJobSays(t *testing.T) {
	s := newRingSetup(t, 4)
	a := s.arena.arena()
	j := s.arena.put(s.job(1, 21), [][2]string{{"user-agent", "elsewhere"}})
	j.OutSlot, j.OutOff = 3, 16
	before := append([]byte(nil), s.arena.mem...)
	res, n := RunJob(j, a)
	if res != ResultOK || n == 0 {
		t.Fatalf("RunJob: %v, %d bytes", res, n)
	}
	if out := s.arena.out(j, n); !bytes.Contains(out, []byte("elsewhere")) {
		t.Fatalf("records at slot 3 + 16: %q", out)
	}
	lo, hi := j.OutSlot*s.arena.slotSize+j.OutOff, (j.OutSlot+1)*s.arena.slotSize
	for i := range s.arena.mem {
		if (uint32(i) < lo || uint32(i) >= hi) && s.arena.mem[i] != before[i] {
			t.Fatalf("byte %d outside the output location changed", i)
		}
	}
	for _, tt := range []struct {
		name         string
		outSlot, off uint32
	}{
		{"output slot out of range", 8, 0},
		{"output offset not 8-aligned", 3, 4},
		{"output over the view", 1, 8},
		{"output past its slot", 3, s.arena.slotSize + 8},
	} {
		bad := j
		bad.OutSlot, bad.OutOff = tt.outSlot, tt.off
		if res, n := RunJob(bad, a); res != ResultInvalidArgument || n != 0 {
			t.Errorf("%s: %v, %d bytes", tt.name, res, n)
		}
	}
}

func TestRingBlockedHandlerDoesNotStallTheRing(t *testing.T) {
	s := newRingSetup(t, 8)
	blocked := s.arena.put(s.job(0, 1), [][2]string{{"x-block", "1"}})
	free := s.arena.put(s.job(1, 2), nil)
	s.ring.send(blocked)
	s.ring.send(free)
	if c := s.rc.next(t); c.call != free.Call {
		t.Fatalf("first completion %+v, want the unblocked job", c)
	}
	ringRelease <- struct{}{}
	if c := s.rc.next(t); c.call != blocked.Call || c.res != ResultOK {
		t.Fatalf("blocked job: %+v", c)
	}
}

func TestRingJobThatGoesAsync(t *testing.T) {
	s := newRingSetup(t, 4)
	j := s.arena.put(s.job(2, 42), [][2]string{{"x-defer", "1"}})
	s.ring.send(j)
	c := s.rc.next(t)
	if c.call != 42 || c.res != ResultOK {
		t.Fatalf("completion %+v", c)
	}
	if recs := decode(t, s.arena.out(j, c.n)); len(recs) != 1 || recs[0].a != "x-deferred" {
		t.Fatalf("records %+v", recs)
	}
	s.ring.close()
	s.waitExit(t)
	if n := s.rc.count(); n != 1 {
		t.Errorf("%d completions for one job", n)
	}
}

func TestRingCorruptIndexLeavesTheRing(t *testing.T) {
	s := newRingSetup(t, 4)
	s.waitParked(t, 1)
	s.ring.tail = 1000 // more published than the ring can hold
	s.ring.publish()
	s.waitExit(t)
	if s.rc.count() != 0 {
		t.Error("jobs run from a corrupt ring")
	}
}

func TestAttachWorkerRejectsBadRings(t *testing.T) {
	arena := newTestArena(t, 2, 512).arena()
	host := WorkerHost{Complete: func(uint64, uint32, uint32, Result, uint32) Result { return ResultOK }}
	tests := []struct {
		name   string
		change func(r *testRing, a *Arena, h *WorkerHost) uintptr // returns the length to pass
	}{
		{"magic", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(0) = 0x12345678; return 0 }},
		{"version", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(4) = 2; return 0 }},
		{"descriptor size of the older 24-byte job", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(12) = 24; return 0 }},
		{"capacity not a power of two", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(8) = 3; return 0 }},
		{"capacity 0", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(8) = 0; return 0 }},
		{"capacity past the region", func(r *testRing, _ *Arena, _ *WorkerHost) uintptr { *r.word(8) = 1 << 16; return 0 }},
		{"region shorter than the header", func(*testRing, *Arena, *WorkerHost) uintptr { return 100 }},
		{"no arena", func(_ *testRing, a *Arena, _ *WorkerHost) uintptr { a.Base = nil; return 0 }},
		{"slot smaller than a view", func(_ *testRing, a *Arena, _ *WorkerHost) uintptr { a.SlotSize = 64; return 0 }},
		{"misaligned slots", func(_ *testRing, a *Arena, _ *WorkerHost) uintptr { a.SlotSize = 510; return 0 }},
		{"no complete", func(_ *testRing, _ *Arena, h *WorkerHost) uintptr { h.Complete = nil; return 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRing(t, 8, false)
			a, h := arena, host
			n := tt.change(r, &a, &h)
			if n == 0 {
				n = uintptr(RingOffsetDescriptors + 8*SizeofJob)
			}
			if err := AttachWorker(r.base(), n, a, h); !errors.Is(err, ErrBadRing) {
				t.Errorf("AttachWorker: %v, want ErrBadRing", err)
			}
		})
	}
	if err := AttachWorker(nil, 4096, arena, host); !errors.Is(err, ErrBadRing) {
		t.Errorf("nil ring: %v", err)
	}
	r := newTestRing(t, 8, false)
	if err := AttachWorker(unsafe.Add(r.base(), 8), 4096, arena, host); !errors.Is(err, ErrBadRing) {
		t.Errorf("misaligned ring: %v", err)
	}
}

// Many idle→busy transitions with jittered timing, each waited for with a progress bound: a
// lost wake-up (the consumer asleep with a job published) fails the test instead of hanging.
// Up to four jobs (on four slots) are in flight, so the producer also publishes while the
// consumer is between its spin and its sleep.
func TestRingStressNoLostWakeUp(t *testing.T) {
	rounds := uint32(5000)
	if testing.Short() {
		rounds = 500
	}
	const inFlight = 4
	s := newRingSetup(t, 8)
	done := map[uint32]bool{}
	waitDone := func(call uint32) {
		for !done[call] {
			select {
			case c := <-s.rc.ch:
				if c.res != ResultOK {
					t.Fatalf("completion %+v", c)
				}
				done[c.call] = true
			case <-time.After(10 * time.Second):
				t.Fatalf("job %d: no progress for 10 s: lost wake-up (waiting=%d, parks=%d, wakes=%d)",
					call, atomic.LoadUint32(s.ring.word(RingOffsetWaiting)), s.w.parks.Load(), s.ring.wakes)
			}
		}
		delete(done, call)
	}
	for i := range rounds {
		call := i + 1
		if i >= inFlight {
			waitDone(call - inFlight) // the previous job of this slot
		}
		// Vary where the producer lands in the consumer's spin-then-park sequence.
		for range i % 61 * 16 {
			_ = atomic.LoadUint32(s.ring.word(RingOffsetWaiting))
		}
		if i%11 == 0 {
			time.Sleep(time.Duration(i%3) * 20 * time.Microsecond)
		}
		s.ring.send(s.arena.put(s.job(i%inFlight, call), nil))
	}
	for call := rounds - inFlight + 1; call <= rounds; call++ {
		waitDone(call)
	}
	t.Logf("%d jobs: %d parks, %d wakes", rounds, s.w.parks.Load(), s.ring.wakes)
}

// The producer publishes in the consumer's last moment before it sets the park flag, so it
// sees no flag and sends no wake: the consumer's re-check after setting the flag must find the
// job (without it, the consumer would sleep with a job published: a lost wake-up).
func TestRingPublishJustBeforeParkIsNotLost(t *testing.T) {
	var s *ringSetup
	var j Job
	var fired atomic.Bool
	testHookBeforePark = func() {
		if s != nil && fired.CompareAndSwap(false, true) {
			s.ring.send(j) // waiting is still 0 here: no wake is sent
		}
	}
	t.Cleanup(func() { testHookBeforePark = nil })
	s0 := newRingSetup(t, 4)
	j = s0.arena.put(s0.job(1, 21), nil)
	s0.waitParked(t, 1) // the consumer is asleep: the hook has run once with s == nil
	s = s0
	s.ring.send(s.arena.put(s.job(2, 20), nil)) // wake it; after this job it parks again → hook
	got := map[uint32]bool{}
	for range 2 {
		select {
		case c := <-s.rc.ch: // in either order: the pool runs them concurrently
			got[c.call] = c.res == ResultOK
		case <-time.After(10 * time.Second):
			t.Fatalf("completed %v, want calls 20 and 21: lost wake-up", got)
		}
	}
	if !got[20] || !got[21] {
		t.Fatalf("completed %v, want calls 20 and 21", got)
	}
	if !fired.Load() || s.ring.wakes != 1 {
		t.Errorf("hook fired %v, wakes %d: the racing publish must have gone without a wake", fired.Load(), s.ring.wakes)
	}
}
