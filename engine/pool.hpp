#pragma once
// A per-thread cache of memory blocks for tensors and nodes. A training step or a long chain
// allocates and frees the same few block sizes tens of thousands of times; reusing them last-in
// first-out is several times cheaper than malloc/free and keeps them warm in cache. Small blocks
// (≤ 1 KiB) come from 64 KiB slabs owned by one thread each (lock-free for their owner; empty
// slabs are reused or returned to the kernel), large buffers (192 sizes at most, 256 MiB in
// all, the oldest dropped first) are kept by exact size; those from 128 KiB up live on 2 MiB (huge)
// pages. Slabs are cut from 4 MiB segments, which at threads >= 2 a helper maps ahead of need.
// AddressSanitizer builds bypass it so use-after-free stays detectable.
#include <cstddef>

namespace tapegrad::detail {
void* pool_alloc(size_t bytes);
void pool_free(void* p, size_t bytes);  // `bytes` must be what pool_alloc was given
size_t pool_cached_bytes();             // small blocks cached by this thread (0 without the pool)
size_t pool_large_cached_bytes();       // large buffers (over 1 KiB) cached by this thread, free
size_t pool_medium_chunks();            // 2 MiB chunks holding buffers of 128 KiB to 2 MiB (process)
bool pool_medium_on_huge_pages();       // whether they do: the pool is on and huge pages are not off
bool pool_enabled();                    // false where the pool is bypassed (AddressSanitizer builds)
// Slab segments (process-wide): cut into slabs so far, of them mapped ahead by a helper, mapped
// ahead and not yet needed (2 at most), and whether a helper is mapping more now.
struct PoolSegments {
  size_t used = 0, taken_ahead = 0, ready = 0;
  bool mapping = false;
};
PoolSegments pool_segments();
}  // namespace tapegrad::detail
