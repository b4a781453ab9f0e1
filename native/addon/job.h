// Every heavy call is a Job: queued on libuv's thread pool, which hands the kernel to the
// compute thread (compute_thread.h), resolving a promise. Kernels work on the job's own
// copies of the arguments' arrays (Keep), outputs copied back on the JS thread when the job
// ends; errors thrown by the core become the library's typed JS error on the JS thread.
#pragma once
#include <napi.h>

#include <new>
#include <string>

#include "../core/errors.h"
#include "../core/threads.h"
#include "args.h"
#include "compute_thread.h"
#include "env.h"

namespace eigenlorax::addon {

class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name),
        name_(name),
        deferred_(Napi::Promise::Deferred::New(env)),
        threads_(envState(env).threads) {}

  Keep keep;

  // Queues the job, or runs it at once when it is tiny (see kInlineWork); the returned
  // promise settles when it ends. Takes ownership: the job deletes itself.
  Napi::Promise start() {
    Napi::Promise promise = deferred_.Promise();
    if (work() < kInlineWork) {
      guarded([this] {
        useThreads(1);
        runChecked();
      });
      OnOK();
      delete this;
    } else {
      Queue();
    }
    return promise;
  }

 protected:
  // Below this many multiply-adds (about 0.1 ms on one core) a job runs on the JS thread,
  // single-threaded: the hand-off to the compute thread and back costs more (~50-100 us)
  // than the work. DESIGN §3 sends only work above about a millisecond off the event loop.
  static constexpr double kInlineWork = 2e5;

  virtual void run() = 0;  // on a worker thread: no Napi calls here
  virtual Napi::Value result(Napi::Env env) { return env.Undefined(); }
  // Multiply-adds (or element operations) the job will do; unknown = always queued.
  virtual double work() const { return kInlineWork; }
  // Whether NaN or Inf in a float output, with every input finite, is an error
  // (ERR_NON_FINITE, see Keep::requireFiniteResult).
  virtual bool finiteResult() const { return true; }

 private:
  void runChecked() {
    keep.readFiles();
    const bool check = finiteResult();
    if (check) keep.noteFiniteOutputs();
    run();
    if (check) keep.requireFiniteResult();
  }

  void Execute() override {
    guarded([this] {
      // The job's file ranges are requested from the kernel here, while the compute thread
      // may still run the job ahead: a cold read becomes the kernel's I/O, not the compute
      // thread's wait. The bytes are copied and converted on the compute thread, by every
      // core (on a 2-core machine a reader next to the kernels slowed them more than it saved).
      keep.prefetchFiles();
      ComputeThread::instance().run([this] {
        useThreads(threads_);
        runChecked();
      });
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
    }
  }

  // Settles the promise. When the environment is being torn down (a worker thread
  // terminated while the job ran) no JavaScript can run: every Napi call may throw, and
  // nothing is left to tell, so those errors are dropped rather than let out of libuv's
  // callback, where they would terminate the process.
  void OnOK() override {
    Napi::Env env = Env();
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

  void OnError(const Napi::Error& e) override {
    try {
      deferred_.Reject(e.Value());
    } catch (...) {
    }
  }

  void fail(const char* errorCode, const std::string& message) {
    failed_ = true;
    code_ = errorCode;
    message_ = message;
  }

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
