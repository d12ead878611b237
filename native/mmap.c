// Offshoot's one native addon (Node-API, C), for the checkpoint writer: it
// reads a frozen VM's guest RAM (its template file) block by block, finds a
// block's zero pages, packs its other pages and checksums them (XXH64) in
// libuv's thread pool (readPackBlock), so the event loop's thread, which
// waits for a core after every piece of work on a loaded machine, only hands
// blocks on; and it can map a region of a file read-only (mmap, MAP_SHARED,
// PROT_READ) as a Buffer over the mapping, with no copy (the 'mmap' read
// path). Built by `npm run setup` (scripts/setup.sh) into dist/native/;
// loaded by src/memory/native-mmap.ts.
//
//   map(fd, offset, length) -> Buffer   the mapping; munmapped when the Buffer
//                                       is collected, or earlier by unmap
//   unmap(buffer) -> boolean            detaches the Buffer now (its views
//                                       then read as empty, never as freed
//                                       memory) and munmaps it just after, in
//                                       the thread pool; false if not mapped
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
//   packBlock(buffer, known, into, bitmap) -> Promise<[count, xxh64]>
//                                       scanPages, then the stored pages
//                                       packed in page order into `into` (the
//                                       buffer itself, or one not overlapping
//                                       it) and their XXH64, in the thread pool
//   readPackBlock(fd, offset, length, known, into, bitmap) -> Promise<[count, xxh64]>
//                                       the same for `length` bytes of a file,
//                                       its pages not marked in `known` read
//                                       with pread into `into` (past the end
//                                       of the file: zero), packed in place
//   xxh64(buffer) -> bigint             XXH64, seed 0 (@node-rs/xxhash's)
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
#define XXH_INLINE_ALL
#include <xxhash.h>

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

// The munmap of an unmapped region, in libuv's thread pool: tearing down a window's page tables costs
// ~55 ms per GiB of guest RAM (bench checkpoint --busy 2, perf), which the event loop's thread need not
// wait for. The region is already detached and marked unmapped, so nothing reads it any more.
typedef struct unmap_job {
  napi_async_work work;
  void *addr;
  size_t length;
} unmap_job;

static void unmap_execute(napi_env env, void *data) {
  (void)env;
  unmap_job *job = data;
  munmap(job->addr, job->length);
}

static void unmap_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  unmap_job *job = data;
  if (status != napi_ok) munmap(job->addr, job->length); // cancelled: not run in the pool
  napi_delete_async_work(env, job->work);
  free(job);
}

// munmaps in the pool when it can queue the work, else now.
static void unmap_soon(napi_env env, void *addr, size_t length) {
  unmap_job *job = calloc(1, sizeof *job);
  napi_value name;
  if (job) {
    job->addr = addr;
    job->length = length;
    if (napi_create_string_utf8(env, "offshoot.unmap", NAPI_AUTO_LENGTH, &name) == napi_ok && napi_create_async_work(env, NULL, name, unmap_execute, unmap_complete, job, &job->work) == napi_ok) {
      if (napi_queue_async_work(env, job->work) == napi_ok) return;
      napi_delete_async_work(env, job->work);
    }
    free(job);
  }
  munmap(addr, length);
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
    m->mapped = 0;
    unmapped = 1;
  }
  pthread_mutex_unlock(&lock);
  // Views of the buffer now read as empty instead of touching unmapped memory; the pages go just after.
  if (unmapped) {
    napi_detach_arraybuffer(env, arraybuffer);
    unmap_soon(env, data, length);
  }
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

// XXH64 (seed 0), the checksum of the checkpoint format (the same function as @node-rs/xxhash's xxh64), from
// Debian's libxxhash (xxhash.h, header-only with XXH_INLINE_ALL), so a block's stored pages are hashed in the
// thread that packs them.
static uint64_t xxh64(const unsigned char *p, size_t len) { return XXH64(p, len, 0); }

static napi_value xxh64_js(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data = NULL;
  size_t length = 0;
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], NULL, &length, &data, NULL, NULL) != napi_ok) {
    napi_throw_type_error(env, "INVALID_INPUT", "xxh64(buffer)");
    return NULL;
  }
  napi_value result;
  CHECK(napi_create_bigint_uint64(env, xxh64(data, length), &result));
  return result;
}

// packBlock: one block's scan, packing and checksum in libuv's thread pool (a napi async work), so the
// event loop's thread only hands blocks on: on a loaded machine that thread waits for a core after every
// piece of work it does (bench checkpoint --busy 2: ~1.2 s of run-queue wait for ~0.64 s of work), and
// work done here runs beside it instead.
typedef struct pack_job {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[4];
  const unsigned char *src;
  const unsigned char *known;
  unsigned char *dst;
  unsigned char *bitmap;
  size_t pages;
  uint32_t count;
  uint64_t hash;
  int fd;          // readPackBlock: the file read from (-1 for packBlock)
  int64_t offset;  // and where in it
  int err;         // an errno of the read, or 0
} pack_job;

static void pack_pages(pack_job *job) {
  memset(job->bitmap, 0, SCAN_PAGES / 8);
  uint32_t count = 0;
  for (size_t p = 0; p < job->pages; p++) {
    if (job->known && ((job->known[p >> 3] >> (p & 7)) & 1)) continue;
    const unsigned char *page = job->src + p * SCAN_PAGE;
    if (page_is_zero(page)) continue;
    job->bitmap[p >> 3] |= (unsigned char)(1u << (p & 7));
    // memmove: dst may be src itself (a block read into the writer's buffer is packed in place).
    if (job->dst + (size_t)count * SCAN_PAGE != page) memmove(job->dst + (size_t)count * SCAN_PAGE, page, SCAN_PAGE);
    count++;
  }
  job->count = count;
  job->hash = xxh64(job->dst, (size_t)count * SCAN_PAGE);
}

static void pack_execute(napi_env env, void *data) {
  (void)env;
  pack_pages(data);
}

// readPackBlock's work: each run of pages not known to be zero read with pread into dst at its place in
// the block (past the end of the file reads as zero), then packed in place.
static void read_pack_execute(napi_env env, void *data) {
  (void)env;
  pack_job *job = data;
  for (size_t p = 0; p < job->pages;) {
    if (job->known && ((job->known[p >> 3] >> (p & 7)) & 1)) {
      p++;
      continue;
    }
    size_t q = p + 1;
    while (q < job->pages && !(job->known && ((job->known[q >> 3] >> (q & 7)) & 1))) q++;
    size_t done = 0, want = (q - p) * SCAN_PAGE;
    while (done < want) {
      ssize_t n = pread(job->fd, job->dst + p * SCAN_PAGE + done, want - done, (off_t)(job->offset + (int64_t)(p * SCAN_PAGE + done)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        job->err = errno;
        return;
      }
      if (n == 0) {
        memset(job->dst + p * SCAN_PAGE + done, 0, want - done);
        break;
      }
      done += (size_t)n;
    }
    p = q;
  }
  job->src = job->dst;
  pack_pages(job);
}

static void pack_complete(napi_env env, napi_status status, void *data) {
  pack_job *job = data;
  napi_value count, hash, result;
  for (int i = 0; i < 4; i++) if (job->refs[i]) napi_delete_reference(env, job->refs[i]);
  if (job->err) {
    throw_errno(env, "readPackBlock: pread", job->err); // made as a pending exception, taken back and rejected with
    napi_value error;
    if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_reject_deferred(env, job->deferred, error);
  } else if (status == napi_ok && napi_create_uint32(env, job->count, &count) == napi_ok && napi_create_bigint_uint64(env, job->hash, &hash) == napi_ok
      && napi_create_array_with_length(env, 2, &result) == napi_ok && napi_set_element(env, result, 0, count) == napi_ok && napi_set_element(env, result, 1, hash) == napi_ok) {
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_value message, error;
    napi_create_string_utf8(env, "packBlock: the work was cancelled or its result could not be made", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value queue_pack(napi_env env, pack_job *job, napi_value *argv, napi_async_execute_callback execute);

// The buffers a pack job writes: `known` (null, or a 32-byte bitmap of pages never read), `into` and a
// 32-byte `bitmap`, from argv[0..2]; false when one is not a typed array or a bitmap is not 32 bytes.
static bool get_pack_targets(napi_env env, napi_value *argv, void **known, void **into, size_t *into_length, void **bitmap) {
  size_t known_length = 0, bitmap_length = 0;
  napi_valuetype known_type = napi_undefined;
  return napi_typeof(env, argv[0], &known_type) == napi_ok
    && (known_type == napi_null || napi_get_typedarray_info(env, argv[0], NULL, &known_length, known, NULL, NULL) == napi_ok)
    && napi_get_typedarray_info(env, argv[1], NULL, into_length, into, NULL, NULL) == napi_ok
    && napi_get_typedarray_info(env, argv[2], NULL, &bitmap_length, bitmap, NULL, NULL) == napi_ok
    && bitmap_length == SCAN_PAGES / 8 && (!*known || known_length == SCAN_PAGES / 8);
}

static napi_value pack_block(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *src = NULL, *known = NULL, *dst = NULL, *bitmap = NULL;
  size_t length = 0, dst_length = 0;
  bool ok = argc >= 4 && napi_get_typedarray_info(env, argv[0], NULL, &length, &src, NULL, NULL) == napi_ok
    && get_pack_targets(env, argv + 1, &known, &dst, &dst_length, &bitmap);
  if (!ok || length % SCAN_PAGE != 0 || length / SCAN_PAGE > SCAN_PAGES || dst_length < length) {
    napi_throw_type_error(env, "INVALID_INPUT", "packBlock(buffer, known, into, bitmap): whole pages (at most 256), known null or 32 bytes, into at least as long as buffer, bitmap 32 bytes");
    return NULL;
  }
  // dst either is src (same start: packed in place) or does not overlap it.
  if ((unsigned char *)dst != (unsigned char *)src && (unsigned char *)dst < (unsigned char *)src + length && (unsigned char *)src < (unsigned char *)dst + length) {
    napi_throw_range_error(env, "INVALID_INPUT", "packBlock: into overlaps buffer without starting where it starts");
    return NULL;
  }
  pack_job *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "packBlock", ENOMEM);
  job->src = src;
  job->known = known;
  job->dst = dst;
  job->bitmap = bitmap;
  job->pages = length / SCAN_PAGE;
  job->fd = -1;
  return queue_pack(env, job, argv, pack_execute);
}

// Queues a pack job; argv[0..3] are the buffers it holds references to (argv[0] only if it is an object).
static napi_value queue_pack(napi_env env, pack_job *job, napi_value *argv, napi_async_execute_callback execute) {
  napi_value promise, name;
  // The references keep the buffers alive (not collected) until the work is done. A mapping the caller
  // unmaps meanwhile would still be read: the writer unmaps a window only after its blocks are packed.
  for (int i = 0; i < 4; i++) {
    if ((i == 0 && job->fd >= 0) || (i == 1 && !job->known)) continue;
    if (napi_create_reference(env, argv[i], 1, &job->refs[i]) != napi_ok) goto fail;
  }
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) goto fail;
  if (napi_create_string_utf8(env, "offshoot.packBlock", NAPI_AUTO_LENGTH, &name) != napi_ok) goto fail;
  if (napi_create_async_work(env, NULL, name, execute, pack_complete, job, &job->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    goto fail;
  }
  return promise;
fail:
  for (int i = 0; i < 4; i++) if (job->refs[i]) napi_delete_reference(env, job->refs[i]);
  free(job);
  napi_throw_error(env, "NATIVE_ADDON", "packBlock: cannot queue the work");
  return NULL;
}

static napi_value read_pack_block(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t fd, offset, length;
  void *known = NULL, *dst = NULL, *bitmap = NULL;
  size_t dst_length = 0;
  bool ok = argc >= 6 && get_int64(env, argv[0], &fd) && fd <= INT32_MAX && get_int64(env, argv[1], &offset) && get_int64(env, argv[2], &length)
    && get_pack_targets(env, argv + 3, &known, &dst, &dst_length, &bitmap);
  if (!ok || length % SCAN_PAGE != 0 || length / SCAN_PAGE > SCAN_PAGES || (size_t)length > dst_length) {
    napi_throw_type_error(env, "INVALID_INPUT", "readPackBlock(fd, offset, length, known, into, bitmap): length whole pages (at most 256), known null or 32 bytes, into at least length, bitmap 32 bytes");
    return NULL;
  }
  pack_job *job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "readPackBlock", ENOMEM);
  job->known = known;
  job->dst = dst;
  job->bitmap = bitmap;
  job->pages = (size_t)length / SCAN_PAGE;
  job->fd = (int)fd;
  job->offset = offset;
  // The same reference slots as packBlock's (known, into, bitmap): argv shifted so that they line up.
  return queue_pack(env, job, argv + 2, read_pack_execute);
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
    { "packBlock", NULL, pack_block, NULL, NULL, NULL, napi_enumerable, NULL },
    { "readPackBlock", NULL, read_pack_block, NULL, NULL, NULL, napi_enumerable, NULL },
    { "xxh64", NULL, xxh64_js, NULL, NULL, NULL, napi_enumerable, NULL },
    { "advice", NULL, NULL, NULL, NULL, advice, napi_enumerable, NULL },
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE_INIT() {
  return init(env, exports);
}
