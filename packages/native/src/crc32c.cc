// CRC-32C (Castagnoli) for the server's WAL records, snapshot pages and consolidated snapshots: the
// SSE4.2 instruction where the CPU has it (some GB/s), a slicing-by-8 table otherwise. Same results as
// packages/server/src/storage/crc32c.ts, which stays the reference and the fallback without this addon.
#include <napi.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace {

constexpr uint32_t kPoly = 0x82f63b78u;
uint32_t g_table[8][256];

bool BuildTable() {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    g_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = g_table[0][n];
    for (int k = 1; k < 8; k++) {
      c = g_table[0][c & 0xff] ^ (c >> 8);
      g_table[k][n] = c;
    }
  }
  return true;
}

const bool g_tableReady = BuildTable();

/** The raw update (no pre- or post-inversion), by table. */
uint32_t UpdateSoftware(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint32_t lo;
    uint32_t hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = g_table[7][lo & 0xff] ^ g_table[6][(lo >> 8) & 0xff] ^ g_table[5][(lo >> 16) & 0xff] ^
          g_table[4][lo >> 24] ^ g_table[3][hi & 0xff] ^ g_table[2][(hi >> 8) & 0xff] ^
          g_table[1][(hi >> 16) & 0xff] ^ g_table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = g_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t UpdateHardware(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

const bool g_hardware = __builtin_cpu_supports("sse4.2");
#else
const bool g_hardware = false;
#endif

uint32_t Update(uint32_t crc, const uint8_t* p, size_t n) {
#if defined(__x86_64__)
  if (g_hardware) return UpdateHardware(crc, p, n);
#endif
  return UpdateSoftware(crc, p, n);
}

double IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string("crc32c: ") + name + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != static_cast<double>(static_cast<uint64_t>(v)))
    throw Napi::RangeError::New(info.Env(), std::string("crc32c: ") + name + " must be a non-negative integer");
  return v;
}

/** crc32c(bytes, initial, start, end): the CRC of bytes[start, end) continuing from `initial`. */
Napi::Value JsCrc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 4 || !info[0].IsTypedArray())
    throw Napi::TypeError::New(env, "crc32c(bytes: Uint8Array, initial, start, end)");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, "crc32c: bytes must be a Uint8Array");
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  double initial = IntegerArg(info, 1, "initial");
  double start = IntegerArg(info, 2, "start");
  double end = IntegerArg(info, 3, "end");
  if (initial > 0xffffffffu) throw Napi::RangeError::New(env, "crc32c: initial must fit in 32 bits");
  if (start > end || end > static_cast<double>(bytes.ByteLength()))
    throw Napi::RangeError::New(env, "crc32c: start..end must lie within bytes");
  uint32_t crc = ~static_cast<uint32_t>(initial);
  crc = Update(crc, bytes.Data() + static_cast<size_t>(start), static_cast<size_t>(end - start));
  return Napi::Number::New(env, static_cast<double>(~crc));
}

}  // namespace

void InitCrc32c(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New(env, JsCrc32c, "crc32c"));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, g_hardware && g_tableReady));
}
