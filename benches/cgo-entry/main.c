// Times calls of the Go library's Noop export from 1 or 2 threads at once, each thread either
// calling from plain C (a foreign thread to the Go runtime) or from inside the library's Nest
// export. Prints nanoseconds per call per thread (wall clock). See scripts/cgo-entry.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "libcgoentry.h"

static long calls;

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void loop(void *out) {
	int x = 0;
	for (long i = 0; i < calls; i++) {
		x = Noop(x);
	}
	*(int *)out = x;
}

static void *foreign(void *out) {
	loop(out);
	return NULL;
}

static void *nested(void *out) {
	Nest((void *)loop, out);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: %s CALLS THREADS foreign|nested\n", argv[0]);
		return 2;
	}
	calls = atol(argv[1]);
	int threads = atoi(argv[2]);
	int nest = argv[3][0] == 'n';
	if (calls <= 0 || threads < 1 || threads > 8) {
		fprintf(stderr, "CALLS > 0, THREADS 1..8\n");
		return 2;
	}
	pthread_t t[8];
	int out[8];
	// Timed from the threads' creation: their first call binds each to the runtime (tens of
	// µs, against the 5 million calls of a run).
	double t0 = now();
	for (int i = 0; i < threads; i++) {
		pthread_create(&t[i], NULL, nest ? nested : foreign, &out[i]);
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		if (out[i] != (int)calls) {
			fprintf(stderr, "thread %d: %d calls answered, want %ld\n", i, out[i], calls);
			return 1;
		}
	}
	printf("%.1f\n", (now() - t0) * 1e9 / calls);
	return 0;
}
