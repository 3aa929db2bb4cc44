#!/usr/bin/env python3
"""Persistent sessions from the command line: `generate --db --session` and
`sessions ...`, with the real binary, real RocksDB stores and stories260K.

CTest sets SINKSERVE_BIN (the CMake build folder) and SINKSERVE_SHARED.
"""
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest

BIN = os.path.join(os.environ.get("SINKSERVE_BIN", "build"), "service", "sinkserve")
SHARED = os.environ.get("SINKSERVE_SHARED",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
MODEL = os.path.join(SHARED, "models", "stories260K.gguf")

TURN1 = "Once upon a time, there was a little girl named Lily."
TURN2 = "She went to the park"
TURN3 = "One day, she saw a bird"
TURN4 = "The bird was sad because"

# (policy flags, sampling flags) of the split-processes checks: every policy,
# budgets small enough to evict, greedy and seeded.
POLICIES = [
    ["--policy", "full"],
    ["--policy", "window", "--window", "24"],
    ["--policy", "streaming", "--sinks", "4", "--window", "20"],
    ["--policy", "sirllm", "--sinks", "4", "--entropy", "8", "--window", "12", "--decay", "0.9"],
    ["--policy", "recompute", "--window", "16"],
]
SAMPLING = [
    ["--temperature", "0"],
    ["--temperature", "0.9", "--seed", "77", "--repeat-penalty", "1.1"],
]


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)


def generate(db, session, prompt, *extra):
    return run("generate", "--model", MODEL, "--threads", "1", "--batch", "8",
               "--max-tokens", "24", "--ignore-eos", "--ids",
               "--db", db, "--session", session, "--prompt", prompt, *extra)


def sessions(db, *args):
    return run("sessions", "--db", db, *args)


def show_fields(db, session):
    """`sessions show` minus what legitimately differs between two stores."""
    r = sessions(db, "show", session)
    assert r.returncode == 0, r.stderr
    keep = ("model", "policy", "capacity", "kv", "cells", "tokens seen", "evicted",
            "pending tokens", "rounds", "turns", "first tokens")
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in r.stdout.splitlines()) if k.strip() in keep}


class TwoProcessesEqualOne(unittest.TestCase):
    def test_every_policy_greedy_and_seeded(self):
        """Four turns in four processes (three restores from the store) equal
        the same turns in two processes of two turns each (`--then`; one
        process runs at most two turns), and the first two equal one process
        running both. engine/session_test.cc runs five turns in one session
        object against five restores (SplitAcrossRestoresIsBitExact)."""
        for policy in POLICIES:
            for sampling in SAMPLING:
                with self.subTest(policy=" ".join(policy), sampling=" ".join(sampling)), \
                        tempfile.TemporaryDirectory() as d:
                    split_db, pairs_db = os.path.join(d, "split"), os.path.join(d, "pairs")
                    split = []
                    for i, text in enumerate((TURN1, TURN2, TURN3, TURN4)):
                        # Later turns take their settings from the store.
                        extra = [*policy, *sampling] if i == 0 else []
                        r = generate(split_db, "s", text, *extra)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        self.assertEqual("created" in r.stderr, i == 0, r.stderr)
                        split += r.stdout.splitlines()
                        if i == 1:
                            split_after_two = show_fields(split_db, "s")
                    first = generate(pairs_db, "s", TURN1, "--then", TURN2, *policy, *sampling)
                    self.assertEqual(first.returncode, 0, first.stderr)
                    self.assertEqual(show_fields(pairs_db, "s"), split_after_two)
                    second = generate(pairs_db, "s", TURN3, "--then", TURN4)
                    self.assertEqual(second.returncode, 0, second.stderr)
                    pairs = first.stdout.splitlines() + second.stdout.splitlines()
                    self.assertEqual(len(pairs), 4, pairs)
                    for line in pairs:
                        self.assertEqual(len(line.split()), 24)
                    self.assertEqual(split, pairs)
                    fields = show_fields(split_db, "s")
                    self.assertEqual(fields, show_fields(pairs_db, "s"))
                    self.assertEqual(fields["rounds"], "4")
                    self.assertTrue(fields["pending tokens"].startswith("1 "), fields)
                    if policy[1] != "full":
                        self.assertGreater(int(fields["evicted"]), 0, fields)

    def test_policy_of_an_existing_session_cannot_change(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(generate(d, "s", TURN1, "--policy", "window", "--window", "24")
                             .returncode, 0)
            r = generate(d, "s", TURN2, "--policy", "window", "--window", "30")
            self.assertEqual(r.returncode, 2)
            self.assertIn("window(30)", r.stderr)
            self.assertIn("cannot change", r.stderr)
            # Repeating the same policy is fine.
            r = generate(d, "s", TURN2, "--policy", "window", "--window", "24")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = generate(d, "s", TURN2, "--kv-dtype", "f16")
            self.assertEqual(r.returncode, 2)
            self.assertIn("f32", r.stderr)

    def test_half_precision_sessions(self):
        for dtype in ("f16", "bf16"):
            with self.subTest(dtype=dtype), tempfile.TemporaryDirectory() as d:
                split_db, one_db = os.path.join(d, "split"), os.path.join(d, "one")
                flags = ["--kv-dtype", dtype, "--policy", "streaming", "--window", "20",
                         "--seed", "5"]
                a = generate(split_db, "h", TURN1, *flags)
                b = generate(split_db, "h", TURN2)
                one = generate(one_db, "h", TURN1, "--then", TURN2, *flags)
                for r in (a, b, one):
                    self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(len(one.stdout.splitlines()), 2, one.stdout)
                self.assertEqual(a.stdout + b.stdout, one.stdout)
                self.assertIn(dtype, show_fields(split_db, "h")["kv"].split())


class SessionsCommand(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.db = os.path.join(self.dir, "db")
        for sid in ("alpha", "beta"):
            r = generate(self.db, sid, TURN1, "--policy", "streaming", "--window", "20")
            self.assertEqual(r.returncode, 0, r.stderr)
        r = generate(self.db, "alpha", TURN2)
        self.assertEqual(r.returncode, 0, r.stderr)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_list_show_delete(self):
        r = sessions(self.db, "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = r.stdout.splitlines()[1:]
        self.assertEqual([row.split()[0] for row in rows], ["alpha", "beta"])
        self.assertIn("streaming(4,20)", rows[0])
        fields = show_fields(self.db, "alpha")
        self.assertEqual(fields["rounds"], "2")
        self.assertTrue(fields["model"].startswith("llama-"), fields)
        r = sessions(self.db, "show", "gamma")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)
        r = sessions(self.db, "delete", "beta")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([row.split()[0] for row in sessions(self.db, "list").stdout
                          .splitlines()[1:]], ["alpha"])
        self.assertEqual(sessions(self.db, "delete", "beta").returncode, 1)

    def test_export_import_round_trip(self):
        exported = os.path.join(self.dir, "alpha.sess")
        r = sessions(self.db, "export", "alpha", exported)
        self.assertEqual(r.returncode, 0, r.stderr)
        other = os.path.join(self.dir, "other")
        r = sessions(other, "import", exported)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(show_fields(other, "alpha"), show_fields(self.db, "alpha"))
        # The imported session continues exactly as the original does.
        a = generate(self.db, "alpha", "The end")
        b = generate(other, "alpha", "The end")
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(a.stdout, b.stdout)
        # Importing again needs --overwrite; a damaged file imports nothing.
        self.assertEqual(sessions(other, "import", exported).returncode, 1)
        self.assertEqual(sessions(other, "--overwrite", "import", exported).returncode, 0)
        with open(exported, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x10
        bad = os.path.join(self.dir, "bad.sess")
        with open(bad, "wb") as f:
            f.write(bytes(data))
        r = sessions(os.path.join(self.dir, "third"), "import", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("DATA_LOSS", r.stderr)

    def test_verify_clean_store(self):
        r = sessions(self.db, "verify")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("2 sessions checked, 0 bad", r.stdout)

    def test_flipped_byte_is_data_loss_for_that_session_only(self):
        # alpha's newest record is a delta whose K/V chunk frame payload starts
        # with its seq (= the version `show` prints) and chunk index 1.
        version = int(re.search(r"^version:\s+(\d+)", sessions(self.db, "show", "alpha").stdout,
                                re.M).group(1))
        pattern = struct.pack("<QI", version, 1)
        flipped = 0
        for name in os.listdir(self.db):
            path = os.path.join(self.db, name)
            with open(path, "rb") as f:
                data = bytearray(f.read())
            at = data.find(pattern)
            while at >= 0:
                data[at + len(pattern) + 100] ^= 0x01  # inside the K/V rows
                flipped += 1
                at = data.find(pattern, at + 1)
            if flipped:
                with open(path, "wb") as f:
                    f.write(bytes(data))
        self.assertGreater(flipped, 0, "alpha's K/V chunk not found in the store files")

        r = generate(self.db, "alpha", TURN2)
        self.assertEqual(r.returncode, 1)
        self.assertIn("DATA_LOSS", r.stderr)
        self.assertIn("alpha", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        r = sessions(self.db, "show", "alpha")
        self.assertEqual(r.returncode, 1)
        self.assertIn("DATA_LOSS", r.stderr)
        r = sessions(self.db, "verify")
        self.assertEqual(r.returncode, 1)
        self.assertIn("BAD alpha: DATA_LOSS", r.stdout)
        self.assertNotIn("BAD beta", r.stdout)
        self.assertIn("2 sessions checked, 1 bad", r.stdout)
        # Everything else still works.
        self.assertEqual(show_fields(self.db, "beta")["rounds"], "1")
        r = generate(self.db, "beta", TURN2)
        self.assertEqual(r.returncode, 0, r.stderr)


class BadDirectories(unittest.TestCase):
    def assert_clear_error(self, r, *words):
        self.assertEqual(r.returncode, 1, r.stderr)  # an error, not a signal
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        for w in words:
            self.assertIn(w, r.stderr)

    def test_missing_directory(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "nope")
            for action in (["list"], ["verify"], ["show", "x"], ["delete", "x"]):
                self.assert_clear_error(sessions(missing, *action), "NOT_FOUND", missing)
            self.assertFalse(os.path.exists(missing))

    def test_db_that_cannot_be_created(self):
        with tempfile.TemporaryDirectory() as d:
            a_file = os.path.join(d, "file")
            with open(a_file, "w") as f:
                f.write("not a directory")
            self.assert_clear_error(generate(os.path.join(a_file, "db"), "s", TURN1), "sinkserve generate")
            # /proc refuses new directories even to root.
            self.assert_clear_error(generate("/proc/sinkserve-db", "s", TURN1), "/proc/sinkserve-db")

    def test_not_a_store(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "junk"), "w") as f:
                f.write("x")
            r = sessions(d, "list")
            self.assertEqual(r.returncode, 1, r.stderr)

    @unittest.skipIf(os.geteuid() == 0, "root writes to read-only directories")
    def test_read_only_store(self):
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "db")
            self.assertEqual(generate(db, "s", TURN1).returncode, 0)
            for root, dirs, files in os.walk(db):
                for n in dirs + files:
                    os.chmod(os.path.join(root, n), 0o555 if n in dirs else 0o444)
            os.chmod(db, 0o555)
            try:
                self.assertEqual(sessions(db, "list").returncode, 0)
                self.assert_clear_error(generate(db, "s", TURN2), "sinkserve generate")
            finally:
                os.chmod(db, 0o755)


if __name__ == "__main__":
    unittest.main()
