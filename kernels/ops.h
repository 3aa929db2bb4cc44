// Host-side launchers of the CUDA backend's kernels, one op per .cu file.
//
// Plain C++ (no CUDA syntax, no Abseil) so the backend's .cc files include
// it and nvcc never sees Abseil. Every launcher enqueues on `stream` and
// returns the launch's error (cudaGetLastError); execution errors surface at
// the next synchronising call.
#ifndef SINKSERVE_KERNELS_OPS_H_
#define SINKSERVE_KERNELS_OPS_H_

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sinkserve::kernels {

// Element type of device weights, activations fed to GEMMs, and KV rows.
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline int DTypeBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// Step metadata shared by the attention and KV kernels; all arrays are
// device pointers. Rows are the step's new tokens, sequences in batch order.
struct StepTables {
  const int32_t* row_seq;       // (n_rows) sequence of each row
  const int32_t* row_n_keys;    // (n_rows) keys the row attends to (causal)
  const int32_t* row_position;  // (n_rows) RoPE position of the row
  const int32_t* row_slot;      // (n_rows) slot its K/V is written to
  const int32_t* seq_key_begin; // (n_seqs + 1) prefix sums of keys per sequence
  const int32_t* seq_capacity;  // (n_seqs) slots in the sequence's storage
  const int32_t* key_slot;      // (total keys) slot of each key: context, then new
  const int32_t* key_position;  // (total keys) its RoPE position
  void* const* seq_kv;          // (n_seqs) storage base: (layer, {K,V}, capacity, kv_dim)
  int32_t n_rows;
  int32_t n_seqs;
};

struct AttentionShape {
  int n_heads;
  int n_kv_heads;
  int head_dim;   // even, <= 256
  int n_layers;
  int rope_neox;  // 1: pairs (i, i + d/2); 0: pairs (2i, 2i + 1)
  float scale;    // 1 / sqrt(head_dim)
};

// --- weights --------------------------------------------------------------
// out (rows, cols) in `out_type` = the ggml rows at `in` (rows * row_bytes),
// ggml type id `ggml_type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K).
cudaError_t LaunchDequantize(uint32_t ggml_type, const void* in, int64_t rows, int64_t cols,
                             int64_t row_bytes, DType out_type, void* out,
                             cudaStream_t stream);

// --- embedding gather -------------------------------------------------------
// x (n, dim) f32 = rows `tokens` (n) of table (vocab, dim) in `type`.
cudaError_t LaunchEmbedding(const void* table, DType type, const int32_t* tokens, int n,
                            int dim, float* x, cudaStream_t stream);

// --- RMSNorm --------------------------------------------------------------
// out (n, dim) in `out_type` = x / rms(x) * w, rows of x picked by `rows`
// (n; null: rows 0..n-1). x f32, w f32 (dim).
cudaError_t LaunchRmsNorm(const float* x, const int32_t* rows, const float* w, int n,
                          int dim, float eps, DType out_type, void* out,
                          cudaStream_t stream);

// --- RoPE of queries --------------------------------------------------------
// q (n_rows, n_heads * head_dim) += bias (may be null), then rotated in place
// by row_position, using the cos/sin table (positions, head_dim / 2).
cudaError_t LaunchRopeQueries(float* q, const float* bias, const StepTables& t,
                              const AttentionShape& s, const float* rope_cos,
                              const float* rope_sin, cudaStream_t stream);

// --- KV write ------------------------------------------------------------------
// Stores k, v (n_rows, kv_dim) f32 (+ bias bk, bv when not null) of every
// new row at its slot of `layer`, converted to `kv_type`. Keys pre-RoPE.
cudaError_t LaunchKvWrite(const float* k, const float* v, const float* bk, const float* bv,
                          const StepTables& t, int layer, int kv_dim, DType kv_type,
                          cudaStream_t stream);

// --- attention ----------------------------------------------------------------
// Split-K decode attention for the rows in row_list (n_list; null: rows
// 0..n_list-1). q (n_rows, n_heads * head_dim) already rotated; keys rotated
// on the fly by key_position. Partials go to `partial` (n_list, n_heads,
// n_splits, head_dim + 2), then are combined into those rows of out
// (n_rows, n_heads * head_dim) in `out_type`. max_keys bounds row_n_keys of
// the listed rows. Also correct (if slower) for prefill rows.
size_t DecodeAttentionScratchFloats(int n_list, const AttentionShape& s, int n_splits);
cudaError_t LaunchDecodeAttention(const float* q, const StepTables& t, const AttentionShape& s,
                                  int layer, DType kv_type, const float* rope_cos,
                                  const float* rope_sin, const int32_t* row_list, int n_list,
                                  int n_splits, int max_keys, float* partial, DType out_type,
                                  void* out, cudaStream_t stream);

// Tiled causal attention for prefill chunks: tiles (n_tiles) of up to
// kPrefillTileRows consecutive rows of one sequence, tile_first_row[i] and
// tile_rows[i] each. head_dim <= 128. Writes out like the decode kernel.
inline constexpr int kPrefillTileRows = 8;
bool PrefillAttentionSupported(const AttentionShape& s);
cudaError_t PreparePrefillAttention();  // raises the shared-memory limit once
cudaError_t LaunchPrefillAttention(const float* q, const StepTables& t,
                                   const AttentionShape& s, int layer, DType kv_type,
                                   const float* rope_cos, const float* rope_sin,
                                   const int32_t* tile_first_row, int n_tiles,
                                   DType out_type, void* out, cudaStream_t stream);

// Causal attention for prefill chunks on tensor cores (FlashAttention-2
// style, flash_prefill_attention.cu): the same meaning as
// LaunchPrefillAttention, with tiles of up to kFlashTileRows consecutive rows
// of one sequence. Only f16 / bf16 KV (the MMA operand type) and head_dim 16,
// 32, 64 or 128; queries, rotated keys and softmax weights are rounded to the
// KV type, accumulation is f32. Static shared memory only: no Prepare call.
inline constexpr int kFlashTileRows = 64;
bool FlashPrefillAttentionSupported(const AttentionShape& s, DType kv_type);
cudaError_t LaunchFlashPrefillAttention(const float* q, const StepTables& t,
                                        const AttentionShape& s, int layer, DType kv_type,
                                        const float* rope_cos, const float* rope_sin,
                                        const int32_t* tile_first_row, int n_tiles,
                                        DType out_type, void* out, cudaStream_t stream);

// --- SwiGLU ----------------------------------------------------------------------
// out (count) in `out_type` = silu(gate) * up; gate, up f32.
cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t count, DType out_type,
                         void* out, cudaStream_t stream);

// --- residual add ---------------------------------------------------------------
// x (count) += y (count), f32.
cudaError_t LaunchResidualAdd(float* x, const float* y, int64_t count, cudaStream_t stream);

// --- slot rows (compaction, snapshots) ---------------------------------------------
// Storage (n_layers, 2, capacity, row_elems) of 2-byte units. Gather copies
// rows `slots` (n) into packed (n_layers, 2, n, row_elems); scatter is the
// inverse. row_elems counts 2-byte units (kv_dim * dtype bytes / 2).
cudaError_t LaunchGatherSlots(const uint16_t* storage, int n_layers, int capacity,
                              int row_elems, const int32_t* slots, int n, uint16_t* packed,
                              cudaStream_t stream);
cudaError_t LaunchScatterSlots(const uint16_t* packed, int n_layers, int capacity,
                               int row_elems, const int32_t* slots, int n, uint16_t* storage,
                               cudaStream_t stream);

// --- sampling ----------------------------------------------------------------------
struct SampleParams {
  float temperature;  // <= 0: greedy
  int top_k;          // <= 0: all
  float top_p;        // >= 1: off
  float uniform;      // the draw, in [0, 1), from the host's seeded RNG
  int32_t target;     // token whose surprisal is wanted; -1: none
};
struct SampleResult {
  int32_t token;      // the pick
  float logprob;      // ln p(token) under the untempered distribution
  float surprisal;    // -ln p(target), or 0 without a target
};
// One block per pick: pick i reads row rows[i] (rows null: row i) of logits
// (rows, vocab) f32 with params[i], and writes results[i].
cudaError_t LaunchSample(const float* logits, const int32_t* rows, int n_picks, int vocab,
                         const SampleParams* params, SampleResult* results,
                         cudaStream_t stream);

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_OPS_H_
