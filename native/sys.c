/*
 * Thin N-API shim over the OS primitives the TypeScript side cannot reach: io_uring syscalls,
 * mmap, eventfd, uv_poll, and a few process/thread knobs. Policy lives in TypeScript; this file
 * only translates arguments and errors.
 *
 * Conventions: hot-path calls (io_uring_enter/register) return -errno; setup-type calls throw an
 * Error with `code`, `errno` (positive) and `syscall`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

/* Type tags tell our mappings and watch handles apart from objects other addons wrapped. */
static const napi_type_tag MAPPING_TAG = {0x6d6d61705f746167ULL, 0x3a1c5e0b9f24d871ULL};
static const napi_type_tag WATCH_TAG = {0x7761746368746167ULL, 0x51d9a3e07c8b2f46ULL};

/* ---- errors and argument parsing ------------------------------------------------------ */

static napi_value throw_errno(napi_env env, const char *call, int err) {
  const char *name = strerrorname_np(err);
  const char *desc = strerrordesc_np(err);
  char message[192];
  snprintf(message, sizeof message, "%s: %s (%s)", call, name ? name : "EUNKNOWN",
           desc ? desc : "unknown error");
  napi_value code, msg, error, errno_value, syscall_value;
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, err, &errno_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_create_string_utf8(env, call, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static bool type_error(napi_env env, const char *message) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_type_error(env, NULL, message);
  return false;
}

static bool get_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n)
    return type_error(env, "missing arguments");
  return true;
}

/* napi_get_value_int64 refuses a non-number itself (napi_number_expected): no napi_typeof, which
   io_uring_enter's arguments would pay for on every call. */
static bool get_i64(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok || type_error(env, "expected a number");
}

static bool get_i32(napi_env env, napi_value v, int32_t *out) {
  int64_t wide;
  if (!get_i64(env, v, &wide)) return false;
  if (wide < INT32_MIN || wide > INT32_MAX) return type_error(env, "number out of int32 range");
  *out = (int32_t)wide;
  return true;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out) {
  int64_t wide;
  if (!get_i64(env, v, &wide)) return false;
  if (wide < 0 || wide > UINT32_MAX) return type_error(env, "number out of uint32 range");
  *out = (uint32_t)wide;
  return true;
}

static size_t typedarray_element_size(napi_typedarray_type type) {
  switch (type) {
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      return 8;
    default:
      return 1;
  }
}

/* Data pointer and byte length of a TypedArray or DataView (JS keeps the memory alive). */
static bool get_view(napi_env env, napi_value v, void **data, size_t *byte_length) {
  bool is_typed = false, is_dataview = false;
  napi_is_typedarray(env, v, &is_typed);
  if (is_typed) {
    napi_typedarray_type type;
    size_t length;
    if (napi_get_typedarray_info(env, v, &type, &length, data, NULL, NULL) != napi_ok)
      return type_error(env, "unreadable TypedArray");
    *byte_length = length * typedarray_element_size(type);
    return true;
  }
  napi_is_dataview(env, v, &is_dataview);
  if (is_dataview) {
    return napi_get_dataview_info(env, v, byte_length, data, NULL, NULL) == napi_ok ||
           type_error(env, "unreadable DataView");
  }
  return type_error(env, "expected a TypedArray or DataView");
}

static bool is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && (t == napi_null || t == napi_undefined);
}

static napi_value make_number(napi_env env, double value) {
  napi_value result;
  napi_create_double(env, value, &result);
  return result;
}

/* ---- io_uring ------------------------------------------------------------------------- */

static napi_value js_io_uring_setup(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t entries;
  void *params;
  size_t params_length;
  if (!get_args(env, info, 2, argv) || !get_u32(env, argv[0], &entries) ||
      !get_view(env, argv[1], &params, &params_length))
    return NULL;
  if (params_length != sizeof(struct io_uring_params)) {
    type_error(env, "params must be exactly sizeof(struct io_uring_params) bytes");
    return NULL;
  }
  long fd = syscall(__NR_io_uring_setup, entries, params);
  if (fd < 0) return throw_errno(env, "io_uring_setup", errno);
  return make_number(env, (double)fd);
}

/* The hot path's call: numbers only (the EXT_ARG struct by address, from addressOf), so that
   no TypedArray is inspected per call (napi_is_typedarray, napi_get_typedarray_info: about a
   fifth of the queue thread's native time in perf under emulation). */
static napi_value js_io_uring_enter(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 6;
  int32_t fd;
  uint32_t to_submit, min_complete, flags;
  int64_t arg = 0, arg_size = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    type_error(env, "missing arguments");
    return NULL;
  }
  if (!get_i32(env, argv[0], &fd) || !get_u32(env, argv[1], &to_submit) ||
      !get_u32(env, argv[2], &min_complete) || !get_u32(env, argv[3], &flags) ||
      (argc > 5 && (!get_i64(env, argv[4], &arg) || !get_i64(env, argv[5], &arg_size))))
    return NULL;
  long r;
  /* An interrupted enter has submitted nothing (a partial submit returns its count instead),
     so retrying cannot submit an SQE twice. */
  do {
    r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, (void *)(uintptr_t)arg,
                (size_t)arg_size);
  } while (r < 0 && errno == EINTR);
  return make_number(env, r < 0 ? -errno : (double)r);
}

static napi_value js_io_uring_register(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd;
  uint32_t opcode, nr_args;
  void *arg = NULL;
  size_t arg_length;
  if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) ||
      !get_u32(env, argv[1], &opcode) ||
      (!is_nullish(env, argv[2]) && !get_view(env, argv[2], &arg, &arg_length)) ||
      !get_u32(env, argv[3], &nr_args))
    return NULL;
  long r;
  do {
    r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
  } while (r < 0 && errno == EINTR);
  return make_number(env, r < 0 ? -errno : (double)r);
}

/* ---- memory mappings ------------------------------------------------------------------ */

/* Owned by the ArrayBuffer's finalizer; `mapped` is cleared by an explicit munmap. */
struct mapping {
  void *addr;
  size_t length;
  bool mapped;
};

static void finalize_mapping(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  struct mapping *m = hint;
  if (m->mapped) munmap(m->addr, m->length);
  free(m);
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd;
  int64_t offset, length;
  bool writable;
  if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) ||
      !get_i64(env, argv[1], &offset) || !get_i64(env, argv[2], &length))
    return NULL;
  if (napi_get_value_bool(env, argv[3], &writable) != napi_ok) {
    type_error(env, "writable must be a boolean");
    return NULL;
  }
  if (length <= 0 || offset < 0) return throw_errno(env, "mmap", EINVAL);
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  int flags = fd < 0 ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED;
  void *addr = mmap(NULL, (size_t)length, prot, flags, fd < 0 ? -1 : fd, (off_t)offset);
  if (addr == MAP_FAILED) return throw_errno(env, "mmap", errno);

  struct mapping *m = malloc(sizeof *m);
  if (!m) {
    munmap(addr, (size_t)length);
    return throw_errno(env, "mmap", ENOMEM);
  }
  *m = (struct mapping){addr, (size_t)length, true};
  napi_value buffer, result;
  if (napi_create_external_arraybuffer(env, addr, (size_t)length, finalize_mapping, m, &buffer) !=
      napi_ok) {
    munmap(addr, (size_t)length);
    free(m);
    type_error(env, "cannot create an ArrayBuffer over the mapping");
    return NULL;
  }
  /* From here the finalizer owns m and unmaps it if anything below fails. */
  if (napi_type_tag_object(env, buffer, &MAPPING_TAG) != napi_ok ||
      napi_wrap(env, buffer, m, NULL, NULL, NULL) != napi_ok ||
      napi_create_object(env, &result) != napi_ok ||
      napi_set_named_property(env, result, "buffer", buffer) != napi_ok ||
      napi_set_named_property(env, result, "address", make_number(env, (double)(uintptr_t)addr)) !=
          napi_ok) {
    type_error(env, "cannot describe the mapping");
    return NULL;
  }
  return result;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  bool tagged = false, detached = false;
  struct mapping *m;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (napi_check_object_type_tag(env, argv[0], &MAPPING_TAG, &tagged) != napi_ok || !tagged) {
    type_error(env, "expected an ArrayBuffer returned by mmap()");
    return NULL;
  }
  /* Already unmapped (or transferred away, in which case the new owner's finalizer unmaps). */
  if (napi_is_detached_arraybuffer(env, argv[0], &detached) != napi_ok || detached) return NULL;
  if (napi_unwrap(env, argv[0], (void **)&m) != napi_ok) return NULL;
  void *addr = m->addr;
  size_t length = m->length;
  /* Cleared before detaching: detaching may run the finalizer, which must then only free m. */
  m->mapped = false;
  napi_remove_wrap(env, argv[0], NULL);
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    m->mapped = true;
    napi_wrap(env, argv[0], m, NULL, NULL, NULL);
    type_error(env, "cannot detach the mapping's ArrayBuffer");
    return NULL;
  }
  munmap(addr, length);
  return NULL;
}

static napi_value js_address_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  void *data;
  size_t length;
  if (!get_args(env, info, 1, argv) || !get_view(env, argv[0], &data, &length)) return NULL;
  return make_number(env, (double)(uintptr_t)data);
}

/* ---- file descriptors ----------------------------------------------------------------- */

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t initval, flags;
  if (!get_args(env, info, 2, argv) || !get_u32(env, argv[0], &initval) ||
      !get_u32(env, argv[1], &flags))
    return NULL;
  int fd = eventfd(initval, (int)flags);
  if (fd < 0) return throw_errno(env, "eventfd", errno);
  return make_number(env, fd);
}

static napi_value js_read_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  uint64_t count;
  if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd)) return NULL;
  ssize_t n;
  do {
    n = read(fd, &count, sizeof count);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof count) return make_number(env, (double)count);
  if (n < 0 && errno == EAGAIN) return make_number(env, 0);
  return throw_errno(env, "read", n < 0 ? errno : EIO);
}

static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char path[PATH_MAX];
  size_t path_length;
  int32_t flags;
  uint32_t mode;
  if (!get_args(env, info, 3, argv)) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &path_length) != napi_ok) {
    type_error(env, "path must be a string");
    return NULL;
  }
  if (path_length >= sizeof path - 1) return throw_errno(env, "open", ENAMETOOLONG);
  if (strlen(path) != path_length) return throw_errno(env, "open", EINVAL);
  if (!get_i32(env, argv[1], &flags) || !get_u32(env, argv[2], &mode)) return NULL;
  int fd;
  do {
    fd = open(path, flags, (mode_t)mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return throw_errno(env, "open", errno);
  return make_number(env, fd);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd)) return NULL;
  /* No retry on EINTR: Linux has released the descriptor by then. */
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, "close", errno);
  return NULL;
}

/* lseek(2): the new offset, or -errno (SEEK_DATA past the last data is -ENXIO, no failure). */
static napi_value js_lseek(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd, whence;
  int64_t offset;
  if (!get_args(env, info, 3, argv) || !get_i32(env, argv[0], &fd) ||
      !get_i64(env, argv[1], &offset) || !get_i32(env, argv[2], &whence))
    return NULL;
  off_t r = lseek(fd, (off_t)offset, whence);
  return make_number(env, r < 0 ? -errno : (double)r);
}

/* pread(2)/pwrite(2) at an address (from addressOf, as SQE fields take it): bytes or -errno,
   EINTR retried. For IO that io_uring would only hand to an io-wq worker: a file without
   FMODE_NOWAIT, such as /dev/ublkcN, on which ublk's user copy reads and writes. */
static napi_value positional_io(napi_env env, napi_callback_info info, bool write) {
  napi_value argv[4];
  int32_t fd;
  int64_t address, length, position;
  if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) ||
      !get_i64(env, argv[1], &address) || !get_i64(env, argv[2], &length) ||
      !get_i64(env, argv[3], &position))
    return NULL;
  void *buf = (void *)(uintptr_t)address;
  ssize_t r;
  do {
    r = write ? pwrite(fd, buf, (size_t)length, (off_t)position)
              : pread(fd, buf, (size_t)length, (off_t)position);
  } while (r < 0 && errno == EINTR);
  return make_number(env, r < 0 ? -errno : (double)r);
}

static napi_value js_pread(napi_env env, napi_callback_info info) {
  return positional_io(env, info, false);
}

static napi_value js_pwrite(napi_env env, napi_callback_info info) {
  return positional_io(env, info, true);
}

/* A descriptor of our own for a socket another owner (libuv) holds: close-on-exec, like theirs. */
static napi_value js_dup(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd)) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return throw_errno(env, "dup", errno);
  napi_value out;
  napi_create_int32(env, copy, &out);
  return out;
}

/* shutdown(2): wakes every receive and send pending on the socket, which close(2) does not. */
static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd, how;
  if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &fd) || !get_i32(env, argv[1], &how))
    return NULL;
  if (shutdown(fd, how) < 0 && errno != ENOTCONN) return throw_errno(env, "shutdown", errno);
  return NULL;
}

/* setsockopt(2) with the option's bytes from a view: 0 or -errno (a caller may fall back). */
static napi_value js_setsockopt(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd, level, name;
  void *data;
  size_t length;
  if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) ||
      !get_i32(env, argv[1], &level) || !get_i32(env, argv[2], &name) ||
      !get_view(env, argv[3], &data, &length))
    return NULL;
  int r = setsockopt(fd, level, name, data, (socklen_t)length);
  return make_number(env, r < 0 ? -errno : 0);
}

/* ---- readiness watches on the env's event loop ---------------------------------------- */

struct watch {
  uv_poll_t poll;
  napi_env env;
  napi_ref handle; /* strong while watching: an active watch must not vanish with its handle */
  napi_ref callback;
  napi_async_context async;
  struct watch *next, **prev;
};

/* Per env (main thread or worker): the live watches, closed when the env tears down. */
struct instance {
  struct watch *watches;
};

static void free_watch(uv_handle_t *handle) { free(handle->data); }

static void watch_release(struct watch *w) {
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_value handle;
  if (w->prev) {
    *w->prev = w->next;
    if (w->next) w->next->prev = w->prev;
  }
  napi_open_handle_scope(env, &scope);
  if (w->handle && napi_get_reference_value(env, w->handle, &handle) == napi_ok && handle)
    napi_remove_wrap(env, handle, NULL);
  napi_close_handle_scope(env, scope);
  if (w->handle) napi_delete_reference(env, w->handle);
  if (w->callback) napi_delete_reference(env, w->callback);
  if (w->async) napi_async_destroy(env, w->async);
  uv_poll_stop(&w->poll);
  uv_close((uv_handle_t *)&w->poll, free_watch);
}

static void on_readable(uv_poll_t *poll, int status, int events) {
  (void)events;
  struct watch *w = poll->data;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_value callback, global, arg, result;
  napi_open_handle_scope(env, &scope);
  napi_get_reference_value(env, w->callback, &callback);
  napi_get_global(env, &global);
  napi_create_int32(env, status, &arg);
  /* make_callback (not call_function) so promise jobs and nextTicks queued by the callback run
     right after it, as for any other I/O callback. w may be released by the callback. */
  if (napi_make_callback(env, w->async, global, callback, 1, &arg, &result) ==
      napi_pending_exception) {
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_fatal_exception(env, error);
  }
  napi_close_handle_scope(env, scope);
}

static void close_all_watches(void *arg) {
  struct instance *inst = arg;
  while (inst->watches) watch_release(inst->watches);
}

static void free_instance(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value js_watch_readable(napi_env env, napi_callback_info info) {
  napi_value argv[2], handle, name;
  int32_t fd;
  napi_valuetype type;
  struct instance *inst;
  uv_loop_t *loop;
  if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &fd)) return NULL;
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    type_error(env, "callback must be a function");
    return NULL;
  }
  if (napi_get_instance_data(env, (void **)&inst) != napi_ok ||
      napi_get_uv_event_loop(env, &loop) != napi_ok) {
    type_error(env, "no event loop");
    return NULL;
  }
  struct watch *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "uv_poll_init", ENOMEM);
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r < 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -r);
  }
  w->poll.data = w;
  w->env = env;
  if (napi_create_object(env, &handle) != napi_ok ||
      napi_type_tag_object(env, handle, &WATCH_TAG) != napi_ok ||
      napi_create_reference(env, handle, 1, &w->handle) != napi_ok ||
      napi_wrap(env, handle, w, NULL, NULL, NULL) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &w->callback) != napi_ok ||
      napi_create_string_utf8(env, "IoWatch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, handle, name, &w->async) != napi_ok) {
    watch_release(w);
    type_error(env, "cannot create the watch");
    return NULL;
  }
  r = uv_poll_start(&w->poll, UV_READABLE, on_readable);
  if (r < 0) {
    watch_release(w);
    return throw_errno(env, "uv_poll_start", -r);
  }
  w->next = inst->watches;
  w->prev = &inst->watches;
  if (w->next) w->next->prev = &w->next;
  inst->watches = w;
  return handle;
}

/* NULL (without throwing) when the handle was already unwatched. */
static struct watch *unwrap_watch(napi_env env, napi_value handle) {
  bool tagged = false;
  struct watch *w;
  if (napi_check_object_type_tag(env, handle, &WATCH_TAG, &tagged) != napi_ok || !tagged) {
    type_error(env, "expected a handle returned by watchReadable()");
    return NULL;
  }
  return napi_unwrap(env, handle, (void **)&w) == napi_ok ? w : NULL;
}

static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  struct watch *w = unwrap_watch(env, argv[0]);
  if (w) watch_release(w);
  return NULL;
}

/* An unref'd watch still fires but does not keep the event loop (the process) alive. */
static napi_value js_set_watch_ref(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  bool ref;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_bool(env, argv[1], &ref) != napi_ok) {
    type_error(env, "ref must be a boolean");
    return NULL;
  }
  struct watch *w = unwrap_watch(env, argv[0]);
  if (w) {
    if (ref)
      uv_ref((uv_handle_t *)&w->poll);
    else
      uv_unref((uv_handle_t *)&w->poll);
  }
  return NULL;
}

/* ---- process and thread knobs --------------------------------------------------------- */

static napi_value js_prctl(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int64_t a[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  for (int i = 0; i < 5; i++)
    if (!get_i64(env, argv[i], &a[i])) return NULL;
  int r = prctl((int)a[0], (unsigned long)a[1], (unsigned long)a[2], (unsigned long)a[3],
                (unsigned long)a[4]);
  if (r < 0) return throw_errno(env, "prctl", errno);
  return make_number(env, r);
}

static napi_value js_gettid(napi_env env, napi_callback_info info) {
  (void)info;
  return make_number(env, gettid());
}

static napi_value js_sched_setaffinity(napi_env env, napi_callback_info info) {
  napi_value argv[2], element;
  int32_t tid;
  uint32_t count, cpu;
  bool is_array = false;
  cpu_set_t set;
  if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &tid)) return NULL;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok) {
    type_error(env, "cpus must be an array of CPU numbers");
    return NULL;
  }
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < count; i++) {
    if (napi_get_element(env, argv[1], i, &element) != napi_ok || !get_u32(env, element, &cpu))
      return NULL;
    if (cpu >= CPU_SETSIZE) return throw_errno(env, "sched_setaffinity", EINVAL);
    CPU_SET(cpu, &set);
  }
  if (sched_setaffinity(tid, sizeof set, &set) < 0)
    return throw_errno(env, "sched_setaffinity", errno);
  return NULL;
}

static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  int64_t request, number;
  napi_valuetype type;
  unsigned long arg;
  if (!get_args(env, info, 3, argv) || !get_i32(env, argv[0], &fd) ||
      !get_i64(env, argv[1], &request) || napi_typeof(env, argv[2], &type) != napi_ok)
    return NULL;
  if (type == napi_number) {
    if (!get_i64(env, argv[2], &number)) return NULL;
    arg = (unsigned long)number;
  } else {
    void *data;
    size_t length;
    if (!get_view(env, argv[2], &data, &length)) return NULL;
    arg = (unsigned long)(uintptr_t)data;
  }
  int r = ioctl(fd, (unsigned long)request, arg);
  if (r < 0) return throw_errno(env, "ioctl", errno);
  return make_number(env, r);
}

/* memfd_create(2): an anonymous file in RAM, for memory that several threads reach by fd. */
static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char name[250];
  size_t name_length;
  uint32_t flags;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_length) != napi_ok) {
    type_error(env, "name must be a string");
    return NULL;
  }
  if (name_length >= sizeof name - 1) return throw_errno(env, "memfd_create", ENAMETOOLONG);
  if (!get_u32(env, argv[1], &flags)) return NULL;
  int fd = memfd_create(name, flags);
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  return make_number(env, fd);
}

/* ---- module --------------------------------------------------------------------------- */

static void export_number(napi_env env, napi_value target, const char *name, double value) {
  napi_set_named_property(env, target, name, make_number(env, value));
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback fn;
  } functions[] = {
      {"ioUringSetup", js_io_uring_setup},
      {"ioUringEnter", js_io_uring_enter},
      {"ioUringRegister", js_io_uring_register},
      {"mmap", js_mmap},
      {"munmap", js_munmap},
      {"addressOf", js_address_of},
      {"eventfd", js_eventfd},
      {"readEventfd", js_read_eventfd},
      {"open", js_open},
      {"close", js_close},
      {"lseek", js_lseek},
      {"pread", js_pread},
      {"pwrite", js_pwrite},
      {"dup", js_dup},
      {"shutdown", js_shutdown},
      {"setsockopt", js_setsockopt},
      {"watchReadable", js_watch_readable},
      {"unwatch", js_unwatch},
      {"setWatchRef", js_set_watch_ref},
      {"prctl", js_prctl},
      {"gettid", js_gettid},
      {"schedSetaffinity", js_sched_setaffinity},
      {"ioctl", js_ioctl},
      {"memfdCreate", js_memfd_create},
  };
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL,
                             &fn) != napi_ok ||
        napi_set_named_property(env, exports, functions[i].name, fn) != napi_ok)
      return NULL;
  }

  napi_value constants;
  napi_create_object(env, &constants);
  export_number(env, constants, "O_CLOEXEC", O_CLOEXEC);
  export_number(env, constants, "EFD_CLOEXEC", EFD_CLOEXEC);
  export_number(env, constants, "EFD_NONBLOCK", EFD_NONBLOCK);
  export_number(env, constants, "PR_SET_IO_FLUSHER", PR_SET_IO_FLUSHER);
  export_number(env, constants, "PR_GET_IO_FLUSHER", PR_GET_IO_FLUSHER);
  export_number(env, constants, "BLKGETSIZE64", BLKGETSIZE64);
  export_number(env, constants, "BLKSSZGET", BLKSSZGET);
  export_number(env, constants, "BLKPBSZGET", BLKPBSZGET);
  export_number(env, constants, "BLKDISCARD", BLKDISCARD);
  export_number(env, constants, "MFD_CLOEXEC", MFD_CLOEXEC);
  export_number(env, constants, "SEEK_DATA", SEEK_DATA);
  export_number(env, constants, "SEEK_HOLE", SEEK_HOLE);
  export_number(env, constants, "PAGE_SIZE", (double)sysconf(_SC_PAGESIZE));
  napi_set_named_property(env, exports, "constants", constants);

  struct instance *inst = calloc(1, sizeof *inst);
  if (!inst || napi_set_instance_data(env, inst, free_instance, NULL) != napi_ok) {
    free(inst);
    return NULL;
  }
  napi_add_env_cleanup_hook(env, close_all_watches, inst);
  return exports;
}
