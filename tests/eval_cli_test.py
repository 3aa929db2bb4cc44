#!/usr/bin/env python3
"""End-to-end checks of `sinkserve perplexity`, `eval recall` and `bench stream`.

CTest sets SINKSERVE_BIN (the CMake build folder) and SINKSERVE_SHARED. The
text is written here (a few repeated sentences), so the tests need nothing but
the model.
"""
import csv
import math
import os
import re
import subprocess
import tempfile
import unittest

BIN = os.path.join(os.environ.get("SINKSERVE_BIN", "build"), "service", "sinkserve")
SHARED = os.environ.get("SINKSERVE_SHARED",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play "
         "outside in the park with her big red ball. One day, she saw a bird in a tree. "
         "The bird was sad because it could not fly. Lily wanted to help the bird. ")


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)


def parse_ppl(stdout):
    lines = stdout.strip().splitlines()
    buckets = []
    for line in lines[:-1]:
        m = re.fullmatch(r"tokens (\d+)-(\d+) ppl (\S+)", line)
        assert m, line
        buckets.append((int(m.group(1)), int(m.group(2)), float(m.group(3))))
    m = re.fullmatch(r"ppl=(\S+) tokens=(\d+)", lines[-1])
    assert m, lines[-1]
    return buckets, float(m.group(1)), int(m.group(2))


class Perplexity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.text = os.path.join(cls.dir.name, "story.txt")
        with open(cls.text, "w") as f:
            f.write(STORY * 4)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def ppl(self, *flags, csv_path=None):
        args = ["perplexity", "--model", MODEL, "--file", self.text, "--threads", "1",
                "--max-tokens", "150", "--bucket", "50", *flags]
        if csv_path:
            args += ["--csv", csv_path]
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def test_format_and_csv(self):
        path = os.path.join(self.dir.name, "nll.csv")
        r = self.ppl(csv_path=path)
        buckets, ppl, n = parse_ppl(r.stdout)
        self.assertEqual(n, 149)  # 150 ids, BOS included: 149 predictions
        self.assertEqual([(a, b) for a, b, _ in buckets], [(0, 49), (50, 99), (100, 148)])
        with open(path) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(list(rows[0].keys()), ["index", "token", "target", "nll"])
        self.assertEqual(len(rows), 149)
        self.assertEqual(rows[0]["token"], "1")  # BOS, once
        for i, row in enumerate(rows):
            self.assertEqual(int(row["index"]), i)
            if i:
                self.assertEqual(row["token"], rows[i - 1]["target"])
        nll = [float(row["nll"]) for row in rows]
        self.assertAlmostEqual(math.exp(sum(nll) / len(nll)), ppl, delta=1e-3 * ppl)
        for a, b, p in buckets:
            part = nll[a:b + 1]
            self.assertAlmostEqual(math.exp(sum(part) / len(part)), p, delta=1e-3 * p)

    def test_bounded_equal_full_under_budget(self):
        _, full, _ = parse_ppl(self.ppl().stdout)
        for policy in ["window(200)", "streaming(4,196)", "sirllm(4,50,146,0.9)",
                       "recompute(200)"]:
            _, got, _ = parse_ppl(self.ppl("--policy", policy).stdout)
            self.assertAlmostEqual(got, full, delta=1e-3, msg=policy)

    def test_eviction_changes_result_and_is_deterministic(self):
        full = self.ppl().stdout
        a = self.ppl("--policy", "streaming", "--sinks", "4", "--window", "28").stdout
        b = self.ppl("--policy", "streaming(4,28)").stdout
        self.assertEqual(a, b)
        self.assertNotEqual(parse_ppl(a)[1], parse_ppl(full)[1])

    def test_chunk(self):
        path = os.path.join(self.dir.name, "chunk.csv")
        r = self.ppl("--chunk", "64", csv_path=path)
        _, _, n = parse_ppl(r.stdout)
        self.assertEqual(n, 150 - 3)  # chunks of 64, 64, 22: each loses its last token
        with open(path) as f:
            idx = [int(row["index"]) for row in csv.DictReader(f)]
        self.assertNotIn(63, idx)
        self.assertNotIn(127, idx)

    def test_bad_input(self):
        for flags in (["--bucket", "0"], ["--policy", "window"], ["--policy", "nope"],
                      ["--policy", "window(8)", "--chunk", "16"], ["--bogus", "1"],
                      ["--policy", "streaming(4,8)", "--window", "9"]):
            r = run("perplexity", "--model", MODEL, "--file", self.text, *flags)
            self.assertEqual(r.returncode, 2, (flags, r.stderr))
        self.assertEqual(run("perplexity", "--model", MODEL).returncode, 2)
        r = run("perplexity", "--model", MODEL, "--file", "/nonexistent/x.txt")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/x.txt", r.stderr)
        r = run("perplexity", "--model", MODEL, "--file", self.dir.name)
        self.assertEqual(r.returncode, 1)
        self.assertIn("directory", r.stderr)
        empty = os.path.join(self.dir.name, "empty.txt")
        open(empty, "w").close()
        r = run("perplexity", "--model", MODEL, "--file", empty)
        self.assertEqual(r.returncode, 1, r.stderr)
        r = run("perplexity", "--model", "/nonexistent/m.gguf", "--file", self.text)
        self.assertEqual(r.returncode, 1)

    def test_help(self):
        r = run("perplexity", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--round-tokens", r.stdout)


class Recall(unittest.TestCase):
    def test_table(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "filler.txt")
            with open(path, "w") as f:
                f.write(STORY * 6)
            args = ["eval", "recall", "--model", MODEL, "--file", path, "--budget", "32",
                    "--gaps", "8,40", "--trials", "2", "--prefix", "40", "--threads", "1"]
            r = run(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(run(*args).stdout, r.stdout)  # deterministic
            lines = r.stdout.strip().splitlines()
            header = next(l for l in lines if l.startswith("gap"))
            for name in ["streaming(4,28)", "sirllm(4,8,20,1)", "sirllm(4,16,12,0.9)", "full"]:
                self.assertIn(name, header)
            rows = [l.split() for l in lines if re.match(r"\d", l)]
            self.assertEqual([row[0] for row in rows], ["8", "40"])
            for row in rows:
                self.assertEqual(len(row), len(header.split()))
                for x in row[1:]:
                    self.assertTrue(math.isfinite(float(x)) and float(x) >= 0, row)
            self.assertEqual(run(*args[:-2], "--gaps", "9999").returncode, 1)
            # Under a budget larger than the sequence every policy equals full.
            big = [a if a != "32" else "512" for a in args]
            rows = [l.split() for l in run(*big).stdout.splitlines() if re.match(r"\d", l)]
            self.assertEqual(len(rows), 2)
            for row in rows:
                for x in row[2:]:
                    self.assertAlmostEqual(float(x), float(row[-1]), delta=2e-3, msg=row)

    def test_pinned_fact(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "filler.txt")
            with open(path, "w") as f:
                f.write(STORY * 2)
            # Gaps longer than the filler: it is read cyclically.
            args = ["eval", "recall", "--model", MODEL, "--file", path, "--budget", "64",
                    "--gaps", "0,300,1500", "--trials", "2", "--prefix", "0", "--pin-fact",
                    "--round-tokens", "16", "--threads", "1"]
            r = run(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(run(*args).stdout, r.stdout)  # deterministic
            lines = r.stdout.strip().splitlines()
            header = next(l for l in lines if l.startswith("gap")).split()
            self.assertEqual(header[2:], ["streaming(4,60)", "streaming(4,60)+pin",
                                          "sirllm(4,32,28,0.9)", "sirllm(4,32,28,0.9)+pin"])
            rows = {l.split()[0]: [float(x) for x in l.split()[1:]]
                    for l in lines if re.match(r"\d", l)}
            self.assertEqual(sorted(rows, key=int), ["0", "300", "1500"])
            # Right after the fact nothing was evicted yet: pinning changes
            # nothing, and streaming equals SirLLM.
            first, s, sp, e, ep = rows["0"]
            self.assertAlmostEqual(s, sp, delta=1e-9)
            self.assertAlmostEqual(s, e, delta=1e-9)
            self.assertAlmostEqual(e, ep, delta=1e-9)
            # Far past the window the caches differ, so do the NLLs.
            s, sp = rows["1500"][1], rows["1500"][2]
            self.assertNotAlmostEqual(s, sp, delta=1e-6)

    def test_usage(self):
        self.assertEqual(run("eval").returncode, 2)
        self.assertEqual(run("eval", "frobnicate").returncode, 2)
        self.assertEqual(run("eval", "recall", "--model", MODEL).returncode, 2)
        self.assertEqual(run("eval", "recall", "--model", MODEL, "--file", "x",
                             "--budget", "4").returncode, 2)
        self.assertEqual(run("eval", "recall", "--help").returncode, 0)


class BenchStream(unittest.TestCase):
    def test_sweep(self):
        r = run("bench", "stream", "--model", MODEL, "--cache", "64,128", "--tokens", "4",
                "--threads", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.strip().splitlines()
        self.assertIn("ratio", lines[0])
        self.assertEqual(len(lines), 5)
        self.assertIn("streaming(4,60)", lines[1])
        self.assertIn("recompute(64)", lines[2])
        self.assertRegex(lines[2], r"\d+\.\dx$")

    def test_long_run(self):
        r = run("bench", "stream", "--model", MODEL, "--policy", "streaming", "--cache", "32",
                "--report-at", "300,100,100", "--window", "50", "--threads", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [l.split() for l in r.stdout.splitlines() if re.match(r"\d", l)]
        self.assertEqual([row[0] for row in rows], ["100", "300"])
        # tokens, median, p90, cpu, rss, cells, evicted
        self.assertEqual([row[5] for row in rows], ["32", "32"])  # cells: flat
        self.assertEqual([row[6] for row in rows], ["69", "269"])  # 1 + n - 32 evicted
        self.assertGreater(int(rows[0][4]), 0)  # RSS read
        self.assertIn("largest change", r.stdout)

    def test_bad_flags(self):
        for flags in (["--policy", "window"], ["--cache", "4"], ["--tokens", "0"],
                      ["--report-at", "10"], ["--bogus"]):
            r = run("bench", "stream", "--model", MODEL, *flags)
            self.assertEqual(r.returncode, 2, (flags, r.stderr))
        self.assertEqual(run("bench", "stream").returncode, 2)
        self.assertEqual(run("bench", "stream", "--model", "/nonexistent.gguf",
                             "--cache", "64", "--tokens", "1").returncode, 1)


if __name__ == "__main__":
    unittest.main()
