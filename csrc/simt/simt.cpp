// The SIMT emulation's runtime (simt.h says what it emulates and how faithfully): a pool of
// real threads, one per thread of a block; the block barrier and the warp exchanges; the
// launch checks and the pending error.
//
// Synchronisation is per scope, as on the device: the block barrier has its own mutex, and
// every warp has one, so ThreadSanitizer sees a happens-before edge between two threads only
// where CUDA guarantees one (a barrier both took part in). The deadlock and abort bookkeeping
// uses relaxed atomics, which create no such edges.
#include "simt.h"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace ebm_ext {
namespace simt {
namespace {

thread_local ThreadState* current = nullptr;

// Thrown in a kernel thread to unwind it once the block has failed.
struct Abort {};

std::string where(const char* file, int line) {
  std::ostringstream s;
  s << file << ":" << line;
  return s.str();
}

std::string str(uint3 v) {
  std::ostringstream s;
  s << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return s.str();
}

double timeout_seconds() {
  static const double t = [] {
    const char* v = std::getenv("EBM_SIMT_TIMEOUT");
    return v ? std::atof(v) : 60.0;
  }();
  return t;
}

unsigned popcount(unsigned m) { return static_cast<unsigned>(__builtin_popcount(m)); }

}  // namespace

// The threads of one running block and everything they synchronise on.
class Block {
 public:
  Block(unsigned threads, uint3 index) : n_(threads), index_(index), warps_((threads + 31) / 32) {
    for (unsigned w = 0; w < warps_.size(); ++w) {
      const unsigned lanes = std::min<unsigned>(kWarpSize, threads - w * kWarpSize);
      warps_[w].exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    }
  }

  unsigned threads() const { return n_; }
  bool failed() const { return aborted_.load(std::memory_order_relaxed); }
  std::string error() {
    std::lock_guard<std::mutex> lk(error_mu_);
    return error_;
  }

  // Records the block's first error and makes every thread unwind at its next barrier (the
  // waiting ones within a tick).
  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lk(error_mu_);
      if (error_.empty()) error_ = "block " + str(index_) + ": " + message;
    }
    aborted_.store(true, std::memory_order_relaxed);
  }

  [[noreturn]] void fail_here(const std::string& message) {
    fail(message);
    throw Abort{};
  }

  int barrier(unsigned t, Vote vote, int predicate, const char* file, int line) {
    std::unique_lock<std::mutex> lk(bar_.mu);
    check_abort();
    if (bar_.exited > 0) {
      const std::string m = "__syncthreads at " + where(file, line) + " in thread " +
                            std::to_string(t) + ": " + std::to_string(bar_.exited) +
                            " threads of the block have returned and never reach it (divergent barrier)";
      lk.unlock();
      fail_here(m);
    }
    if (bar_.arrived > 0 && (bar_.file != file || bar_.line != line)) {
      const std::string m = "divergent __syncthreads: thread " + std::to_string(t) + " at " +
                            where(file, line) + ", " + std::to_string(bar_.arrived) +
                            " threads at " + where(bar_.file, bar_.line);
      lk.unlock();
      fail_here(m);
    }
    if (bar_.arrived == 0) {
      bar_.file = file;
      bar_.line = line;
      bar_.any = 0;
      bar_.all = 1;
      bar_.count = 0;
    }
    ++bar_.arrived;
    bar_.any |= predicate != 0;
    bar_.all &= predicate != 0;
    bar_.count += predicate != 0;
    if (bar_.arrived == n_) {
      bar_.result = vote == Vote::Or ? bar_.any : vote == Vote::And ? bar_.all : bar_.count;
      bar_.arrived = 0;
      bar_.generation.fetch_add(1, std::memory_order_release);
      released(n_ - 1);
      bar_.cv.notify_all();
      return bar_.result;
    }
    wait(lk, bar_.cv, bar_.generation, bar_.generation.load(std::memory_order_relaxed), file, line);
    return bar_.result;  // rewritten only by a round this thread takes part in
  }

  uint64_t warp_exchange(unsigned t, unsigned mask, uint64_t bits, Shuffle kind, int lane_arg,
                         int width, bool is_ballot, const char* file, int line) {
    Warp& w = warps_[t / kWarpSize];
    const unsigned lane = t % kWarpSize, bit = 1u << lane;
    std::unique_lock<std::mutex> lk(w.mu);
    check_abort();
    std::string problem;
    const std::string at = where(file, line) + " (lane " + std::to_string(lane) + " of warp " +
                           std::to_string(t / kWarpSize) + ", mask 0x" + hex(mask) + ")";
    if (!(mask & bit)) {
      problem = "warp operation at " + at + ": the mask does not include the calling lane";
    } else if (mask & ~w.exists) {
      problem = "warp operation at " + at + ": the mask names lanes that do not exist (the block has " +
                std::to_string(n_) + " threads)";
    } else if (mask & w.exited) {
      problem = "warp operation at " + at + ": the mask names lanes that have returned (0x" +
                hex(mask & w.exited) + ")";
    } else if (w.arrived && (w.expected != mask || w.file != file || w.line != line)) {
      problem = "divergent warp operation: " + at + " while lanes 0x" + hex(w.arrived) +
                " wait at " + where(w.file, w.line) + " with mask 0x" + hex(w.expected);
    } else if (!is_ballot && !(width > 0 && width <= kWarpSize && (width & (width - 1)) == 0)) {
      problem = "shuffle at " + at + ": width must be a power of 2 in [1, 32], got " +
                std::to_string(width);
    }
    if (!problem.empty()) {
      lk.unlock();
      fail_here(problem);
    }
    if (!w.arrived) {
      w.expected = mask;
      w.file = file;
      w.line = line;
    }
    w.arrived |= bit;
    w.in[lane] = bits;
    w.source[lane] = is_ballot ? -1 : source_lane(kind, lane, lane_arg, width);
    if (w.arrived == w.expected) {
      if (!complete(w)) {
        lk.unlock();
        fail_here("shuffle at " + at + ": a lane reads a lane that is not in the mask");
      }
      return w.result[lane];
    }
    wait(lk, w.cv, w.generation, w.generation.load(std::memory_order_relaxed), file, line);
    return w.result[lane];  // rewritten only by a round this lane takes part in
  }

  // The thread has returned from the kernel (or unwound): barriers that wait for it never end.
  void exit(unsigned t) {
    std::string problem;
    {
      std::lock_guard<std::mutex> lk(bar_.mu);
      ++bar_.exited;
      if (bar_.arrived > 0) {
        problem = "thread " + std::to_string(t) + " returned while " +
                  std::to_string(bar_.arrived) + " threads wait at __syncthreads at " +
                  where(bar_.file, bar_.line) + " (divergent barrier)";
      }
    }
    Warp& w = warps_[t / kWarpSize];
    const unsigned bit = 1u << (t % kWarpSize);
    {
      std::lock_guard<std::mutex> lk(w.mu);
      w.exited |= bit;
      if (problem.empty() && (w.arrived & ~bit) && (w.expected & bit)) {
        problem = "lane " + std::to_string(t % kWarpSize) + " of warp " +
                  std::to_string(t / kWarpSize) + " returned while lanes 0x" + hex(w.arrived) +
                  " wait for it at " + where(w.file, w.line);
      }
    }
    exited_.fetch_add(1, std::memory_order_relaxed);
    if (!problem.empty() && !failed()) fail(problem);
  }

 private:
  struct BlockBarrier {
    std::mutex mu;
    std::condition_variable cv;
    unsigned arrived = 0, exited = 0;
    // Written under mu; atomic so that a waiter may poll it while it spins (simt.cpp's wait).
    std::atomic<uint64_t> generation{0};
    const char* file = nullptr;
    int line = 0;
    int any = 0, all = 1, count = 0, result = 0;
  };
  struct Warp {
    std::mutex mu;
    std::condition_variable cv;
    unsigned exists = 0, exited = 0, arrived = 0, expected = 0;
    std::atomic<uint64_t> generation{0};
    const char* file = nullptr;
    int line = 0;
    uint64_t in[kWarpSize] = {}, result[kWarpSize] = {};
    int source[kWarpSize] = {};
  };

  static std::string hex(unsigned v) {
    std::ostringstream s;
    s << std::hex << v;
    return s.str();
  }

  static int source_lane(Shuffle kind, unsigned lane, int arg, int width) {
    const int l = static_cast<int>(lane), base = l / width * width;
    switch (kind) {
      case Shuffle::Idx: return base + ((arg % width) + width) % width;
      case Shuffle::Up: return l - base >= arg ? l - arg : l;
      case Shuffle::Down: return l - base + arg < width ? l + arg : l;
      case Shuffle::Xor: {
        const int s = l ^ arg;
        return s >= 0 && s < base + width ? s : l;  // later segments give the own value
      }
    }
    return l;
  }

  // The last lane of a round computes every lane's result and releases the others.
  bool complete(Warp& w) {
    bool ok = true;
    unsigned ballot = 0;
    for (int l = 0; l < kWarpSize; ++l) {
      if ((w.expected >> l & 1u) && w.in[l] != 0) ballot |= 1u << l;
    }
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(w.expected >> l & 1u)) continue;
      const int s = w.source[l];
      if (s < 0) {
        w.result[l] = ballot;
      } else if (s < kWarpSize && (w.expected >> s & 1u)) {
        w.result[l] = w.in[s];
      } else {
        ok = false;
      }
    }
    const unsigned waiting = popcount(w.expected) - 1;
    w.arrived = 0;
    w.generation.fetch_add(1, std::memory_order_release);
    released(waiting);
    w.cv.notify_all();
    return ok;
  }

  void released(unsigned waiters) {
    blocked_.fetch_sub(waiters, std::memory_order_relaxed);
    progress_.fetch_add(1, std::memory_order_relaxed);
  }

  void check_abort() {
    if (failed()) throw Abort{};
  }

  // Waits under `lk` until `generation` moves on from `seen`, counted as blocked until a
  // releasing round says otherwise. It first spins a little, yielding: a block's threads are
  // many more than the cores, and a barrier usually completes within one round of the
  // scheduler, far sooner than a sleep and a wake-up. Then it sleeps, and reports a deadlock
  // (every thread blocked or returned, nothing moving for a few ticks) or a wait longer than
  // EBM_SIMT_TIMEOUT seconds (60 by default).
  void wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv,
            const std::atomic<uint64_t>& generation, uint64_t seen_generation, const char* file,
            int line) {
    using clock = std::chrono::steady_clock;
    blocked_.fetch_add(1, std::memory_order_relaxed);
    const auto moved = [&] { return generation.load(std::memory_order_acquire) != seen_generation; };
    lk.unlock();
    const auto began = clock::now();
    while (!moved() && !failed() && clock::now() - began < std::chrono::microseconds(300)) {
      std::this_thread::yield();
    }
    lk.lock();
    uint64_t seen = progress_.load(std::memory_order_relaxed);
    int still = 0;
    while (!moved()) {
      if (failed()) {
        blocked_.fetch_sub(1, std::memory_order_relaxed);
        throw Abort{};
      }
      if (cv.wait_for(lk, std::chrono::milliseconds(50)) != std::cv_status::timeout || moved()) {
        continue;
      }
      const uint64_t p = progress_.load(std::memory_order_relaxed);
      const unsigned stuck = blocked_.load(std::memory_order_relaxed) +
                             exited_.load(std::memory_order_relaxed);
      if (p != seen) {
        seen = p;
        still = 0;
      } else if (stuck >= n_ && ++still >= 3) {
        lk.unlock();
        fail("deadlock: every thread of the block waits at a barrier or has returned, and no "
             "barrier can complete (a thread waits at " + where(file, line) + ")");
        lk.lock();
      }
      const double waited = std::chrono::duration<double>(clock::now() - began).count();
      if (waited > timeout_seconds()) {
        lk.unlock();
        fail("a thread waited " + std::to_string(waited) + " s at " + where(file, line) +
             " for threads that never arrived (EBM_SIMT_TIMEOUT)");
        lk.lock();
      }
    }
  }

  const unsigned n_;
  const uint3 index_;
  BlockBarrier bar_;
  std::vector<Warp> warps_;
  std::atomic<bool> aborted_{false};
  std::atomic<unsigned> blocked_{0}, exited_{0};
  std::atomic<uint64_t> progress_{0};
  std::mutex error_mu_;
  std::string error_;
};

namespace {

// Real threads, kept between launches; run(n, f) calls f(0..n-1) on n of them and waits.
class Pool {
 public:
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    std::unique_lock<std::mutex> lk(mu_);
    while (workers_.size() < n) {
      workers_.push_back(std::make_unique<Worker>());
      std::thread(&Pool::loop, this, static_cast<unsigned>(workers_.size() - 1), epoch_).detach();
    }
    job_ = &job;
    active_ = n;
    remaining_ = n;
    ++epoch_;
    for (unsigned i = 0; i < n; ++i) workers_[i]->cv.notify_one();
    done_.wait(lk, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  struct Worker {
    std::condition_variable cv;
  };

  void loop(unsigned id, uint64_t seen) {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      Worker& w = *workers_[id];
      w.cv.wait(lk, [&] { return epoch_ != seen && id < active_; });
      seen = epoch_;
      const auto* job = job_;
      lk.unlock();
      (*job)(id);
      lk.lock();
      if (--remaining_ == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable done_;
  std::vector<std::unique_ptr<Worker>> workers_;
  uint64_t epoch_ = 0;
  unsigned active_ = 0, remaining_ = 0;
  const std::function<void(unsigned)>* job_ = nullptr;
};

struct Runtime {
  std::mutex launch_mu;  // one launch at a time (what makes static __shared__ per block)
  Pool pool;
  std::mutex state_mu;
  std::string last_error;
  // A device fault is sticky, as in a CUDA context: every later launch fails with it.
  std::string sticky_error;
  std::map<const void*, size_t> max_dynamic_shared;
  std::atomic<uint64_t> launch_count{0};
};

// EBM_SIMT_PLANT_FAULT=<part of a kernel's name>: the first launch of a matching kernel ends in
// the fault an out-of-bounds access gives on a GPU (and poisons the emulated context), so that
// the GPU check's kernel driver can be shown to name the faulting kernel without a GPU.
bool planted_fault_in(const char* name) {
  const char* want = std::getenv("EBM_SIMT_PLANT_FAULT");
  return want != nullptr && *want != '\0' && std::strstr(name, want) != nullptr;
}

Runtime& runtime() {
  static Runtime* r = new Runtime();  // never destroyed: its threads outlive static destructors
  return *r;
}

std::string check_configuration(dim3 grid, dim3 block, size_t shared_bytes, size_t allowed) {
  std::ostringstream s;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    s << cudaGetErrorString(cudaErrorInvalidConfiguration) << ": grid (" << grid.x << ", "
      << grid.y << ", " << grid.z << ") and block (" << block.x << ", " << block.y << ", "
      << block.z << ") must have no zero dimension";
  } else if (threads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 || block.z > 64) {
    s << cudaGetErrorString(cudaErrorInvalidConfiguration) << ": block (" << block.x << ", "
      << block.y << ", " << block.z << ") has " << threads << " threads; at most "
      << kMaxThreadsPerBlock << " per block (1024, 1024, 64 per dimension)";
  } else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    s << cudaGetErrorString(cudaErrorInvalidConfiguration) << ": grid (" << grid.x << ", "
      << grid.y << ", " << grid.z << ") exceeds (2^31 - 1, 65535, 65535)";
  } else if (shared_bytes > allowed) {
    s << cudaGetErrorString(cudaErrorInvalidValue) << ": " << shared_bytes
      << " bytes of dynamic shared memory; the kernel may use " << allowed
      << (allowed == kDefaultSharedBytes
              ? " without opting in with cudaFuncSetAttribute(MaxDynamicSharedMemorySize)"
              : " (its cudaFuncSetAttribute)");
  }
  return s.str();
}

}  // namespace

ThreadState& self() {
  if (current == nullptr) {
    throw std::logic_error("SIMT emulation: a CUDA built-in was used outside a kernel");
  }
  return *current;
}

void syncthreads(const char* file, int line) {
  ThreadState& s = self();
  s.block->barrier(s.linear, Vote::Or, 0, file, line);
}

int syncthreads_vote(Vote vote, int predicate, const char* file, int line) {
  ThreadState& s = self();
  return s.block->barrier(s.linear, vote, predicate, file, line);
}

void syncwarp(unsigned mask, const char* file, int line) {
  ThreadState& s = self();
  s.block->warp_exchange(s.linear, mask, 0, Shuffle::Idx, 0, kWarpSize, true, file, line);
}

unsigned ballot(unsigned mask, int predicate, const char* file, int line) {
  ThreadState& s = self();
  return static_cast<unsigned>(s.block->warp_exchange(s.linear, mask, predicate != 0,
                                                      Shuffle::Idx, 0, kWarpSize, true, file,
                                                      line));
}

uint64_t shuffle_bits(unsigned mask, uint64_t bits, Shuffle kind, int lane_arg, int width,
                      const char* file, int line) {
  ThreadState& s = self();
  return s.block->warp_exchange(s.linear, mask, bits, kind, lane_arg, width, false, file, line);
}

bool set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || size_t(bytes) > kMaxSharedBytesOptin) return false;
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lk(r.state_mu);
  r.max_dynamic_shared[kernel] = size_t(bytes);
  return true;
}

void launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const char* name,
            const std::function<void()>& body) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> serial(r.launch_mu);
  ++r.launch_count;
  size_t allowed = kDefaultSharedBytes;
  {
    std::lock_guard<std::mutex> lk(r.state_mu);
    const auto it = r.max_dynamic_shared.find(kernel);
    if (it != r.max_dynamic_shared.end()) allowed = std::max(allowed, it->second);
  }
  std::string error = check_configuration(grid, block, shared_bytes, allowed);
  {
    std::lock_guard<std::mutex> lk(r.state_mu);
    if (!r.sticky_error.empty()) {
      r.last_error = r.sticky_error;
      return;
    }
  }
  const unsigned threads = block.x * block.y * block.z;
  // The exact size, so that AddressSanitizer reports an access past it.
  std::unique_ptr<unsigned char[]> shared(new unsigned char[shared_bytes]);
  for (unsigned z = 0; z < grid.z && error.empty(); ++z) {
    for (unsigned y = 0; y < grid.y && error.empty(); ++y) {
      for (unsigned x = 0; x < grid.x && error.empty(); ++x) {
        const uint3 index{x, y, z};
        Block b(threads, index);
        std::memset(shared.get(), 0xff, shared_bytes);
        r.pool.run(threads, [&](unsigned t) {
          ThreadState state{{t % block.x, t / block.x % block.y, t / (block.x * block.y)},
                            index, block, grid, t, shared.get(), &b};
          current = &state;
          try {
            body();
          } catch (const Abort&) {
          } catch (const std::exception& e) {
            b.fail(std::string("thread ") + std::to_string(t) + " threw: " + e.what());
          }
          b.exit(t);
          current = nullptr;
        });
        if (b.failed()) error = b.error();
      }
    }
  }
  if (error.empty() && planted_fault_in(name)) {
    std::lock_guard<std::mutex> lk(r.state_mu);
    r.sticky_error = r.last_error =
        std::string("CUDA error (SIMT emulation) in kernel ") + name + ": " +
        cudaGetErrorString(cudaErrorIllegalAddress) + " (planted by EBM_SIMT_PLANT_FAULT)";
    return;
  }
  if (!error.empty()) {
    std::lock_guard<std::mutex> lk(r.state_mu);
    r.last_error = std::string("CUDA error (SIMT emulation) in kernel ") + name + ": " + error;
  }
}

uint64_t launches() { return runtime().launch_count.load(); }

void device_check_failed(const char* file, int line, const char* condition, const char* format,
                         ...) {
  char message[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof message, format, args);
  va_end(args);
  throw std::runtime_error(std::string(message) + " (device-side check `" + condition +
                           "` failed at " + file + ":" + std::to_string(line) + ")");
}

std::string take_last_error() {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lk(r.state_mu);
  std::string e;
  e.swap(r.last_error);
  return e;
}

}  // namespace simt
}  // namespace ebm_ext
