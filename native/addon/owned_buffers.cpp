#include "owned_buffers.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>

#include "../core/errors.h"
#include "../core/large_buffers.h"
#include "env.h"

namespace eigenlorax::addon {

struct OwnedBlock {
  unsigned char* data;
  size_t bytes;
  size_t counts;  // guarded by Registry::mutex
};

namespace {

// Live blocks by start address. One mutex: lookups are one per typed-array argument and
// the lock is held for a map search.
class Registry {
 public:
  static Registry& instance() {
    static Registry* registry = new Registry();  // never destroyed: finalizers may run at exit
    return *registry;
  }

  OwnedBlock* add(unsigned char* data, size_t bytes) {
    auto* block = new OwnedBlock{data, bytes, 1};
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_.emplace(reinterpret_cast<uintptr_t>(data), block);
    return block;
  }

  OwnedBlock* lend(const void* data, size_t bytes) {
    const auto at = reinterpret_cast<uintptr_t>(data);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.upper_bound(at);
    if (it == blocks_.begin()) return nullptr;
    OwnedBlock* block = (--it)->second;
    const uintptr_t begin = it->first;
    if (at + bytes > begin + block->bytes) return nullptr;
    ++block->counts;
    return block;
  }

  void give(OwnedBlock* block) noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--block->counts > 0) return;
      blocks_.erase(reinterpret_cast<uintptr_t>(block->data));
    }
    freeLarge(block->data, block->bytes);
    delete block;
  }

 private:
  std::mutex mutex_;
  std::map<uintptr_t, OwnedBlock*> blocks_;
};

}  // namespace

Napi::ArrayBuffer ownedBuffer(Napi::Env env, size_t bytes, bool zeroed) {
  const size_t size = bytes > 0 ? bytes : 1;  // never a null pointer, even for no bytes
  unsigned char* data = nullptr;
  OwnedBlock* block = nullptr;
  try {
    data = static_cast<unsigned char*>(allocateLarge(size));
    block = Registry::instance().add(data, size);
  } catch (const std::bad_alloc&) {
    if (data != nullptr) freeLarge(data, size);
    throwError(env, code::kOutOfMemory, "cannot allocate " + std::to_string(bytes) + " bytes");
  }
  if (zeroed) std::memset(data, 0, bytes);
  try {
    return Napi::ArrayBuffer::New(env, data, bytes, [block](Napi::Env, void*) { returnOwned(block); });
  } catch (...) {
    returnOwned(block);  // refused (a runtime without native-backed buffers): never handed over
    throw;
  }
}

OwnedBlock* lendOwned(const void* data, size_t bytes) { return Registry::instance().lend(data, bytes); }

void returnOwned(OwnedBlock* block) noexcept { Registry::instance().give(block); }

}  // namespace eigenlorax::addon
