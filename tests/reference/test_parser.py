"""The reference GGUF parser (gguf_py): a written-then-read file of every value
type, rejected corrupt files, and the stories260K header."""

import os
import struct
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dequant  # noqa: E402
import gguf_py  # noqa: E402
import llama_ref  # noqa: E402
from gguf_py import (T_ARRAY, T_BOOL, T_FLOAT32, T_FLOAT64, T_INT8, T_INT16, T_INT32,  # noqa: E402
                     T_INT64, T_STRING, T_UINT8, T_UINT16, T_UINT32, T_UINT64)
from ref_testutil import HAVE_STORIES, STORIES  # noqa: E402


class TestParserSynthetic(unittest.TestCase):

    def roundtrip(self, version, alignment):
        meta = [
            ("general.architecture", T_STRING, "llama"),
            ("t.u8", T_UINT8, 250), ("t.i8", T_INT8, -100),
            ("t.u16", T_UINT16, 65000), ("t.i16", T_INT16, -32000),
            ("t.u32", T_UINT32, 4000000000), ("t.i32", T_INT32, -2000000000),
            ("t.f32", T_FLOAT32, 0.5), ("t.bool", T_BOOL, True),
            ("t.u64", T_UINT64, 2 ** 63 + 5), ("t.i64", T_INT64, -(2 ** 62)),
            ("t.f64", T_FLOAT64, 1e-300), ("t.str", T_STRING, "héllo ▁wörld"),
            ("t.arr_i32", T_ARRAY, (T_INT32, [1, -2, 3])),
            ("t.arr_str", T_ARRAY, (T_STRING, ["a", "", "<0x0A>"])),
            ("t.arr_empty", T_ARRAY, (T_FLOAT32, [])),
            ("t.nested", T_ARRAY, (T_ARRAY, [(T_UINT8, [1, 2]), (T_STRING, ["x"]),
                                             (T_ARRAY, [(T_BOOL, [False, True])])])),
        ]
        if alignment != 32:
            meta.append(("general.alignment", T_UINT32, alignment))
        a = np.arange(6, dtype="<f4")
        b = np.arange(5, dtype="<f2")
        tensors = [("a", (3, 2), 0, a.tobytes()), ("b", (5,), 1, b.tobytes())]
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "t.gguf")
            gguf_py.write(path, meta, tensors, version=version, alignment=alignment)
            g = gguf_py.load(path)
            self.assertEqual(g.version, version)
            self.assertEqual(g.alignment, alignment)
            self.assertEqual(g.data_offset % alignment, 0)
            md = g.metadata
            self.assertEqual(md["t.u8"], 250)
            self.assertEqual(md["t.i8"], -100)
            self.assertEqual(md["t.u16"], 65000)
            self.assertEqual(md["t.i16"], -32000)
            self.assertEqual(md["t.u32"], 4000000000)
            self.assertEqual(md["t.i32"], -2000000000)
            self.assertEqual(md["t.f32"], 0.5)
            self.assertIs(md["t.bool"], True)
            self.assertEqual(md["t.u64"], 2 ** 63 + 5)
            self.assertEqual(md["t.i64"], -(2 ** 62))
            self.assertEqual(md["t.f64"], 1e-300)
            self.assertEqual(md["t.str"], "héllo ▁wörld")
            self.assertEqual(md["t.arr_i32"], [1, -2, 3])
            self.assertEqual(md["t.arr_str"], ["a", "", "<0x0A>"])
            self.assertEqual(md["t.arr_empty"], [])
            self.assertEqual(md["t.nested"], [[1, 2], ["x"], [[False, True]]])
            self.assertEqual(g.metadata_types["t.nested"], T_ARRAY)
            self.assertEqual(list(g.tensors), ["a", "b"])
            self.assertEqual(g.tensor("a").np_shape, (2, 3))
            np.testing.assert_array_equal(dequant.dequantize(g.tensor("a")),
                                          a.reshape(2, 3))
            np.testing.assert_array_equal(dequant.dequantize(g.tensor("b")), b)
            self.assertEqual(g.tensor("b").offset % alignment, 0)

    def test_v3_default_alignment(self):
        self.roundtrip(3, 32)

    def test_v2_custom_alignment(self):
        self.roundtrip(2, 64)

    def test_rejects_bad_files(self):
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "t.gguf")
            gguf_py.write(path, [("k", T_STRING, "v")], [("a", (4,), 0, bytes(16))])
            with open(path, "rb") as f:
                data = f.read()
            cases = {
                "bad magic": b"GGUX" + data[4:],
                "version 1": data[:4] + struct.pack("<I", 1) + data[8:],
                "truncated header": data[:30],
                "truncated data": data[:-4],
            }
            for what, blob in cases.items():
                with self.subTest(what):
                    with open(path, "wb") as f:
                        f.write(blob)
                    with self.assertRaises(gguf_py.GGUFError):
                        gguf_py.load(path)


@unittest.skipUnless(HAVE_STORIES, f"{STORIES} not found")
class TestParserStories(unittest.TestCase):

    def test_stories260k(self):
        g = gguf_py.load(STORIES)
        self.assertEqual(os.path.getsize(STORIES), 1185376)
        self.assertEqual(g.version, 3)
        self.assertEqual(len(g.tensors), 48)
        self.assertEqual(g.get("general.architecture"), "llama")
        self.assertEqual(g.get("tokenizer.ggml.model"), "llama")
        for key, want in [("llama.embedding_length", 64), ("llama.block_count", 5),
                          ("llama.feed_forward_length", 172),
                          ("llama.attention.head_count", 8),
                          ("llama.attention.head_count_kv", 4),
                          ("llama.context_length", 2048),
                          ("tokenizer.ggml.bos_token_id", 1),
                          ("tokenizer.ggml.eos_token_id", 2),
                          ("tokenizer.ggml.unknown_token_id", 0)]:
            self.assertEqual(g.get(key), want, key)
        self.assertAlmostEqual(g.get("llama.attention.layer_norm_rms_epsilon"), 1e-5, places=10)
        self.assertEqual(len(g.get("tokenizer.ggml.tokens")), 512)
        self.assertEqual(len(g.get("tokenizer.ggml.scores")), 512)
        self.assertEqual(g.get("tokenizer.ggml.tokens")[:3], ["<unk>", "<s>", "</s>"])

        dims = {"token_embd.weight": (64, 512), "output.weight": (64, 512),
                "output_norm.weight": (64,)}
        for i in range(5):
            p = f"blk.{i}."
            dims.update({p + "attn_norm.weight": (64,), p + "ffn_norm.weight": (64,),
                         p + "attn_q.weight": (64, 64), p + "attn_k.weight": (64, 32),
                         p + "attn_v.weight": (64, 32), p + "attn_output.weight": (64, 64),
                         p + "ffn_gate.weight": (64, 172), p + "ffn_up.weight": (64, 172),
                         p + "ffn_down.weight": (172, 64)})
        self.assertEqual(set(g.tensors), set(dims))
        end = 0
        for name, t in g.tensors.items():
            self.assertEqual(t.dims, dims[name], name)
            self.assertEqual(t.type_name, "F32", name)
            self.assertEqual(t.offset % g.alignment, 0)
            end = max(end, g.data_offset + t.offset + t.n_bytes)
        self.assertEqual(g.data_offset % g.alignment, 0)
        self.assertEqual(end, os.path.getsize(STORIES))

        cfg = llama_ref.Config.from_gguf(g)
        self.assertEqual((cfg.head_dim, cfg.n_rot, cfg.vocab_size), (8, 8, 512))
        self.assertFalse(cfg.rope_neox)


if __name__ == "__main__":
    unittest.main()
