// A native object that JavaScript holds as an External. Each type keeps a table of the
// Externals it made, so an External from other code (or of another type) is refused rather
// than dereferenced; jobs hold the shared_ptr, so the object outlives a collected External
// until the last job using it settles.
#pragma once

#include <napi.h>

#include <memory>
#include <mutex>
#include <unordered_set>

namespace eigenlorax::addon {

template <typename T>
class SharedExternal {
 public:
  static Napi::Value wrap(Napi::Env env, std::shared_ptr<T> object) {
    auto* box = new Box{std::move(object)};
    {
      std::lock_guard<std::mutex> lock(state().mutex);
      state().boxes.insert(box);
    }
    return Napi::External<Box>::New(env, box, [](Napi::Env, Box* b) {
      {
        std::lock_guard<std::mutex> lock(state().mutex);
        state().boxes.erase(b);
      }
      delete b;
    });
  }

  // The object behind `value`, or null when `value` is not an External this type made.
  static std::shared_ptr<T> find(const Napi::Value& value) {
    if (!value.IsExternal()) return nullptr;
    const Box* box = value.As<Napi::External<Box>>().Data();
    std::lock_guard<std::mutex> lock(state().mutex);
    return state().boxes.count(box) != 0 ? box->object : nullptr;
  }

 private:
  struct Box {
    std::shared_ptr<T> object;
  };
  struct State {
    std::mutex mutex;
    std::unordered_set<const Box*> boxes;
  };
  static State& state() {
    static State s;
    return s;
  }
};

}  // namespace eigenlorax::addon
