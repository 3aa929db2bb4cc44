#!/usr/bin/env python3
"""End-to-end checks of the `sinkserve` command line: real binary, real files.

CTest sets SINKSERVE_BIN (the CMake build folder) and SINKSERVE_SHARED.
"""
import os
import subprocess
import tempfile
import unittest

BIN = os.path.join(os.environ.get("SINKSERVE_BIN", "build"), "service", "sinkserve")
SHARED = os.environ.get("SINKSERVE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")
VECTORS = os.path.join(SHARED, "tokenizer-vectors")


def run(*args, stdin=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, input=stdin, timeout=120)


def read_vectors(name):
    with open(os.path.join(VECTORS, name + ".inp"), encoding="utf-8", newline="") as f:
        inputs = f.read().split("\n__ggml_vocab_test__\n")
    with open(os.path.join(VECTORS, name + ".out"), encoding="utf-8") as f:
        outputs = f.read().split("\n")
    return inputs, outputs


class ExitCodes(unittest.TestCase):
    def test_no_command_is_usage_error(self):
        r = run()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr)

    def test_unknown_command(self):
        r = run("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command", r.stderr)

    def test_unknown_flag_is_usage_error(self):
        r = run("inspect", "--model", MODEL, "--bogus", "1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--bogus", r.stderr)

    def test_missing_required_flag(self):
        self.assertEqual(run("inspect").returncode, 2)
        self.assertEqual(run("tokenize", "--model", MODEL).returncode, 2)

    def test_missing_file_is_one_clear_line(self):
        r = run("inspect", "--model", "/nonexistent/model.gguf")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("/nonexistent/model.gguf", r.stderr)

    def test_corrupt_file_is_error_not_crash(self):
        with open(MODEL, "rb") as f:
            data = f.read()
        with tempfile.TemporaryDirectory() as d:
            for cut in (3, 40, 1000, len(data) // 2):
                path = os.path.join(d, "cut.gguf")
                with open(path, "wb") as f:
                    f.write(data[:cut])
                r = run("inspect", "--model", path)
                self.assertEqual(r.returncode, 1, (cut, r.stderr))
                self.assertTrue(r.stderr.startswith("sinkserve inspect: "), r.stderr)

    def test_help(self):
        r = run("tokenize", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--model", r.stdout)


class Inspect(unittest.TestCase):
    def test_stories260k(self):
        r = run("inspect", "--model", MODEL)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout
        self.assertIn("architecture  llama", out)
        self.assertIn("dim 64, layers 5, heads 8, kv heads 4, head dim 8, ffn 172", out)
        self.assertIn("vocab         512 tokens", out)
        self.assertIn("tensors       48", out)
        self.assertIn("untied", out)


class Tokenize(unittest.TestCase):
    def check_vectors(self, name, bos_prefix=()):
        inputs, outputs = read_vectors(name)
        model = os.path.join(VECTORS, name)
        for text, expected in zip(inputs, outputs):
            with self.subTest(text=text):
                with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", delete=False) as f:
                    f.write(text)
                try:
                    r = run("tokenize", "--model", model, "--file", f.name)
                finally:
                    os.unlink(f.name)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.strip(), expected.strip())

    def test_llama_spm_vectors(self):
        self.check_vectors("ggml-vocab-llama-spm.gguf")

    def test_gpt2_vectors(self):
        self.check_vectors("ggml-vocab-gpt-2.gguf")

    def test_bos_flag(self):
        plain = run("tokenize", "--model", MODEL, "--text", "Once upon a time")
        bos = run("tokenize", "--model", MODEL, "--text", "Once upon a time", "--bos")
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertEqual(bos.stdout.split(), ["1"] + plain.stdout.split())


if __name__ == "__main__":
    unittest.main(verbosity=2)
