package core

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Worker-pool rings (plugins registered with Blocking: true).
//
// The host posts each phase call of a blocking plugin as a Job into a single-producer/
// single-consumer ring in shared memory and calls attach_worker once per ring. The layout and
// the park/wake protocol are those of runtime/src/ring.rs (docs/architecture.md, "Worker-pool
// rings"):
//
//	  0 magic u32 "WFTR"   4 version u32 = 1   8 capacity u32 (power of two)   12 desc_size u32 = 32
//	 16 closed u32 (1: the producer is gone)   24 ring_id u64 (never 0; 0 from older hosts)
//	 64 tail u32     producer: descriptors [0, tail) are published
//	128 head u32     consumer: descriptors [0, head) are consumed
//	192 waiting u32  consumer's park flag and futex word (consumer sets 1, producer clears)
//	256 capacity × Job (32 bytes)
//
// The consumer is one goroutine per ring, locked to its OS thread. It reads with sync/atomic
// (sequentially consistent in Go, which gives the fences the protocol needs): it loads tail,
// copies the published descriptors, gives the entries back with one store of head, and hands
// each job to a bounded pool of goroutines, so one handler that blocks does not stall the ring.
// On an empty ring it spins briefly, then stores waiting = 1, re-checks tail and closed, and
// only if still nothing sleeps in FUTEX_WAIT (process-shared) on waiting with expected value 1,
// looping while the word is 1. Once closed is set and the ring is drained it calls the host's
// worker_exit_ring(ring, ring_id) (worker_exit(ring) on an older host), once, and never touches
// the ring again.

// Ring layout constants: the WEFT_RING_* values of weft.h (this package does not use cgo; a
// test in weft/cabi compares each with the header).
const (
	RingMagic       = 0x52544657 // "WFTR" read as a little-endian u32
	RingVersion     = 1
	RingMaxCapacity = 1 << 20

	RingOffsetMagic       = 0
	RingOffsetVersion     = 4
	RingOffsetCapacity    = 8
	RingOffsetDescSize    = 12
	RingOffsetClosed      = 16
	RingOffsetRingID      = 24
	RingOffsetTail        = 64
	RingOffsetHead        = 128
	RingOffsetWaiting     = 192
	RingOffsetDescriptors = 256

	// SizeofJob is the size of WeftJob, the ring's entry size (WEFT_RING_DESC_SIZE).
	SizeofJob = 32
)

// Job mirrors WeftJob: one phase call posted to a worker ring. The view is at
// arena + Slot*slotSize; its Call field equals Call. The output location is at
// arena + OutSlot*slotSize + OutOff, up to the end of that slot.
type Job struct {
	Slot       uint32
	Generation uint32
	Instance   uint64
	Phase      uint32
	Call       uint32
	OutSlot    uint32
	OutOff     uint32
}

// Arena is the host's request arena as attach_worker describes it: SlotCount slots of
// SlotSize bytes from Base.
type Arena struct {
	Base      unsafe.Pointer
	SlotSize  uint32
	SlotCount uint32
}

// WorkerHost is what a ring worker calls on its host.
type WorkerHost struct {
	// Complete answers each job that did not go pending (required).
	Complete CompleteFunc
	// Exit is called once, after the ring was closed and drained (may be nil).
	Exit func()
}

// ErrBadRing: attach was given something that is not a ring of the known layout, or an arena
// or host that cannot be used.
var ErrBadRing = errors.New("weft: bad worker ring")

// RunJob runs one job: it checks every field of the job and of the view it names against the
// arena (slot in range, instance known, phase declared, view inside its slot and naming the same
// slot, generation, phase and call; output location inside its slot, 8-aligned, and after the
// view when it shares the view's slot), then runs the handler through Dispatch with that output
// location. A bad job gives an error result without running anything. ResultPending means the
// handler deferred the call and completes it itself.
func RunJob(j Job, a Arena) (Result, uint32) {
	if a.Base == nil || j.Slot >= a.SlotCount || j.Call == 0 || a.SlotSize < SizeofRequestView {
		return ResultInvalidArgument, 0
	}
	inst := lookupInstance(j.Instance)
	if inst == nil {
		return ResultUnknownPlugin, 0
	}
	if inst.phases&Phase(j.Phase).Mask() == 0 {
		return ResultUnsupportedPhase, 0
	}
	base := unsafe.Add(a.Base, uintptr(j.Slot)*uintptr(a.SlotSize))
	if uintptr(base)%8 != 0 {
		return ResultInvalidArgument, 0
	}
	v := (*RequestView)(base)
	size := uint64(v.Size)
	if size < SizeofRequestView || size > uint64(a.SlotSize) || v.Slot != j.Slot ||
		v.Generation != j.Generation || v.Call != j.Call || v.Phase != j.Phase {
		return ResultInvalidArgument, 0
	}
	if j.OutSlot >= a.SlotCount || j.OutOff%8 != 0 || j.OutOff > a.SlotSize ||
		(j.OutSlot == j.Slot && uint64(j.OutOff) < size) {
		return ResultInvalidArgument, 0
	}
	var out unsafe.Pointer
	var outCap uint32
	if j.OutOff < a.SlotSize {
		out = unsafe.Add(a.Base, uintptr(j.OutSlot)*uintptr(a.SlotSize)+uintptr(j.OutOff))
		outCap = a.SlotSize - j.OutOff
	}
	return Dispatch(j.Instance, j.Phase, base, out, outCap)
}

// ringWorker consumes one ring.
type ringWorker struct {
	tail, head, waiting, closed *uint32
	descs                       unsafe.Pointer
	mask                        uint32
	arena                       Arena
	host                        WorkerHost
	pool                        chan struct{}
	parks                       atomic.Uint64 // times the consumer slept (statistics)
}

// ringSpins is how many times the consumer re-checks an empty ring before parking.
const ringSpins = 1 << 10

// AttachWorker checks the ring at ring (ringLen bytes) and starts its consumer goroutine;
// it returns at once. Jobs refer to slots of arena; results go to host.Complete. It fails with
// ErrBadRing for a wrong magic, version or descriptor size, a capacity that is not a power of
// two or does not fit ringLen, a misaligned region, or an unusable arena or host.
func AttachWorker(ring unsafe.Pointer, ringLen uintptr, arena Arena, host WorkerHost) error {
	w, err := newRingWorker(ring, ringLen, arena, host)
	if err != nil {
		return err
	}
	go w.run()
	return nil
}

func newRingWorker(ring unsafe.Pointer, ringLen uintptr, arena Arena, host WorkerHost) (*ringWorker, error) {
	if ring == nil || uintptr(ring)%64 != 0 || ringLen < RingOffsetDescriptors {
		return nil, fmt.Errorf("%w: region %p of %d bytes", ErrBadRing, ring, ringLen)
	}
	word := func(off uintptr) uint32 { return atomic.LoadUint32((*uint32)(unsafe.Add(ring, off))) }
	magic, version, capacity, descSize := word(RingOffsetMagic), word(RingOffsetVersion), word(RingOffsetCapacity), word(RingOffsetDescSize)
	switch {
	case magic != RingMagic:
		return nil, fmt.Errorf("%w: magic %#x, want %#x", ErrBadRing, magic, RingMagic)
	case version != RingVersion:
		return nil, fmt.Errorf("%w: version %d, this SDK reads version %d", ErrBadRing, version, RingVersion)
	case descSize != SizeofJob:
		return nil, fmt.Errorf("%w: descriptor size %d, want %d", ErrBadRing, descSize, SizeofJob)
	case capacity < 2 || capacity > RingMaxCapacity || capacity&(capacity-1) != 0:
		return nil, fmt.Errorf("%w: capacity %d is not a power of two in [2, %d]", ErrBadRing, capacity, RingMaxCapacity)
	case uint64(ringLen) < RingOffsetDescriptors+uint64(capacity)*SizeofJob:
		return nil, fmt.Errorf("%w: %d bytes cannot hold %d descriptors", ErrBadRing, ringLen, capacity)
	case arena.Base == nil || uintptr(arena.Base)%8 != 0 || arena.SlotSize%8 != 0 || arena.SlotSize < SizeofRequestView:
		return nil, fmt.Errorf("%w: arena %p with slots of %d bytes", ErrBadRing, arena.Base, arena.SlotSize)
	case host.Complete == nil:
		return nil, fmt.Errorf("%w: no complete function", ErrBadRing)
	}
	return &ringWorker{
		tail:    (*uint32)(unsafe.Add(ring, RingOffsetTail)),
		head:    (*uint32)(unsafe.Add(ring, RingOffsetHead)),
		waiting: (*uint32)(unsafe.Add(ring, RingOffsetWaiting)),
		closed:  (*uint32)(unsafe.Add(ring, RingOffsetClosed)),
		descs:   unsafe.Add(ring, RingOffsetDescriptors),
		mask:    capacity - 1,
		arena:   arena,
		host:    host,
		pool:    blockingPool(),
	}, nil
}

// run starts consuming the ring (the goroutine AttachWorker starts).
func (w *ringWorker) run() {
	w.consume(atomic.LoadUint32(w.head))
}

// consume is the consumer loop of one ring, from head on.
//
// One goroutine at a time is the consumer. When it takes a batch it gives the entries back,
// hands the pool goroutines all jobs but the first, then passes the ring on to a successor
// (go w.consume(head)) and runs the first job itself before it ends. So a job that finds the
// consumer spinning starts at once, on the thread that saw it, instead of after the Go
// scheduler has woken another thread for a new goroutine (a futex wake-up, tens of
// microseconds on a small virtual machine). The successor starts reading the ring only after
// this goroutine stopped, so the ring keeps exactly one consumer; and a blocking first job
// stalls nothing, since the successor consumes meanwhile.
func (w *ringWorker) consume(head uint32) {
	// The futex wait parks this thread; locking keeps it from parking a thread other goroutines
	// were scheduled on.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	handedOff := false
	defer func() {
		if handedOff {
			return // the successor owns the ring (runJob recovers the job's panics)
		}
		if r := recover(); r != nil {
			hostLog(LogError, 0, fmt.Sprintf("weft: worker ring consumer panicked, leaving the ring: %v", r))
		}
		if w.host.Exit != nil {
			w.host.Exit()
		}
	}()
	const batchMax = 64
	var batch [batchMax]Job
	for {
		if avail := atomic.LoadUint32(w.tail) - head; avail != 0 {
			if avail > w.mask+1 {
				hostLog(LogError, 0, fmt.Sprintf("weft: worker ring corrupt (%d descriptors published in a ring of %d); leaving it", avail, w.mask+1))
				return
			}
			n := min(avail, batchMax)
			for i := range n {
				batch[i] = w.job(head + i)
			}
			head += n
			// The entries are copied: give them back before running anything.
			atomic.StoreUint32(w.head, head)
			for i := uint32(1); i < n; i++ {
				w.submit(batch[i])
			}
			// The first job's place in the pool, taken (waiting while it is full) before the
			// hand-off, so the bound holds and a full pool still backs the ring up.
			w.pool <- struct{}{}
			handedOff = true
			go w.consume(head)
			w.runJob(batch[0])
			return
		}
		if w.spin(head) {
			continue
		}
		if atomic.LoadUint32(w.closed) != 0 {
			// The producer published everything before closing: one last look.
			if atomic.LoadUint32(w.tail) != head {
				continue
			}
			return
		}
		w.park(head)
	}
}

// job reads descriptor i (already published: tail was loaded after the producer's store).
func (w *ringWorker) job(i uint32) Job {
	return *(*Job)(unsafe.Add(w.descs, uintptr(i&w.mask)*SizeofJob))
}

func (w *ringWorker) spin(head uint32) bool {
	for range ringSpins {
		if atomic.LoadUint32(w.tail) != head {
			return true
		}
	}
	return false
}

// testHookBeforePark, if set (tests only), runs when the consumer has decided to park, before
// it sets the flag: a producer that publishes there does not see the flag and does not wake,
// which only the re-check below survives.
var testHookBeforePark func()

// park sleeps until the producer publishes or closes (or returns spuriously).
func (w *ringWorker) park(head uint32) {
	if testHookBeforePark != nil {
		testHookBeforePark()
	}
	atomic.StoreUint32(w.waiting, 1) // a sequentially consistent store: the Dekker fence
	if atomic.LoadUint32(w.tail) != head || atomic.LoadUint32(w.closed) != 0 {
		// Work (or close) arrived meanwhile: un-park ourselves. A wake the producer may send
		// too is harmless.
		atomic.StoreUint32(w.waiting, 0)
		return
	}
	w.parks.Add(1)
	for atomic.LoadUint32(w.waiting) == 1 {
		futexWait(w.waiting, 1)
	}
}

// submit hands j to a pool goroutine, waiting while the pool is full (the ring then fills and
// the host answers Busy: backpressure instead of unbounded goroutines).
func (w *ringWorker) submit(j Job) {
	w.pool <- struct{}{}
	go w.runJob(j)
}

// runJob runs j and completes it, then gives back the pool place its caller took.
func (w *ringWorker) runJob(j Job) {
	defer func() { <-w.pool }()
	res, n := ResultInternal, uint32(0)
	func() {
		defer func() {
			// Dispatch recovers handler panics; anything else is a bug here, answered as such.
			if r := recover(); r != nil {
				hostLog(LogError, j.Instance, fmt.Sprintf("weft: panic running a worker job: %v", r))
				res, n = ResultPanic, 0
			}
		}()
		res, n = RunJob(j, w.arena)
	}()
	if res == ResultPending {
		return // the handler's Deferred completes the call
	}
	if got := w.host.Complete(j.Instance, j.Slot, j.Call, res, n); got != ResultOK && got != ResultCancelled {
		hostLog(LogWarn, j.Instance, fmt.Sprintf("weft: the host refused the completion of a worker job (slot %d, call %d): %v", j.Slot, j.Call, got))
	}
}

// DefaultBlockingWorkers bounds the goroutines running blocking handlers at once, over all
// rings, unless the environment variable WEFT_BLOCKING_WORKERS sets another positive number.
const DefaultBlockingWorkers = 256

var (
	poolOnce sync.Once
	pool     chan struct{}
)

func blockingPool() chan struct{} {
	poolOnce.Do(func() {
		n := DefaultBlockingWorkers
		if v, err := strconv.Atoi(os.Getenv("WEFT_BLOCKING_WORKERS")); err == nil && v > 0 {
			n = v
		}
		pool = make(chan struct{}, n)
	})
	return pool
}
