// Mechanism (e): writers hand 100-byte records to one sink process through a POSIX message queue (mq) or a
// named pipe (fifo); only the sink writes the log file. One message / one write() of at most PIPE_BUF bytes
// is atomic, so records never interleave, and the sink writes whatever has queued up with one write().
// --sync fdatasync: the sink fdatasyncs each batch, then acknowledges each record to its writer through a
// per-writer reply queue or FIFO, and a writer's append returns only with that acknowledgement (durable,
// group-committed). --sync none: an append returns once the record is in the queue, before it is on disk.
//   --role sink --mode mq|fifo --name N --log PATH --writers N [--sync ..] [--hold-at N] [--attach]
//   --role writer --mode mq|fifo --name N --id I --lat PATH --dur-ms N --cap N [--sync ..]
//   --role unlink --mode mq|fifo --name N --writers N   (removes a queue left by an interrupted run)
// The sink runs until it reads "stop" (or EOF) on stdin, then drains what is queued and prints RESULT.
#include "lw.h"
#include <limits.h>
#include <mqueue.h>
#include <poll.h>

#define BATCH 256 // records per read-and-write round of the sink

static int is_mq;

static void reply_name(char *out, size_t n, const char *name, uint32_t id) {
  snprintf(out, n, is_mq ? "%s-r%u" : "%s.r%u", name, id);
}

// The queue depth: the kernel's msg_max (10 by default; raising it needs CAP_SYS_RESOURCE or a sysctl).
static long mq_depth(void) {
  long v = 10;
  FILE *f = fopen("/proc/sys/fs/mqueue/msg_max", "r");
  if (f) {
    if (fscanf(f, "%ld", &v) != 1) v = 10;
    fclose(f);
  }
  return v > 256 ? 256 : v;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int writer(const struct opts *o) {
  int q = -1, rq = -1;
  char rname[PATH_MAX];
  reply_name(rname, sizeof rname, o->name, o->id);
  signal(SIGPIPE, SIG_IGN); // a FIFO without a reader (sink restarting) is EPIPE, retried below
  if (is_mq) {
    q = mq_open(o->name, O_WRONLY | O_CLOEXEC);
    if (q < 0) die(o->name);
    if (o->sync != SYNC_NONE && (rq = mq_open(rname, O_RDONLY | O_CLOEXEC)) < 0) die(rname);
  } else {
    q = open(o->name, O_WRONLY | O_CLOEXEC);
    if (q < 0) die(o->name);
    if (o->sync != SYNC_NONE && (rq = open(rname, O_RDONLY | O_CLOEXEC)) < 0) die(rname);
  }
  uint32_t *lat = lat_alloc(o->cap);
  uint8_t rec[REC_SIZE];
  char ack[64];
  uint64_t n = 0, errors = 0, epipe = 0;

  wait_go();
  uint64_t start = now_ns(), deadline = start + o->dur_ms * 1000000u;
  for (; n < o->cap; n++) {
    uint64_t t0 = now_ns();
    if (t0 >= deadline) break;
    rec_fill(rec, o->id, n, t0);
    if (is_mq) {
      while (mq_send(q, (const char *)rec, REC_SIZE, 0) < 0)
        if (errno != EINTR) die("mq_send");
    } else {
      while (write_full(q, rec, REC_SIZE)) {
        if (errno != EPIPE) die("write fifo");
        if (now_ns() > deadline + 5000000000ull) die("fifo: no reader for 5 s");
        epipe++; // nothing was written: wait for a reader and send the record again
        sleep_ms(1);
      }
    }
    if (rq >= 0) {
      ssize_t r;
      if (is_mq) {
        do r = mq_receive(rq, ack, sizeof ack, NULL);
        while (r < 0 && errno == EINTR);
      } else {
        do r = read(rq, ack, 8);
        while (r < 0 && errno == EINTR);
      }
      if (r != 8) die("ack");
    }
    lat[n] = lat_ns(t0);
  }
  uint64_t end = now_ns();
  char extra[64];
  snprintf(extra, sizeof extra, "\"epipe\":%llu", (unsigned long long)epipe);
  report(o, n, start, end, lat, errors, extra);
  return 0;
}

// Receives what is queued (up to BATCH records) without blocking; returns the number of whole records now
// in buf. A FIFO read can end inside a record only if a writer broke the PIPE_BUF rule; *have carries it.
static size_t receive(int q, uint8_t *buf, size_t *have) {
  if (is_mq) {
    size_t n = 0;
    while (n < BATCH) {
      ssize_t r = mq_receive(q, (char *)buf + n * REC_SIZE, REC_SIZE, NULL);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        die("mq_receive");
      }
      if (r != REC_SIZE) die("mq_receive: short message");
      n++;
    }
    return n;
  }
  ssize_t r = read(q, buf + *have, BATCH * REC_SIZE - *have);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return *have / REC_SIZE;
    die("read fifo");
  }
  *have += (size_t)r;
  return *have / REC_SIZE;
}

static int sink(const struct opts *o) {
  int q;
  int *replies = NULL;
  long depth = 0;
  if (!o->name || !o->log) usage("lw_queue");
  if (is_mq) {
    depth = mq_depth();
    struct mq_attr a = {.mq_maxmsg = depth, .mq_msgsize = REC_SIZE};
    if (!o->attach) mq_unlink(o->name);
    q = o->attach ? mq_open(o->name, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
                  : mq_open(o->name, O_RDONLY | O_CREAT | O_EXCL | O_NONBLOCK | O_CLOEXEC, 0600, &a);
    if (q < 0) die(o->name);
  } else {
    if (!o->attach) {
      unlink(o->name);
      if (mkfifo(o->name, 0600)) die(o->name);
    }
    // O_RDWR: the sink never sees end-of-file between writers, and open() does not wait for one.
    q = open(o->name, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (q < 0) die(o->name);
  }
  if (o->sync != SYNC_NONE) {
    replies = calloc(o->writers, sizeof *replies);
    if (!replies) die("calloc");
    for (uint32_t i = 0; i < o->writers; i++) {
      char rname[PATH_MAX];
      reply_name(rname, sizeof rname, o->name, i);
      if (is_mq) {
        struct mq_attr a = {.mq_maxmsg = 1, .mq_msgsize = 8}; // one append in flight per writer
        mq_unlink(rname);
        replies[i] = mq_open(rname, O_WRONLY | O_CREAT | O_CLOEXEC, 0600, &a);
      } else {
        unlink(rname);
        if (mkfifo(rname, 0600)) die(rname);
        replies[i] = open(rname, O_RDWR | O_CLOEXEC);
      }
      if (replies[i] < 0) die(rname);
    }
  }
  int out = open(o->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0) die(o->log);
  uint8_t *buf = malloc(BATCH * REC_SIZE);
  if (!buf) die("malloc");
  size_t have = 0;
  uint64_t total = 0, batches = 0, syncs = 0;
  int stopping = 0;
  printf("READY\n");
  fflush(stdout);

  for (;;) {
    if (!stopping) {
      struct pollfd p[2] = {{.fd = q, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
      if (poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        die("poll");
      }
      if (p[1].revents) {
        char cmd[16];
        ssize_t r = read(0, cmd, sizeof cmd); // "stop" or end-of-file: drain and finish
        if (r <= 0 || !strncmp(cmd, "stop", 4)) stopping = 1;
      }
    }
    size_t n = receive(q, buf, &have);
    if (n == 0) {
      if (stopping) break;
      continue;
    }
    total += n;
    if (o->hold_at >= 0 && total >= (uint64_t)o->hold_at) hold(n); // crash test: n records received, unwritten
    if (write_full(out, buf, n * REC_SIZE)) die("write log");
    batches++;
    if (o->sync != SYNC_NONE) {
      if (fdatasync(out)) die("fdatasync");
      syncs++;
      for (size_t i = 0; i < n; i++) {
        uint32_t w;
        uint8_t ack[8];
        memcpy(&w, buf + i * REC_SIZE + 4, 4);
        memcpy(ack, buf + i * REC_SIZE + 8, 8); // the writer's seq
        if (w >= o->writers) die("record from an unknown writer");
        int r = is_mq ? mq_send(replies[w], (const char *)ack, 8, 0) : write_full(replies[w], ack, 8);
        if (r) die("ack");
      }
    }
    size_t rest = have - n * REC_SIZE;
    if (!is_mq && rest) memmove(buf, buf + n * REC_SIZE, rest);
    have = is_mq ? 0 : rest;
  }
  if (have) fprintf(stderr, "sink: %zu stray bytes at the end of the FIFO\n", have);
  if (o->sync != SYNC_NONE) {
    for (uint32_t i = 0; i < o->writers; i++) {
      char rname[PATH_MAX];
      reply_name(rname, sizeof rname, o->name, i);
      close(replies[i]);
      if (is_mq) mq_unlink(rname);
      else unlink(rname);
    }
  }
  if (is_mq) mq_unlink(o->name);
  else unlink(o->name);
  close(out);
  char extra[160];
  snprintf(extra, sizeof extra, "\"role\":\"sink\",\"batches\":%llu,\"syncs\":%llu,\"depth\":%ld,\"stray\":%zu",
           (unsigned long long)batches, (unsigned long long)syncs, depth, have);
  report(o, total, 0, 0, NULL, 0, extra);
  return 0;
}

int main(int argc, char **argv) {
  struct opts o;
  parse_opts(argc, argv, &o);
  if (!strcmp(o.mode, "mq")) is_mq = 1;
  else if (strcmp(o.mode, "fifo")) usage(argv[0]);
  if (!o.name) usage(argv[0]);
  if (!strcmp(o.role, "unlink")) { // clean-up after an interrupted run: the queue and its reply queues
    for (uint32_t i = 0; i < o.writers; i++) {
      char rname[PATH_MAX];
      reply_name(rname, sizeof rname, o.name, i);
      if (is_mq) mq_unlink(rname);
      else unlink(rname);
    }
    return is_mq ? mq_unlink(o.name) != 0 && errno != ENOENT : unlink(o.name) != 0 && errno != ENOENT;
  }
  if (!strcmp(o.role, "sink")) return sink(&o);
  if (!strcmp(o.role, "writer")) return writer(&o);
  usage(argv[0]);
}
