// Shared by the log-writer programs of bench/logs: the 100-byte record, the clock, the options, and the
// protocol with bench/logs/run.mjs (print READY, wait for one byte on stdin, run, write the latencies to a
// file, print one RESULT line of JSON). C99 + POSIX; everything is static so each program is one file.
#ifndef LW_H
#define LW_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// Record layout (little-endian, 100 bytes), the same in bench/logs/record.mjs:
//   0 magic u32 | 4 writer u32 | 8 per-writer seq u64 | 16 CLOCK_MONOTONIC ns at append start u64 |
//   24..96 padding derived from (writer, seq) | 96 FNV-1a 32 of bytes 0..96.
// The magic is also the "complete" mark of an mmap slot, so it is the word written last there.
#define REC_SIZE 100
#define REC_MAGIC 0x3152474cu /* "LGR1" */
#define REC_HALF 50           /* bytes a crash test writes before it stops half way through a record */

enum sync_mode { SYNC_NONE, SYNC_DATA, SYNC_DATA_IN_LOCK };

struct opts {
  const char *mode;      // mechanism variant: append|flock|fcntl (lw_file), mq|fifo (lw_queue)
  const char *role;      // writer|sink (lw_queue), writer|init (lw_mmap)
  const char *log;       // the log file
  const char *name;      // queue name (mq) or FIFO path
  const char *lat;       // where a writer stores its latencies (u32 ns each)
  uint32_t id;           // writer id, goes into every record
  uint32_t writers;      // number of writers (a sink opens one reply channel each)
  uint64_t dur_ms;       // a writer stops after this long...
  uint64_t cap;          // ...or after this many records, whichever comes first
  int64_t hold_at;       // crash tests: stop at this record (half done) and wait to be killed; -1: never
  int hold_partial;      // crash tests: write half of the record before waiting
  int attach;            // sink: open an existing queue instead of creating it (restart after a crash)
  enum sync_mode sync;   // none | fdatasync (after the write) | fdatasync-in-lock (before unlocking)
};

static void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts); // the clock Node's process.hrtime.bigint() reads too
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t fnv1a(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); } // x86/arm64 Linux: little-endian
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static void rec_fill(uint8_t *r, uint32_t writer, uint64_t seq, uint64_t ts) {
  put32(r, REC_MAGIC);
  put32(r + 4, writer);
  put64(r + 8, seq);
  put64(r + 16, ts);
  for (int i = 24; i < 96; i++) r[i] = (uint8_t)(writer * 31u + seq * 7u + (uint64_t)i);
  put32(r + 96, fnv1a(r, 96));
}

static void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [--mode M] [--role R] [--log PATH] [--name N] [--lat PATH] [--id N] [--writers N]\n"
          "          [--dur-ms N] [--cap N] [--sync none|fdatasync|fdatasync-in-lock] [--hold-at N]\n"
          "          [--hold-partial] [--attach]\n",
          prog);
  exit(2);
}

static void parse_opts(int argc, char **argv, struct opts *o) {
  *o = (struct opts){.mode = "", .role = "writer", .dur_ms = 1000, .cap = 1000000, .hold_at = -1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--hold-partial")) { o->hold_partial = 1; continue; }
    if (!strcmp(a, "--attach")) { o->attach = 1; continue; }
    if (i + 1 >= argc) usage(argv[0]);
    const char *v = argv[++i];
    if (!strcmp(a, "--mode")) o->mode = v;
    else if (!strcmp(a, "--role")) o->role = v;
    else if (!strcmp(a, "--log")) o->log = v;
    else if (!strcmp(a, "--name")) o->name = v;
    else if (!strcmp(a, "--lat")) o->lat = v;
    else if (!strcmp(a, "--id")) o->id = (uint32_t)strtoul(v, NULL, 10);
    else if (!strcmp(a, "--writers")) o->writers = (uint32_t)strtoul(v, NULL, 10);
    else if (!strcmp(a, "--dur-ms")) o->dur_ms = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--cap")) o->cap = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--hold-at")) o->hold_at = strtoll(v, NULL, 10);
    else if (!strcmp(a, "--sync")) {
      if (!strcmp(v, "none")) o->sync = SYNC_NONE;
      else if (!strcmp(v, "fdatasync")) o->sync = SYNC_DATA;
      else if (!strcmp(v, "fdatasync-in-lock")) o->sync = SYNC_DATA_IN_LOCK;
      else usage(argv[0]);
    } else usage(argv[0]);
  }
  if (o->cap == 0 || o->cap > 50000000) usage(argv[0]); // bounds the latency buffer and the loop
}

static struct rusage ru_go; // resource use when the run started: set-up is not counted per record

// Tells the orchestrator this process is set up, then blocks until it says go (one byte on stdin), so that
// every writer of a cell starts at the same moment whatever its start-up cost.
static void wait_go(void) {
  printf("READY\n");
  fflush(stdout);
  char c;
  ssize_t n;
  do n = read(0, &c, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) exit(3); // the orchestrator went away
  getrusage(RUSAGE_SELF, &ru_go);
}

// Crash tests: announce that this process stopped inside its critical section, then wait for the SIGKILL.
static void hold(uint64_t record) {
  printf("HOLDING %llu\n", (unsigned long long)record);
  fflush(stdout);
  for (;;) pause();
}

static uint32_t *lat_alloc(uint64_t cap) {
  uint32_t *lat = malloc(cap * sizeof *lat);
  if (!lat) die("malloc");
  return lat;
}

static uint32_t lat_ns(uint64_t t0) {
  uint64_t d = now_ns() - t0;
  return d > UINT32_MAX ? UINT32_MAX : (uint32_t)d; // 4.29 s: more than any cell's window
}

// Writes the latency file and prints the RESULT line. Throughput is computed by the orchestrator from
// [start, end] of all writers, so a late starter does not inflate it.
static void report(const struct opts *o, uint64_t count, uint64_t t_start, uint64_t t_end, const uint32_t *lat,
                   uint64_t errors, const char *extra) {
  if (o->lat) {
    FILE *f = fopen(o->lat, "wb");
    if (!f) die(o->lat);
    if (count && fwrite(lat, sizeof *lat, count, f) != count) die("write latencies");
    if (fclose(f)) die("close latencies");
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  int64_t cpu_us = (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec - ru_go.ru_utime.tv_sec -
                             ru_go.ru_stime.tv_sec) * 1000000 +
                   (int64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec - ru_go.ru_utime.tv_usec -
                             ru_go.ru_stime.tv_usec);
  ru.ru_nvcsw -= ru_go.ru_nvcsw;
  ru.ru_nivcsw -= ru_go.ru_nivcsw;
  printf("RESULT {\"id\":%u,\"count\":%llu,\"startNs\":%llu,\"endNs\":%llu,\"errors\":%llu,\"cpuUs\":%lld,"
         "\"nvcsw\":%ld,\"nivcsw\":%ld%s%s}\n",
         o->id, (unsigned long long)count, (unsigned long long)t_start, (unsigned long long)t_end,
         (unsigned long long)errors, (long long)cpu_us, ru.ru_nvcsw, ru.ru_nivcsw, extra ? "," : "",
         extra ? extra : "");
  fflush(stdout);
}

// write() of a whole record; for a regular file a short write only happens on ENOSPC or EIO.
static inline int write_full(int fd, const uint8_t *p, size_t n) {
  ssize_t w;
  do w = write(fd, p, n);
  while (w < 0 && errno == EINTR);
  return w == (ssize_t)n ? 0 : -1;
}

#endif
