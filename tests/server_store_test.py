#!/usr/bin/python3
"""End-to-end tests of `sinkserve serve` against its session store: limits,
corrupt and foreign snapshots, K/V dtypes, SIGTERM and SIGKILL restarts. Each
test starts its own server processes on loopback ports over its own RocksDB
directory (see server_testlib.py; server_e2e_test.py has the API tests).
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

from server_testlib import (MAKE_MODEL, MODEL, NOT_SERVING, SINKSERVE, Server, Stream, code_of,
                            health, pb, reattach, turns_alone)

# Small window: the conversations below evict, so restores carry evictions.
POLICY = "streaming(4,60)"
C = grpc.StatusCode


class LimitsAndStoreTest(unittest.TestCase):
    """RESOURCE_EXHAUSTED limits, DATA_LOSS and FAILED_PRECONDITION from the
    store, each on its own server and database."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sinkserve-limits-")
        self.db = os.path.join(self.tmp, "db")
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, *extra, **kw):
        server = Server(self.db, *extra, **kw)
        self.servers.append(server)
        return server

    def test_resource_exhausted(self):
        flagfile = os.path.join(self.tmp, "limits.flags")  # --flagfile works for serve
        with open(flagfile, "w") as f:
            f.write("--max-sessions=2\n--max-message-bytes=4096\n--max-prompt-tokens=64\n")
        server = self.start(f"--flagfile={flagfile}")
        stub = server.stub

        # A system prompt that leaves no room for a turn is refused when the
        # session is created, not on every turn after, and nothing is kept.
        chatty = pb.SessionConfig(system_prompt="Once upon a time " * 20)
        with self.assertRaises(grpc.RpcError) as raised:
            Stream(stub).open("chatty", config=chatty)
        self.assertEqual(raised.exception.code(), C.RESOURCE_EXHAUSTED)
        self.assertIn("system prompt", raised.exception.details())
        self.assertEqual(code_of(lambda: stub.GetSession(
            pb.GetSessionRequest(session_id="chatty"))), C.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as raised:
            stub.CreateSession(pb.CreateSessionRequest(session_id="chatty", config=chatty))
        self.assertEqual(raised.exception.code(), C.RESOURCE_EXHAUSTED)
        self.assertIn("system prompt", raised.exception.details())

        stub.CreateSession(pb.CreateSessionRequest(
            session_id="one", config=pb.SessionConfig(system_prompt="A story.")))
        stub.CreateSession(pb.CreateSessionRequest(session_id="two"))
        self.assertEqual(code_of(lambda: stub.CreateSession(
            pb.CreateSessionRequest(session_id="three"))), C.RESOURCE_EXHAUSTED)

        def turn(text, **fields):
            stream, _ = reattach(stub, "one")
            stream.turn(text, max_tokens=2, **fields)
            stream.finish()

        def details_of(fn):
            with self.assertRaises(grpc.RpcError) as raised:
                fn()
            self.assertEqual(raised.exception.code(), C.RESOURCE_EXHAUSTED)
            return raised.exception.details()
        # Prompt tokens: 680 bytes, over 64 tokens.
        self.assertIn("prompt tokens", details_of(lambda: turn("Once upon a time " * 40)))
        # Message bytes: a short prompt whose stop strings carry 5000 bytes.
        self.assertIn("larger than max",
                      details_of(lambda: turn("Once upon a time", stop=["x" * 5000])))
        turn("Once upon a time", stop=["x" * 50])  # the same turn, smaller: fine
        # A policy whose cache would not fit the per-session cell limit.
        huge = pb.SessionConfig(policy=pb.CachePolicy(kind=pb.POLICY_WINDOW, window=1 << 20))
        self.assertIn("cells", details_of(lambda: Stream(stub).open("one-more", config=huge)))
        turn("Once upon a time")  # within the limits: fine

    def test_lru_drop_and_reload(self):
        server = self.start("--max-sessions-in-memory", "2", "--default-policy", POLICY)
        texts = ["Once upon a time", " The dog ran."]
        reference = turns_alone(server.stub, "ref", texts)
        for name in ("a", "b", "c"):  # only two fit: "a" is checkpointed and dropped
            turns_alone(server.stub, name, texts[:1])
        stream = Stream(server.stub)
        opened = stream.open("a", create=False)
        self.assertTrue(opened.restored)
        self.assertEqual(opened.session.rounds, 1)
        self.assertEqual(stream.turn(texts[1], max_tokens=20)[0], reference[1])
        stream.finish()
        # All in memory attached: one more is RESOURCE_EXHAUSTED.
        x, y = Stream(server.stub), Stream(server.stub)
        x.open("b", create=False)
        y.open("c", create=False)
        self.assertEqual(code_of(lambda: Stream(server.stub).open("a", create=False)),
                         C.RESOURCE_EXHAUSTED)
        x.finish()
        y.finish()

    def test_corrupt_snapshot_and_other_model(self):
        def blob_files():
            return {f for f in os.listdir(self.db) if f.endswith(".blob")}

        # One server run per session, so that each one's K/V rows land in
        # blob files of their own (drain flushes them).
        files = []
        for name in ("victim", "other"):
            server = self.start("--default-policy", "full")
            stream = Stream(server.stub)
            stream.open(name)
            stream.turn("Once upon a time", max_tokens=120)
            stream.finish()
            self.assertEqual(server.terminate(), 0)
            files.append(blob_files() - set().union(*files) if files else blob_files())
        self.assertTrue(files[0] and files[1], files)

        # Flip bytes inside the victim's K/V blobs only: its checksums must
        # catch it, and the other session must load and continue as before.
        for name in files[0]:
            path = os.path.join(self.db, name)
            with open(path, "r+b") as f:
                size = os.path.getsize(path)
                for offset in range(size // 4, 3 * size // 4, 512):
                    f.seek(offset)
                    f.write(b"\xa5\x5a")
        server = self.start("--default-policy", "full")
        self.assertEqual(code_of(lambda: Stream(server.stub).open("victim", create=False)),
                         C.DATA_LOSS)
        stream = Stream(server.stub)
        opened = stream.open("other", create=False)
        self.assertTrue(opened.restored)
        self.assertEqual(len(stream.turn(" The end.", max_tokens=8)[0]), 8)
        stream.finish()
        listed = server.stub.ListSessions(pb.ListSessionsRequest())
        self.assertEqual({s.session_id for s in listed.sessions}, {"victim", "other"})
        self.assertEqual(list(listed.unreadable), [])  # the metadata is intact
        self.assertEqual(server.terminate(), 0)

        if not os.path.exists(MAKE_MODEL):
            self.skipTest("make_synthetic_model not built")
        other = os.path.join(self.tmp, "other.gguf")
        subprocess.run([MAKE_MODEL, "--out", other, "--preset", "tiny", "--tokenizer-from",
                        MODEL, "--quiet"], check=True)
        server = self.start(model=other)
        self.assertEqual(code_of(lambda: Stream(server.stub).open("other", create=False)),
                         C.FAILED_PRECONDITION)


    def test_half_precision_kv_and_a_dtype_change(self):
        """--kv-dtype f16 sessions continue exactly after a restart; a server
        on f32 K/V refuses them (their rows would have to be re-rounded)."""
        texts = ["Once upon a time", " The dog barked.", " Lily smiled."]
        server = self.start("--kv-dtype", "f16", "--default-policy", "streaming(4,28)")
        alone = turns_alone(server.stub, "alone", texts)
        stream = Stream(server.stub)
        stream.open("half")
        split = [stream.turn(t, max_tokens=20)[0] for t in texts[:2]]
        stream.finish()
        self.assertEqual(server.terminate(), 0)
        shown = subprocess.run([SINKSERVE, "sessions", "--db", self.db, "show", "half"],
                               capture_output=True, text=True, timeout=30)
        self.assertIn("f16 x 5 layers", shown.stdout, shown.stderr)
        server = self.start("--kv-dtype", "f16", "--default-policy", "streaming(4,28)")
        stream, opened = reattach(server.stub, "half")
        self.assertTrue(opened.restored)
        split.append(stream.turn(texts[2], max_tokens=20)[0])
        stream.finish()
        self.assertEqual(split, alone)
        self.assertEqual(server.terminate(), 0)
        server = self.start("--default-policy", "streaming(4,28)")
        self.assertEqual(code_of(lambda: Stream(server.stub).open("half", create=False)),
                         C.FAILED_PRECONDITION)


class RestartTest(unittest.TestCase):
    """SIGTERM and SIGKILL mid-conversation, restart on the same --db: the
    session continues exactly from its last completed turn."""

    TEXTS = ["Once upon a time", " The dog barked.", " Lily smiled.", " Then it rained."]

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sinkserve-restart-")
        self.db = os.path.join(self.tmp, "db")
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self):
        server = Server(self.db, "--default-policy", POLICY, "--max-tokens-limit", "100000",
                        "--drain-grace-seconds", "1")
        self.servers.append(server)
        return server

    def test_restart_continues_exactly(self):
        sirllm = pb.SessionConfig(policy=pb.CachePolicy(
            kind=pb.POLICY_SIRLLM, sinks=4, entropy=16, window=40, decay=0.9))
        server = self.start()
        want = {cfg: turns_alone(server.stub, f"ref-{cfg}", self.TEXTS,
                                 config=sirllm if cfg == "sirllm" else None)
                for cfg in ("streaming", "sirllm")}

        def two_turns_then_long_one(name, cfg):
            stream = Stream(server.stub)
            stream.open(name, config=sirllm if cfg == "sirllm" else None)
            got = [stream.turn(t, max_tokens=20)[0] for t in self.TEXTS[:2]]
            # A third turn that is still running when the server goes down.
            stream.send(turn=pb.UserTurn(text=self.TEXTS[2], max_tokens=90000,
                                         ignore_eos=True))
            stream.recv()
            return stream, got

        # SIGKILL mid-turn: the running turn is lost, the two before it are not.
        killed = {cfg: two_turns_then_long_one(f"kill-{cfg}", cfg) for cfg in want}
        server.kill()
        for cfg, (_, got) in killed.items():
            self.assertEqual(got, want[cfg][:2])
        server = self.start()
        for cfg in want:
            stream = Stream(server.stub)
            opened = stream.open(f"kill-{cfg}", create=False)
            self.assertTrue(opened.restored)
            self.assertEqual(opened.session.rounds, 2)
            rest = [stream.turn(t, max_tokens=20)[0] for t in self.TEXTS[2:]]
            self.assertEqual(rest, want[cfg][2:], f"{cfg} after SIGKILL")
            stream.finish()

        # SIGTERM mid-turn: health NOT_SERVING and new streams UNAVAILABLE while
        # draining; the running turn ends (cancelled after the grace period)
        # and is checkpointed; exit 0.
        stream, got = two_turns_then_long_one("term", "streaming")
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 5
        while health(server.channel) != NOT_SERVING:
            self.assertLess(time.time(), deadline)
            time.sleep(0.01)
        self.assertEqual(code_of(lambda: Stream(server.stub).open("late")), C.UNAVAILABLE)
        _, _, end = stream.read_turn()
        self.assertEqual(end.stop_reason, pb.STOP_REASON_CANCELLED)
        self.assertEqual(code_of(stream.recv), C.UNAVAILABLE)
        self.assertEqual(server.proc.wait(timeout=30), 0)
        server = self.start()
        stream = Stream(server.stub)
        opened = stream.open("term", create=False)
        self.assertEqual(opened.session.rounds, 3)  # the drained turn counts
        stream.finish()
        # Exactness across SIGTERM: a session idle at the signal continues
        # like the uninterrupted reference.
        stream = Stream(server.stub)
        stream.open("ref-streaming", create=False)
        more = stream.turn(self.TEXTS[0], max_tokens=20)[0]
        stream.finish()
        reference = turns_alone(server.stub, "ref2", self.TEXTS + [self.TEXTS[0]])
        self.assertEqual(more, reference[-1])


if __name__ == "__main__":
    unittest.main(verbosity=2)
