/* mmt_common.h: what every C++ file of the libtorch shim shares.
 *
 * - mmt::Error, the one exception type the shim throws on purpose: a code
 *   from csrc/base/mm_err.h plus a message a person can act on.
 * - mmt::guard(), which every exported extern "C" function wraps its body in:
 *   it catches everything (our Error, c10::Error, bad_alloc, any
 *   std::exception, anything else) and turns it into a code and a message in
 *   the caller's buffer, so no C++ exception ever crosses the C ABI.
 * - Small JSON helpers over jansson for config.json and the
 *   sentence-transformers files (header-only, no torch, cheap to include).
 *
 * Threading: everything here is reentrant; nothing keeps global state.
 */
#ifndef MMT_COMMON_H
#define MMT_COMMON_H

#include <jansson.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <sys/stat.h>

#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

extern "C" {
#include "mm_err.h"
}

/* Exported C entry points: visible from the shared library, C linkage. */
#define MMT_API extern "C" __attribute__((visibility("default")))

namespace mmt {

struct Error : std::runtime_error {
    int code;
    Error(int c, const std::string &msg) : std::runtime_error(msg), code(c) {}
};

[[noreturn]] inline void fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
[[noreturn]] inline void fail(int code, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    throw Error(code, buf);
}

inline void set_err(char *err, size_t errlen, const std::string &msg) {
    if (!err || errlen == 0)
        return;
    size_t n = msg.size() < errlen - 1 ? msg.size() : errlen - 1;
    memcpy(err, msg.data(), n);
    err[n] = '\0';
}

/* c10::Error messages carry a C++ backtrace after the first line(s); keep
 * what a person needs. */
inline std::string short_what(const char *what) {
    std::string s(what ? what : "");
    size_t cut = s.find("\nException raised from");
    if (cut != std::string::npos)
        s.resize(cut);
    return s;
}

/* Runs f() and maps every exception to (code, message).  f returns 0 or a
 * negative MM_E* code itself. */
template <class F> int guard(char *err, size_t errlen, F &&f) noexcept {
    try {
        return f();
    } catch (const Error &e) {
        set_err(err, errlen, e.what());
        return e.code;
    } catch (const std::bad_alloc &) {
        set_err(err, errlen, "out of memory");
        return MM_ENOMEM;
    } catch (const c10::OutOfMemoryError &e) {
        set_err(err, errlen, "out of device memory: " + short_what(e.what()));
        return MM_ENOMEM;
    } catch (const c10::Error &e) {
        set_err(err, errlen, "libtorch: " + short_what(e.what()));
        return MM_EINTERNAL;
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("libtorch shim: ") + e.what());
        return MM_EINTERNAL;
    } catch (...) {
        set_err(err, errlen, "libtorch shim: unknown C++ exception");
        return MM_EINTERNAL;
    }
}

/* ---- files and JSON ---- */

inline bool file_exists(const std::string &path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline std::string join_path(const std::string &dir, const std::string &name) {
    if (dir.empty())
        return name;
    if (name.empty())
        return dir;
    return dir.back() == '/' ? dir + name : dir + "/" + name;
}

struct JsonDeleter {
    void operator()(json_t *j) const { json_decref(j); }
};
using JsonPtr = std::unique_ptr<json_t, JsonDeleter>;

/* Parses a JSON file.  Missing file: nullptr when !required, else
 * MM_ELOAD naming it.  Bad JSON: MM_EPARSE naming file, line and reason. */
inline JsonPtr read_json(const std::string &path, bool required) {
    if (!file_exists(path)) {
        if (!required)
            return JsonPtr();
        fail(MM_ELOAD, "%s is missing", path.c_str());
    }
    json_error_t je;
    json_t *j = json_load_file(path.c_str(), JSON_DECODE_ANY, &je);
    if (!j)
        fail(MM_EPARSE, "%s: invalid JSON at line %d: %s", path.c_str(), je.line, je.text);
    return JsonPtr(j);
}

inline json_t *jget(const json_t *o, const char *key) {
    return (o && json_is_object(o)) ? json_object_get(o, key) : nullptr;
}
inline bool jhas(const json_t *o, const char *key) {
    json_t *v = jget(o, key);
    return v && !json_is_null(v);
}
inline long long jint(const json_t *o, const char *key, long long def) {
    json_t *v = jget(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v))
        return (long long)json_real_value(v);
    return def;
}
inline double jnum(const json_t *o, const char *key, double def) {
    json_t *v = jget(o, key);
    return json_is_number(v) ? json_number_value(v) : def;
}
inline bool jbool(const json_t *o, const char *key, bool def) {
    json_t *v = jget(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}
inline std::string jstr(const json_t *o, const char *key, const std::string &def) {
    json_t *v = jget(o, key);
    return json_is_string(v) ? std::string(json_string_value(v), json_string_length(v)) : def;
}

/* The device a load asks for: "cpu" (the default), "cuda" / "gpu" (ordinal
 * 0) or "cuda:N"; anything else, or CUDA without a usable CUDA libtorch,
 * fails with a message naming it.  Shared by every model family's load. */
inline at::Device parse_device(const char *name) {
    std::string dev = name && *name ? name : "cpu";
    if (dev == "gpu")
        dev = "cuda";
    at::Device device(at::kCPU);
    try {
        device = at::Device(dev);
    } catch (const c10::Error &) {
        fail(MM_EINVAL, "unknown device %s", dev.c_str());
    }
    if (device.is_cuda()) {
        if (!at::hasCUDA())
            fail(MM_EDEVICE, "device %s asked for, but this libtorch has no usable CUDA",
                 dev.c_str());
        if (!device.has_index())
            device = at::Device(at::kCUDA, 0);
    } else if (!device.is_cpu()) {
        fail(MM_EUNSUPPORTED, "device %s is not supported (cpu or cuda:N)", dev.c_str());
    }
    return device;
}

} // namespace mmt

#endif
