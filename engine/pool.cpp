#include "pool.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TAPEGRAD_NO_POOL 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TAPEGRAD_NO_POOL 1
#endif
#endif

namespace tapegrad::detail {

#ifdef TAPEGRAD_NO_POOL
void* pool_alloc(size_t bytes) { return ::operator new(bytes); }
void pool_free(void* p, size_t) { ::operator delete(p); }
size_t pool_cached_bytes() { return 0; }
#else
namespace {
// Size class c holds blocks of 16·c - 8 bytes: with malloc's 8-byte chunk header that is exactly
// 16·c bytes of heap, so rounding a request up to its class wastes nothing in malloc.
constexpr size_t kGranule = 16;
constexpr size_t kHeader = 8;
constexpr size_t kClasses = 1024 / kGranule;       // blocks up to 1 KiB are pooled
constexpr size_t kMaxSmallBytes = size_t(64) << 20;   // per thread; beyond that, back to malloc
constexpr size_t kMaxLargeBytes = size_t(256) << 20;

// Buffers of 2 MiB and more start on a 2 MiB boundary and are marked MADV_HUGEPAGE: with
// transparent huge pages in "madvise" mode (Debian's default) a [2048,2048] float matrix then
// needs 8 TLB entries instead of 4096, and GEMM's packing of strided panels feels it: W3's
// training step went from 197-213 to 159-166 ms (bench/README.md). Sizes are not rounded up, so
// no memory is wasted: a partial 2 MiB at the end keeps 4 KiB pages.
constexpr size_t kHugePage = size_t(2) << 20;
void* raw_alloc(size_t bytes) {
  if (bytes < kHugePage) return ::operator new(bytes);
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, bytes) != 0) throw std::bad_alloc();
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP it changes nothing
  return p;
}
void raw_free(void* p, size_t bytes) {
  if (bytes < kHugePage) ::operator delete(p);
  else std::free(p);
}

struct FreeBlock {
  FreeBlock* next;
};
// Large buffers (activations, gradients) are kept by exact size: a training step frees and
// allocates the same sizes every step, and reusing them avoids malloc returning them to the
// kernel and the page faults (and page zeroing) of getting them back, step after step.
constexpr size_t kMaxLargeBlocks = 64;
struct LargeBlock {
  size_t bytes;
  void* p;
};

struct Pool {
  FreeBlock* heads[kClasses + 1] = {};
  size_t cached = 0;        // bytes in heads
  size_t large_cached = 0;  // bytes in large
  LargeBlock large[kMaxLargeBlocks] = {};
  size_t n_large = 0;
  ~Pool();
};
thread_local bool pool_alive = true;  // false once this thread's pool is destroyed
thread_local Pool pool;

Pool::~Pool() {
  pool_alive = false;
  for (size_t i = 0; i < n_large; ++i) raw_free(large[i].p, large[i].bytes);
  for (FreeBlock*& h : heads)
    while (h) {
      FreeBlock* b = h;
      h = b->next;
      ::operator delete(b);
    }
}
}  // namespace

size_t size_class(size_t bytes) { return (bytes + kHeader + kGranule - 1) / kGranule; }

size_t pool_cached_bytes() { return pool_alive ? pool.cached : 0; }


void* pool_alloc(size_t bytes) {
  size_t c = size_class(bytes);
  if (!pool_alive) return raw_alloc(bytes);
  if (c > kClasses) {
    for (size_t i = pool.n_large; i-- > 0;)  // newest first: warmest in cache
      if (pool.large[i].bytes == bytes) {
        void* p = pool.large[i].p;
        pool.large[i] = pool.large[--pool.n_large];
        pool.large_cached -= bytes;
        return p;
      }
    return raw_alloc(bytes);
  }
  if (FreeBlock* b = pool.heads[c]) {
    pool.heads[c] = b->next;
    pool.cached -= c * kGranule;
    return b;
  }
  return ::operator new(c * kGranule - kHeader);  // the whole class: any block of it can serve
}

void pool_free(void* p, size_t bytes) {
  size_t c = size_class(bytes);
  if (!pool_alive || (c <= kClasses && pool.cached + c * kGranule > kMaxSmallBytes) || bytes > kMaxLargeBytes) {
    raw_free(p, bytes);
    return;
  }
  if (c > kClasses) {
    while (pool.n_large > 0 && (pool.n_large == kMaxLargeBlocks || pool.large_cached + bytes > kMaxLargeBytes)) {
      raw_free(pool.large[0].p, pool.large[0].bytes);  // make room: drop the oldest
      pool.large_cached -= pool.large[0].bytes;
      for (size_t i = 1; i < pool.n_large; ++i) pool.large[i - 1] = pool.large[i];
      --pool.n_large;
    }
    pool.large[pool.n_large++] = {bytes, p};
    pool.large_cached += bytes;
    return;
  }
  auto* b = static_cast<FreeBlock*>(p);
  b->next = pool.heads[c];
  pool.heads[c] = b;
  pool.cached += c * kGranule;
}
#endif

}  // namespace tapegrad::detail
