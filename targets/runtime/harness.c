/* edgec test harness: reads the model's inputs from files, runs it, writes outputs and timings.
 *
 * The same source runs on Linux (qemu-aarch64, host) and on bare-metal Cortex-M, where newlib's
 * rdimon library turns the stdio calls below into semihosting calls that read and write files in
 * the emulator's working directory. harness_config.h is generated per model by edgec.
 *
 * Files: edgec_samples.txt (how many samples; 1 when absent), edgec_repeat.txt (how many timed runs
 * of the first sample), in<i>.bin -> out<i>.bin (the samples one after the other, each
 * harness_input_bytes[i] / harness_output_bytes[i] long), times.txt (microseconds per timed run),
 * stack.txt (bare metal: stack bytes the first sample's run used below main's frame).
 *
 * A whole batch runs in one process (one emulator boot): each sample is read at its offset, and
 * its outputs are appended as soon as it is done, so the runner sees the batch progress.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "harness_config.h"

static double now_seconds(void) {
#if defined(__linux__)
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
  return (double)clock() / (double)CLOCKS_PER_SEC;
#endif
}

/* Reads sample `sample` (bytes long) of a file of samples. Opened per sample: bare-metal semihosting
 * keeps few files open at once, and a model may have many inputs. */
static int read_sample(const char *path, long sample, uint8_t *buffer, size_t bytes) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "edgec-harness: cannot open %s\n", path);
    return 1;
  }
  size_t got = fseek(f, sample * (long)bytes, SEEK_SET) == 0 ? fread(buffer, 1, bytes, f) : 0;
  fclose(f);
  if (got != bytes) {
    fprintf(stderr, "edgec-harness: %s has no sample %ld of %u bytes\n", path, sample, (unsigned)bytes);
    return 1;
  }
  return 0;
}

/* Writes (mode "wb") or appends (mode "ab") one sample's output. */
static int write_sample(const char *path, const char *mode, const uint8_t *buffer, size_t bytes) {
  FILE *f = fopen(path, mode);
  if (f == NULL || fwrite(buffer, 1, bytes, f) != bytes) {
    fprintf(stderr, "edgec-harness: cannot write %s\n", path);
    if (f != NULL) fclose(f);
    return 1;
  }
  return fclose(f) != 0;
}

#if defined(EDGEC_BARE_METAL)
extern uint8_t __stack_limit[];
#define EDGEC_STACK_PAINT 0xA5u
/* Paints the free stack below this frame, so that the high-water mark after the model's run
 * measures the model (and not the stdio calls that read the inputs). */
__attribute__((noinline)) static void paint_stack(void) {
  uint8_t *limit = (uint8_t *)__builtin_frame_address(0) - 64;
  for (uint8_t *p = __stack_limit; p < limit; ++p) *p = EDGEC_STACK_PAINT;
}

/* Bytes of stack used below `frame` (main's frame, where the model is called from). */
static size_t stack_high_water(const uint8_t *frame) {
  const uint8_t *p = __stack_limit;
  while (p < frame && *p == EDGEC_STACK_PAINT) ++p;
  return (size_t)(frame - p);
}
#endif

void edgec_error_hook(const char *kind, const char *message) {
  fprintf(stderr, "edgec-harness: kernel error %s: %s\n", kind, message);
}

static long read_count(const char *path, long fallback) {
  long value = fallback;
  FILE *control = fopen(path, "r");
  if (control != NULL) {
    if (fscanf(control, "%ld", &value) != 1) value = fallback;
    fclose(control);
  }
  return value;
}

/* The timed runs, on the inputs of the sample in the buffers. */
static int time_runs(long repeat) {
  int rc = 0;
  FILE *times = fopen("times.txt", "w");
  for (long r = 0; r < repeat && times != NULL; ++r) {
    double start = now_seconds();
    rc |= harness_run();
    /* Integer microseconds: newlib-nano's printf has no floating point. */
    fprintf(times, "%lu\n", (unsigned long)((now_seconds() - start) * 1e6));
  }
  if (times != NULL) fclose(times);
  return rc;
}

int main(void) {
  char path[32];
  long samples = read_count("edgec_samples.txt", 1);
  long repeat = read_count("edgec_repeat.txt", 0);
#if defined(EDGEC_BARE_METAL)
  size_t stack = 0;
#endif
  for (long sample = 0; sample < samples; ++sample) {
    for (int i = 0; i < HARNESS_NUM_INPUTS; ++i) {
      snprintf(path, sizeof path, "in%d.bin", i);
      if (read_sample(path, sample, harness_inputs[i], harness_input_bytes[i])) return 2;
    }
#if defined(EDGEC_BARE_METAL)
    if (sample == 0) paint_stack();
#endif
    int rc = harness_run();
    if (rc != 0) {
      fprintf(stderr, "edgec-harness: the model failed in step %d on sample %ld\n", rc, sample);
      return 3;
    }
#if defined(EDGEC_BARE_METAL)
    /* After the first run, before any more stdio: the model's call chain is the deepest since painting. */
    if (sample == 0) stack = stack_high_water((const uint8_t *)__builtin_frame_address(0));
#endif
    for (int i = 0; i < HARNESS_NUM_OUTPUTS; ++i) {
      snprintf(path, sizeof path, "out%d.bin", i);
      if (write_sample(path, sample == 0 ? "wb" : "ab", harness_outputs[i], harness_output_bytes[i])) return 2;
    }
    if (sample == 0 && time_runs(repeat) != 0) {
      fprintf(stderr, "edgec-harness: the model failed in a timed run\n");
      return 3;
    }
  }
#if defined(EDGEC_BARE_METAL)
  FILE *stack_file = fopen("stack.txt", "w");
  if (stack_file != NULL) {
    fprintf(stack_file, "%u\n", (unsigned)stack);
    fclose(stack_file);
  }
#endif
  fprintf(stderr, "edgec-harness: ok\n");
  return 0;
}
