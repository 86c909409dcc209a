/* STREAM-like read bandwidth: a read-only sum over 1 GiB of f64 (2^27 doubles), OpenMP, best of 5.
 *
 * Build and run (scripts/perf/compare.sh does this):
 *   gcc -O3 -march=native -fopenmp scripts/perf/stream.c -o stream && OMP_NUM_THREADS=2 OMP_PROC_BIND=close ./stream
 * Prints one JSON line: {"read_gb_per_s": X, "threads": N}   (GB = 1e9 bytes; X is the best of 5 passes)
 * Method as in ../shared/notes/perf-anchors.md section 1b ("sum" column): the array is first written in
 * parallel (first touch, so pages land where the threads run), then summed 5 times; one warm-up pass first.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define N (1UL << 27) /* 2^27 doubles = 1 GiB */
#define REPS 5

int main(void) {
  double *a = malloc(N * sizeof(double));
  if (!a) { fprintf(stderr, "out of memory\n"); return 1; }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < N; i++) a[i] = 1.0 + (double)(i & 7);

  double best = 1e30, sink = 0.0;
  for (int r = -1; r < REPS; r++) { /* r = -1 is the untimed warm-up pass */
    double s = 0.0, t0 = omp_get_wtime();
#pragma omp parallel for simd schedule(static) reduction(+ : s)
    for (size_t i = 0; i < N; i++) s += a[i];
    double t = omp_get_wtime() - t0;
    sink += s; /* keeps the sum alive */
    if (r >= 0 && t < best) best = t;
  }
  if (sink == 42.0) fprintf(stderr, "%f\n", sink);
  printf("{\"read_gb_per_s\": %.3f, \"threads\": %d}\n", (double)(N * sizeof(double)) / best / 1e9, omp_get_max_threads());
  free(a);
  return 0;
}
