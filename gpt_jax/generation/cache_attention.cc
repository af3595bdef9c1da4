// One decode step's attention over the written entries of a heads-major KV cache, for XLA:CPU.
//
// Why a kernel: XLA reads a cache of static length S every step, the unwritten entries too,
// and it cannot read a traced number of entries without copying them (a dynamic slice feeding
// a dot is materialized). This reads entries [0, length) of each row once for the scores and
// once for the values, and nothing after. cache_attention.py builds it and calls it through
// jax.ffi; it falls back to the XLA code, the same function, where this cannot run.
//
// Inputs: q (N, D), k and v (N, S, D) with N = B * H (row n is head n % H of batch row n / H),
// mask (B, S) bool (true: the query may look), length (1,) int32. Output (N, D), float32.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Shared by the calling thread and the pool's tasks; a task that starts after the work is
// done finds nothing to take, so the state lives on the heap (shared_ptr), not the stack.
struct Work {
  const float *q, *k, *v;
  const bool* mask;
  float* out;
  int64_t rows, S, D, heads, length;
  float scale;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;
};

// Softmax over the scores of row n's first `length` entries, then the weighted sum of values.
// A masked entry scores -FLT_MAX, as XLA's path does (finfo.min), so a row with nothing to see
// averages rather than producing NaN. kD: the head dim when known at compile time (0: w.D),
// so that the output row stays in registers across the values instead of in memory.
template <int64_t kD>
void Row(const Work& w, int64_t n, std::vector<float>& p) {
  const int64_t L = w.length, D = kD ? kD : w.D;
  const float* q = w.q + n * D;
  const float* k = w.k + n * w.S * D;
  const float* v = w.v + n * w.S * D;
  const bool* m = w.mask + (n / w.heads) * w.S;
  float top = -FLT_MAX;
  for (int64_t s = 0; s < L; ++s) {
    const float* ks = k + s * D;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += q[d] * ks[d];
    p[s] = m[s] ? dot * w.scale : -FLT_MAX;
    top = std::max(top, p[s]);
  }
  float sum = 0.f;
  for (int64_t s = 0; s < L; ++s) sum += (p[s] = std::exp(p[s] - top));
  float fixed[kD ? kD : 1];
  std::vector<float> dynamic(kD ? 0 : D);
  float* o = kD ? fixed : dynamic.data();
  std::fill(o, o + D, 0.f);
  for (int64_t s = 0; s < L; ++s) {
    if (p[s] == 0.f) continue;  // a masked entry: its values need not be read
    const float* vs = v + s * D;
    const float ps = p[s];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += ps * vs[d];
  }
  const float inv = 1.f / sum;
  float* out = w.out + n * D;
  for (int64_t d = 0; d < D; ++d) out[d] = o[d] * inv;
}

void AnyRow(const Work& w, int64_t n, std::vector<float>& p) {
  switch (w.D) {  // GPT-2's head dim is 64 in every preset
    case 32: return Row<32>(w, n, p);
    case 64: return Row<64>(w, n, p);
    case 128: return Row<128>(w, n, p);
    default: return Row<0>(w, n, p);
  }
}

constexpr int64_t kChunk = 8;  // rows taken at a time: few enough atomics, enough to balance

void Drain(Work& w) {
  std::vector<float> p(w.length);
  int64_t finished = 0;
  for (int64_t start; (start = w.next.fetch_add(kChunk)) < w.rows;) {
    const int64_t end = std::min(start + kChunk, w.rows);
    for (int64_t n = start; n < end; ++n) AnyRow(w, n, p);
    finished += end - start;
  }
  if (finished && w.done.fetch_add(finished) + finished == w.rows) {
    std::lock_guard<std::mutex> lock(w.mu);
    w.cv.notify_all();
  }
}

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                ffi::Buffer<ffi::S32> length, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  const auto md = mask.dimensions();
  if (qd.size() != 2 || kd.size() != 3 || vd.size() != 3 || md.size() != 2 ||
      qd[0] != kd[0] || qd[1] != kd[2] || vd[0] != kd[0] || vd[1] != kd[1] ||
      vd[2] != kd[2] || md[1] != kd[1] || md[0] == 0 || kd[0] % md[0] != 0) {
    return ffi::Error::InvalidArgument("cache_attention: q (N, D), k and v (N, S, D) and "
                                       "mask (B, S) with N a multiple of B");
  }
  auto w = std::make_shared<Work>();
  w->q = q.typed_data();
  w->k = k.typed_data();
  w->v = v.typed_data();
  w->mask = mask.typed_data();
  w->out = out->typed_data();
  w->rows = kd[0];
  w->S = kd[1];
  w->D = kd[2];
  w->heads = kd[0] / md[0];
  w->length = std::clamp<int64_t>(length.typed_data()[0], 1, w->S);
  w->scale = 1.f / std::sqrt(static_cast<float>(w->D));
  // The caller takes rows too, so the call ends even if the pool never runs a task.
  const int64_t tasks = std::min<int64_t>(pool.num_threads(), (w->rows + kChunk - 1) / kChunk);
  for (int64_t i = 1; i < tasks; ++i) pool.Schedule([w] { Drain(*w); });
  Drain(*w);
  std::unique_lock<std::mutex> lock(w->mu);
  w->cv.wait(lock, [&] { return w->done.load() == w->rows; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GptJaxCacheAttention, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // q
                                  .Arg<ffi::Buffer<ffi::F32>>()    // k cache
                                  .Arg<ffi::Buffer<ffi::F32>>()    // v cache
                                  .Arg<ffi::Buffer<ffi::PRED>>()   // mask
                                  .Arg<ffi::Buffer<ffi::S32>>()    // length
                                  .Ret<ffi::Buffer<ffi::F32>>());  // (N, D)
