#include "env.h"

#include "../core/threads.h"

namespace eigenlorax::addon {

EnvState& envState(Napi::Env env) {
  EnvState* state = env.GetInstanceData<EnvState>();
  if (state == nullptr) {
    state = new EnvState();
    state->threads = hardwareThreads();
    env.SetInstanceData(state);  // deleted by node-addon-api when the environment ends
  }
  return *state;
}

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message) {
  EnvState& state = envState(env);
  if (!state.errorClass.IsEmpty()) {
    Napi::Object error = state.errorClass.New({Napi::String::New(env, message), Napi::String::New(env, code)});
    return Napi::Error(env, error);
  }
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

void throwError(Napi::Env env, const char* code, const std::string& message) {
  throw makeError(env, code, message);
}

}  // namespace eigenlorax::addon
