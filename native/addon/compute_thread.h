// All kernels run on one process-wide compute thread, one job at a time.
//
// Why: OpenMP keeps a thread team per calling thread. Jobs queued on libuv's pool land
// on whichever pool thread is free, so each would wake (or create) its own team, which
// costs milliseconds per call here; one caller keeps one warm team. Each kernel already
// uses every core, so running jobs one after another loses nothing. The libuv thread that
// runs a Job waits here while its kernel runs; the JS thread never does.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace eigenlorax::addon {

class ComputeThread {
 public:
  // Never destroyed: the thread lives until the process exits, so no environment's
  // teardown can race with it.
  static ComputeThread& instance() {
    static ComputeThread* thread = new ComputeThread();
    return *thread;
  }

  // Runs `task` on the compute thread and waits; rethrows what it threw.
  void run(std::function<void()> task) {
    std::packaged_task<void()> packaged(std::move(task));
    std::future<void> done = packaged.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(packaged));
    }
    wake_.notify_one();
    done.get();
  }

 private:
  ComputeThread() : worker_([this] { loop(); }) { worker_.detach(); }

  void loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // exceptions are stored in the task's future
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<void()>> queue_;
  std::thread worker_;
};

}  // namespace eigenlorax::addon
