// Per-environment state of the addon (one per Node environment, so worker threads each
// have their own) and construction of the library's typed JS error.
#pragma once
#include <napi.h>

#include <string>

namespace eigenlorax::addon {

class Dispatch;

struct EnvState {
  int threads = 1;                  // kernel threads for calls made from this environment
  Napi::FunctionReference errorClass;  // EigenLoraxError, registered by lib/native.ts
  Dispatch* dispatch = nullptr;        // made on the first queued job; owned by its thread-safe function
};

EnvState& envState(Napi::Env env);

// A JS error of the library's class (EigenLoraxError(message, code)), or a plain Error
// carrying `code` if the class has not been registered.
Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message);

// Throws makeError(...) as a C++ exception (node-addon-api turns it into a JS throw).
[[noreturn]] void throwError(Napi::Env env, const char* code, const std::string& message);

}  // namespace eigenlorax::addon
