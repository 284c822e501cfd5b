/* The arithmetic floor of the sweep benchmark: 2-D Rosenbrock from (-1.2, 1), Adam as optax
 * computes it (b1 0.9, b2 0.999, eps 1e-8, bias-corrected moments), float32, IEEE arithmetic
 * (no fast-math), one config per learning rate.
 *
 * Loops the other way round from any array program: blocks of 16 configs outermost (the
 * compiler vectorises them), the 1000 steps innermost, so every config's state lives in
 * registers and no step touches memory. OpenMP splits the blocks over the cores.
 *
 * Usage: adam_floor LRS_FILE N STEPS OUT_FILE   (float32 in, float32 (x, y) pairs out)
 * Prints the best wall time of 5 runs in milliseconds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BLOCK 16

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  int n = atoi(argv[2]), steps = atoi(argv[3]);
  if (n % BLOCK) return 2;
  float *lr = malloc(n * sizeof(float)), *out = malloc(2 * n * sizeof(float));
  float *c1 = malloc(steps * sizeof(float)), *c2 = malloc(steps * sizeof(float));
  FILE *in = fopen(argv[1], "rb");
  if (!in || fread(lr, sizeof(float), n, in) != (size_t)n) return 3;
  fclose(in);
  /* optax: the bias corrections 1 - b^t in float32 */
  for (int t = 0; t < steps; t++) {
    c1[t] = 1.0f - powf(0.9f, (float)(t + 1));
    c2[t] = 1.0f - powf(0.999f, (float)(t + 1));
  }
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now();
#pragma omp parallel for schedule(static)
    for (int b = 0; b < n; b += BLOCK) {
      float x[BLOCK], y[BLOCK], mx[BLOCK], my[BLOCK], vx[BLOCK], vy[BLOCK], l[BLOCK];
      for (int j = 0; j < BLOCK; j++) {
        x[j] = -1.2f; y[j] = 1.0f; mx[j] = my[j] = vx[j] = vy[j] = 0.0f; l[j] = lr[b + j];
      }
      for (int t = 0; t < steps; t++) {
        float a1 = c1[t], a2 = c2[t];
#pragma omp simd
        for (int j = 0; j < BLOCK; j++) {
          float d = y[j] - x[j] * x[j];
          float gx = -2.0f * (1.0f - x[j]) - 400.0f * x[j] * d, gy = 200.0f * d;
          mx[j] = 0.9f * mx[j] + 0.1f * gx;
          my[j] = 0.9f * my[j] + 0.1f * gy;
          vx[j] = 0.999f * vx[j] + 0.001f * gx * gx;
          vy[j] = 0.999f * vy[j] + 0.001f * gy * gy;
          x[j] -= l[j] * (mx[j] / a1) / (sqrtf(vx[j] / a2) + 1e-8f);
          y[j] -= l[j] * (my[j] / a1) / (sqrtf(vy[j] / a2) + 1e-8f);
        }
      }
      for (int j = 0; j < BLOCK; j++) { out[2 * (b + j)] = x[j]; out[2 * (b + j) + 1] = y[j]; }
    }
    double dt = now() - t0;
    if (dt < best) best = dt;
  }
  FILE *o = fopen(argv[4], "wb");
  if (!o || fwrite(out, sizeof(float), 2 * n, o) != (size_t)(2 * n)) return 3;
  fclose(o);
  printf("%.6f\n", best * 1e3);
  return 0;
}
