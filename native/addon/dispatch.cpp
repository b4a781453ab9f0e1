#include "dispatch.h"

#include <functional>
#include <memory>

#include "compute_thread.h"
#include "env.h"
#include "job.h"

namespace eigenlorax::addon {

namespace {

// The one hop through libuv's pool of a job that reads files: asks the kernel for the
// job's byte ranges there (which may block on the disk), then posts it. Settles nothing
// itself; at a teardown that cancels it before it ran, the Dispatch deletes the job.
class PrefetchHop : public Napi::AsyncWorker {
 public:
  PrefetchHop(Napi::Env env, Job* job, std::function<void(Job*)> post)
      : Napi::AsyncWorker(env, "eigenlorax:prefetch"), job_(job), post_(std::move(post)) {}
  void Execute() override { post_(job_); }
  void OnOK() override {}
  void OnError(const Napi::Error&) override {}

 private:
  Job* job_;
  std::function<void(Job*)> post_;
};

}  // namespace

Dispatch& Dispatch::of(Napi::Env env) {
  EnvState& state = envState(env);
  if (state.dispatch != nullptr) return *state.dispatch;
  std::unique_ptr<Dispatch> made(new Dispatch());
  // No JS function: settleFinished is the call. Unlimited queue, one "thread" (never
  // released: the compute thread is process-wide). Deleted by its finalizer, which runs
  // when the environment ends, after teardown() (hooks run last-registered first).
  if (napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "eigenlorax:job"), 0, 1,
                                      made.get(), finalize, made.get(), settleFinished, &made->settle_) != napi_ok) {
    throwError(env, code::kInternal, "job dispatch: napi_create_threadsafe_function failed");
  }
  napi_unref_threadsafe_function(env, made->settle_);
  napi_add_env_cleanup_hook(env, teardown, made.get());
  state.dispatch = made.release();
  return *state.dispatch;
}

void Dispatch::submit(Napi::Env env, Job* job) {
  if (job->keep.hasFiles()) {
    auto* hop = new PrefetchHop(env, job, [this](Job* j) {
      j->keep.prefetchFiles();
      post(j);
    });
    try {
      hop->Queue();
    } catch (...) {
      delete hop;
      throw;
    }
  } else {
    post(job);
  }
  // Counted only once posted: a throw above leaves the job to the caller. Nothing settles
  // it before this function returns (that takes this thread).
  if (inFlight_.empty()) napi_ref_threadsafe_function(env, settle_);
  inFlight_.insert(job);
}

void Dispatch::post(Job* job) {
  ComputeThread::instance().post(this, [this, job] {
    job->compute();
    finished(job);
  });
}

void Dispatch::finished(Job* job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_.push_back(job);
    if (closing_ || signalled_) return;
    signalled_ = true;
  }
  // Outside the lock: the call wakes the JS thread, which takes the lock at once. Still
  // safe if teardown() starts meanwhile: it waits for this task to return, and the
  // function is closed only after it. Fails only when closing, which that rules out.
  napi_call_threadsafe_function(settle_, nullptr, napi_tsfn_nonblocking);
}

void Dispatch::settleFinished(napi_env env, napi_value, void* context, void*) {
  if (env == nullptr) return;  // the function is being finalized: teardown() has deleted every job
  auto* self = static_cast<Dispatch*>(context);
  std::vector<Job*> jobs;
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    jobs.swap(self->finished_);
    self->signalled_ = false;
  }
  for (Job* job : jobs) {
    self->inFlight_.erase(job);
    job->settle();
    delete job;
  }
  if (!jobs.empty() && self->inFlight_.empty()) napi_unref_threadsafe_function(env, self->settle_);
}

void Dispatch::teardown(void* data) {
  auto* self = static_cast<Dispatch*>(data);
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->closing_ = true;
  }
  ComputeThread::instance().cancel(self);
  for (Job* job : self->inFlight_) delete job;
  self->inFlight_.clear();
  std::lock_guard<std::mutex> lock(self->mutex_);
  self->finished_.clear();
}

void Dispatch::finalize(napi_env, void* data, void*) { delete static_cast<Dispatch*>(data); }

}  // namespace eigenlorax::addon
