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


def ids_of(*args):
    r = run("generate", "--model", MODEL, "--ids", *args)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return [int(t) for t in r.stdout.split()]


class Generate(unittest.TestCase):
    def test_greedy_story_streams_text_and_timing(self):
        r = run("generate", "--model", MODEL, "--temperature", "0", "--max-tokens", "40")
        self.assertEqual(r.returncode, 0, r.stderr)
        # stories260K's greedy story from BOS (a known property of the model).
        self.assertTrue(r.stdout.startswith("Once upon a time"), r.stdout)
        self.assertRegex(r.stderr, r"prompt 1 tokens in .* tok/s\); generated 40 tokens in .* tok/s")

    def test_ids_match_max_tokens_and_text(self):
        ids = ids_of("--temperature", "0", "--max-tokens", "30", "--ignore-eos")
        self.assertEqual(len(ids), 30)
        self.assertTrue(all(0 <= i < 512 for i in ids))
        text = run("generate", "--model", MODEL, "--temperature", "0", "--max-tokens", "30",
                   "--ignore-eos").stdout.rstrip("\n")
        again = run("tokenize", "--model", MODEL, "--text", text).stdout.split()
        self.assertEqual([int(t) for t in again], ids)

    def test_stop_string_ids_leave_out_the_stop(self):
        full = ids_of("--temperature", "0", "--max-tokens", "60")
        r = run("generate", "--model", MODEL, "--temperature", "0", "--max-tokens", "60",
                "--stop", "girl named")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("girl named", r.stdout)
        self.assertIn("stop: stop string", r.stderr)
        stopped = ids_of("--temperature", "0", "--max-tokens", "60", "--stop", "girl named")
        self.assertEqual(stopped, full[:len(stopped)])
        # The emitted text's own tokens, plus at most the one token that
        # straddles the stop string's start; never the stop string's tokens.
        emitted = run("tokenize", "--model", MODEL, "--text", r.stdout.rstrip("\n")).stdout.split()
        self.assertLessEqual(len(stopped), len(emitted) + 1)
        self.assertLess(len(stopped), len(full))

    def test_sirllm_decay_rounds_in_one_shot_runs(self):
        def run_with(decay, round_tokens):
            return ids_of("--policy", f"sirllm(4,8,20,{decay})", "--round-tokens",
                          str(round_tokens), "--temperature", "1", "--seed", "5",
                          "--ignore-eos", "--max-tokens", "400")
        # No round boundary inside the run: the decay factor cannot matter.
        self.assertEqual(run_with(1, 100000), run_with(0.5, 100000))
        # Rounds every 16 tokens: decay reorders the kept entropy cells.
        self.assertNotEqual(run_with(1, 16), run_with(0.5, 16))

    def test_round_tokens_is_not_for_sessions(self):
        with tempfile.TemporaryDirectory() as d:
            r = run("generate", "--model", MODEL, "--db", d, "--session", "s",
                    "--round-tokens", "8")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--round-tokens", r.stderr)


class Backend(unittest.TestCase):
    def test_unknown_backend_is_usage_error(self):
        for command in (["generate"], ["perplexity", "--file", MODEL], ["bench"]):
            r = run(*command, "--model", MODEL, "--backend", "gpu")
            self.assertEqual(r.returncode, 2, (command, r.stderr))
            self.assertIn("--backend gpu", r.stderr)

    def test_serve_checks_backend_and_kv_dtype_before_loading(self):
        with tempfile.TemporaryDirectory() as d:
            for flag, value in (("--backend", "gpu"), ("--kv-dtype", "f8")):
                r = run("serve", "--model", MODEL, "--db", d, flag, value)
                self.assertEqual(r.returncode, 2, (flag, r.stderr))
                self.assertIn(flag, r.stderr)

    def test_auto_is_cpu_where_cuda_is_unusable(self):
        args = ["--temperature", "0", "--max-tokens", "20"]
        cuda = run("generate", "--model", MODEL, "--backend", "cuda", "--ids", *args)
        if cuda.returncode == 0:
            self.skipTest("a CUDA device is usable here: auto picks it (parity is the GPU suite's)")
        self.assertEqual(cuda.returncode, 1)
        self.assertEqual(len(cuda.stderr.strip().splitlines()), 1, cuda.stderr)
        self.assertIn("CUDA", cuda.stderr)
        self.assertEqual(ids_of("--backend", "auto", *args), ids_of("--backend", "cpu", *args))


class Bench(unittest.TestCase):
    def test_prints_medians_and_bandwidth(self):
        r = run("bench", "--model", MODEL, "--prompt-tokens", "16", "--gen-tokens", "16",
                "--runs", "3", "--threads", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"load +[0-9.]+ ms")
        self.assertRegex(r.stdout, r"prefill +16 tokens: [0-9.]+ tok/s \(median of 3\)")
        self.assertRegex(r.stdout, r"decode +16 tokens: [0-9.]+ tok/s, [0-9.]+ ms/token \(median of 3\)")
        self.assertRegex(r.stdout, r"weights +[0-9.]+ MB read per decoded token -> [0-9.]+ GB/s effective")
        self.assertRegex(r.stdout, r"membw +[0-9.]+ GB/s measured read bandwidth \(1 threads\)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
