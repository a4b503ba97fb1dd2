/*
 * LZ4 block compression for Node through the system's liblz4 (Debian: liblz4-1, /usr/lib/.../liblz4.so.1),
 * in the exact format lz4-napi's compressSync writes and uncompressSync reads: the uncompressed length as
 * 4 bytes little-endian, then one LZ4 block. Blocks written by either implementation restore with the other.
 *
 * Only the runtime library is needed (no liblz4-dev): the four functions below are declared here. They are
 * part of lz4.h's stable API since r129 (2015) and keep this ABI in every 1.x release.
 *
 * Exports:
 *   compress(data: Uint8Array) -> Buffer           prefix + block; a view of a buffer sized
 *                                                  LZ4_compressBound(n) + 4 (no extra copy).
 *   compressInto(data: Uint8Array, out: Uint8Array) -> number
 *                                                  the same bytes as compress, written into `out`;
 *                                                  returns their length, or 0 when they would not be
 *                                                  shorter than `data` or do not fit in `out` (nothing
 *                                                  allocated: the caller's buffer is reused).
 *   decompress(data: Uint8Array, rawLength: number, limit: number) -> Buffer
 *                                                  throws (never returns wrong data) when the prefix is
 *                                                  missing, declares a length other than rawLength or
 *                                                  above limit (checked before allocating), or the block
 *                                                  does not decode to exactly that length. Error codes:
 *                                                  LZ4_TRUNCATED, LZ4_LENGTH_MISMATCH, LZ4_TOO_LARGE,
 *                                                  LZ4_CORRUPT.
 *   decompressInto(data: Uint8Array, rawLength: number, out: Uint8Array) -> undefined
 *                                                  decompress's checks (out.length is the limit), the
 *                                                  rawLength bytes written to the start of `out`.
 *   version -> liblz4's version string ("1.9.4").
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <node_api.h>

int LZ4_compress_default(const char *src, char *dst, int srcSize, int dstCapacity);
int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity);
int LZ4_compressBound(int inputSize);
int LZ4_versionNumber(void);

#define LZ4_MAX_INPUT_SIZE 0x7E000000

static int get_bytes(napi_env env, napi_value value, const char **data, size_t *length) {
  bool is;
  if (napi_is_typedarray(env, value, &is) == napi_ok && is) {
    napi_typedarray_type type;
    void *ptr;
    size_t len;
    if (napi_get_typedarray_info(env, value, &type, &len, &ptr, NULL, NULL) == napi_ok && type == napi_uint8_array) {
      *data = ptr;
      *length = len;
      return 1;
    }
  }
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "lz4: data must be a Uint8Array");
  return 0;
}

static int get_length(napi_env env, napi_value value, const char *name, int64_t *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number || napi_get_value_int64(env, value, out) != napi_ok || *out < 0) {
    char msg[80];
    snprintf(msg, sizeof msg, "lz4: %s must be a non-negative number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  return 1;
}

/* The first `want` arguments into argv; 0 (a TypeError pending, naming `usage`) when fewer came. */
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *usage) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", usage);
    return 0;
  }
  return 1;
}

static napi_value compress(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "lz4: compress(data) takes one argument")) return NULL;
  const char *src;
  size_t n;
  if (!get_bytes(env, argv[0], &src, &n)) return NULL;
  if (n > LZ4_MAX_INPUT_SIZE) {
    napi_throw_range_error(env, "LZ4_TOO_LARGE", "lz4: input exceeds LZ4's 2113929216-byte limit");
    return NULL;
  }
  size_t cap = (size_t)LZ4_compressBound((int)n) + 4;
  void *dst;
  napi_value buf;
  if (napi_create_buffer(env, cap, &dst, &buf) != napi_ok) return NULL;
  unsigned char *p = dst;
  p[0] = (unsigned char)n;
  p[1] = (unsigned char)(n >> 8);
  p[2] = (unsigned char)(n >> 16);
  p[3] = (unsigned char)(n >> 24);
  int written = LZ4_compress_default(src, (char *)p + 4, (int)n, (int)(cap - 4));
  if (written <= 0) {
    napi_throw_error(env, "LZ4_FAILED", "lz4: LZ4_compress_default failed");
    return NULL;
  }
  /* A view of the first 4 + written bytes: no copy; the caller copies it into the block object. */
  napi_value arraybuffer, view;
  size_t byte_offset;
  if (napi_get_typedarray_info(env, buf, NULL, NULL, NULL, &arraybuffer, &byte_offset) != napi_ok) return NULL;
  napi_value global, buffer_ctor, from;
  /* Buffer.from(arrayBuffer, byteOffset, length) keeps Buffer methods on the result. */
  if (napi_get_global(env, &global) != napi_ok || napi_get_named_property(env, global, "Buffer", &buffer_ctor) != napi_ok ||
      napi_get_named_property(env, buffer_ctor, "from", &from) != napi_ok) return NULL;
  napi_value args[3];
  napi_create_uint32(env, (uint32_t)byte_offset, &args[1]);
  napi_create_uint32(env, (uint32_t)(4 + written), &args[2]);
  args[0] = arraybuffer;
  if (napi_call_function(env, buffer_ctor, from, 3, args, &view) != napi_ok) return NULL;
  return view;
}

static napi_value compress_into(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, "lz4: compressInto(data, out) takes two arguments")) return NULL;
  const char *src, *dst;
  size_t n, cap;
  if (!get_bytes(env, argv[0], &src, &n) || !get_bytes(env, argv[1], &dst, &cap)) return NULL;
  if (n > LZ4_MAX_INPUT_SIZE) {
    napi_throw_range_error(env, "LZ4_TOO_LARGE", "lz4: input exceeds LZ4's 2113929216-byte limit");
    return NULL;
  }
  int written = 0;
  /* Room for the prefix and a block shorter than the input: LZ4 gives up (returns 0) beyond it,
     with the same output as LZ4_compress_default whenever it fits. */
  if (cap > 4 && n > 4) {
    size_t room = cap - 4 < n - 4 ? cap - 4 : n - 4;
    if (room > (size_t)INT32_MAX) room = INT32_MAX;
    written = LZ4_compress_default(src, (char *)dst + 4, (int)n, (int)room);
  }
  napi_value result;
  if (written <= 0) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  unsigned char *p = (unsigned char *)dst;
  p[0] = (unsigned char)n;
  p[1] = (unsigned char)(n >> 8);
  p[2] = (unsigned char)(n >> 16);
  p[3] = (unsigned char)(n >> 24);
  napi_create_uint32(env, (uint32_t)(4 + written), &result);
  return result;
}

static void throw_coded(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
}

/* Checks the prefix of `src` against rawLength and limit; 0 (an exception pending) when it fails. */
static int check_prefix(napi_env env, const char *src, size_t n, int64_t raw, int64_t limit, uint32_t *declared_out) {
  char msg[160];
  if (n < 4) {
    snprintf(msg, sizeof msg, "lz4: %zu bytes is too short for the 4-byte length prefix", n);
    throw_coded(env, "LZ4_TRUNCATED", msg);
    return 0;
  }
  const unsigned char *p = (const unsigned char *)src;
  uint32_t declared = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
  if (limit > LZ4_MAX_INPUT_SIZE) limit = LZ4_MAX_INPUT_SIZE;
  if ((int64_t)declared > limit) {
    snprintf(msg, sizeof msg, "lz4: declared length %u exceeds the %lld-byte block size limit", declared, (long long)limit);
    throw_coded(env, "LZ4_TOO_LARGE", msg);
    return 0;
  }
  if ((int64_t)declared != raw) {
    snprintf(msg, sizeof msg, "lz4: declared length %u, expected %lld", declared, (long long)raw);
    throw_coded(env, "LZ4_LENGTH_MISMATCH", msg);
    return 0;
  }
  if (n - 4 > (size_t)INT32_MAX) {
    throw_coded(env, "LZ4_TOO_LARGE", "lz4: compressed block exceeds 2 GiB");
    return 0;
  }
  *declared_out = declared;
  return 1;
}

/* Decodes into dst (exactly `declared` bytes); 0 (an exception pending) unless it decodes to exactly that. */
static int decode_block(napi_env env, const char *src, size_t n, char *dst, uint32_t declared) {
  char msg[160];
  int got = LZ4_decompress_safe(src + 4, dst, (int)(n - 4), (int)declared);
  if (got != (int)declared) {
    if (got < 0) snprintf(msg, sizeof msg, "lz4: damaged block (LZ4_decompress_safe failed at input byte %d of %zu)", -got, n - 4);
    else snprintf(msg, sizeof msg, "lz4: block decoded to %d bytes, its prefix declares %u", got, declared);
    throw_coded(env, "LZ4_CORRUPT", msg);
    return 0;
  }
  return 1;
}

static napi_value decompress(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "lz4: decompress(data, rawLength, limit) takes three arguments")) return NULL;
  const char *src;
  size_t n;
  int64_t raw, limit;
  uint32_t declared;
  if (!get_bytes(env, argv[0], &src, &n) || !get_length(env, argv[1], "rawLength", &raw) || !get_length(env, argv[2], "limit", &limit)) return NULL;
  if (!check_prefix(env, src, n, raw, limit, &declared)) return NULL;
  void *dst;
  napi_value buf;
  if (napi_create_buffer(env, declared, &dst, &buf) != napi_ok) return NULL;
  if (!decode_block(env, src, n, dst, declared)) return NULL;
  return buf;
}

static napi_value decompress_into(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "lz4: decompressInto(data, rawLength, out) takes three arguments")) return NULL;
  const char *src, *dst;
  size_t n, cap;
  int64_t raw;
  uint32_t declared;
  if (!get_bytes(env, argv[0], &src, &n) || !get_length(env, argv[1], "rawLength", &raw) || !get_bytes(env, argv[2], &dst, &cap)) return NULL;
  if (!check_prefix(env, src, n, raw, (int64_t)cap, &declared)) return NULL;
  if (!decode_block(env, src, n, (char *)dst, declared)) return NULL;
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn, version;
  napi_create_function(env, "compress", NAPI_AUTO_LENGTH, compress, NULL, &fn);
  napi_set_named_property(env, exports, "compress", fn);
  napi_create_function(env, "compressInto", NAPI_AUTO_LENGTH, compress_into, NULL, &fn);
  napi_set_named_property(env, exports, "compressInto", fn);
  napi_create_function(env, "decompress", NAPI_AUTO_LENGTH, decompress, NULL, &fn);
  napi_set_named_property(env, exports, "decompress", fn);
  napi_create_function(env, "decompressInto", NAPI_AUTO_LENGTH, decompress_into, NULL, &fn);
  napi_set_named_property(env, exports, "decompressInto", fn);
  int v = LZ4_versionNumber();
  char s[32];
  snprintf(s, sizeof s, "%d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &version);
  napi_set_named_property(env, exports, "version", version);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
