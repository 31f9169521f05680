// Mechanism (d): a log file mapped MAP_SHARED by every writer process. The first page is a header holding
// an atomic tail counter; records follow in 100-byte slots. A writer reserves a slot with one atomic
// fetch-add on the tail, copies the record body into it, then publishes it by storing the magic word with
// release order (the "complete" mark). No lock and no system call per record, but a writer that dies
// between reserving and publishing leaves a hole that no one else can fill or tell from a slow writer.
// --role init creates the file for --cap slots; --sync fdatasync: msync(MS_SYNC) of the record's pages.
#include "lw.h"
#include <stdatomic.h>
#include <sys/mman.h>

#define HDR_SIZE 4096
#define HDR_MAGIC 0x50414d4d474f4c31ull /* "1LOGMMAP" */

struct header {
  uint64_t magic;
  uint64_t capacity;        // slots
  uint64_t pad[6];          // keeps the tail on its own cache line
  _Atomic uint64_t tail;    // next free slot; may run past capacity by the number of writers
};

int main(int argc, char **argv) {
  struct opts o;
  parse_opts(argc, argv, &o);
  if (!o.log) usage(argv[0]);
  long page = sysconf(_SC_PAGESIZE);

  if (!strcmp(o.role, "init")) {
    int fd = open(o.log, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(o.log);
    if (ftruncate(fd, HDR_SIZE + (off_t)o.cap * REC_SIZE)) die("ftruncate"); // sparse: pages appear on use
    struct header h = {.magic = HDR_MAGIC, .capacity = o.cap};
    if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) die("pwrite header");
    close(fd);
    return 0;
  }

  int fd = open(o.log, O_RDWR | O_CLOEXEC);
  if (fd < 0) die(o.log);
  struct stat st;
  if (fstat(fd, &st)) die("fstat");
  uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) die("mmap");
  struct header *h = (struct header *)base;
  if (h->magic != HDR_MAGIC || HDR_SIZE + h->capacity * REC_SIZE > (uint64_t)st.st_size) {
    fprintf(stderr, "%s: not an initialised mmap log\n", o.log);
    return 2;
  }
  uint32_t *lat = lat_alloc(o.cap);
  uint8_t rec[REC_SIZE];
  uint64_t n = 0, errors = 0;

  wait_go();
  uint64_t start = now_ns(), deadline = start + o.dur_ms * 1000000u;
  for (; n < o.cap; n++) {
    uint64_t t0 = now_ns();
    if (t0 >= deadline) break;
    // Build the record before reserving its slot: the reserve-to-publish window, where a crash leaves a
    // hole, is then only the copy.
    rec_fill(rec, o.id, n, t0);
    uint64_t slot = atomic_fetch_add_explicit(&h->tail, 1, memory_order_relaxed);
    if (slot >= h->capacity) break; // full: the cell's record cap
    uint8_t *p = base + HDR_SIZE + slot * REC_SIZE; // 4-aligned: the magic can be stored atomically
    if ((int64_t)n == o.hold_at) {
      if (o.hold_partial) memcpy(p + 4, rec + 4, REC_HALF - 4);
      hold(n); // slot reserved, never published
    }
    memcpy(p + 4, rec + 4, REC_SIZE - 4);
    uint32_t magic;
    memcpy(&magic, rec, 4);
    // Publish: a reader that sees the magic (acquire load) sees the whole body.
    atomic_store_explicit((_Atomic uint32_t *)(void *)p, magic, memory_order_release);
    if (o.sync != SYNC_NONE) {
      uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1);
      uintptr_t b = ((uintptr_t)p + REC_SIZE + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
      if (msync((void *)a, b - a, MS_SYNC)) die("msync");
    }
    lat[n] = lat_ns(t0);
  }
  uint64_t end = now_ns();
  report(&o, n, start, end, lat, errors, NULL);
  return 0;
}
