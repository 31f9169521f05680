// Mechanisms (a), (b), (c): every writer process opens the shared log with O_APPEND and appends each
// 100-byte record with one write(), either with no lock (append), or between flock(LOCK_EX) and
// flock(LOCK_UN) (flock), or between fcntl(F_SETLKW) write-lock and unlock of the whole file (fcntl).
// --sync fdatasync: fdatasync after the write, outside the lock, so that concurrent writers' syncs can share
// one journal commit; --sync fdatasync-in-lock: inside the lock (the naive order, every sync serialised).
#include "lw.h"
#include <sys/file.h>

enum lock_kind { LOCK_NONE_, LOCK_FLOCK, LOCK_FCNTL };

static void lock_file(int fd, enum lock_kind k) {
  if (k == LOCK_FLOCK) {
    while (flock(fd, LOCK_EX) < 0)
      if (errno != EINTR) die("flock");
  } else if (k == LOCK_FCNTL) {
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0}; // whole file
    while (fcntl(fd, F_SETLKW, &l) < 0)
      if (errno != EINTR) die("fcntl F_SETLKW");
  }
}

static void unlock_file(int fd, enum lock_kind k) {
  if (k == LOCK_FLOCK) {
    if (flock(fd, LOCK_UN) < 0) die("flock unlock");
  } else if (k == LOCK_FCNTL) {
    struct flock l = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_SETLK, &l) < 0) die("fcntl unlock");
  }
}

int main(int argc, char **argv) {
  struct opts o;
  parse_opts(argc, argv, &o);
  enum lock_kind k;
  if (!strcmp(o.mode, "append")) k = LOCK_NONE_;
  else if (!strcmp(o.mode, "flock")) k = LOCK_FLOCK;
  else if (!strcmp(o.mode, "fcntl")) k = LOCK_FCNTL;
  else usage(argv[0]);
  if (!o.log) usage(argv[0]);
  // O_APPEND: the kernel moves the offset to the end and writes under the inode lock, atomically per write().
  int fd = open(o.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) die(o.log);
  uint32_t *lat = lat_alloc(o.cap);
  uint8_t rec[REC_SIZE];
  uint64_t errors = 0, n = 0;

  wait_go();
  uint64_t start = now_ns(), deadline = start + o.dur_ms * 1000000u;
  for (; n < o.cap; n++) {
    uint64_t t0 = now_ns();
    if (t0 >= deadline) break;
    rec_fill(rec, o.id, n, t0);
    if ((int64_t)n == o.hold_at) {
      // Crash test: die inside the critical section, optionally after writing half of the record (what a
      // writer that emits one record with two write() calls, e.g. stdio flushing mid-line, can leave).
      lock_file(fd, k);
      if (o.hold_partial && write_full(fd, rec, REC_HALF)) die("write");
      hold(n);
    }
    lock_file(fd, k);
    if (write_full(fd, rec, REC_SIZE)) errors++;
    if (o.sync == SYNC_DATA_IN_LOCK && fdatasync(fd)) die("fdatasync");
    unlock_file(fd, k);
    if (o.sync == SYNC_DATA && fdatasync(fd)) die("fdatasync");
    lat[n] = lat_ns(t0);
  }
  uint64_t end = now_ns();
  report(&o, n, start, end, lat, errors, NULL);
  close(fd);
  return 0;
}
