#!/usr/bin/python3
"""End-to-end tests of `sinkserve serve`: a real server process on a loopback
port with a real RocksDB directory, driven by a Python grpcio client whose
stubs are generated from proto/ at test time (see server_testlib.py).

Greedy decoding (--temperature 0) makes every reply a pure function of the
session's history, so "equal to running alone" and "continues exactly after a
restart" are checked by comparing token ids with an independent run.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import grpc

from server_testlib import (EXAMPLE_CLIENT, MAKE_MODEL, MODEL, NOT_SERVING, SERVING,
                            SINKSERVE, STUBS, Server, Stream, code_of, health, pb)

# Small window: the conversations below evict, so restores carry evictions.
POLICY = "streaming(4,60)"
PROMPTS = ["Once upon a time", "Tom had a red ball", "The sun was hot", "Lily and Ben",
           "A little dog", "The cat sat", "One day, a bird", "Sam liked to run"]
C = grpc.StatusCode


def turns_alone(stub, session_id, texts, max_tokens=20, config=None):
    """Token ids of each turn, the session alone on its stream."""
    stream = Stream(stub)
    stream.open(session_id, config=config)
    ids = [stream.turn(t, max_tokens=max_tokens)[0] for t in texts]
    stream.finish()
    return ids


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sinkserve-e2e-")
        cls.server = Server(os.path.join(cls.tmp, "db"), "--default-policy", POLICY,
                            "--max-tokens-limit", "100000",
                            "--metrics-listen", "127.0.0.1:0")
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_health_serving_after_load(self):
        self.assertEqual(health(self.server.channel), SERVING)

    def test_reflection_lists_the_services(self):
        # grpc.reflection.v1alpha ServerReflectionRequest{list_services: ""}
        # (field 7), hand-encoded: Debian ships no reflection client stubs.
        info = self.server.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        response = next(info(iter([b"\x3a\x00"]), timeout=5))
        self.assertIn(b"sinkserve.v1.SinkServe", response)
        self.assertIn(b"grpc.health.v1.Health", response)

    def test_create_chat_reattach_list_delete(self):
        stream = Stream(self.stub)
        opened = stream.open("basic")
        self.assertFalse(opened.restored)
        self.assertEqual(opened.session.rounds, 0)
        self.assertEqual(opened.session.chat_template, "raw")
        replies = []
        for text in ["Once upon a time", " Then the dog ran.", " The end."]:
            ids, reply, end = stream.turn(text, max_tokens=16)
            self.assertEqual(end.usage.generated_tokens, len(ids))
            self.assertGreater(end.usage.prompt_tokens, 0)
            self.assertLessEqual(end.usage.cells_kept, 64)
            replies.append(reply)
        self.assertTrue(any(replies), replies)
        stream.finish()

        again = Stream(self.stub)
        opened = again.open("basic", create=False)
        self.assertEqual(opened.session.rounds, 3)
        self.assertGreater(opened.session.tokens_seen, opened.session.cells_cached)  # evicted
        again.turn("More.", max_tokens=4)
        again.finish()

        info = self.stub.GetSession(pb.GetSessionRequest(session_id="basic"))
        self.assertEqual(info.rounds, 4)
        self.assertEqual(info.config.policy.kind, pb.POLICY_STREAMING)
        self.assertEqual(info.config.policy.window, 60)
        listed = []
        token = ""
        while True:
            page = self.stub.ListSessions(pb.ListSessionsRequest(page_size=2, page_token=token))
            listed += [s.session_id for s in page.sessions]
            token = page.next_page_token
            if not token:
                break
        self.assertIn("basic", listed)
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id="basic"))
        self.assertEqual(code_of(lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id="basic"))), C.NOT_FOUND)

    def test_create_session_rpc(self):
        info = self.stub.CreateSession(pb.CreateSessionRequest(
            session_id="made", config=pb.SessionConfig(
                policy=pb.CachePolicy(kind=pb.POLICY_SIRLLM, sinks=4, entropy=20, window=40,
                                      decay=0.9))))
        self.assertEqual(info.config.policy.kind, pb.POLICY_SIRLLM)
        self.assertEqual(code_of(lambda: self.stub.CreateSession(
            pb.CreateSessionRequest(session_id="made"))), C.ALREADY_EXISTS)
        stream = Stream(self.stub)
        self.assertEqual(stream.open("made", create=False).session.config.policy.entropy, 20)
        stream.turn("Once upon a time", max_tokens=8)
        stream.finish()

    def test_chat_templates(self):
        """A named template formats every turn (stories260K has no chat tokens,
        so the markers are plain text here); the system prompt goes first."""
        def first_turn(name, **config):
            stream = Stream(self.stub)
            opened = stream.open(name, config=pb.SessionConfig(**config))
            _, _, end = stream.turn("Hello there", max_tokens=4)
            return stream, opened, end

        bare, opened, end_bare = first_turn("chatml-bare", chat_template="chatml")
        self.assertEqual(opened.session.chat_template, "chatml")
        bare.finish()
        sys_stream, _, end_sys = first_turn("chatml-sys", chat_template="chatml",
                                            system_prompt="You are a kind storyteller.")
        self.assertGreater(end_sys.usage.prompt_tokens, end_bare.usage.prompt_tokens + 4)
        # The reply was cut at max_tokens: the next turn closes it first.
        _, _, end_next = sys_stream.turn("Hello there", max_tokens=4)
        self.assertGreater(end_next.usage.prompt_tokens, end_bare.usage.prompt_tokens)
        sys_stream.finish()
        raw = Stream(self.stub)
        raw.open("raw-hello")
        _, _, end_raw = raw.turn("Hello there", max_tokens=4)
        raw.finish()
        self.assertLess(end_raw.usage.prompt_tokens, end_bare.usage.prompt_tokens)

    def test_concurrent_sessions_equal_alone(self):
        n, texts = 32, ["", " And then", " The end."]
        results, errors = {}, []

        def run(i):
            try:
                first = PROMPTS[i % len(PROMPTS)] + ("," * (i // len(PROMPTS)))
                results[i] = turns_alone(self.stub, f"conc-{i}", [first] + texts[1:])
            except Exception as e:  # noqa: BLE001  (reported below)
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for i in range(n):
            first = PROMPTS[i % len(PROMPTS)] + ("," * (i // len(PROMPTS)))
            alone = turns_alone(self.stub, f"solo-{i}", [first] + texts[1:])
            self.assertEqual(results[i], alone, f"session {i} differs batched vs alone")

    def test_cancel_mid_turn(self):
        stream = Stream(self.stub)
        stream.open("cancel")
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=90000,
                                     ignore_eos=True))
        first = stream.recv()
        self.assertTrue(first.HasField("delta"))
        stream.send(cancel=pb.CancelTurn())
        ids, _, end = stream.read_turn()
        self.assertEqual(end.stop_reason, pb.STOP_REASON_CANCELLED)
        self.assertLess(end.usage.generated_tokens, 90000)
        # The stream goes on: another turn runs.
        _, _, end = stream.turn(" Next.", max_tokens=4)
        self.assertEqual(end.usage.generated_tokens, 4)
        stream.finish()

    def test_client_vanishes_mid_stream(self):
        stream = Stream(self.stub)
        stream.open("vanish")
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=90000,
                                     ignore_eos=True))
        stream.recv()
        stream.call.cancel()  # the client goes away without a word
        self.assertEqual(code_of(stream.recv), C.CANCELLED)
        # The server frees the session at once: it can be attached again and
        # the cut-short turn counts as a round.
        deadline = time.time() + 5
        while True:
            again = Stream(self.stub)
            try:
                opened = again.open("vanish", create=False)
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), C.FAILED_PRECONDITION)
                self.assertLess(time.time(), deadline, "session never released")
                time.sleep(0.02)
        self.assertEqual(opened.session.rounds, 1)
        self.assertLess(opened.session.tokens_seen, 90000)
        again.finish()

    def test_cpp_clients(self):
        """`sinkserve chat` (the C++ client) and `sinkserve bench load`."""
        def chat(*args):
            return subprocess.run([SINKSERVE, "chat", "--server", self.server.address, *args],
                                  capture_output=True, text=True, timeout=60)
        first = chat("--session", "cpp", "--create", "--message", "Once upon a time",
                     "--max-tokens", "12")
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("0 rounds", first.stderr)
        second = chat("--session", "cpp", "--max-tokens", "12", "--message", " Then")
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertIn("1 rounds", second.stderr)
        # Lines of stdin are turns when there is no --message.
        piped = subprocess.run([SINKSERVE, "chat", "--server", self.server.address,
                                "--session", "cpp", "--max-tokens", "4", "--quiet"],
                               input="One\nTwo\n", capture_output=True, text=True, timeout=60)
        self.assertEqual(piped.returncode, 0, piped.stderr)
        info = self.stub.GetSession(pb.GetSessionRequest(session_id="cpp"))
        self.assertEqual(info.rounds, 4)
        missing = chat("--session", "nobody-cpp", "--message", "hi")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("NOT_FOUND", missing.stderr)
        load = subprocess.run([SINKSERVE, "bench", "load", "--server", self.server.address,
                               "--sessions", "4", "--turns", "2", "--tokens", "8"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(load.returncode, 0, load.stdout + load.stderr)
        self.assertIn("errors: 0", load.stdout)

    def test_example_python_client(self):
        """examples/python/sinkserve_client.py against the real server."""
        if not os.path.exists(EXAMPLE_CLIENT):
            self.skipTest("no examples/python client")

        def client(*args):
            return subprocess.run(["/usr/bin/python3", EXAMPLE_CLIENT, "--server",
                                   self.server.address, "--stubs", STUBS, "--timeout", "60",
                                   *args], capture_output=True, text=True, timeout=90)
        chat = client("chat", "--session", "py", "--create", "--message", "Once upon a time",
                      "--message", " Then", "--max-tokens", "8")
        self.assertEqual(chat.returncode, 0, chat.stderr)
        again = client("chat", "--session", "py", "--message", " More", "--max-tokens", "4")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(self.stub.GetSession(pb.GetSessionRequest(session_id="py")).rounds, 3)
        listed = client("list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("py", listed.stdout)
        self.assertEqual(client("delete", "--session", "py").returncode, 0)
        missing = client("get", "--session", "py")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("NOT_FOUND", missing.stderr)

    def test_metrics(self):
        stream = Stream(self.stub)
        stream.open("metered")
        _, _, end = stream.turn("Once upon a time", max_tokens=5)
        stream.finish()
        self.assertEqual(code_of(lambda: self.stub.GetSession(
            pb.GetSessionRequest(session_id="nobody-here"))), C.NOT_FOUND)
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        self.assertGreaterEqual(values["sinkserve_generated_tokens_total"],
                                end.usage.generated_tokens)
        self.assertGreaterEqual(values["sinkserve_prompt_tokens_total"], end.usage.prompt_tokens)
        self.assertGreaterEqual(values['sinkserve_errors_total{code="NOT_FOUND"}'], 1)
        self.assertGreater(values["sinkserve_time_to_first_token_seconds_count"], 0)
        self.assertGreater(values["sinkserve_checkpoint_duration_seconds_count"], 0)
        self.assertGreater(values["sinkserve_sessions_in_store"], 0)

    def test_second_stream_on_busy_session(self):
        a = Stream(self.stub)
        a.open("busy")
        b = Stream(self.stub)
        self.assertEqual(code_of(lambda: b.open("busy")), C.FAILED_PRECONDITION)
        a.turn("Once", max_tokens=2)
        a.finish()

    def test_error_codes(self):
        stub = self.stub

        def open_then(session_id, create, config=None, turn=None, raw=None):
            stream = Stream(stub)
            stream.open(session_id, create, config)
            if turn is not None:
                stream.turn(**turn)
            stream.finish()

        # INVALID_ARGUMENT: bad id, bad config, unknown template, empty turn,
        # bad sampling, turn before open, invalid UTF-8.
        self.assertEqual(code_of(lambda: open_then("has space", True)), C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: open_then("badcfg", True, pb.SessionConfig(
            policy=pb.CachePolicy(kind=pb.POLICY_WINDOW, window=0)))), C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: open_then("badtpl", True, pb.SessionConfig(
            chat_template="jinja-of-my-own"))), C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: open_then("empty", True, turn={"text": ""})),
                         C.INVALID_ARGUMENT)
        self.assertEqual(code_of(lambda: open_then("temp", True, turn={
            "text": "x", "sampling": pb.SamplingParams(temperature=-1)})), C.INVALID_ARGUMENT)

        def turn_first():
            stream = Stream(stub)
            stream.send(turn=pb.UserTurn(text="hello"))
            stream.recv()
        self.assertEqual(code_of(turn_first), C.FAILED_PRECONDITION)

        raw = self.server.channel.stream_stream(
            "/sinkserve.v1.SinkServe/Chat", request_serializer=lambda b: b,
            response_deserializer=pb.ChatResponse.FromString)
        text = b"\xff\xfe not UTF-8"
        user_turn = b"\x0a" + bytes([len(text)]) + text
        bad = b"\x12" + bytes([len(user_turn)]) + user_turn
        opening = pb.ChatRequest(open=pb.OpenSession(
            session_id="utf8", create_if_missing=True)).SerializeToString()

        def send_bad_utf8():
            for _ in raw(iter([opening, bad]), timeout=10):
                pass
        self.assertEqual(code_of(send_bad_utf8), C.INVALID_ARGUMENT)

        # NOT_FOUND: unknown session on open, Get, Delete.
        self.assertEqual(code_of(lambda: open_then("nobody", False)), C.NOT_FOUND)
        self.assertEqual(code_of(lambda: stub.GetSession(
            pb.GetSessionRequest(session_id="nobody"))), C.NOT_FOUND)
        self.assertEqual(code_of(lambda: stub.DeleteSession(
            pb.DeleteSessionRequest(session_id="nobody"))), C.NOT_FOUND)

        # FAILED_PRECONDITION: a second turn while one runs.
        def two_turns():
            stream = Stream(stub)
            stream.open("twice")
            stream.send(turn=pb.UserTurn(text="a", max_tokens=90000, ignore_eos=True))
            stream.send(turn=pb.UserTurn(text="b"))
            while True:
                stream.recv()
        self.assertEqual(code_of(two_turns), C.FAILED_PRECONDITION)

        # DEADLINE_EXCEEDED: the client's deadline ends a long turn.
        def too_slow():
            stream = Stream(stub, timeout=0.3)
            stream.open("slow")
            stream.turn("a", max_tokens=90000, ignore_eos=True)
        self.assertEqual(code_of(too_slow), C.DEADLINE_EXCEEDED)


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
        for name in ("one", "two"):
            stub.CreateSession(pb.CreateSessionRequest(session_id=name))
        self.assertEqual(code_of(lambda: stub.CreateSession(
            pb.CreateSessionRequest(session_id="three"))), C.RESOURCE_EXHAUSTED)

        def turn(text):
            stream = Stream(stub)
            stream.open("one", create=False)
            stream.turn(text, max_tokens=2)
            stream.finish()
        self.assertEqual(code_of(lambda: turn("Once upon a time " * 40)), C.RESOURCE_EXHAUSTED)
        # A policy whose cache would not fit the per-session cell limit.
        huge = pb.SessionConfig(policy=pb.CachePolicy(kind=pb.POLICY_WINDOW, window=1 << 20))
        with self.assertRaises(grpc.RpcError) as raised:
            Stream(stub).open("one-more", config=huge)
        self.assertEqual(raised.exception.code(), C.RESOURCE_EXHAUSTED)
        self.assertIn("cells", raised.exception.details())
        self.assertEqual(code_of(lambda: turn("x" * 5000)), C.RESOURCE_EXHAUSTED)
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
        server = self.start("--default-policy", "full")
        for name in ("victim", "other"):
            stream = Stream(server.stub)
            stream.open(name)
            stream.turn("Once upon a time", max_tokens=120)
            stream.finish()
        self.assertEqual(server.terminate(), 0)  # drain flushes K/V into blob files

        # Flip bytes inside the K/V blobs: checksums must catch it.
        blobs = [os.path.join(self.db, f) for f in os.listdir(self.db) if f.endswith(".blob")]
        self.assertTrue(blobs, os.listdir(self.db))
        for path in blobs:
            with open(path, "r+b") as f:
                size = os.path.getsize(path)
                for offset in range(size // 4, 3 * size // 4, 512):
                    f.seek(offset)
                    f.write(b"\xa5\x5a")
        server = self.start("--default-policy", "full")
        self.assertEqual(code_of(lambda: Stream(server.stub).open("victim", create=False)),
                         C.DATA_LOSS)
        self.assertEqual(server.terminate(), 0)

        if not os.path.exists(MAKE_MODEL):
            self.skipTest("make_synthetic_model not built")
        other = os.path.join(self.tmp, "other.gguf")
        subprocess.run([MAKE_MODEL, "--out", other, "--preset", "tiny", "--tokenizer-from",
                        MODEL, "--quiet"], check=True)
        server = self.start(model=other)
        self.assertEqual(code_of(lambda: Stream(server.stub).open("other", create=False)),
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
