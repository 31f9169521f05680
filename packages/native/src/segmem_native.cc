// segmem native addon: maps a segment file with mmap, protects page ranges with mprotect, writes back
// with msync, frees pages and file blocks, and installs a SIGSEGV/SIGBUS handler that explains an
// illegal access to a mapped segment (which object, and whether it was not acquired or read-only)
// before aborting.
//
// Threading model: every exported function runs on a JS thread (the main thread or a worker) and
// takes g_mutex. The signal handler takes no lock and allocates nothing: it reads the fixed-size
// mapping and label tables below, which writers publish with atomics (mappings: fields first, then
// the state and the count with release stores; labels: a per-entry sequence counter, seqlock style).

#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

void InitCrc32c(Napi::Env env, Napi::Object exports);  // crc32c.cc

namespace {

// ---------------------------------------------------------------------------------------------------
// Tables shared with the signal handler

constexpr uint32_t kMaxMappings = 1024;  // ids are never reused: a closed range stays reserved
constexpr uint32_t kMaxLabels = 65536;
constexpr uint32_t kMaxNameBytes = 255;

enum MappingState : uint32_t { kUnused = 0, kOpen = 1, kClosed = 2 };

struct Mapping {
  std::atomic<uintptr_t> base;
  std::atomic<uint64_t> size;
  std::atomic<uint32_t> state;
  // One byte per page: the mode last given to protect() (0 none, 1 read, 2 read/write). Anonymous,
  // lazily allocated memory; never unmapped, so the handler can always read it.
  std::atomic<uint8_t*> modes;
  int fd;  // JS threads only
};

struct Label {
  std::atomic<uint32_t> seq;      // odd while being written
  std::atomic<uint32_t> mapping;  // mapping id, 0 = free slot
  std::atomic<uint64_t> offset;
  std::atomic<uint64_t> length;
  std::atomic<uint32_t> nameLen;
  char name[kMaxNameBytes + 1];
};

Mapping g_mappings[kMaxMappings];
std::atomic<uint32_t> g_mappingCount{0};  // slots [0, count) may be in use
Label g_labels[kMaxLabels];
std::atomic<uint32_t> g_labelHigh{0};  // slots [0, high) may be in use

// JS-thread-only bookkeeping (never touched by the handler).
std::mutex g_mutex;
std::map<std::pair<uint32_t, uint64_t>, uint32_t> g_labelIndex;  // (mapping id, offset) -> slot
std::vector<uint32_t> g_freeLabels;

size_t g_pageSize = 0;

size_t PageSize() {
  if (g_pageSize == 0) g_pageSize = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return g_pageSize;
}

// ---------------------------------------------------------------------------------------------------
// Argument helpers

// The name of an errno value ("ENOENT"), or null. Not strerrorname_np: that needs glibc 2.32, and the
// prebuilt binary must load on every glibc Node 20 runs on (2.28 and later).
const char* ErrnoName(int err) {
  switch (err) {
#define SEGMEM_ERRNO_NAME(e) \
  case e:                    \
    return #e;
    SEGMEM_ERRNO_NAME(EPERM)
    SEGMEM_ERRNO_NAME(ENOENT)
    SEGMEM_ERRNO_NAME(EINTR)
    SEGMEM_ERRNO_NAME(EIO)
    SEGMEM_ERRNO_NAME(ENXIO)
    SEGMEM_ERRNO_NAME(EBADF)
    SEGMEM_ERRNO_NAME(EAGAIN)
    SEGMEM_ERRNO_NAME(ENOMEM)
    SEGMEM_ERRNO_NAME(EACCES)
    SEGMEM_ERRNO_NAME(EFAULT)
    SEGMEM_ERRNO_NAME(EBUSY)
    SEGMEM_ERRNO_NAME(EEXIST)
    SEGMEM_ERRNO_NAME(ENODEV)
    SEGMEM_ERRNO_NAME(ENOTDIR)
    SEGMEM_ERRNO_NAME(EISDIR)
    SEGMEM_ERRNO_NAME(EINVAL)
    SEGMEM_ERRNO_NAME(ENFILE)
    SEGMEM_ERRNO_NAME(EMFILE)
    SEGMEM_ERRNO_NAME(ETXTBSY)
    SEGMEM_ERRNO_NAME(EFBIG)
    SEGMEM_ERRNO_NAME(ENOSPC)
    SEGMEM_ERRNO_NAME(ESPIPE)
    SEGMEM_ERRNO_NAME(EROFS)
    SEGMEM_ERRNO_NAME(ERANGE)
    SEGMEM_ERRNO_NAME(ENAMETOOLONG)
    SEGMEM_ERRNO_NAME(ENOSYS)
    SEGMEM_ERRNO_NAME(ELOOP)
    SEGMEM_ERRNO_NAME(EOVERFLOW)
    SEGMEM_ERRNO_NAME(EOPNOTSUPP)
    SEGMEM_ERRNO_NAME(EDQUOT)
#undef SEGMEM_ERRNO_NAME
    default:
      return nullptr;
  }
}

std::string ErrnoText(int err) {
  std::string s = strerror(err);
  const char* name = ErrnoName(err);
  if (name != nullptr) {
    s += " (";
    s += name;
    s += ")";
  }
  return s;
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* what, int err) {
  std::string msg = std::string("segmem native: ") + what + " failed: " + ErrnoText(err);
  Napi::Error e = Napi::Error::New(env, msg);
  const char* name = ErrnoName(err);
  if (name != nullptr) e.Set("code", Napi::String::New(env, name));
  e.Set("errno", Napi::Number::New(env, err));
  throw e;
}

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, "segmem native: " + msg);
}

[[noreturn]] void ThrowRange(Napi::Env env, const std::string& msg) {
  throw Napi::RangeError::New(env, "segmem native: " + msg);
}

[[noreturn]] void ThrowPlain(Napi::Env env, const std::string& msg) {
  throw Napi::Error::New(env, "segmem native: " + msg);
}

// A non-negative safe integer (up to 2^53 - 1).
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) ThrowType(env, std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < 0 || d > 9007199254740991.0 || std::floor(d) != d) {
    ThrowRange(env, std::string(what) + " must be a non-negative safe integer");
  }
  return static_cast<uint64_t>(d);
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) ThrowType(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

// Looks up an id given as argument 0. Requires g_mutex.
Mapping& ArgMapping(const Napi::CallbackInfo& info, bool mustBeOpen) {
  Napi::Env env = info.Env();
  uint64_t id = ArgU64(info, 0, "mapping id");
  uint32_t count = g_mappingCount.load(std::memory_order_acquire);
  if (id == 0 || id > count) ThrowRange(env, "unknown mapping id " + std::to_string(id));
  Mapping& m = g_mappings[id - 1];
  uint32_t state = m.state.load(std::memory_order_acquire);
  if (state == kUnused) ThrowRange(env, "unknown mapping id " + std::to_string(id));
  if (mustBeOpen && state != kOpen) ThrowPlain(env, "mapping " + std::to_string(id) + " is closed");
  return m;
}

uint32_t IdOf(const Mapping& m) {
  return static_cast<uint32_t>(&m - g_mappings) + 1;
}

// Checks [offset, offset + length) lies in the mapping, offset page aligned; returns length rounded up to
// whole pages (which must still fit).
// Throws a RangeError unless [offset, offset + length) lies inside the mapping.
void CheckRange(Napi::Env env, const Mapping& m, uint64_t offset, uint64_t length, const char* fn) {
  const uint64_t size = m.size.load(std::memory_order_relaxed);
  if (offset > size || length > size - offset) {
    ThrowRange(env, std::string(fn) + ": range [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                        ") is outside the mapping (size " + std::to_string(size) + ")");
  }
}

uint64_t PageRange(Napi::Env env, const Mapping& m, uint64_t offset, uint64_t length, const char* fn) {
  const uint64_t ps = PageSize();
  if (offset % ps != 0) {
    ThrowRange(env, std::string(fn) + ": offset " + std::to_string(offset) + " is not a multiple of the page size (" +
                        std::to_string(ps) + ")");
  }
  uint64_t rounded = (length + ps - 1) / ps * ps;
  CheckRange(env, m, offset, rounded, fn);
  return rounded;
}

// ---------------------------------------------------------------------------------------------------
// Label table writers (JS thread, under g_mutex)

void WriteLabel(uint32_t slot, uint32_t mapping, uint64_t offset, uint64_t length, const std::string& name) {
  Label& l = g_labels[slot];
  uint32_t s = l.seq.load(std::memory_order_relaxed);
  l.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  size_t n = name.size() > kMaxNameBytes ? kMaxNameBytes : name.size();
  // Do not cut a UTF-8 sequence in the middle.
  if (n < name.size()) {
    while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xC0) == 0x80) n--;
  }
  memcpy(l.name, name.data(), n);
  l.name[n] = 0;
  l.nameLen.store(static_cast<uint32_t>(n), std::memory_order_relaxed);
  l.offset.store(offset, std::memory_order_relaxed);
  l.length.store(length, std::memory_order_relaxed);
  l.mapping.store(mapping, std::memory_order_relaxed);
  l.seq.store(s + 2, std::memory_order_release);
}

void FreeLabel(uint32_t slot) {
  Label& l = g_labels[slot];
  uint32_t s = l.seq.load(std::memory_order_relaxed);
  l.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  l.mapping.store(0, std::memory_order_relaxed);
  l.seq.store(s + 2, std::memory_order_release);
  g_freeLabels.push_back(slot);
}

// ---------------------------------------------------------------------------------------------------
// Lookups shared by the handler and labelAt() (async-signal-safe: no locks, no allocation)

struct LabelView {
  bool found;
  uint32_t nameLen;
  char name[kMaxNameBytes + 1];
};

// Finds the narrowest label of `mapping` covering `offset`.
void FindLabel(uint32_t mapping, uint64_t offset, LabelView* out) {
  out->found = false;
  out->nameLen = 0;
  uint64_t bestLen = 0;
  uint32_t high = g_labelHigh.load(std::memory_order_acquire);
  if (high > kMaxLabels) high = kMaxLabels;
  for (uint32_t i = 0; i < high; i++) {
    Label& l = g_labels[i];
    for (int attempt = 0; attempt < 8; attempt++) {
      uint32_t s1 = l.seq.load(std::memory_order_acquire);
      if (s1 & 1) continue;
      uint32_t mid = l.mapping.load(std::memory_order_relaxed);
      if (mid != mapping) {
        std::atomic_thread_fence(std::memory_order_acquire);
        if (l.seq.load(std::memory_order_relaxed) == s1) break;
        continue;
      }
      uint64_t off = l.offset.load(std::memory_order_relaxed);
      uint64_t len = l.length.load(std::memory_order_relaxed);
      uint32_t n = l.nameLen.load(std::memory_order_relaxed);
      if (n > kMaxNameBytes) n = kMaxNameBytes;
      bool covers = offset >= off && offset - off < len && (!out->found || len < bestLen);
      char name[kMaxNameBytes + 1];
      if (covers) {
        for (uint32_t k = 0; k < n; k++) name[k] = l.name[k];
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (l.seq.load(std::memory_order_relaxed) != s1) continue;  // torn read: retry
      if (covers) {
        out->found = true;
        bestLen = len;
        out->nameLen = n;
        for (uint32_t k = 0; k < n; k++) out->name[k] = name[k];
        out->name[n] = 0;
      }
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Exported functions

Napi::Value JsPageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(PageSize()));
}

Napi::Value JsMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  uint64_t bytes = ArgU64(info, 1, "bytes");
  const uint64_t ps = PageSize();
  if (bytes == 0 || bytes % ps != 0) {
    ThrowRange(env, "map: bytes (" + std::to_string(bytes) + ") must be a positive multiple of the page size (" +
                        std::to_string(ps) + ")");
  }
  if (bytes > static_cast<uint64_t>(SIZE_MAX) || bytes > static_cast<uint64_t>(INT64_MAX)) {
    ThrowRange(env, "map: bytes too large");
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  uint32_t count = g_mappingCount.load(std::memory_order_relaxed);
  if (count >= kMaxMappings) ThrowPlain(env, "map: too many mappings (limit " + std::to_string(kMaxMappings) + ")");

  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) ThrowErrno(env, ("map: open(" + path + ")").c_str(), errno);
  // The size by lseek, not fstat: glibc 2.33 made fstat a new versioned symbol, which a binary built
  // on a newer glibc then needs at load time.
  off_t fileBytes = lseek(fd, 0, SEEK_END);
  if (fileBytes < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "map: lseek", err);
  }
  if (static_cast<uint64_t>(fileBytes) != bytes && ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, ("map: ftruncate(" + path + ")").c_str(), err);
  }
  void* base = mmap(nullptr, static_cast<size_t>(bytes), PROT_NONE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "map: mmap", err);
  }
  size_t pages = static_cast<size_t>(bytes / ps);
  size_t modesBytes = (pages + ps - 1) / ps * ps;
  void* modes = mmap(nullptr, modesBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (modes == MAP_FAILED) {
    int err = errno;
    munmap(base, static_cast<size_t>(bytes));
    close(fd);
    ThrowErrno(env, "map: mmap (page mode table)", err);
  }
  Mapping& m = g_mappings[count];
  m.fd = fd;
  m.base.store(reinterpret_cast<uintptr_t>(base), std::memory_order_relaxed);
  m.size.store(bytes, std::memory_order_relaxed);
  m.modes.store(static_cast<uint8_t*>(modes), std::memory_order_relaxed);
  m.state.store(kOpen, std::memory_order_release);
  g_mappingCount.store(count + 1, std::memory_order_release);
  return Napi::Number::New(env, count + 1);
}

Napi::Value JsAddress(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, false);
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(m.base.load(std::memory_order_relaxed)));
}

Napi::Value JsBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, true);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  CheckRange(env, m, offset, length, "buffer");
  if (length == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  uint8_t* p = reinterpret_cast<uint8_t*>(m.base.load(std::memory_order_relaxed)) + offset;
  // External buffer, no copy; the mapping outlives it (close() never unmaps), so nothing to free.
  return Napi::Buffer<uint8_t>::New(env, p, static_cast<size_t>(length), [](Napi::Env, uint8_t*) {});
}

Napi::Value JsProtect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, true);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  uint64_t mode = ArgU64(info, 3, "mode");
  if (mode > 2) ThrowRange(env, "protect: mode must be 0 (none), 1 (read) or 2 (read/write)");
  uint64_t rounded = PageRange(env, m, offset, length, "protect");
  if (rounded == 0) return env.Undefined();
  static const int kProt[3] = {PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE};
  uint8_t* base = reinterpret_cast<uint8_t*>(m.base.load(std::memory_order_relaxed));
  if (mprotect(base + offset, static_cast<size_t>(rounded), kProt[mode]) != 0) ThrowErrno(env, "protect: mprotect", errno);
  const uint64_t ps = PageSize();
  uint8_t* modes = m.modes.load(std::memory_order_relaxed);
  for (uint64_t p = offset / ps, end = (offset + rounded) / ps; p < end; p++) {
    // Compare first: writing zeros over never-touched pages of the table would allocate them.
    if (__atomic_load_n(&modes[p], __ATOMIC_RELAXED) != mode) {
      __atomic_store_n(&modes[p], static_cast<uint8_t>(mode), __ATOMIC_RELAXED);
    }
  }
  return env.Undefined();
}

Napi::Value JsSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, true);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  CheckRange(env, m, offset, length, "sync");
  if (length == 0) return env.Undefined();
  const uint64_t ps = PageSize();
  uint64_t start = offset / ps * ps;
  uint64_t end = (offset + length + ps - 1) / ps * ps;
  uint8_t* base = reinterpret_cast<uint8_t*>(m.base.load(std::memory_order_relaxed));
  if (msync(base + start, static_cast<size_t>(end - start), MS_SYNC) != 0) ThrowErrno(env, "sync: msync", errno);
  return env.Undefined();
}

// Frees memory and file blocks of a page range; afterwards the pages read as zeros. Requires g_mutex.
void DiscardRange(Napi::Env env, Mapping& m, uint64_t offset, uint64_t rounded) {
  uint8_t* addr = reinterpret_cast<uint8_t*>(m.base.load(std::memory_order_relaxed)) + offset;
  // Punching the hole drops the page cache pages (from every mapping of the file) and the blocks.
  if (fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(rounded)) != 0) {
    int err = errno;
    if (err != EOPNOTSUPP && err != ENOSYS) ThrowErrno(env, "discard: fallocate(PUNCH_HOLE)", err);
    // File system without hole punching: write zeros instead (correct contents, blocks stay allocated).
    static const char zeros[65536] = {};
    for (uint64_t done = 0; done < rounded;) {
      size_t n = rounded - done < sizeof zeros ? static_cast<size_t>(rounded - done) : sizeof zeros;
      ssize_t w = pwrite(m.fd, zeros, n, static_cast<off_t>(offset + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        ThrowErrno(env, "discard: pwrite", errno);
      }
      done += static_cast<uint64_t>(w);
    }
  }
  if (madvise(addr, static_cast<size_t>(rounded), MADV_DONTNEED) != 0) ThrowErrno(env, "discard: madvise", errno);
}

Napi::Value JsDiscard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, true);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  uint64_t rounded = PageRange(env, m, offset, length, "discard");
  if (rounded != 0) DiscardRange(env, m, offset, rounded);
  return env.Undefined();
}

Napi::Value JsLabel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, true);
  uint64_t offset = ArgU64(info, 1, "offset");
  uint64_t length = ArgU64(info, 2, "length");
  std::string name = ArgString(info, 3, "name");
  CheckRange(env, m, offset, length, "label");
  uint32_t id = IdOf(m);
  auto key = std::make_pair(id, offset);
  auto it = g_labelIndex.find(key);
  uint32_t slot;
  if (it != g_labelIndex.end()) {
    slot = it->second;
  } else {
    uint32_t high = g_labelHigh.load(std::memory_order_relaxed);
    if (!g_freeLabels.empty()) {
      slot = g_freeLabels.back();
    } else if (high < kMaxLabels) {
      slot = high;
    } else {
      ThrowRange(env, "label: label table full (" + std::to_string(kMaxLabels) + " entries)");
    }
    g_labelIndex.emplace(key, slot);  // may throw bad_alloc before anything changed
    if (!g_freeLabels.empty() && g_freeLabels.back() == slot) g_freeLabels.pop_back();
  }
  WriteLabel(slot, id, offset, length, name);
  // Publish the slot only once its entry is complete.
  if (slot >= g_labelHigh.load(std::memory_order_relaxed)) g_labelHigh.store(slot + 1, std::memory_order_release);
  return env.Undefined();
}

Napi::Value JsUnlabel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, false);
  uint64_t offset = ArgU64(info, 1, "offset");
  auto it = g_labelIndex.find(std::make_pair(IdOf(m), offset));
  if (it == g_labelIndex.end()) return Napi::Boolean::New(env, false);
  uint32_t slot = it->second;
  g_labelIndex.erase(it);
  FreeLabel(slot);
  return Napi::Boolean::New(env, true);
}

Napi::Value JsLabelAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, false);
  uint64_t offset = ArgU64(info, 1, "offset");
  LabelView v;
  FindLabel(IdOf(m), offset, &v);
  if (!v.found) return env.Null();
  return Napi::String::New(env, v.name, v.nameLen);
}

Napi::Value JsClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  Mapping& m = ArgMapping(info, false);
  bool keepFileData = info.Length() > 1 && info[1].ToBoolean().Value();
  if (m.state.load(std::memory_order_acquire) == kClosed) return Napi::Boolean::New(env, false);
  uint64_t size = m.size.load(std::memory_order_relaxed);
  uint8_t* base = reinterpret_cast<uint8_t*>(m.base.load(std::memory_order_relaxed));
  if (!keepFileData) DiscardRange(env, m, 0, size);
  // From here on a fault in the range is reported as "segment closed".
  m.state.store(kClosed, std::memory_order_release);
  // Replace the file mapping by an inaccessible anonymous one at the same address: drops the pages and
  // the reference to the file, and keeps the range reserved so stale Buffers fault into our handler.
  void* r = mmap(base, static_cast<size_t>(size), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
                 -1, 0);
  if (r == MAP_FAILED) {
    int err = errno;
    // Fall back to revoking access on the file mapping itself.
    if (mprotect(base, static_cast<size_t>(size), PROT_NONE) != 0) ThrowErrno(env, "close: mmap/mprotect", err);
    madvise(base, static_cast<size_t>(size), MADV_DONTNEED);
  }
  uint8_t* modes = m.modes.load(std::memory_order_relaxed);
  const uint64_t ps = PageSize();
  uint64_t pages = size / ps;
  madvise(modes, static_cast<size_t>((pages + ps - 1) / ps * ps), MADV_DONTNEED);  // reads as zeros afterwards
  close(m.fd);
  m.fd = -1;
  // Drop the mapping's labels (the handler reports "segment closed" without an object name).
  uint32_t id = IdOf(m);
  for (auto it = g_labelIndex.lower_bound(std::make_pair(id, uint64_t{0}));
       it != g_labelIndex.end() && it->first.first == id;) {
    FreeLabel(it->second);
    it = g_labelIndex.erase(it);
  }
  return Napi::Boolean::New(env, true);
}

// ---------------------------------------------------------------------------------------------------
// Fault handler

struct sigaction g_oldSegv;
struct sigaction g_oldBus;
std::atomic<bool> g_installed{false};
thread_local bool t_altStack = false;

// Appends text to a fixed buffer; never overflows, never allocates.
struct Out {
  char buf[1024];
  size_t n = 0;
  void Str(const char* s) {
    while (*s && n < sizeof buf) buf[n++] = *s++;
  }
  void Bytes(const char* s, size_t len) {
    for (size_t i = 0; i < len && n < sizeof buf; i++) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      buf[n++] = (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
    }
  }
  void Hex(uint64_t v) {
    char tmp[16];
    int k = 0;
    do {
      tmp[k++] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v != 0);
    Str("0x");
    while (k > 0 && n < sizeof buf) buf[n++] = tmp[--k];
  }
  void Dec(uint64_t v) {
    char tmp[20];
    int k = 0;
    do {
      tmp[k++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (k > 0 && n < sizeof buf) buf[n++] = tmp[--k];
  }
  void Flush() {
    if (n == sizeof buf) buf[n - 1] = '\n';
    size_t done = 0;
    while (done < n) {
      ssize_t w = write(2, buf + done, n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        return;
      }
      done += static_cast<size_t>(w);
    }
  }
};

[[noreturn]] void DieAbort() {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGABRT, &dfl, nullptr);
  abort();
}

void Chain(int sig, siginfo_t* si, void* ctx) {
  const struct sigaction& old = sig == SIGBUS ? g_oldBus : g_oldSegv;
  if (old.sa_flags & SA_SIGINFO) {
    if (old.sa_sigaction != nullptr) {
      old.sa_sigaction(sig, si, ctx);
      return;
    }
  } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN && old.sa_handler != nullptr) {
    old.sa_handler(sig);
    return;
  }
  bool fromKernel = si != nullptr && si->si_code > 0;
  if (old.sa_handler == SIG_IGN && !fromKernel) return;  // a sent, ignored signal: keep ignoring it
  // Default action: uninstall ourselves; a kernel fault re-executes and kills the process with the
  // same signal. A sent signal (kill) would not recur by itself, so raise it again (it stays pending
  // until this handler returns).
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  if (!fromKernel) raise(sig);
}

void Handler(int sig, siginfo_t* si, void* ctx) {
  int savedErrno = errno;
  if (si == nullptr || si->si_code <= 0) {  // sent by kill/raise/sigqueue: si_addr means nothing
    Chain(sig, si, ctx);
    errno = savedErrno;
    return;
  }
  uintptr_t addr = reinterpret_cast<uintptr_t>(si->si_addr);
  uint32_t count = g_mappingCount.load(std::memory_order_acquire);
  if (count > kMaxMappings) count = kMaxMappings;
  for (uint32_t i = 0; i < count; i++) {
    Mapping& m = g_mappings[i];
    uint32_t state = m.state.load(std::memory_order_acquire);
    if (state == kUnused) continue;
    uintptr_t base = m.base.load(std::memory_order_relaxed);
    uint64_t size = m.size.load(std::memory_order_relaxed);
    if (addr < base || addr - base >= size) continue;

    uint64_t offset = addr - base;
    Out out;
    out.Str(sig == SIGBUS ? "segmem: bus error at address " : "segmem: illegal access at address ");
    out.Hex(addr);
    out.Str(", segment offset ");
    out.Dec(offset);
    if (state == kClosed) {
      out.Str(": the segment was closed (a Buffer or view obtained from it was used after close)\n");
    } else {
      LabelView v;
      FindLabel(i + 1, offset, &v);
      uint8_t* modes = m.modes.load(std::memory_order_relaxed);
      uint8_t mode = modes != nullptr ? __atomic_load_n(&modes[offset / PageSize()], __ATOMIC_RELAXED) : 0;
      if (v.found) {
        out.Str(", object \"");
        out.Bytes(v.name, v.nameLen);
        out.Str("\"");
      } else {
        out.Str(", outside any object");
      }
      if (sig == SIGBUS) {
        out.Str(": the backing file could not provide the page (file truncated or disk full)\n");
      } else if (mode == 1) {
        out.Str(v.found ? " is held read-only: writing needs write access (acquireWrite / p_access_readwrite)\n"
                        : ": the page is read-only: writing needs write access (acquireWrite / p_access_readwrite)\n");
      } else if (v.found) {
        out.Str(
            ": the object is not acquired (acquire it with acquireRead/acquireWrite or "
            "p_access_read/p_access_readwrite before touching its bytes)\n");
      } else {
        out.Str(": no object is allocated there and the page is not accessible\n");
      }
    }
    out.Flush();
    DieAbort();
  }
  Chain(sig, si, ctx);
  errno = savedErrno;
}

void EnsureAltStack() {
  if (t_altStack) return;
  t_altStack = true;
  stack_t cur;
  if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;  // the thread has one
  long min = sysconf(_SC_SIGSTKSZ);
  size_t size = 64 * 1024;
  if (min > 0 && static_cast<size_t>(min) * 4 > size) size = static_cast<size_t>(min) * 4;
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return;
  stack_t ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_sp = mem;
  ss.ss_size = size;
  ss.ss_flags = 0;
  if (sigaltstack(&ss, nullptr) != 0) munmap(mem, size);
}

Napi::Value JsInstallFaultHandler(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  EnsureAltStack();
  if (g_installed.load(std::memory_order_acquire)) return Napi::Boolean::New(env, false);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = Handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  // Save the previous handlers before ours can run.
  if (sigaction(SIGSEGV, nullptr, &g_oldSegv) != 0) ThrowErrno(env, "installFaultHandler: sigaction", errno);
  if (sigaction(SIGBUS, nullptr, &g_oldBus) != 0) ThrowErrno(env, "installFaultHandler: sigaction", errno);
  if (sigaction(SIGSEGV, &sa, nullptr) != 0) ThrowErrno(env, "installFaultHandler: sigaction(SIGSEGV)", errno);
  if (sigaction(SIGBUS, &sa, nullptr) != 0) {
    int err = errno;
    sigaction(SIGSEGV, &g_oldSegv, nullptr);
    ThrowErrno(env, "installFaultHandler: sigaction(SIGBUS)", err);
  }
  g_installed.store(true, std::memory_order_release);
  return Napi::Boolean::New(env, true);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ::InitCrc32c(env, exports);
  exports.Set("pageSize", Napi::Function::New(env, JsPageSize, "pageSize"));
  exports.Set("map", Napi::Function::New(env, JsMap, "map"));
  exports.Set("address", Napi::Function::New(env, JsAddress, "address"));
  exports.Set("buffer", Napi::Function::New(env, JsBuffer, "buffer"));
  exports.Set("protect", Napi::Function::New(env, JsProtect, "protect"));
  exports.Set("sync", Napi::Function::New(env, JsSync, "sync"));
  exports.Set("discard", Napi::Function::New(env, JsDiscard, "discard"));
  exports.Set("label", Napi::Function::New(env, JsLabel, "label"));
  exports.Set("unlabel", Napi::Function::New(env, JsUnlabel, "unlabel"));
  exports.Set("labelAt", Napi::Function::New(env, JsLabelAt, "labelAt"));
  exports.Set("close", Napi::Function::New(env, JsClose, "close"));
  exports.Set("installFaultHandler", Napi::Function::New(env, JsInstallFaultHandler, "installFaultHandler"));
  exports.Set("maxLabels", Napi::Number::New(env, kMaxLabels));
  exports.Set("maxLabelNameBytes", Napi::Number::New(env, kMaxNameBytes));
  return exports;
}

}  // namespace

NODE_API_MODULE(segmem_native, Init)
