#include "kernels/thread_pool.h"

#include <chrono>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kiln {
namespace {

// Spin-waiting policy, by time since the wait began:
//  - up to kPauseSpin: spin with the pause instruction. A decode step's matmuls follow each
//    other within microseconds, so this is where waits normally end, with no syscall.
//  - up to kYieldSpin: spin but yield the core each round, so that with more runnable
//    threads than cores (a pool larger than the machine, other busy processes) the thread
//    we wait for gets to run instead of waiting out a scheduler time slice.
//  - then sleep on a condition variable until notified.
constexpr auto kPauseSpin = std::chrono::microseconds(100);
constexpr auto kYieldSpin = std::chrono::microseconds(2000);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spins until done() is true or kYieldSpin has passed; returns done().
template <typename Done>
bool spin_until(Done done) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    // Check the clock only every 32 rounds: reading it costs more than a pause.
    for (int i = 0; i < 32; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > kYieldSpin) return done();
    if (waited > kPauseSpin) std::this_thread::yield();
  }
}

}  // namespace

int default_thread_count() {
  // Count distinct (package, core) pairs from sysfs; fall back to hardware_concurrency.
  std::set<std::pair<std::string, std::string>> cores;
  const unsigned logical = std::thread::hardware_concurrency();
  for (unsigned cpu = 0; cpu < logical; ++cpu) {
    const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core_file(base + "core_id");
    std::ifstream package_file(base + "physical_package_id");
    std::string core, package;
    if (!(core_file >> core) || !(package_file >> package)) {
      cores.clear();
      break;
    }
    cores.emplace(package, core);
  }
  if (!cores.empty()) return static_cast<int>(cores.size());
  return logical > 0 ? static_cast<int>(logical) : 1;
}

namespace {
uint32_t generation_of(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
uint32_t index_of(uint64_t state) { return static_cast<uint32_t>(state); }
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  if (n_threads < 1) {
    throw std::invalid_argument("ThreadPool: thread count must be at least 1, got " +
                                std::to_string(n_threads));
  }
  // Generation 0 starts with every index claimed, so nothing runs before the first run().
  state_.store(static_cast<uint64_t>(n_threads));
  workers_.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stopping_.store(true);
  state_.fetch_add(uint64_t{1} << 32);  // a new generation wakes everyone
  {
    std::lock_guard lock(sleep_mutex_);
    wake_.notify_all();
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_claimed(uint32_t generation) {
  const auto n = static_cast<uint32_t>(n_threads_);
  uint64_t state = state_.load(std::memory_order_acquire);
  while (generation_of(state) == generation && index_of(state) < n) {
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) continue;
    (*job_)(static_cast<int>(index_of(state)), n_threads_);
    // The last call to finish wakes the caller if it went to sleep. seq_cst pairs with the
    // caller's store of caller_sleeping_ before it re-reads finished_.
    if (finished_.fetch_add(1) + 1 == n_threads_ && caller_sleeping_.load()) {
      std::lock_guard lock(sleep_mutex_);
      done_.notify_one();
    }
    state = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::run(FunctionRef<void(int, int)> fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  finished_.store(0, std::memory_order_relaxed);
  // Publish the job: new generation, index 0 unclaimed. The store releases job_ and
  // finished_ to whoever claims an index. seq_cst on this hand-shake (here: publish, then
  // read the sleeper count; in worker_loop: raise the count, then re-read the state) so one
  // side always sees the other and no worker sleeps through a job.
  const uint32_t generation = generation_of(state_.load()) + 1;
  state_.store(static_cast<uint64_t>(generation) << 32);
  if (sleeping_workers_.load() > 0) {
    std::lock_guard lock(sleep_mutex_);
    wake_.notify_all();
  }

  run_claimed(generation);  // index 0 (almost always), then whatever is left

  // Wait for the calls other threads claimed: spin first (they usually finish within
  // microseconds of us), then block on the counter.
  const auto all_done = [this] { return finished_.load(std::memory_order_acquire) == n_threads_; };
  if (spin_until(all_done)) return;
  std::unique_lock lock(sleep_mutex_);
  caller_sleeping_.store(true);
  done_.wait(lock, [this] { return finished_.load() == n_threads_; });
  caller_sleeping_.store(false);
}

void ThreadPool::worker_loop() {
  uint32_t seen = generation_of(state_.load());
  for (;;) {
    // Wait for a new generation (or shutdown: a thread that starts late may first look at
    // the state after the destructor's last bump): spin, then sleep.
    const auto woken = [&] { return generation_of(state_.load()) != seen || stopping_.load(); };
    spin_until(woken);
    if (!woken()) {
      std::unique_lock lock(sleep_mutex_);
      // Announce ourselves before re-checking: either run() sees sleeping_workers_ > 0 and
      // notifies (under the mutex, so not before we wait), or we see its new generation.
      sleeping_workers_.fetch_add(1);
      wake_.wait(lock, woken);
      sleeping_workers_.fetch_sub(1);
    }
    const uint64_t state = state_.load(std::memory_order_acquire);
    seen = generation_of(state);
    if (stopping_.load()) return;
    run_claimed(seen);
  }
}

}  // namespace kiln
