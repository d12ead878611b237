// Offshoot's one native addon (Node-API, C): maps a region of a file
// read-only (mmap, MAP_SHARED, PROT_READ) and hands it to JavaScript as a
// Buffer over the mapping, with no copy. The checkpoint writer reads a frozen
// VM's guest RAM (its template file) through it instead of pread-ing every
// byte into its own buffers (measured: the pread copy was a third of the
// save's CPU), and finds a block's zero pages in one call (scanPages) instead
// of a JavaScript loop of one compare per page. Built by `npm run setup`
// (scripts/setup.sh) into dist/native/; loaded by src/memory/native-mmap.ts.
//
//   map(fd, offset, length) -> Buffer   the mapping; munmapped when the Buffer
//                                       is collected, or earlier by unmap
//   unmap(buffer) -> boolean            munmaps now and detaches the Buffer
//                                       (its views then read as empty, never
//                                       as freed memory); false if not mapped
//   advise(buffer, offset, length, advice) -> undefined   madvise on a part
//   dataRange(fd, offset) -> [start, end] | null   the file's first run of
//                                       data (not a hole) at or after offset,
//                                       from lseek SEEK_DATA then SEEK_HOLE
//   advice: { sequential, willneed, populateRead }        madvise constants
//   scanPages(buffer, known, bitmap) -> count   the checkpoint writer's
//                                       zero-page check of one block in one
//                                       call: sets bit p of `bitmap` (32
//                                       bytes, cleared first) for each 4 KiB
//                                       page p of `buffer` (a whole number of
//                                       pages, at most 256) that is not all
//                                       zero and not marked in `known` (null,
//                                       or 32 bytes: pages known to be zero,
//                                       never read); returns how many
//
// A mapping's bookkeeping (address, length, still mapped) lives in a list
// under a mutex, so unmap only ever unmaps a mapping this addon made, once.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

typedef struct mapping {
  void *addr;
  size_t length;
  int mapped;
  struct mapping *next;
} mapping;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static mapping *mappings = NULL;

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, "NATIVE_ADDON", #call " failed"); return NULL; } } while (0)

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[256];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  const char *name = strerrorname_np(err);
  napi_throw_error(env, name ? name : "EIO", message);
  return NULL;
}

static int get_int64(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d < 0 || d > 9007199254740991.0 || (double)(int64_t)d != d) return 0;
  *out = (int64_t)d;
  return 1;
}

// The live mapping that contains [addr, addr + length), or NULL. Caller holds the lock.
static mapping *find(void *addr, size_t length) {
  for (mapping *m = mappings; m; m = m->next) {
    if (m->mapped && (char *)addr >= (char *)m->addr && (char *)addr + length <= (char *)m->addr + m->length) return m;
  }
  return NULL;
}

// The Buffer's finalizer (JS thread, after it is collected): munmaps unless unmap did, forgets the mapping.
static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  mapping *m = hint;
  pthread_mutex_lock(&lock);
  if (m->mapped) munmap(m->addr, m->length);
  for (mapping **p = &mappings; *p; p = &(*p)->next) {
    if (*p == m) {
      *p = m->next;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  free(m);
}

static napi_value map_region(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t fd, offset, length;
  if (argc < 3 || !get_int64(env, argv[0], &fd) || !get_int64(env, argv[1], &offset) || !get_int64(env, argv[2], &length) || fd > INT32_MAX || length == 0) {
    napi_throw_type_error(env, "INVALID_INPUT", "map(fd, offset, length): non-negative integers, length > 0");
    return NULL;
  }
  if (offset % sysconf(_SC_PAGESIZE) != 0) {
    napi_throw_range_error(env, "INVALID_INPUT", "map: offset must be a multiple of the page size");
    return NULL;
  }
  void *addr = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, (int)fd, (off_t)offset);
  if (addr == MAP_FAILED) return throw_errno(env, "mmap", errno);
  mapping *m = calloc(1, sizeof *m);
  if (!m) {
    munmap(addr, (size_t)length);
    return throw_errno(env, "map", ENOMEM);
  }
  m->addr = addr;
  m->length = (size_t)length;
  m->mapped = 1;
  pthread_mutex_lock(&lock);
  m->next = mappings;
  mappings = m;
  pthread_mutex_unlock(&lock);
  napi_value buffer;
  if (napi_create_external_buffer(env, (size_t)length, addr, finalize, m, &buffer) != napi_ok) {
    m->mapped = 0;
    munmap(addr, (size_t)length);
    finalize(env, addr, m);
    napi_throw_error(env, "NATIVE_ADDON", "map: cannot create an external Buffer");
    return NULL;
  }
  return buffer;
}

static napi_value unmap_region(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_buffer = false;
  if (argc < 1 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, "INVALID_INPUT", "unmap(buffer): a Buffer from map()");
    return NULL;
  }
  void *data;
  size_t length;
  napi_value arraybuffer;
  CHECK(napi_get_typedarray_info(env, argv[0], NULL, &length, &data, &arraybuffer, NULL));
  int unmapped = 0;
  pthread_mutex_lock(&lock);
  mapping *m = length > 0 ? find(data, length) : NULL;
  if (m && m->addr == data && m->length == length) {
    munmap(m->addr, m->length);
    m->mapped = 0;
    unmapped = 1;
  }
  pthread_mutex_unlock(&lock);
  // Views of the buffer now read as empty instead of touching unmapped memory.
  if (unmapped) napi_detach_arraybuffer(env, arraybuffer);
  napi_value result;
  CHECK(napi_get_boolean(env, unmapped, &result));
  return result;
}

static napi_value advise_region(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool is_buffer = false;
  int64_t offset, length, advice;
  if (argc < 4 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer || !get_int64(env, argv[1], &offset) || !get_int64(env, argv[2], &length) || !get_int64(env, argv[3], &advice) || advice > INT32_MAX) {
    napi_throw_type_error(env, "INVALID_INPUT", "advise(buffer, offset, length, advice)");
    return NULL;
  }
  void *data;
  size_t size;
  CHECK(napi_get_buffer_info(env, argv[0], &data, &size));
  if ((uint64_t)offset + (uint64_t)length > size || ((uintptr_t)data + (uintptr_t)offset) % (uintptr_t)sysconf(_SC_PAGESIZE) != 0) {
    napi_throw_range_error(env, "INVALID_INPUT", "advise: the range must be inside the buffer and start on a page");
    return NULL;
  }
  pthread_mutex_lock(&lock);
  int ours = find((char *)data + offset, (size_t)length) != NULL;
  int rc = ours && length > 0 ? madvise((char *)data + offset, (size_t)length, (int)advice) : 0;
  int err = errno;
  pthread_mutex_unlock(&lock);
  if (!ours) {
    napi_throw_error(env, "INVALID_INPUT", "advise: not a live mapping made by map()");
    return NULL;
  }
  if (rc != 0) return throw_errno(env, "madvise", err);
  return NULL;
}

static napi_value data_range(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t fd, offset;
  if (argc < 2 || !get_int64(env, argv[0], &fd) || !get_int64(env, argv[1], &offset) || fd > INT32_MAX) {
    napi_throw_type_error(env, "INVALID_INPUT", "dataRange(fd, offset): non-negative integers");
    return NULL;
  }
  napi_value result;
  off_t data = lseek((int)fd, (off_t)offset, SEEK_DATA);
  if (data < 0) {
    if (errno != ENXIO) return throw_errno(env, "lseek SEEK_DATA", errno);
    CHECK(napi_get_null(env, &result)); // no data from offset to the end of the file
    return result;
  }
  off_t hole = lseek((int)fd, data, SEEK_HOLE);
  if (hole < 0) return throw_errno(env, "lseek SEEK_HOLE", errno);
  napi_value a, b;
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_create_double(env, (double)data, &a));
  CHECK(napi_create_double(env, (double)hole, &b));
  CHECK(napi_set_element(env, result, 0, a));
  CHECK(napi_set_element(env, result, 1, b));
  return result;
}

#define SCAN_PAGE 4096
#define SCAN_PAGES 256

// Whether a 4 KiB page is all zero: 64 bytes at a time, stopping at the first non-zero word (data
// pages end after their first bytes; only zero pages are read whole).
static int page_is_zero(const unsigned char *page) {
  for (size_t at = 0; at < SCAN_PAGE; at += 64) {
    uint64_t w[8];
    memcpy(w, page + at, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return 0;
  }
  return 1;
}

static napi_value scan_pages(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data = NULL, *known = NULL, *bitmap = NULL;
  size_t length = 0, known_length = 0, bitmap_length = 0;
  napi_valuetype known_type = napi_undefined;
  bool ok = argc >= 3 && napi_get_typedarray_info(env, argv[0], NULL, &length, &data, NULL, NULL) == napi_ok
    && napi_typeof(env, argv[1], &known_type) == napi_ok
    && (known_type == napi_null || napi_get_typedarray_info(env, argv[1], NULL, &known_length, &known, NULL, NULL) == napi_ok)
    && napi_get_typedarray_info(env, argv[2], NULL, &bitmap_length, &bitmap, NULL, NULL) == napi_ok;
  // (Every Buffer is a Uint8Array: a length in elements is a length in bytes.)
  if (!ok || length % SCAN_PAGE != 0 || length / SCAN_PAGE > SCAN_PAGES || bitmap_length != SCAN_PAGES / 8 || (known && known_length != SCAN_PAGES / 8)) {
    napi_throw_type_error(env, "INVALID_INPUT", "scanPages(buffer, known, bitmap): whole pages (at most 256), known null or 32 bytes, bitmap 32 bytes");
    return NULL;
  }
  unsigned char *bits = bitmap;
  const unsigned char *skip = known;
  memset(bits, 0, SCAN_PAGES / 8);
  uint32_t count = 0;
  for (size_t p = 0; p < length / SCAN_PAGE; p++) {
    if (skip && ((skip[p >> 3] >> (p & 7)) & 1)) continue;
    if (page_is_zero((const unsigned char *)data + p * SCAN_PAGE)) continue;
    bits[p >> 3] |= (unsigned char)(1u << (p & 7));
    count++;
  }
  napi_value result;
  CHECK(napi_create_uint32(env, count, &result));
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value advice, v;
  CHECK(napi_create_object(env, &advice));
  CHECK(napi_create_int32(env, MADV_SEQUENTIAL, &v));
  CHECK(napi_set_named_property(env, advice, "sequential", v));
  CHECK(napi_create_int32(env, MADV_WILLNEED, &v));
  CHECK(napi_set_named_property(env, advice, "willneed", v));
  CHECK(napi_create_int32(env, MADV_POPULATE_READ, &v));
  CHECK(napi_set_named_property(env, advice, "populateRead", v));
  napi_property_descriptor props[] = {
    { "map", NULL, map_region, NULL, NULL, NULL, napi_enumerable, NULL },
    { "unmap", NULL, unmap_region, NULL, NULL, NULL, napi_enumerable, NULL },
    { "advise", NULL, advise_region, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dataRange", NULL, data_range, NULL, NULL, NULL, napi_enumerable, NULL },
    { "scanPages", NULL, scan_pages, NULL, NULL, NULL, napi_enumerable, NULL },
    { "advice", NULL, NULL, NULL, NULL, advice, napi_enumerable, NULL },
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE_INIT() {
  return init(env, exports);
}
