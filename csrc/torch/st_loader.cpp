/* st_loader.cpp: the safetensors reader (see st_loader.h for the contract).
 *
 * Why our own reader: the format is a length-prefixed JSON header followed
 * by raw little-endian tensor data, so mmap + a bounds-checked header walk
 * is all it takes, and mapping the file lets CPU float32 weights be used in
 * place: N workers of one model, or N processes, share the same page-cache
 * pages instead of holding N copies.  Everything else (half precision to
 * float, a GPU) is one copy made by at::Tensor::to() from the mapping.
 * Placement::Copy trades that sharing for 2 MB pages: a decoder step reads
 * every decoder matrix once, and from 4 KB file pages each page costs a TLB
 * miss and stops the hardware prefetcher (a one-row product over a
 * 50265 x 768 matrix, paired runs on one core: 5-8% faster on huge pages).
 */
#include "st_loader.h"

#include "mmt_common.h"

#include <cerrno>
#include <fcntl.h>
#include <set>
#include <sys/mman.h>
#include <unistd.h>

namespace mmt {

namespace {

/* One read-only mapping of a whole file; freed when the last tensor
 * pointing into it is freed. */
struct Mapping {
    void *addr = nullptr;
    size_t len = 0;
    ~Mapping() {
        if (addr && addr != MAP_FAILED)
            munmap(addr, len);
    }
};

std::shared_ptr<Mapping> map_file(const std::string &path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail(errno == ENOENT ? MM_ELOAD : MM_EIO, "cannot open %s: %s", path.c_str(),
             strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        fail(MM_EIO, "cannot stat %s: %s", path.c_str(), strerror(e));
    }
    auto m = std::make_shared<Mapping>();
    m->len = (size_t)st.st_size;
    if (m->len < 8) {
        close(fd);
        fail(MM_EFORMAT, "%s is not a safetensors file (%zu bytes)", path.c_str(), m->len);
    }
    m->addr = mmap(nullptr, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m->addr == MAP_FAILED) {
        m->addr = nullptr;
        fail(MM_EIO, "cannot map %s: %s", path.c_str(), strerror(e));
    }
    return m;
}

/* Bytes [from, from + len) of the file go to offset `to` of the copy. */
struct Piece {
    uint64_t from, to, len;
};

/* len bytes of anonymous memory, 2 MB-aligned and offered to transparent
 * huge pages (MADV_HUGEPAGE: with THP in "madvise" mode, the usual default,
 * only such regions get them), filled with the file's pieces by pread (from
 * the page cache into the copy, so the file's pages never count in this
 * process's resident set), then made read-only as a mapping of the file is.
 * Freed (munmap) with the returned Mapping. */
std::shared_ptr<Mapping> copy_to_anon(const std::string &path, const std::vector<Piece> &pieces,
                                      size_t len) {
    const size_t H = (size_t)2 << 20;
    const size_t want = (len + H - 1) / H * H;
    void *p = mmap(nullptr, want + H, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fail(MM_ENOMEM, "cannot allocate %zu bytes for the weights of %s: %s", len, path.c_str(),
             strerror(errno));
    const uintptr_t a = ((uintptr_t)p + H - 1) & ~(uintptr_t)(H - 1);
    const size_t head = a - (uintptr_t)p;
    if (head > 0)
        munmap(p, head);
    if (H - head > 0)
        munmap((char *)a + want, H - head);
    auto m = std::make_shared<Mapping>();
    m->addr = (void *)a;
    m->len = want;
    (void)madvise(m->addr, want, MADV_HUGEPAGE); /* a hint: THP off leaves 4 KB pages */
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail(MM_EIO, "cannot open %s: %s", path.c_str(), strerror(errno));
    for (const Piece &pc : pieces) {
        size_t done = 0;
        while (done < pc.len) {
            const ssize_t r = pread(fd, (char *)m->addr + pc.to + done, pc.len - done,
                                    (off_t)(pc.from + done));
            if (r <= 0) {
                const int e = r < 0 ? errno : EIO;
                if (r < 0 && e == EINTR)
                    continue;
                close(fd);
                fail(MM_EIO, "cannot read %s: %s", path.c_str(), strerror(e));
            }
            done += (size_t)r;
        }
    }
    close(fd);
    mprotect(m->addr, want, PROT_READ);
    return m;
}

bool parse_dtype(const char *s, at::ScalarType *t, size_t *size) {
    static const struct {
        const char *name;
        at::ScalarType type;
        size_t size;
    } table[] = {
        {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
        {"F64", at::kDouble, 8}, {"I64", at::kLong, 8}, {"I32", at::kInt, 4},
        {"I16", at::kShort, 2}, {"I8", at::kChar, 1},   {"U8", at::kByte, 1},
        {"BOOL", at::kBool, 1},
    };
    for (const auto &row : table) {
        if (strcmp(row.name, s) == 0) {
            *t = row.type;
            *size = row.size;
            return true;
        }
    }
    return false;
}

} // namespace

void load_safetensors_file(const std::string &path, const at::Device &device,
                           at::ScalarType dtype, Weights *out, Placement place) {
    std::shared_ptr<Mapping> m = map_file(path);
    const uint8_t *base = (const uint8_t *)m->addr;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen == 0 || hlen > m->len - 8 || hlen > (100u << 20))
        fail(MM_EFORMAT, "%s: corrupt safetensors header (length %llu, file %zu bytes)",
             path.c_str(), (unsigned long long)hlen, m->len);
    json_error_t je;
    JsonPtr header(json_loadb((const char *)base + 8, (size_t)hlen, 0, &je));
    if (!header || !json_is_object(header.get()))
        fail(MM_EFORMAT, "%s: corrupt safetensors header: %s", path.c_str(),
             header ? "not an object" : je.text);
    const uint8_t *data = base + 8 + hlen;
    const size_t data_len = m->len - 8 - (size_t)hlen;

    /* The header first, checked; then the tensors. */
    struct Entry {
        std::string name;
        at::ScalarType st, want;
        size_t esize;
        std::vector<int64_t> shape;
        uint64_t numel, off;
    };
    std::vector<Entry> entries;
    bool all_in_place = device.is_cpu();
    const char *name;
    json_t *entry;
    json_object_foreach(header.get(), name, entry) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        json_t *jd = jget(entry, "dtype"), *js = jget(entry, "shape"),
               *jo = jget(entry, "data_offsets");
        if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
            json_array_size(jo) != 2)
            fail(MM_EFORMAT, "%s: tensor %s has a malformed header entry", path.c_str(), name);
        Entry e;
        e.name = name;
        if (!parse_dtype(json_string_value(jd), &e.st, &e.esize))
            fail(MM_EFORMAT, "%s: tensor %s has unsupported dtype %s", path.c_str(), name,
                 json_string_value(jd));
        e.numel = 1;
        size_t i;
        json_t *dim;
        json_array_foreach(js, i, dim) {
            if (!json_is_integer(dim) || json_integer_value(dim) < 0)
                fail(MM_EFORMAT, "%s: tensor %s has a bad shape", path.c_str(), name);
            e.shape.push_back(json_integer_value(dim));
            e.numel *= (uint64_t)json_integer_value(dim);
        }
        json_t *jb = json_array_get(jo, 0), *je2 = json_array_get(jo, 1);
        if (!json_is_integer(jb) || !json_is_integer(je2))
            fail(MM_EFORMAT, "%s: tensor %s has bad data_offsets", path.c_str(), name);
        uint64_t b = (uint64_t)json_integer_value(jb), en = (uint64_t)json_integer_value(je2);
        if (b > en || en > data_len || en - b != e.numel * e.esize)
            fail(MM_EFORMAT,
                 "%s: tensor %s: data_offsets [%llu, %llu) do not fit the file or the shape "
                 "(file truncated or corrupt?)",
                 path.c_str(), name, (unsigned long long)b, (unsigned long long)en);
        e.off = b;
        e.want = at::isFloatingType(e.st) ? dtype : e.st;
        all_in_place = all_in_place && e.want == e.st;
        entries.push_back(std::move(e));
    }

    /* Placement::Copy: every tensor is used as stored, so the data section
     * moves to anonymous memory and the file's mapping goes when this
     * function returns.  Each tensor starts on a 64-byte line there: the
     * decoder-step kernels load 64 bytes at a time, and where the file
     * leaves them (bart-base: 44 bytes past a line) every such load
     * straddled two lines (1.3x on a batched step's products). */
    std::shared_ptr<Mapping> owner = m;
    if (place == Placement::Copy && all_in_place && data_len > 0) {
        std::vector<Piece> pieces;
        uint64_t at = 0;
        for (Entry &e : entries) {
            at = (at + 63) & ~(uint64_t)63;
            pieces.push_back(Piece{8 + hlen + e.off, at, e.numel * e.esize});
            e.off = at;
            at += e.numel * e.esize;
        }
        owner = copy_to_anon(path, pieces, std::max<size_t>((size_t)at, 1));
        data = (const uint8_t *)owner->addr;
    }
    for (const Entry &e : entries) {
        void *ptr = (void *)(data + e.off);
        at::Tensor t;
        bool aligned = ((uintptr_t)ptr % e.esize) == 0;
        if (e.want == e.st && device.is_cpu() && aligned) {
            /* In place: the tensor keeps the mapping (or the copy) alive. */
            auto keep = owner;
            t = at::from_blob(
                ptr, e.shape, [keep](void *) {}, at::TensorOptions().dtype(e.st));
        } else {
            at::Tensor src;
            if (aligned) {
                src = at::from_blob(ptr, e.shape, at::TensorOptions().dtype(e.st));
            } else {
                src = at::empty(e.shape, at::TensorOptions().dtype(e.st));
                memcpy(src.data_ptr(), ptr, e.numel * e.esize);
            }
            t = src.to(device, e.want, /*non_blocking=*/false, /*copy=*/true);
        }
        out->bytes += (uint64_t)t.numel() * t.element_size();
        out->tensors[e.name] = std::move(t);
    }
    /* the mapping (or the copy) goes when the last in-place tensor goes */
}

void load_weights_or_throw(const std::string &dir, const at::Device &device,
                           at::ScalarType dtype, Weights *out, Placement place) {
    out->tensors.clear();
    out->bytes = 0;
    out->dir = dir;
    std::string single = join_path(dir, "model.safetensors");
    std::string index = join_path(dir, "model.safetensors.index.json");
    if (file_exists(single)) {
        load_safetensors_file(single, device, dtype, out, place);
        return;
    }
    if (file_exists(index)) {
        JsonPtr j = read_json(index, true);
        json_t *map = jget(j.get(), "weight_map");
        if (!json_is_object(map))
            fail(MM_EFORMAT, "%s has no weight_map object", index.c_str());
        std::set<std::string> files;
        const char *k;
        json_t *v;
        json_object_foreach(map, k, v) {
            if (!json_is_string(v))
                fail(MM_EFORMAT, "%s: weight_map[%s] is not a file name", index.c_str(), k);
            std::string f = json_string_value(v);
            if (f.find('/') != std::string::npos || f == "..")
                fail(MM_EFORMAT, "%s: shard name %s is not a plain file name", index.c_str(),
                     f.c_str());
            files.insert(f);
        }
        for (const auto &f : files) {
            std::string p = join_path(dir, f);
            if (!file_exists(p))
                fail(MM_ELOAD, "shard %s listed in %s is missing", f.c_str(), index.c_str());
            load_safetensors_file(p, device, dtype, out, place);
        }
        /* Every name the index promises must be there. */
        json_object_foreach(map, k, v) {
            if (!out->tensors.count(k))
                fail(MM_EFORMAT, "tensor %s listed in %s is not in its shard %s", k,
                     index.c_str(), json_string_value(v));
        }
        return;
    }
    if (file_exists(join_path(dir, "pytorch_model.bin")))
        fail(MM_EFORMAT,
             "%s has only pytorch_model.bin; the native backend reads safetensors "
             "(model.safetensors)",
             dir.c_str());
    fail(MM_ELOAD, "no weights in %s: neither model.safetensors nor model.safetensors.index.json",
         dir.c_str());
}

int load_weights(const std::string &dir, const at::Device &device, at::ScalarType dtype,
                 Weights *out, std::string *err, Placement place) {
    char buf[1024];
    buf[0] = '\0';
    int rc = guard(buf, sizeof buf, [&] {
        load_weights_or_throw(dir, device, dtype, out, place);
        return 0;
    });
    if (rc != 0 && err)
        *err = buf;
    return rc;
}

/* ---- name variants ---- */

static at::Tensor lookup(const Weights &w, const std::string &n) {
    auto it = w.tensors.find(n);
    return it == w.tensors.end() ? at::Tensor() : it->second;
}

static bool ends_with(const std::string &s, const char *suf) {
    size_t n = strlen(suf);
    return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

/* name, then with each prefix added, then with a known prefix stripped. */
static at::Tensor lookup_prefixed(const Weights &w, const std::string &n) {
    at::Tensor t = lookup(w, n);
    if (t.defined())
        return t;
    for (const auto &p : w.prefixes) {
        t = lookup(w, p + n);
        if (t.defined())
            return t;
    }
    for (const auto &p : w.prefixes) {
        if (n.compare(0, p.size(), p) == 0) {
            t = lookup(w, n.substr(p.size()));
            if (t.defined())
                return t;
        }
    }
    return t;
}

at::Tensor Weights::find(const std::string &name) const {
    at::Tensor t = lookup_prefixed(*this, name);
    if (t.defined())
        return t;
    /* Legacy LayerNorm names from TF-era checkpoints. */
    if (ends_with(name, ".weight"))
        return lookup_prefixed(*this, name.substr(0, name.size() - 7) + ".gamma");
    if (ends_with(name, ".bias"))
        return lookup_prefixed(*this, name.substr(0, name.size() - 5) + ".beta");
    return t;
}

at::Tensor Weights::get(const std::string &name) const {
    at::Tensor t = find(name);
    if (!t.defined()) {
        std::string pre;
        for (const auto &p : prefixes)
            pre += (pre.empty() ? "" : ", ") + p;
        fail(MM_ELOAD, "weights in %s lack tensor %s%s%s%s", dir.c_str(), name.c_str(),
             pre.empty() ? "" : " (also tried prefixes ", pre.c_str(), pre.empty() ? "" : ")");
    }
    return t;
}

at::Tensor Weights::get(const std::string &name, at::IntArrayRef shape) const {
    at::Tensor t = get(name);
    if (t.sizes() != shape) {
        std::string want = c10::str(shape), got = c10::str(t.sizes());
        fail(MM_ELOAD, "tensor %s in %s has shape %s, the config says %s", name.c_str(),
             dir.c_str(), got.c_str(), want.c_str());
    }
    return t;
}

} // namespace mmt
