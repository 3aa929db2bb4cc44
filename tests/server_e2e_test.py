#!/usr/bin/python3
"""End-to-end tests of `sinkserve serve`: a real server process on a loopback
port with a real RocksDB directory, driven by a Python grpcio client whose
stubs are generated from proto/ at test time (see server_testlib.py).

Greedy decoding (--temperature 0) makes every reply a pure function of the
session's history, so "equal to running alone" and "continues exactly after a
restart" are checked by comparing token ids with an independent run.

This file: one shared server, the API, streaming, errors and metrics.
server_store_test.py: limits, the store (corruption, other models, K/V
dtypes) and restarts, each on a server and database of its own.
"""

import math
import os
import pty
import select
import signal
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

from server_testlib import (EXAMPLE_CLIENT, SERVING, SINKSERVE, STUBS, Server, Stream, code_of,
                            health, metrics, pb, pb_grpc, reattach, rss_kb, turns_alone)

# Small window: the conversations below evict, so restores carry evictions.
POLICY = "streaming(4,60)"
PROMPTS = ["Once upon a time", "Tom had a red ball", "The sun was hot", "Lily and Ben",
           "A little dog", "The cat sat", "One day, a bird", "Sam liked to run"]
C = grpc.StatusCode
VOCAB = 512  # stories260K's


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sinkserve-e2e-")
        cls.server = Server(os.path.join(cls.tmp, "db"), "--default-policy", POLICY,
                            "--max-tokens-limit", "100000",
                            "--metrics-listen", "127.0.0.1:0", "--reflection")
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
        before = metrics(self.server.metrics_port)

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
        # They ran batched: forward steps that advanced several turns at once.
        after = metrics(self.server.metrics_port)
        steps = after["sinkserve_batch_turns_count"] - before["sinkserve_batch_turns_count"]
        turns = after["sinkserve_batch_turns_sum"] - before["sinkserve_batch_turns_sum"]
        # (4-5 when loaded, ~10 quiet; a scheduler that never batches gives 1.)
        self.assertGreater(turns / steps, 1.5, (turns, steps))
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
        ids, _, cut = stream.read_turn()
        # The server's account: the cancel stopped it, after the tokens it sent.
        self.assertEqual(cut.stop_reason, pb.STOP_REASON_CANCELLED)
        self.assertEqual(cut.usage.generated_tokens, len(first.delta.token_ids) + len(ids))
        self.assertLess(cut.usage.generated_tokens, 90000)
        # The stream goes on: another turn runs.
        _, _, end = stream.turn(" Next.", max_tokens=4)
        self.assertEqual(end.usage.generated_tokens, 4)
        stream.finish()
        # The session is free at once and holds exactly what the two turns
        # reported: both are rounds, and every prompt and generated token was
        # fed except the last one sampled (it waits for the next turn).
        again, opened = reattach(self.stub, "cancel", timeout=2)
        self.assertEqual(opened.session.rounds, 2)
        self.assertEqual(opened.session.tokens_seen,
                         sum(e.usage.prompt_tokens + e.usage.generated_tokens
                             for e in (cut, end)) - 1)
        self.assertEqual(opened.session.cells_cached, end.usage.cells_kept)
        again.finish()

    def test_client_vanishes_mid_stream(self):
        cancelled = 'sinkserve_errors_total{code="CANCELLED"}'
        cancelled_before = metrics(self.server.metrics_port)[cancelled]
        stream = Stream(self.stub)
        stream.open("vanish")
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=90000,
                                     ignore_eos=True))
        stream.recv()
        stream.call.cancel()  # the client goes away without a word
        self.assertEqual(code_of(stream.recv), C.CANCELLED)
        # The server noticed (not only the client's own call): it ended the
        # stream as CANCELLED, stopped the turn and freed the session at once;
        # the cut-short turn counts as a round.
        again, opened = reattach(self.stub, "vanish", timeout=2)
        self.assertEqual(opened.session.rounds, 1)
        self.assertLess(opened.session.tokens_seen, 90000)
        again.finish()
        self.assertGreater(metrics(self.server.metrics_port)[cancelled], cancelled_before)

    def test_logprobs(self):
        stream = Stream(self.stub)
        stream.open("logprobs")
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=24, logprobs=True))
        deltas, end = stream.read_deltas()
        stream.send(turn=pb.UserTurn(text=" Then", max_tokens=8))
        unasked, _ = stream.read_deltas()
        stream.finish()
        for delta in deltas:
            self.assertEqual(len(delta.logprobs), len(delta.token_ids))
        logprobs = [lp for d in deltas for lp in d.logprobs]
        self.assertEqual(len(logprobs), end.usage.generated_tokens)
        for lp in logprobs:
            self.assertTrue(math.isfinite(lp), logprobs)
            self.assertLessEqual(lp, 0.0)
            # Greedy takes the most likely token, which has p >= 1/vocab.
            self.assertGreaterEqual(lp, -math.log(VOCAB) - 1e-4)
        self.assertTrue(any(lp < -1e-3 for lp in logprobs), logprobs)  # not all certain
        self.assertTrue(all(len(d.logprobs) == 0 for d in unasked))

    def test_stop_strings(self):
        stream = Stream(self.stub)
        stream.open("stop-ref")
        reference_ids, reference, end = stream.turn("Once upon a time", max_tokens=40)
        stream.finish()
        self.assertEqual(end.stop_reason, pb.STOP_REASON_MAX_TOKENS)
        stop = reference[len(reference) // 2:len(reference) // 2 + 6]
        stream = Stream(self.stub)
        stream.open("stop")
        stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=40,
                                     stop=["never said", stop], logprobs=True))
        deltas, end = stream.read_deltas()
        stream.finish()
        reply = "".join(d.text for d in deltas)
        ids = [i for d in deltas for i in d.token_ids]
        self.assertEqual(end.stop_reason, pb.STOP_REASON_STOP_STRING)
        self.assertNotIn(stop, reply)
        self.assertEqual(reply, reference[:reference.index(stop)])
        # Ids go out with their text: those of the reply, never the tokens
        # spelling the stop string (generated, so counted in usage).
        self.assertEqual(ids, reference_ids[:len(ids)])
        self.assertLessEqual(len(ids), end.usage.generated_tokens)
        self.assertEqual(len([p for d in deltas for p in d.logprobs]), len(ids))

    def test_sampling_override(self):
        """A turn's sampling settings beat the session's for that turn."""
        text = "Once upon a time"
        greedy = turns_alone(self.stub, "greedy-ref", [text], max_tokens=48)[0]
        hot = pb.SessionConfig(sampling=pb.SamplingParams(temperature=1.5, seed=7))
        # Seeded, so this differs from greedy every run, not by chance.
        self.assertNotEqual(turns_alone(self.stub, "hot-ref", [text], max_tokens=48,
                                        config=hot)[0], greedy)
        stream = Stream(self.stub)
        stream.open("hot", config=hot)
        ids, _, _ = stream.turn(text, max_tokens=48, sampling=pb.SamplingParams(temperature=0))
        stream.finish()
        self.assertEqual(ids, greedy)

    def test_usage_evictions_and_timings(self):
        # Its own policy label, so that the eviction counter sees only this
        # session.
        label = 'sinkserve_evicted_cells_total{policy="window"}'
        before = metrics(self.server.metrics_port)[label]
        stream = Stream(self.stub)
        stream.open("evict", config=pb.SessionConfig(
            policy=pb.CachePolicy(kind=pb.POLICY_WINDOW, window=48)))
        _, _, fits = stream.turn("Once upon a time", max_tokens=30)
        self.assertEqual(fits.usage.cells_evicted, 0)
        _, _, over = stream.turn(" Then the dog ran.", max_tokens=80)
        self.assertGreater(over.usage.cells_evicted, 0)
        self.assertEqual(over.usage.cells_kept, 48)
        # What was kept, plus what was fed, less what was evicted.
        self.assertEqual(fits.usage.cells_kept + over.usage.prompt_tokens
                         + over.usage.generated_tokens - over.usage.cells_evicted,
                         over.usage.cells_kept)
        for end in (fits, over):
            self.assertGreater(end.timings.time_to_first_token_ms, 0)
            self.assertGreater(end.timings.tokens_per_second, 0)
        # A cancelled turn evicts too, and the counter counts it.
        stream.send(turn=pb.UserTurn(text=" More.", max_tokens=90000, ignore_eos=True))
        stream.recv()
        stream.send(cancel=pb.CancelTurn())
        _, _, cut = stream.read_turn()
        self.assertEqual(cut.stop_reason, pb.STOP_REASON_CANCELLED)
        self.assertGreater(cut.usage.cells_evicted, 0)
        stream.finish()
        self.assertEqual(metrics(self.server.metrics_port)[label] - before,
                         over.usage.cells_evicted + cut.usage.cells_evicted)

    def test_slow_reader_gets_backpressure(self):
        """A client that stops reading pauses its turn, the server holding a
        bounded backlog meanwhile; once it reads again the turn completes."""
        # Without BDP probing the client's HTTP/2 window stays at 64 KiB, so
        # the pause comes a few thousand tokens in (with it, the window grows
        # to megabytes: a whole turn fits).
        channel = grpc.insecure_channel(self.server.address,
                                        options=[("grpc.http2.bdp_probe", 0)])
        max_tokens = 20000

        def tokens_seen():
            return self.stub.GetSession(
                pb.GetSessionRequest(session_id="slow-reader")).tokens_seen
        try:
            stream = Stream(pb_grpc.SinkServeStub(channel))
            stream.open("slow-reader")
            stream.send(turn=pb.UserTurn(text="Once upon a time", max_tokens=max_tokens,
                                         ignore_eos=True))
            first = stream.recv()  # then read nothing
            deadline = time.time() + 30
            seen = tokens_seen()
            while True:
                time.sleep(0.3)
                now = tokens_seen()
                if now == seen:
                    break
                seen = now
                self.assertLess(time.time(), deadline, "the turn never paused")
            self.assertLess(seen, max_tokens // 2)  # paused mid-turn, not done
            rss = rss_kb(self.server.proc.pid)
            time.sleep(1)
            self.assertEqual(tokens_seen(), seen)
            self.assertLess(rss_kb(self.server.proc.pid) - rss, 2048)
            ids, _, end = stream.read_turn()
            stream.finish()
        finally:
            channel.close()
        self.assertEqual(end.stop_reason, pb.STOP_REASON_MAX_TOKENS)
        self.assertEqual(end.usage.generated_tokens, max_tokens)
        self.assertEqual(len(first.delta.token_ids) + len(ids), max_tokens)

    def test_interactive_chat_on_a_terminal(self):
        """`sinkserve chat` on a terminal: a prompt, tokens as they stream,
        Ctrl-C (SIGINT) cancels the running turn, at the prompt it quits."""
        master, slave = pty.openpty()
        proc = subprocess.Popen([SINKSERVE, "chat", "--server", self.server.address,
                                 "--session", "tty", "--create", "--ignore-eos",
                                 "--max-tokens", "100000"],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(slave)
        out = b""

        def read_until(predicate, timeout=20):
            nonlocal out
            end = time.time() + timeout
            while not predicate(out):
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.time()))
                self.assertTrue(ready, f"no output in time; so far {out[-200:]!r}")
                chunk = os.read(proc.stdout.fileno(), 4096)
                self.assertTrue(chunk, f"chat exited early: {out[-200:]!r}")
                out += chunk

        try:
            read_until(lambda o: o.endswith(b"> "))
            os.write(master, b"Once upon a time\n")
            read_until(lambda o: len(o) > 400)  # a reply streaming, far from its end
            proc.send_signal(signal.SIGINT)
            read_until(lambda o: o.endswith(b"> "))  # the turn ended; the next prompt
            proc.send_signal(signal.SIGINT)  # between turns: quit
            self.assertEqual(proc.wait(timeout=20), 130)
            self.assertIn("[cancelled:", proc.stderr.read().decode())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
            proc.stdout.close()
            proc.stderr.close()
        info = self.stub.GetSession(pb.GetSessionRequest(session_id="tty"), timeout=10)
        self.assertEqual(info.rounds, 1)  # the cancelled turn is a round, kept

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
        values = metrics(self.server.metrics_port)
        self.assertGreaterEqual(values["sinkserve_generated_tokens_total"],
                                end.usage.generated_tokens)
        self.assertGreaterEqual(values["sinkserve_prompt_tokens_total"], end.usage.prompt_tokens)
        self.assertGreaterEqual(values['sinkserve_errors_total{code="NOT_FOUND"}'], 1)
        self.assertGreater(values["sinkserve_time_to_first_token_seconds_count"], 0)
        self.assertGreater(values["sinkserve_checkpoint_duration_seconds_count"], 0)
        self.assertGreater(values["sinkserve_sessions_in_store"], 0)
        # This server's default policy is streaming: its sessions' cells, and
        # the K/V bytes they hold (5 layers x 2 x kv_dim 32 x 4 bytes a cell).
        self.assertGreater(values['sinkserve_cache_cells{policy="streaming"}'], 0)
        self.assertEqual(values['sinkserve_cache_cells{policy="full"}'], 0)
        self.assertGreaterEqual(values["sinkserve_session_memory_bytes"], 64 * 5 * 2 * 32 * 4)

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

        # A second turn while one runs is no error: it waits its turn
        # (pipelining; server_turns_test.py has the details).
        stream = Stream(stub)
        stream.open("twice")
        stream.send(turn=pb.UserTurn(text="a", max_tokens=90000, ignore_eos=True))
        stream.send(turn=pb.UserTurn(text="b", max_tokens=3))
        stream.send(cancel=pb.CancelTurn())
        self.assertEqual(stream.read_turn()[2].stop_reason, pb.STOP_REASON_CANCELLED)
        self.assertEqual(stream.read_turn()[2].stop_reason, pb.STOP_REASON_MAX_TOKENS)
        stream.finish()

        # DEADLINE_EXCEEDED: the client's deadline ends a long turn.
        def too_slow():
            stream = Stream(stub, timeout=0.3)
            stream.open("slow")
            stream.turn("a", max_tokens=90000, ignore_eos=True)
        self.assertEqual(code_of(too_slow), C.DEADLINE_EXCEEDED)
        # The server honoured it too: the turn stopped and the session is free.
        again, opened = reattach(stub, "slow", timeout=2)
        self.assertEqual(opened.session.rounds, 1)
        self.assertLess(opened.session.tokens_seen, 90000)
        again.finish()


if __name__ == "__main__":
    unittest.main(verbosity=2)
