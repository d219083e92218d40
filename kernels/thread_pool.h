// A persistent pool of worker threads for the CPU kernels.
//
// run(fn) calls fn(thread_index, n_threads) once for every index and returns when all calls
// have returned. Workers never exit between calls: after a job they spin for a short while
// watching for the next one (a decode step issues a few hundred small matmuls back to back,
// and a kernel wake-up per call would cost more than the work), then sleep on a condition
// variable (see the policy in thread_pool.cpp). Nothing is allocated per call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln {

// A non-owning reference to a callable, like std::function but without allocation or
// copying; the callable must outlive the call (true for a lambda passed to run()).
template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
           std::is_invocable_r_v<R, F&, Args...>)
      FunctionRef(F&& f)  // NOLINT(google-explicit-constructor): implicit like std::function
      : object_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

// Physical cores of this machine (hardware threads divided by SMT siblings), at least 1.
int default_thread_count();

class ThreadPool {
 public:
  // n_threads counts the calling thread, so ThreadPool(1) starts no workers. Values < 1
  // throw std::invalid_argument.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(i, size()) exactly once for every i in [0, size()) and returns when all calls
  // have returned. The indexes are claimed by whichever threads get there first: the caller
  // takes index 0 and then any index no worker has claimed yet, so a worker that the OS
  // has not scheduled (another process has the core) delays nothing. Consequently fn(i)
  // must not wait for fn(j) (no barriers inside); per-index scratch is still exclusive.
  // An exception escaping fn on a worker terminates the program (kernels do not throw);
  // validate inputs before run(). Not reentrant: one run() at a time per pool.
  void run(FunctionRef<void(int thread_index, int n_threads)> fn);

 private:
  void worker_loop();
  // Claims and runs indexes of job generation `generation` until none is left.
  void run_claimed(uint32_t generation);

  int n_threads_;
  std::vector<std::thread> workers_;
  const FunctionRef<void(int, int)>* job_ = nullptr;
  // (generation << 32) | next unclaimed index. A claim is a compare-exchange on this word,
  // so a worker that wakes after its generation's indexes are gone (or after a newer run
  // started) claims nothing and never touches a stale job_.
  alignas(64) std::atomic<uint64_t> state_{0};
  std::atomic<bool> stopping_{false};
  alignas(64) std::atomic<int> finished_{0};  // calls of fn returned in this generation
  std::atomic<bool> caller_sleeping_{false};
  alignas(64) std::atomic<int> sleeping_workers_{0};
  // The sleep path (reached only after spinning, so its cost does not matter): workers
  // wait on wake_ for a new generation, the caller on done_ for finished_ == size().
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
};

}  // namespace kiln
