// All kernels run on one process-wide compute thread, one job at a time, in the order
// they were posted.
//
// Why: OpenMP keeps a thread team per calling thread. Jobs run on libuv's pool would land
// on whichever pool thread is free, so each would wake (or create) its own team, which
// costs milliseconds per call here; one caller keeps one warm team. Each kernel already
// uses every core, so running jobs one after another loses nothing.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
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

  // Queues `task` and returns at once. `owner` tags it for cancel(). The task must not
  // throw (it would end the process).
  void post(const void* owner, std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back({owner, std::move(task)});
    }
    wake_.notify_one();
  }

  // Drops `owner`'s tasks that have not started, and waits until the one of its tasks
  // that runs now (if any) has returned. For an environment's teardown.
  void cancel(const void* owner) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (auto it = queue_.begin(); it != queue_.end();) it = it->owner == owner ? queue_.erase(it) : it + 1;
    idle_.wait(lock, [this, owner] { return running_ != owner; });
  }

 private:
  struct Task {
    const void* owner;
    std::function<void()> run;
  };

  ComputeThread() : worker_([this] { loop(); }) { worker_.detach(); }

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return !queue_.empty(); });
      Task task = std::move(queue_.front());
      queue_.pop_front();
      running_ = task.owner;
      lock.unlock();
      task.run();
      task.run = nullptr;  // what it captured goes before its owner may be told it ended
      lock.lock();
      running_ = nullptr;
      idle_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<Task> queue_;
  const void* running_ = nullptr;
  std::thread worker_;
};

}  // namespace eigenlorax::addon
