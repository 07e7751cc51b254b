#include "pool.hpp"

#include "parallel.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

// AddressSanitizer builds bypass the pool, so that a use after free is reported. ThreadSanitizer
// builds keep it: scripts/ci-tsan runs the pool's cross-thread tests under TSan.
#if defined(__SANITIZE_ADDRESS__)
#define TAPEGRAD_NO_POOL 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TAPEGRAD_NO_POOL 1
#endif
#endif

namespace tapegrad::detail {

#ifdef TAPEGRAD_NO_POOL
void* pool_alloc(size_t bytes) { return ::operator new(bytes); }
void pool_free(void* p, size_t) { ::operator delete(p); }
size_t pool_cached_bytes() { return 0; }
size_t pool_large_cached_bytes() { return 0; }
size_t pool_medium_chunks() { return 0; }
PoolSegments pool_segments() { return {}; }
bool pool_medium_on_huge_pages() { return false; }
bool pool_enabled() { return false; }
#else
namespace {
constexpr size_t kGranule = 16;
constexpr size_t kClasses = 1024 / kGranule;          // blocks up to 1 KiB are pooled
constexpr size_t kMaxLargeBytes = size_t(256) << 20;

// Buffers of 2 MiB and more start on a 2 MiB boundary and are marked MADV_HUGEPAGE: with
// transparent huge pages in "madvise" mode (Debian's default) a [2048,2048] float matrix then
// needs 8 TLB entries instead of 4096, and GEMM's packing of strided panels feels it: W3's
// training step went from 197-213 to 159-166 ms (bench/HISTORY.md). Sizes are not rounded up, so
// no memory is wasted: a partial 2 MiB at the end keeps 4 KiB pages.
constexpr size_t kHugePage = size_t(2) << 20;

// ---- medium buffers: shares of 2 MiB chunks ------------------------------------------------------
// Buffers from 128 KiB to 2 MiB (W2's activations and weights) are cut from 2 MiB chunks on huge
// pages too: a chunk of share k holds k equal blocks of 2 MiB / k (k = 1..16), and a request takes
// the smallest share that fits it (so at most (k+1)/k of its size: 2x just above 1 MiB, 7 % near
// 128 KiB). A chunk goes back to the kernel when its last block does; the per-thread cache of
// large buffers (pool_free) sits in front, so these calls are rare and share one mutex. W2's
// training step, 10 alternating pairs of runs: 1 thread median 2.54 -> 2.48 ms (faster in 10 of
// 10 pairs), 2 threads 1.51 -> 1.47 ms (8 of 10). Without transparent huge pages (`never`)
// medium buffers come from operator new as before.
constexpr size_t kMinMedium = size_t(128) << 10;
constexpr uint32_t kMaxShare = 16;
size_t share_bytes(uint32_t k) { return kHugePage / k / 64 * 64; }

bool huge_pages_possible() {
  static const bool possible = [] {
    FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return false;
    char line[128] = {};
    bool never = std::fgets(line, sizeof line, f) && std::strstr(line, "[never]");
    std::fclose(f);
    return !never;
  }();
  return possible;
}

struct Chunk {
  uint32_t share;      // k: blocks of share_bytes(k)
  uint32_t free_mask;  // bit i: block i is free
};
struct MediumChunks {
  std::mutex mutex;
  std::unordered_map<uintptr_t, Chunk> chunks;  // by base address
  std::vector<uintptr_t> with_room[kMaxShare + 1];  // per share: chunks with a free block
};
MediumChunks& medium() {
  static MediumChunks* m = new MediumChunks;  // never destroyed: frees may come after exit
  return *m;
}

void* map_chunk() {  // 2 MiB on a 2 MiB boundary: map 4 MiB, unmap the ends
  void* m = mmap(nullptr, 2 * kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  uintptr_t start = reinterpret_cast<uintptr_t>(m), base = (start + kHugePage - 1) & ~(kHugePage - 1);
  if (base > start) munmap(m, base - start);
  munmap(reinterpret_cast<void*>(base + kHugePage), start + kHugePage - base);  // the rest of the 4 MiB
  madvise(reinterpret_cast<void*>(base), kHugePage, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(base);
}

void* medium_alloc(size_t bytes) {
  uint32_t k = static_cast<uint32_t>(std::min<size_t>(kMaxShare, kHugePage / bytes));
  while (share_bytes(k) < bytes) --k;
  MediumChunks& m = medium();
  std::lock_guard<std::mutex> lock(m.mutex);
  std::vector<uintptr_t>& room = m.with_room[k];
  if (room.empty()) {
    uintptr_t base = reinterpret_cast<uintptr_t>(map_chunk());
    m.chunks[base] = Chunk{k, (1u << k) - 1};
    room.push_back(base);
  }
  uintptr_t base = room.back();
  Chunk& c = m.chunks[base];
  uint32_t i = static_cast<uint32_t>(__builtin_ctz(c.free_mask));
  c.free_mask &= c.free_mask - 1;
  if (c.free_mask == 0) room.pop_back();
  return reinterpret_cast<void*>(base + i * share_bytes(k));
}

void medium_free(void* p) {
  MediumChunks& m = medium();
  std::lock_guard<std::mutex> lock(m.mutex);
  uintptr_t base = reinterpret_cast<uintptr_t>(p) & ~(kHugePage - 1);
  Chunk& c = m.chunks.at(base);
  std::vector<uintptr_t>& room = m.with_room[c.share];
  if (c.free_mask == 0) room.push_back(base);  // it was full
  c.free_mask |= 1u << ((reinterpret_cast<uintptr_t>(p) - base) / share_bytes(c.share));
  if (c.free_mask == (1u << c.share) - 1) {  // all blocks back: the chunk goes back to the kernel
    room.erase(std::find(room.begin(), room.end(), base));
    m.chunks.erase(base);
    munmap(reinterpret_cast<void*>(base), kHugePage);
  }
}

bool is_medium(size_t bytes) { return bytes >= kMinMedium && bytes < kHugePage && huge_pages_possible(); }

void* raw_alloc(size_t bytes) {
  if (is_medium(bytes)) return medium_alloc(bytes);
  if (bytes < kHugePage) return ::operator new(bytes);
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, bytes) != 0) throw std::bad_alloc();
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP it changes nothing
  return p;
}
void raw_free(void* p, size_t bytes) {
  if (is_medium(bytes)) medium_free(p);
  else if (bytes < kHugePage) ::operator delete(p);
  else std::free(p);
}

// ---- small blocks: slabs -------------------------------------------------------------------------
// A slab is 64 KiB on a 64 KiB boundary, so a block finds its slab by masking its address. It
// holds blocks of one size class (class c: requests of 16·c − 15 to 16·c bytes) and
// belongs to the thread that took it: that thread allocates from it and frees into it without
// locks or atomics, and a slab whose blocks have all come back is reused for any class or, past
// a budget, handed back to the kernel (MADV_DONTNEED). Before, each new block was a malloc of its
// own; once the process has a second thread (OpenBLAS's worker at threads = 2) glibc takes its
// arena lock on every call, and W4 (2 M blocks) ran 1.03–1.11× slower at 2 threads than at 1.
// A block freed by another thread goes onto its owner's `remote` stack (under `global.mutex`,
// so the owner cannot end meanwhile); the owner takes them back when it runs short. When a
// thread ends, its slabs still in use are abandoned: their last blocks are freed under the mutex.
constexpr size_t kSlabBytes = size_t(64) << 10;
constexpr size_t kSegmentBytes = size_t(4) << 20;  // slabs are cut from 4 MiB mappings
constexpr size_t kKeepEmptyBytes = size_t(16) << 20;         // per thread: empty slabs kept for reuse
constexpr size_t kKeepEmptyProcessBytes = size_t(64) << 20;  // beyond: their pages go back
constexpr size_t kReleaseBatch = 64;  // slabs whose pages go back in one pass (4 MiB)
constexpr int kMadvPopulateWrite = 23;  // MADV_POPULATE_WRITE (Linux 5.14); older kernels refuse it: no harm

struct FreeBlock {
  FreeBlock* next;
};
struct Pool;
struct Slab {
  FreeBlock* free = nullptr;  // blocks ready to hand out
  uint32_t used = 0;          // blocks handed out and not yet back in `free`
  uint32_t cls = 0;
  std::atomic<Pool*> owner{nullptr};  // null when abandoned or empty in the global stack
  Slab* prev = nullptr;  // in the owner's list for cls (slabs with free blocks), or the empty stack
  Slab* next = nullptr;
  bool listed = false;   // in the owner's list
  Slab* all_prev = nullptr;  // every slab the owner holds
  Slab* all_next = nullptr;
};
constexpr size_t kSlabHeader = (sizeof(Slab) + kGranule - 1) / kGranule * kGranule;
Slab* slab_of(const void* p) { return reinterpret_cast<Slab*>(reinterpret_cast<uintptr_t>(p) & ~(kSlabBytes - 1)); }
uint32_t units(size_t c) { return static_cast<uint32_t>((kSlabBytes - kSlabHeader) / (c * kGranule)); }

// A thread's cache of large free buffers: a stack per exact size (newest on top), found through a
// small open-addressed table of sizes; each entry has an age, and past the budget the oldest
// goes first. Side arrays rather than links inside the free buffers: a link there is read from a
// buffer cold since its free, and that miss cost W5 ~1 % in pool_alloc.
struct LargeCache {
  struct Entry {
    void* p;
    uint64_t age;
  };
  struct Bin {
    size_t bytes = 0;          // 0: slot never used
    std::vector<Entry> stack;  // [oldest, size): oldest first; the entries before were dropped
    size_t oldest = 0;
    bool empty() const { return oldest == stack.size(); }
    void forget_dropped() {  // now and then, so that dropping the oldest stays O(1) on average
      if (empty()) stack.clear(), oldest = 0;
      else if (oldest >= 64 && 2 * oldest >= stack.size())
        stack.erase(stack.begin(), stack.begin() + std::ptrdiff_t(oldest)), oldest = 0;
    }
  };
  static constexpr size_t kBins = 256;
  static constexpr size_t kMaxSizes = kBins * 3 / 4;  // sizes a thread keeps at once
  Bin bins[kBins];
  size_t bins_used = 0;
  uint64_t clock = 0;
  size_t bytes = 0;  // cached

  static size_t slot0(size_t n) { return size_t((n * 0x9E3779B97F4A7C15ull) >> 56) % kBins; }
  Bin* find(size_t n) {
    for (size_t i = slot0(n);; i = (i + 1) % kBins) {
      if (bins[i].bytes == n) return &bins[i];
      if (bins[i].bytes == 0) return nullptr;
    }
  }
  Bin& claim(size_t n) {
    size_t i = slot0(n);
    while (bins[i].bytes != 0) i = (i + 1) % kBins;
    ++bins_used;
    bins[i].bytes = n;
    return bins[i];
  }
  // The bin of size n, claiming a slot for it; null when the table is full even without the
  // sizes that have no buffer left (then the buffer is not kept).
  Bin* bin_for(size_t n) {
    if (Bin* b = find(n)) return b;
    if (bins_used + 1 > kMaxSizes) {  // rebuilt without the empty bins, if that makes room
      size_t in_use = 0;
      for (Bin& b : bins) in_use += !b.empty();
      if (in_use + 1 > kMaxSizes) return nullptr;
      std::vector<Bin> kept;
      kept.reserve(in_use);  // may throw; nothing is moved before it
      for (Bin& b : bins)
        if (!b.empty()) kept.push_back(std::move(b));
      for (Bin& b : bins) b = Bin{};
      bins_used = 0;
      for (Bin& b : kept) {
        Bin& to = claim(b.bytes);
        to.stack = std::move(b.stack);
        to.oldest = b.oldest;
      }
    }
    return &claim(n);
  }
  void* take(size_t n) {
    Bin* bin = find(n);
    if (!bin || bin->empty()) return nullptr;
    void* p = bin->stack.back().p;
    bin->stack.pop_back();
    bin->forget_dropped();
    bytes -= n;
    return p;
  }
  // Frees the oldest buffer; false when there is none.
  bool drop_oldest() {
    Bin* from = nullptr;
    for (Bin& b : bins)
      if (!b.empty() && (!from || b.stack[b.oldest].age < from->stack[from->oldest].age)) from = &b;
    if (!from) return false;
    raw_free(from->stack[from->oldest++].p, from->bytes);
    from->forget_dropped();
    bytes -= from->bytes;
    return true;
  }
  // Keeps p, first dropping the oldest buffers while the budget would be passed; false when it is
  // not kept (the caller frees it).
  bool keep(void* p, size_t n) noexcept {
    if (n > kMaxLargeBytes) return false;
    try {
      while (bytes + n > kMaxLargeBytes && drop_oldest()) {
      }
      Bin* bin = bin_for(n);
      if (!bin) return false;
      bin->stack.push_back({p, ++clock});
    } catch (const std::bad_alloc&) {
      return false;
    }
    bytes += n;
    return true;
  }
  void free_all() {
    for (Bin& b : bins) {
      for (size_t i = b.oldest; i < b.stack.size(); ++i) raw_free(b.stack[i].p, b.bytes);
      b.stack.clear();
      b.oldest = 0;
    }
    bytes = 0;
  }
};

struct Pool {
  Slab* lists[kClasses + 1] = {};  // per class: owned slabs with free blocks, most recent first
  Slab* all = nullptr;
  size_t empty_slabs = 0;          // owned slabs with used == 0 (kept for reuse)
  std::atomic<FreeBlock*> remote{nullptr};
  bool is_global = false;          // the pool of threads whose own pool has ended (under the mutex)

  void* alloc(size_t c);
  void free_local(Slab* s, FreeBlock* b);
  void drain_remote();
  void link(Slab* s);
  void unlink(Slab* s);
  void release(Slab* s);  // an empty slab leaves this pool
  ~Pool();

  // Large buffers (activations, gradients) are kept by exact size: a training step frees and
  // allocates the same sizes every step, and reusing them avoids malloc returning them to the
  // kernel and the page faults (and page zeroing) of getting them back, step after step. Up to
  // kMaxLargeBytes, the oldest going first. They were once 64 at most, in one array searched in
  // turn: W5 frees hundreds of 8 and 16 KiB a step, so most of them went back to malloc and came
  // again (and with a second thread in the process glibc locks its arena on such calls). perf
  // over 400 W5 steps (6 Dec 2026): malloc, free and the pool 4.3 % of the cycles before, 2.5 %
  // after.
  LargeCache large;
};

// Process-wide: the lock for cross-thread and after-exit frees, the empty slabs, and the pool
// used by threads whose own pool has already been destroyed. Never destroyed.
struct Global {
  std::mutex mutex;
  Slab* empty = nullptr;       // empty slabs, memory kept
  size_t n_empty = 0;
  std::vector<Slab*> leaving;  // empty slabs beyond the budgets, memory kept until the batch is full
  std::vector<Slab*> released; // empty slabs whose pages went back to the kernel (header page too)
  std::vector<uintptr_t> ahead; // segments a helper mapped before they were needed (kAheadSegments at most)
  bool mapping_ahead = false;   // a helper is on it
  size_t segments_used = 0;     // segments cut into slabs, and of them mapped ahead:
  size_t segments_taken_ahead = 0;
  Pool pool;
  Global() { pool.is_global = true; }
};
Global& global() {
  static Global* g = new Global;
  return *g;
}

thread_local bool pool_alive = true;  // false once this thread's pool is destroyed
thread_local Pool pool;

// A fresh segment on a kSlabBytes boundary, its pages populated; 0 when the kernel has no memory.
// Segments stay on 4 KiB pages. On 2 MiB pages (MADV_HUGEPAGE, tried 29 Nov) a warm process built
// W4's graph faster (5 repetitions: 340-410 ms against 420-550), but a huge page comes from the
// kernel's free 2 MiB blocks, which a VM may have handed back to its host: then its first touch
// costs a host fault too. The first fresh process after W3 freed its memory took 680-995 ms
// (0.4-0.7 s in the kernel) in 4 of 4 runs, and later ones 545-730 now and then (AMD EPYC VM,
// 2 Dec 2026); on 4 KiB pages every repetition took 420-550 ms.
uintptr_t map_segment() noexcept {
  // Mapped with room to align it; the ragged ends go back.
  const size_t span = kSegmentBytes + kSlabBytes;
  void* m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 0;
  auto base = reinterpret_cast<uintptr_t>(m), start = (base + kSlabBytes - 1) & ~(kSlabBytes - 1);
  if (start > base) munmap(m, start - base);
  if (base + span > start + kSegmentBytes) munmap(reinterpret_cast<void*>(start + kSegmentBytes), base + span - start - kSegmentBytes);
  // The segment's pages in one call rather than a fault at each first touch: on the Zen 5 VM
  // of 6 Dec 2026 (a guest whose page faults are slow) W4's forward took 615-800 ms with a
  // fault per page, 380-430 populated. Costs a segment of memory at most (4 MiB not yet used),
  // and the kAheadSegments mapped ahead at threads >= 2.
  madvise(reinterpret_cast<void*>(start), kSegmentBytes, kMadvPopulateWrite);
  return start;
}

// A chore (engine/parallel.hpp) for a helper at threads >= 2: the next segments, mapped and
// touched while the allocating thread works on the current one. On the Zen 5 VM of 6 Dec 2026 a
// page's first touch from user space costs ~6 µs even after MADV_POPULATE_WRITE (the hypervisor
// maps it then: 224 MiB populated took 58 ms, then one write per cache line 370 ms, a second pass
// 9 ms), and W4's forward, which writes 222 MiB of fresh pages, spent most of its time there. The
// mapping is per process: one read per page on another CPU made the first pass 9.4 ms. W4 at 2
// threads (the allocating thread maps its own when none is ready): forward 400 -> 232 ms
// with two segments ahead, 270 with one (244 and 239 bytes per op, against 235 at one thread).
constexpr size_t kAheadSegments = 2;
constexpr size_t kPageBytes = 4096;
void map_ahead() {
  Global& g = global();
  for (;;) {
    const uintptr_t start = map_segment();
    if (start)
      for (size_t off = 0; off < kSegmentBytes; off += kPageBytes) (void)*reinterpret_cast<volatile char*>(start + off);
    std::lock_guard<std::mutex> lock(g.mutex);
    if (start) g.ahead.push_back(start);
    if (!start || g.ahead.size() >= kAheadSegments) {
      g.mapping_ahead = false;
      return;
    }
  }
}

// An empty slab from the global stacks, or from a fresh mapping. Caller holds the mutex.
Slab* take_empty_slab() {
  Global& g = global();
  Slab* s = g.empty;
  if (s) {
    g.empty = s->next;
    --g.n_empty;
  } else if (!g.leaving.empty()) {
    s = g.leaving.back();
    g.leaving.pop_back();
  } else if (!g.released.empty()) {
    s = new (g.released.back()) Slab;  // its header went back with the rest: zero pages now
    g.released.pop_back();
  } else {
    uintptr_t start = 0;
    if (!g.ahead.empty()) {
      start = g.ahead.back();
      g.ahead.pop_back();
      ++g.segments_taken_ahead;
    } else if (!(start = map_segment())) {
      throw std::bad_alloc();
    }
    // A process that grows past its first segment likely goes on growing: a helper maps the next.
    if (++g.segments_used >= 2 && g.ahead.size() < kAheadSegments && !g.mapping_ahead && post_chore(map_ahead))
      g.mapping_ahead = true;
    for (size_t off = kSegmentBytes; (off -= kSlabBytes) > 0;)  // lowest address handed out first
      g.released.push_back(reinterpret_cast<Slab*>(start + off));  // untouched: as good as released
    s = new (reinterpret_cast<void*>(start)) Slab;
  }
  return s;
}

// Caller holds the mutex.
void put_empty_slab(Slab* s) {
  Global& g = global();
  s->owner.store(nullptr, std::memory_order_relaxed);
  s->free = nullptr;
  if (g.n_empty * kSlabBytes < kKeepEmptyProcessBytes) {
    s->next = g.empty;
    g.empty = s;
    ++g.n_empty;
    return;
  }
  // Keep the address range, return the pages, in batches: each madvise flushes the TLB, which a
  // guest pays dearly for (Zen 5 VM, 6 Dec 2026: one call per slab was 18 % of W4's samples, its
  // backward 360-425 ms). Sorted, a batch's slabs mostly form a few contiguous runs.
  g.leaving.push_back(s);
  if (g.leaving.size() < kReleaseBatch) return;
  std::sort(g.leaving.begin(), g.leaving.end());
  for (size_t i = 0, j; i < g.leaving.size(); i = j) {
    auto at = [&](size_t k) { return reinterpret_cast<uintptr_t>(g.leaving[k]); };
    for (j = i + 1; j < g.leaving.size() && at(j) == at(j - 1) + kSlabBytes;) ++j;  // adjacent slabs: one run
    madvise(g.leaving[i], (j - i) * kSlabBytes, MADV_DONTNEED);
  }
  g.released.insert(g.released.end(), g.leaving.begin(), g.leaving.end());
  g.leaving.clear();
}

void Pool::link(Slab* s) {  // at the front: its free blocks are handed out next
  s->prev = nullptr;
  s->next = lists[s->cls];
  if (s->next) s->next->prev = s;
  lists[s->cls] = s;
  s->listed = true;
}
void Pool::unlink(Slab* s) {
  if (s->prev) s->prev->next = s->next;
  else lists[s->cls] = s->next;
  if (s->next) s->next->prev = s->prev;
  s->listed = false;
}

void Pool::release(Slab* s) {
  if (s->listed) unlink(s);
  if (s->all_prev) s->all_prev->all_next = s->all_next;
  else all = s->all_next;
  if (s->all_next) s->all_next->all_prev = s->all_prev;
  --empty_slabs;
  if (is_global) {
    put_empty_slab(s);
  } else {
    std::lock_guard<std::mutex> lock(global().mutex);
    put_empty_slab(s);
  }
}

void Pool::free_local(Slab* s, FreeBlock* b) {
  b->next = s->free;
  s->free = b;
  if (!s->listed) link(s);
  if (--s->used == 0 && ++empty_slabs * kSlabBytes > kKeepEmptyBytes) release(s);
}

void Pool::drain_remote() {
  FreeBlock* b = remote.exchange(nullptr, std::memory_order_acquire);
  while (b) {
    FreeBlock* next = b->next;
    free_local(slab_of(b), b);
    b = next;
  }
}

void* Pool::alloc(size_t c) {
  for (;;) {
    while (Slab* s = lists[c]) {
      if (FreeBlock* b = s->free) {
        s->free = b->next;
        if (s->used++ == 0) --empty_slabs;
        return b;
      }
      unlink(s);  // full: relisted when one of its blocks comes back
    }
    if (remote.load(std::memory_order_relaxed)) {
      drain_remote();
      continue;
    }
    Slab* s;
    {
      std::unique_lock<std::mutex> lock(global().mutex, std::defer_lock);
      if (!is_global) lock.lock();
      s = take_empty_slab();
    }
    s->owner.store(this, std::memory_order_relaxed);
    s->all_prev = nullptr;
    s->all_next = all;
    if (all) all->all_prev = s;
    all = s;
    s->cls = static_cast<uint32_t>(c);
    s->used = 0;
    s->free = nullptr;
    char* first = reinterpret_cast<char*>(s) + kSlabHeader;
    for (uint32_t i = units(c); i-- > 0;)  // lowest address handed out first
      s->free = new (first + i * c * kGranule) FreeBlock{s->free};
    ++empty_slabs;
    link(s);
  }
}

Pool::~Pool() {
  if (is_global) return;
  pool_alive = false;
  large.free_all();
  std::lock_guard<std::mutex> lock(global().mutex);  // no remote free can start now
  for (FreeBlock* b = remote.exchange(nullptr, std::memory_order_acquire); b;) {
    FreeBlock* next = b->next;
    Slab* s = slab_of(b);
    b->next = s->free;
    s->free = b;
    --s->used;
    b = next;
  }
  while (Slab* s = all) {
    all = s->all_next;
    if (s->used == 0) {
      put_empty_slab(s);
    } else {  // blocks still in use elsewhere: the last free returns the slab
      s->listed = false;
      s->owner.store(nullptr, std::memory_order_relaxed);
    }
  }
}

// Frees a block that is not the calling thread's to free locally.
void free_elsewhere(FreeBlock* b) {
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mutex);
  Slab* s = slab_of(b);
  Pool* owner = s->owner.load(std::memory_order_relaxed);
  if (owner == &g.pool) {
    g.pool.free_local(s, b);
  } else if (owner) {  // a live thread: it takes the block back when it runs short
    b->next = owner->remote.load(std::memory_order_relaxed);
    while (!owner->remote.compare_exchange_weak(b->next, b, std::memory_order_release, std::memory_order_relaxed)) {
    }
  } else {  // abandoned by a thread that ended
    b->next = s->free;
    s->free = b;
    if (--s->used == 0) put_empty_slab(s);
  }
}
}  // namespace

size_t size_class(size_t bytes) { return bytes == 0 ? 1 : (bytes + kGranule - 1) / kGranule; }

size_t pool_cached_bytes() { return pool_alive ? pool.empty_slabs * kSlabBytes : 0; }

size_t pool_large_cached_bytes() { return pool_alive ? pool.large.bytes : 0; }

bool pool_medium_on_huge_pages() { return huge_pages_possible(); }

bool pool_enabled() { return true; }

PoolSegments pool_segments() {
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mutex);
  return {g.segments_used, g.segments_taken_ahead, g.ahead.size(), g.mapping_ahead};
}

size_t pool_medium_chunks() {
  MediumChunks& m = medium();
  std::lock_guard<std::mutex> lock(m.mutex);
  return m.chunks.size();
}

void* pool_alloc(size_t bytes) {
  size_t c = size_class(bytes);
  if (c > kClasses) {
    if (pool_alive)
      if (void* p = pool.large.take(bytes)) return p;  // the newest of that size: warmest in cache
    return raw_alloc(bytes);
  }
  if (pool_alive) return pool.alloc(c);
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mutex);
  return g.pool.alloc(c);
}

void pool_free(void* p, size_t bytes) {
  size_t c = size_class(bytes);
  if (c > kClasses) {
    if (!pool_alive || !pool.large.keep(p, bytes)) raw_free(p, bytes);
    return;
  }
  auto* b = static_cast<FreeBlock*>(p);
  Slab* s = slab_of(p);
  if (pool_alive && s->owner.load(std::memory_order_relaxed) == &pool) pool.free_local(s, b);
  else free_elsewhere(b);
}
#endif

}  // namespace tapegrad::detail
