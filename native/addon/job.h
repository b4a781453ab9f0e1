// Every heavy call is a Job: run on the compute thread (dispatch.h), resolving a promise.
// Kernels work on the job's own copies of the arguments' arrays (Keep; arrays over owned
// memory in place), outputs copied back on the JS thread when the job ends; errors thrown
// by the core become the library's typed JS error on the JS thread.
#pragma once
#include <napi.h>

#include <new>
#include <string>

#include "../core/errors.h"
#include "../core/threads.h"
#include "args.h"
#include "dispatch.h"
#include "env.h"

namespace eigenlorax::addon {

class Job {
 public:
  Job(Napi::Env env, const char* name)
      : env_(env), name_(name), deferred_(Napi::Promise::Deferred::New(env)), threads_(envState(env).threads) {}
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
  virtual ~Job() = default;

  Keep keep;

  // Dispatches the job, or runs it at once when it is tiny (see kInlineWork); the returned
  // promise settles when it ends. Takes ownership: the job is deleted once settled.
  Napi::Promise start() {
    Napi::Promise promise = deferred_.Promise();
    if (work() < kInlineWork) {
      guarded([this] {
        useThreads(1);
        runChecked();
      });
      settle();
      delete this;
    } else {
      try {
        Dispatch::of(env_).submit(env_, this);
      } catch (...) {
        delete this;
        throw;
      }
    }
    return promise;
  }

 protected:
  // Below this many multiply-adds (about 0.1 ms on one core) a job runs on the JS thread,
  // single-threaded: the hand-off to the compute thread and back costs more than the
  // work. DESIGN §3 sends only work above about a millisecond off the event loop.
  static constexpr double kInlineWork = 2e5;

  virtual void run() = 0;  // on the compute thread: no Napi calls here
  virtual Napi::Value result(Napi::Env env) { return env.Undefined(); }
  // Multiply-adds (or element operations) the job will do; unknown = always queued.
  virtual double work() const { return kInlineWork; }
  // Whether NaN or Inf in a float output, with every input finite, is an error
  // (ERR_NON_FINITE, see Keep::requireFiniteResult).
  virtual bool finiteResult() const { return true; }

 private:
  friend class Dispatch;

  void runChecked() {
    keep.readFiles();
    const bool check = finiteResult();
    if (check) keep.noteFiniteOutputs();
    run();
    if (check) keep.requireFiniteResult();
  }

  // On the compute thread.
  void compute() {
    guarded([this] {
      useThreads(threads_);
      runChecked();
    });
  }

  template <typename Fn>
  void guarded(Fn fn) {
    try {
      fn();
    } catch (const CoreError& e) {
      fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      fail(code::kOutOfMemory, "out of memory");
    } catch (const std::exception& e) {
      fail(code::kInternal, e.what());
    } catch (...) {
      fail(code::kInternal, "unknown error");
    }
  }

  // On the JS thread: settles the promise. While the environment is being torn down (a
  // worker thread terminated while the job ran) no JavaScript can run: every Napi call may
  // throw, and nothing is left to tell, so those errors are dropped rather than let out
  // of the loop's callback, where they would terminate the process.
  void settle() noexcept {
    Napi::Env env = env_;
    try {
      Napi::HandleScope scope(env);
      if (failed_) {
        deferred_.Reject(makeError(env, code_, name_ + ": " + message_).Value());
      } else {
        keep.writeBack(env);  // throws ERR_DETACHED_BUFFER when an output went away meanwhile
        deferred_.Resolve(result(env));
      }
    } catch (const Napi::Error& e) {
      try {
        deferred_.Reject(e.Value());
      } catch (...) {
      }
    } catch (...) {
    }
  }

  void fail(const char* errorCode, const std::string& message) {
    failed_ = true;
    code_ = errorCode;
    message_ = message;
  }

  napi_env env_;
  std::string name_;
  Napi::Promise::Deferred deferred_;
  int threads_;
  bool failed_ = false;
  std::string code_;
  std::string message_;
};

// Runs core shape checks on the JS thread, so a bad argument is thrown (as the library's
// typed error) before anything is queued.
template <typename Fn>
void checkNow(Napi::Env env, Fn fn) {
  try {
    fn();
  } catch (const CoreError& e) {
    throwError(env, e.code(), e.what());
  }
}

// Creates the job, lets it read and check its arguments, and starts it.
template <typename JobType, typename... Args>
Napi::Value startJob(const Napi::CallbackInfo& info, Args&&... args) {
  Napi::Env env = info.Env();
  auto* job = new JobType(env, std::forward<Args>(args)...);
  try {
    job->prepare(info);
  } catch (...) {
    delete job;
    throw;
  }
  return job->start();
}

// exports[name] = a JS function that starts a JobType (name is also the job's name in errors).
template <typename JobType>
void exportJob(Napi::Env env, Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New(
                        env, [name](const Napi::CallbackInfo& info) { return startJob<JobType>(info, name); }, name));
}

}  // namespace eigenlorax::addon
