/*
 * lseek(2) with SEEK_DATA / SEEK_HOLE for Node, which has no lseek of its own. The hot-add transport
 * needs it to find the holes of a sparse image without reading them.
 *
 * Exports (when the platform defines SEEK_DATA and SEEK_HOLE; otherwise an empty object, and the
 * transport then reports every byte as data):
 *   seek(fd, offset, whence) -> new offset (Number), or -1 when lseek fails with ENXIO (no data at or
 *                               after offset, or offset past the end); throws an Error whose `code` is
 *                               the errno name for any other failure.
 *   SEEK_DATA, SEEK_HOLE     -> the platform's values (Linux: 3 and 4; they differ elsewhere).
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <node_api.h>

#if defined(SEEK_DATA) && defined(SEEK_HOLE)

/* Callers branch on the code (EINVAL / EOPNOTSUPP mean "no hole support here"), so name it. */
static const char *errno_name(int err) {
  switch (err) {
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case ESPIPE: return "ESPIPE";
    case EOVERFLOW: return "EOVERFLOW";
    case EIO: return "EIO";
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP: return "EOPNOTSUPP";
#endif
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "EUNKNOWN";
  }
}

static int64_t get_int64(napi_env env, napi_value value, const char *name, int *ok) {
  napi_valuetype type;
  int64_t out = 0;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number ||
      napi_get_value_int64(env, value, &out) != napi_ok) {
    char msg[64];
    snprintf(msg, sizeof msg, "%s must be a number", name);
    napi_throw_type_error(env, NULL, msg);
    *ok = 0;
  }
  return out;
}

static napi_value seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 3) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence) takes three arguments");
    return NULL;
  }
  int ok = 1;
  int64_t fd = get_int64(env, argv[0], "fd", &ok);
  int64_t offset = ok ? get_int64(env, argv[1], "offset", &ok) : 0;
  int64_t whence = ok ? get_int64(env, argv[2], "whence", &ok) : 0;
  if (!ok) return NULL;

  off_t got = lseek((int)fd, (off_t)offset, (int)whence);
  napi_value result;
  if (got < 0 && errno == ENXIO) {
    napi_create_int64(env, -1, &result);
    return result;
  }
  if (got < 0) {
    int err = errno;
    char msg[128];
    snprintf(msg, sizeof msg, "lseek(%lld, %lld, %lld): %s", (long long)fd, (long long)offset,
             (long long)whence, strerror(err));
    napi_throw_error(env, errno_name(err), msg);
    return NULL;
  }
  napi_create_int64(env, (int64_t)got, &result);
  return result;
}

static void set_int(napi_env env, napi_value exports, const char *name, int64_t value) {
  napi_value v;
  napi_create_int64(env, value, &v);
  napi_set_named_property(env, exports, name, v);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "seek", NAPI_AUTO_LENGTH, seek, NULL, &fn);
  napi_set_named_property(env, exports, "seek", fn);
  set_int(env, exports, "SEEK_DATA", SEEK_DATA);
  set_int(env, exports, "SEEK_HOLE", SEEK_HOLE);
  return exports;
}

#else

static napi_value init(napi_env env, napi_value exports) {
  (void)env;
  return exports;
}

#endif

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
