/* st_loader.h: safetensors weights for the libtorch shim's models.
 *
 * load_weights() reads model.safetensors, or every shard named by
 * model.safetensors.index.json, from a model directory.  It parses the
 * header itself (8-byte little-endian length, then a JSON table of
 * name -> dtype, shape, data_offsets), mmaps each file read-only and makes
 * one tensor per entry:
 *   - floating tensors (F32, F16, BF16, F64) become `dtype` on `device`;
 *     when the file already holds that dtype, the device is the CPU and the
 *     data is aligned, the tensor points straight into the mapping (no copy;
 *     the pages are shared with every other mapping of the file), or, with
 *     Placement::Copy, into one anonymous copy of the file's data on 2 MB
 *     pages;
 *   - integer and bool tensors keep their type (moved to `device`).
 * Every header field is bounds-checked: a truncated or corrupt file fails
 * with MM_EFORMAT naming the file and the tensor.
 *
 * Weights::get() resolves the usual name variants, so model code asks for
 * the bare name ("embeddings.word_embeddings.weight") and finds
 * "bert.embeddings...", "roberta.embeddings..." or legacy LayerNorm
 * gamma/beta.  A tensor found under none of them throws mmt::Error
 * (MM_ELOAD) naming the tensor and the directory.
 *
 * Ownership and threads: a Weights is filled by one thread, then read-only;
 * its tensors may be shared by any number of threads.  Mappings live as long
 * as a tensor that points into them.
 */
#ifndef MMT_ST_LOADER_H
#define MMT_ST_LOADER_H

#include <ATen/ATen.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace mmt {

struct Weights {
    std::string dir;
    std::unordered_map<std::string, at::Tensor> tensors;
    /* Prefixes tried (added to, or stripped from, a name) when the exact
     * name is absent, in order, e.g. {"bert.", "model."}.  Set by the model
     * code before its first get(). */
    std::vector<std::string> prefixes;
    uint64_t bytes = 0; /* bytes of tensor data as loaded on the device */

    /* The tensor under name or one of its variants; an undefined tensor
     * when there is none. */
    at::Tensor find(const std::string &name) const;
    bool has(const std::string &name) const { return find(name).defined(); }
    /* Like find(), but throws mmt::Error(MM_ELOAD) naming the tensor. */
    at::Tensor get(const std::string &name) const;
    /* get() plus a shape check; throws MM_ELOAD naming the tensor, the
     * expected and the found shape. */
    at::Tensor get(const std::string &name, at::IntArrayRef shape) const;
};

/* Where CPU tensors used as stored (no dtype conversion) live. */
enum class Placement {
    /* In the file's read-only mapping: page-cache pages, shared with every
     * other mapping of the file (other processes included), faulted in as
     * they are first read. */
    Map,
    /* In a read-only anonymous copy, 2 MB-aligned and offered to
     * transparent huge pages, when every tensor of a file is used as
     * stored (otherwise as Map).  Resident from the load on, counted in the
     * process's RSS, freed (munmap) when its last tensor goes; the file's
     * pages never enter the process's resident set (the copy is read with
     * pread).  For weights streamed whole on every decoder step, where
     * 4 KB file pages cost TLB misses. */
    Copy,
};

/* Loads dir/model.safetensors or the shards listed in
 * dir/model.safetensors.index.json into *out (cleared first).  Floating
 * tensors are converted to `dtype` on `device`.  Returns 0, or a negative
 * MM_E* code with a message in *err (MM_ELOAD: no weights file, naming what
 * was looked for; MM_EFORMAT: corrupt file or unsupported dtype; MM_EIO;
 * MM_ENOMEM).  Blocks; any thread. */
int load_weights(const std::string &dir, const at::Device &device, at::ScalarType dtype,
                 Weights *out, std::string *err, Placement place = Placement::Map);

/* Same, but loads one file and throws mmt::Error instead of returning.
 * Used for sub-modules (a Dense layer's model.safetensors). */
void load_safetensors_file(const std::string &path, const at::Device &device,
                           at::ScalarType dtype, Weights *out, Placement place = Placement::Map);

/* Same as load_weights() but throws mmt::Error. */
void load_weights_or_throw(const std::string &dir, const at::Device &device,
                           at::ScalarType dtype, Weights *out, Placement place = Placement::Map);

} // namespace mmt

#endif
