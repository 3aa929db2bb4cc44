"""Small builders shared by the reference self-tests (test_*.py here).

Data comes from $SINKSERVE_SHARED (default /work/shared); tests that need
stories260K.gguf skip when it is absent. Importing this module also puts this
folder on sys.path, so the tests can import gguf_py, dequant and llama_ref.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import gguf_py  # noqa: E402
from gguf_py import T_ARRAY, T_FLOAT32, T_STRING, T_UINT32  # noqa: E402

SHARED = os.environ.get("SINKSERVE_SHARED", "/work/shared")
STORIES = os.path.join(SHARED, "models", "stories260K.gguf")
HAVE_STORIES = os.path.exists(STORIES)


def f16_bytes(x: float) -> bytes:
    return np.array([x], dtype="<f2").tobytes()


def random_blocks(rng, type_name, n_blocks):
    """Random bytes with the f16 scale fields replaced by finite, moderate values."""
    _, qk, size = gguf_py.GGML_TYPES[gguf_py.GGML_TYPE_BY_NAME[type_name]]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d_offsets = {"Q4_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}[type_name]
    for off in d_offsets:
        d = rng.uniform(-0.05, 0.05, size=n_blocks).astype("<f2")
        raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw, qk


def make_synthetic_qwen2(path, rng, tied=True, rope_factor=2.0):
    """A tiny random qwen2 model exercising biases, tied embeddings, linear RoPE
    scaling and quantized weights of every supported type."""
    dim, n_heads, n_kv, ffn, vocab, n_layers = 32, 4, 2, 256, 40, 2
    hd = dim // n_heads

    def f32(shape_np, scale=0.3):
        return (rng.standard_normal(shape_np) * scale).astype("<f4").tobytes()

    def quant(type_name, n_elems):
        raw, qk = random_blocks(rng, type_name, n_elems // gguf_py.GGML_TYPES[
            gguf_py.GGML_TYPE_BY_NAME[type_name]][1])
        return raw.tobytes()

    T = gguf_py.GGML_TYPE_BY_NAME
    tensors = [("token_embd.weight", (dim, vocab), 0, f32((vocab, dim), 1.0)),
               ("output_norm.weight", (dim,), 0, f32((dim,), 0.1) )]
    if not tied:
        tensors.append(("output.weight", (dim, vocab), 0, f32((vocab, dim))))
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (dim,), 0, (1 + rng.standard_normal(dim) * 0.1).astype("<f4").tobytes()),
            (p + "attn_q.weight", (dim, dim), T["Q8_0"], quant("Q8_0", dim * dim)),
            (p + "attn_q.bias", (dim,), 0, f32((dim,))),
            (p + "attn_k.weight", (dim, n_kv * hd), T["Q4_0"], quant("Q4_0", dim * n_kv * hd)),
            (p + "attn_k.bias", (n_kv * hd,), 0, f32((n_kv * hd,))),
            (p + "attn_v.weight", (dim, n_kv * hd), T["F16"],
             (rng.standard_normal(dim * n_kv * hd) * 0.3).astype("<f2").tobytes()),
            (p + "attn_v.bias", (n_kv * hd,), 0, f32((n_kv * hd,))),
            (p + "attn_output.weight", (dim, dim), T["BF16"],
             ((rng.standard_normal(dim * dim) * 0.3).astype("<f4").view("<u4") >> 16)
             .astype("<u2").tobytes()),
            (p + "ffn_norm.weight", (dim,), 0, (1 + rng.standard_normal(dim) * 0.1).astype("<f4").tobytes()),
            (p + "ffn_gate.weight", (dim, ffn), 0, f32((ffn, dim))),
            (p + "ffn_up.weight", (dim, ffn), 0, f32((ffn, dim))),
            # ffn_down rows have ffn = 256 elements: room for one K-quant block each.
            (p + "ffn_down.weight", (ffn, dim), T["Q4_K" if i == 0 else "Q6_K"],
             quant("Q4_K" if i == 0 else "Q6_K", ffn * dim)),
        ]
    meta = [("general.architecture", T_STRING, "qwen2"),
            ("qwen2.embedding_length", T_UINT32, dim),
            ("qwen2.block_count", T_UINT32, n_layers),
            ("qwen2.feed_forward_length", T_UINT32, ffn),
            ("qwen2.attention.head_count", T_UINT32, n_heads),
            ("qwen2.attention.head_count_kv", T_UINT32, n_kv),
            ("qwen2.attention.layer_norm_rms_epsilon", T_FLOAT32, 1e-6),
            ("qwen2.rope.freq_base", T_FLOAT32, 1000000.0),
            ("qwen2.context_length", T_UINT32, 4096),
            ("tokenizer.ggml.model", T_STRING, "gpt2"),
            ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, [chr(ord("a") + i % 26) * (1 + i // 26)
                                                           for i in range(vocab)])),
            ("tokenizer.ggml.bos_token_id", T_UINT32, 0)]
    if rope_factor != 1.0:
        meta += [("qwen2.rope.scaling.type", T_STRING, "linear"),
                 ("qwen2.rope.scaling.factor", T_FLOAT32, rope_factor)]
    gguf_py.write(path, meta, tensors)
