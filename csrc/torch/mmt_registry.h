/* mmt_registry.h: the process-wide table of loaded models, so that the N CPU
 * workers of one model share one copy of its weights.
 *
 * Entries are weak references keyed by (directory, device, dtype); every
 * handle holds a strong one.  get() runs the loader under the table's lock,
 * so two workers loading one model at once load it once.  put() drops a
 * handle's reference under the same lock: when it was the last, the model is
 * freed there (on CUDA its destructor also empties the caching allocator), so
 * a reload of the same key waits until the memory is back, and the entry goes.
 * One table per model family (embedders, generators).
 */
#ifndef MMT_REGISTRY_H
#define MMT_REGISTRY_H

#include <c10/core/Device.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace mmt {

template <class M> class Registry {
public:
    /* The live model under key, or load()'s (a std::shared_ptr<M>); *loaded
     * says which. */
    template <class Load>
    std::shared_ptr<M> get(const std::string &key, Load load, bool *loaded) {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = map_.find(key);
        std::shared_ptr<M> m = it != map_.end() ? it->second.lock() : nullptr;
        *loaded = !m;
        if (!m) {
            m = load();
            map_[key] = m;
        }
        return m;
    }

    /* Drops one reference to the model stored under key. */
    void put(std::shared_ptr<M> m, const std::string &key) {
        std::lock_guard<std::mutex> lk(mu_);
        m.reset();
        auto it = map_.find(key);
        if (it != map_.end() && it->second.expired())
            map_.erase(it);
    }

    /* get() with the loader every model family uses: a new M named by key,
     * dir, device and dtype, then load(M &) under InferenceMode. */
    template <class Load>
    std::shared_ptr<M> get(const std::string &key, const std::string &dir, c10::Device device,
                           c10::ScalarType dtype, const std::string &dtype_name, Load load,
                           bool *loaded) {
        return get(key, [&] {
            c10::InferenceMode im;
            auto m = std::make_shared<M>();
            m->key = key;
            m->dir = dir;
            m->device = device;
            m->dtype = dtype;
            m->device_name = device.str();
            m->dtype_name = dtype_name;
            load(*m);
            return m;
        }, loaded);
    }

private:
    std::mutex mu_;
    std::map<std::string, std::weak_ptr<M>> map_;
};

} // namespace mmt

#endif
