// How a queued Job travels: the JS thread posts it straight to the compute thread
// (compute_thread.h), and the compute thread hands it back through a thread-safe function
// that settles it on the JS thread. Two thread wakes a call; going through libuv's pool
// as well took four, about 0.1 ms a call on this kind of VM, which was a third of a
// training step. Jobs that read files take one hop through the pool first, where the
// kernel is asked for their byte ranges (posix_fadvise) while the compute thread still
// runs the job ahead.
//
// One Dispatch per Node environment. When a worker's environment is torn down with jobs
// in flight, its cleanup hook (which runs before the thread-safe function's own) drops the
// jobs not yet started, waits for the one that runs, and deletes them all unsettled: no
// JavaScript can run any more, and no kernel is left touching their memory.
#pragma once
#include <napi.h>

#include <cstddef>
#include <mutex>
#include <unordered_set>
#include <vector>

namespace eigenlorax::addon {

class Job;

class Dispatch {
 public:
  // The environment's dispatcher (made on first use).
  static Dispatch& of(Napi::Env env);

  // On the JS thread: runs `job` on the compute thread and settles it on this thread
  // afterwards; takes ownership. The event loop stays alive while jobs are in flight.
  void submit(Napi::Env env, Job* job);

 private:
  Dispatch() = default;
  void post(Job* job);  // any thread
  void finished(Job* job);  // compute thread
  static void settleFinished(napi_env env, napi_value, void* context, void*);
  static void teardown(void* self);
  static void finalize(napi_env, void* self, void*);

  napi_threadsafe_function settle_ = nullptr;
  // JS thread only.
  std::unordered_set<Job*> inFlight_;
  // Guarded by mutex_: jobs the compute thread has finished, whether settleFinished is
  // already due, and whether the environment is being torn down.
  std::mutex mutex_;
  std::vector<Job*> finished_;
  bool signalled_ = false;
  bool closing_ = false;
};

}  // namespace eigenlorax::addon
