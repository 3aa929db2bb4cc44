#!/usr/bin/python3
"""Generates the Python stubs the way the build does, imports them, and drives
sinkserve_client.py against an in-process fake SinkServe servicer.

The fake checks the client's side of the protocol (open first, turns, paging,
status codes); the real server is tested end to end elsewhere.

Environment: SINKSERVE_PROTOC, SINKSERVE_GRPC_PYTHON_PLUGIN (default: from
PATH), SINKSERVE_PROTO_ROOT (default: ../../proto next to this file).
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import unittest.mock
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "sinkserve_client.py")


def generate_stubs(out_dir):
    protoc = os.environ.get("SINKSERVE_PROTOC") or shutil.which("protoc")
    plugin = (os.environ.get("SINKSERVE_GRPC_PYTHON_PLUGIN")
              or shutil.which("grpc_python_plugin"))
    root = os.environ.get("SINKSERVE_PROTO_ROOT",
                          os.path.join(HERE, "..", "..", "proto"))
    if not protoc or not plugin:
        raise unittest.SkipTest("protoc or grpc_python_plugin not installed")
    subprocess.run([protoc, f"--proto_path={root}", f"--python_out={out_dir}",
                    f"--grpc_python_out={out_dir}",
                    f"--plugin=protoc-gen-grpc_python={plugin}",
                    os.path.join(root, "sinkserve", "v1", "sinkserve.proto")],
                   check=True)


STUBS = tempfile.mkdtemp(prefix="sinkserve_stubs_")
generate_stubs(STUBS)
sys.path.insert(0, STUBS)
sys.path.insert(0, HERE)
import grpc  # noqa: E402
from sinkserve.v1 import sinkserve_pb2 as pb  # noqa: E402
from sinkserve.v1 import sinkserve_pb2_grpc as pb_grpc  # noqa: E402
import sinkserve_client  # noqa: E402


class FakeSinkServe(pb_grpc.SinkServeServicer):
    """Echoes each turn back word by word; sessions live in a dict. A word is
    a cell: pinned turns and the system prompt pin one cell per word."""

    def __init__(self):
        self.sessions = {}
        self.pins = {}         # session id -> {turn id ("" = system prompt): cells}
        self.turns = []
        self.unpins = []       # turn ids of every UnpinTurn
        self.headers = []      # x-session-id of every call
        self.break_turns = 0   # break this many streams after reading a turn
        self.break_unpins = 0  # break this many streams after an unpin is done

    def _note_header(self, context):
        self.headers.append(dict(context.invocation_metadata()).get("x-session-id"))

    def _new_session(self, session_id, config, **fields):
        info = pb.SessionInfo(session_id=session_id, config=config, **fields)
        self.sessions[session_id] = info
        self.pins[session_id] = {}
        pin_prompt = (config.pin_system_prompt
                      if config.HasField("pin_system_prompt") else True)
        if config.system_prompt and pin_prompt:
            self._pin(session_id, "", len(config.system_prompt.split()))
        return info

    def _pin(self, session_id, turn_id, cells):
        self.pins[session_id][turn_id] = cells
        self._sync_pins(session_id)

    def _sync_pins(self, session_id):
        info, pins = self.sessions[session_id], self.pins[session_id]
        info.pinned_cells = sum(pins.values())
        del info.pins[:]
        info.pins.extend(pb.Pin(turn_id=t, cells=c) for t, c in pins.items())

    def _turn_error(self, code, message, turn_id):
        return pb.ChatResponse(turn_error=pb.TurnError(
            code=code.value[0], message=message, turn_id=turn_id))

    def _pin_turn(self, session_id, turn):
        """None when the turn's words are pinned, else the TurnError."""
        if not turn.turn_id:
            return self._turn_error(grpc.StatusCode.INVALID_ARGUMENT,
                                    "pin needs a turn_id", "")
        cells = len(turn.text.split())
        limit = self.sessions[session_id].config.policy.max_pinned_cells
        pinned = self.sessions[session_id].pinned_cells
        if limit and pinned + cells > limit:
            return self._turn_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{pinned} + {cells} pinned cells exceed {limit}", turn.turn_id)
        self._pin(session_id, turn.turn_id, cells)
        return None

    def _unpin(self, session_id, unpin, context):
        self.unpins.append(unpin.turn_id)
        cells = self.pins[session_id].pop(unpin.turn_id, None)
        if cells is None or not unpin.turn_id:
            return self._turn_error(grpc.StatusCode.NOT_FOUND,
                                    f"no pinned turn {unpin.turn_id!r}",
                                    unpin.turn_id)
        self._sync_pins(session_id)
        if self.break_unpins > 0:
            self.break_unpins -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake broken stream")
        return pb.ChatResponse(unpinned=pb.Unpinned(
            turn_id=unpin.turn_id, cells=cells,
            pinned_cells=self.sessions[session_id].pinned_cells))

    def Chat(self, request_iterator, context):
        self._note_header(context)
        first = next(request_iterator)
        if first.WhichOneof("kind") != "open":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "open first")
        session_id = first.open.session_id
        if session_id not in self.sessions:
            if not first.open.create_if_missing:
                context.abort(grpc.StatusCode.NOT_FOUND, session_id)
            self._new_session(session_id, first.open.config,
                              chat_template="raw")
        yield pb.ChatResponse(opened=pb.SessionOpened(
            session=self.sessions[session_id], warnings=["fake server"]))
        for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "unpin":
                yield self._unpin(session_id, request.unpin, context)
                continue
            if kind != "turn":
                continue
            self.turns.append(request.turn)
            if self.break_turns > 0:
                self.break_turns -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake broken stream")
            if request.turn.pin:
                refused = self._pin_turn(session_id, request.turn)
                if refused is not None:
                    yield refused
                    continue
            words = request.turn.text.split()
            for i, word in enumerate(words):
                yield pb.ChatResponse(delta=pb.TokenDelta(
                    text=(" " if i else "") + word, token_ids=[i]))
            self.sessions[session_id].rounds += 1
            yield pb.ChatResponse(turn_end=pb.TurnEnd(
                stop_reason=pb.STOP_REASON_EOS,
                usage=pb.Usage(
                    prompt_tokens=len(words), generated_tokens=len(words),
                    cells_pinned=self.sessions[session_id].pinned_cells),
                turn_id=request.turn.turn_id))

    def CreateSession(self, request, context):
        return self._new_session(request.session_id, request.config)

    def GetSession(self, request, context):
        self._note_header(context)
        if request.session_id not in self.sessions:
            context.abort(grpc.StatusCode.NOT_FOUND, request.session_id)
        return self.sessions[request.session_id]

    def ListSessions(self, request, context):
        ids = sorted(self.sessions)
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = ids[start:start + size]
        next_token = str(start + size) if start + size < len(ids) else ""
        return pb.ListSessionsResponse(
            sessions=[self.sessions[i] for i in page],
            next_page_token=next_token)

    def DeleteSession(self, request, context):
        if self.sessions.pop(request.session_id, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, request.session_id)
        return pb.DeleteSessionResponse()


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSinkServe()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SinkServeServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def tearDown(self):
        self.server.stop(None)

    def run_client(self, *argv, stdin=""):
        """Runs the client; `stdin` holds the lines of an interactive chat."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                unittest.mock.patch("sys.stdin", io.StringIO(stdin)):
            code = sinkserve_client.main(
                ["--server", self.address, "--stubs", STUBS, "--timeout", "30",
                 *argv])
        return code, out.getvalue(), err.getvalue()

    def test_help_runs_without_stubs(self):
        env = dict(os.environ)
        env.pop("SINKSERVE_PY_STUBS", None)
        result = subprocess.run([sys.executable, CLIENT, "--help"],
                                capture_output=True, text=True, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("chat", result.stdout)

    def test_missing_stubs_is_a_clear_error(self):
        result = subprocess.run(
            [sys.executable, CLIENT, "--stubs", "/nonexistent", "list"],
            capture_output=True, text=True, cwd=tempfile.gettempdir())
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("sinkserve_python_stubs", result.stderr)

    def test_chat_streams_turns(self):
        code, out, err = self.run_client(
            "chat", "--session", "s1", "--create", "--policy", "sirllm",
            "--window", "64", "--system-prompt", "be brief",
            "--message", "hello there", "--message", "and again",
            "--max-tokens", "9", "--stop", "END")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "hello there\nand again\n")
        self.assertIn("warning: fake server", err)
        self.assertEqual([t.text for t in self.fake.turns],
                         ["hello there", "and again"])
        self.assertEqual(self.fake.turns[0].max_tokens, 9)
        self.assertEqual(list(self.fake.turns[0].stop), ["END"])
        config = self.fake.sessions["s1"].config
        self.assertEqual(config.policy.kind, pb.POLICY_SIRLLM)
        self.assertEqual(config.policy.window, 64)
        self.assertEqual(config.system_prompt, "be brief")
        self.assertEqual(self.fake.sessions["s1"].rounds, 2)
        # Every call carries the routing header; every turn its own id.
        self.assertEqual(self.fake.headers, ["s1"])
        ids = [t.turn_id for t in self.fake.turns]
        self.assertTrue(all(ids), ids)
        self.assertEqual(len(set(ids)), 2)

    def test_chat_resends_the_same_turn_id_after_a_broken_stream(self):
        self.fake.break_turns = 2
        code, out, err = self.run_client(
            "chat", "--session", "r1", "--create", "--message", "one two",
            "--turn-id", "tid-1")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("one two\n"), out)
        self.assertEqual([t.turn_id for t in self.fake.turns], ["tid-1"] * 3)
        self.assertEqual(err.count("resending turn tid-1"), 2)
        self.assertEqual(self.fake.headers, ["r1"] * 3)

    def test_chat_gives_up_after_its_retries(self):
        self.fake.break_turns = 10
        code, _, err = self.run_client(
            "chat", "--session", "r2", "--create", "--message", "x", "--retries", "1")
        self.assertEqual(code, 1)
        self.assertIn("UNAVAILABLE", err)
        self.assertEqual(len(self.fake.turns), 2)
        self.assertEqual(self.fake.turns[0].turn_id, self.fake.turns[1].turn_id)

    def test_chat_unknown_session_reports_code(self):
        code, _, err = self.run_client("chat", "--session", "nope",
                                       "--message", "hi")
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND", err)

    def test_names_cover_the_proto_enums(self):
        """Every PolicyKind and StopReason value has the client's name for it."""
        for value in pb.StopReason.values():
            self.assertEqual(
                sinkserve_client.STOP_REASONS.get(value),
                pb.StopReason.Name(value).removeprefix("STOP_REASON_").lower())
        self.assertEqual(len(sinkserve_client.STOP_REASONS),
                         len(pb.StopReason.values()))
        self.assertEqual(
            sinkserve_client.POLICIES,
            tuple(pb.PolicyKind.Name(v).removeprefix("POLICY_").lower()
                  for v in sorted(pb.PolicyKind.values())))

    def test_pin_flag_pins_each_message(self):
        code, _, err = self.run_client(
            "chat", "--session", "p1", "--create", "--pin",
            "--message", "my name is Ada", "--turn-id", "ada")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.fake.turns), 1)
        self.assertTrue(self.fake.turns[0].pin)
        self.assertEqual(self.fake.turns[0].turn_id, "ada")
        self.assertIn("cells kept (4 pinned)", err)
        self.assertIn("[pinned turn ada; /unpin ada lets it go]", err)

    def test_interactive_pin_chooses_and_prints_a_turn_id(self):
        code, out, err = self.run_client(
            "chat", "--session", "p2", "--create",
            stdin="/pin remember this\nplain turn\n")
        self.assertEqual(code, 0, err)
        self.assertIn("remember this\n", out)
        pinned, plain = self.fake.turns
        self.assertTrue(pinned.pin)
        self.assertTrue(pinned.turn_id)
        self.assertEqual(pinned.text, "remember this")
        self.assertFalse(plain.pin)
        self.assertIn(f"[pinned turn {pinned.turn_id};", err)
        self.assertEqual(err.count("pinned turn"), 1)
        self.assertEqual(self.fake.pins["p2"], {pinned.turn_id: 2})

    def test_interactive_unpin_prints_the_unpinned_numbers(self):
        self.run_client("chat", "--session", "u1", "--create",
                        "--system-prompt", "be brief", "--pin",
                        "--message", "my name is Ada", "--turn-id", "ada")
        code, _, err = self.run_client("chat", "--session", "u1",
                                       stdin="/unpin ada\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.fake.unpins, ["ada"])
        self.assertIn("[unpinned turn ada: 4 cells let go, 2 still pinned]", err)
        self.assertEqual(self.fake.pins["u1"], {"": 2})

    def test_unpin_of_an_unknown_turn_reports_not_found_and_goes_on(self):
        code, out, err = self.run_client(
            "chat", "--session", "u2", "--create",
            stdin="/unpin nope\nstill here\n")
        self.assertEqual(code, 0, err)
        self.assertIn("[refused: NOT_FOUND: no pinned turn 'nope']", err)
        self.assertIn("still here\n", out)
        # The stream went on: one Chat call for both lines.
        self.assertEqual(self.fake.headers, ["u2"])

    def test_pin_over_the_limit_is_refused_and_the_stream_goes_on(self):
        code, out, err = self.run_client(
            "chat", "--session", "u3", "--create", "--max-pinned-cells", "2",
            stdin="/pin one two three\nnext\n")
        self.assertEqual(code, 0, err)
        self.assertIn("[refused: RESOURCE_EXHAUSTED: 0 + 3 pinned cells "
                      "exceed 2]", err)
        self.assertNotIn("pinned turn", err)
        self.assertIn("next\n", out)
        self.assertEqual(self.fake.headers, ["u3"])

    def test_unpin_resent_after_a_broken_stream_counts_as_done(self):
        self.run_client("chat", "--session", "u4", "--create", "--pin",
                        "--message", "keep me", "--turn-id", "k")
        self.fake.break_unpins = 1
        code, _, err = self.run_client("chat", "--session", "u4",
                                       stdin="/unpin k\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.fake.unpins, ["k", "k"])
        self.assertIn("resending unpin k", err)
        self.assertIn("[unpinned turn k (before the stream broke)]", err)
        self.assertNotIn("refused", err)

    def test_interactive_usage_hints(self):
        code, _, err = self.run_client("chat", "--session", "u5", "--create",
                                       stdin="/pin\n/unpin\n/unpin a b\n")
        self.assertEqual(code, 0, err)
        self.assertIn("[usage: /pin TEXT]", err)
        self.assertEqual(err.count("[usage: /unpin TURN_ID]"), 2)
        self.assertEqual(self.fake.turns, [])
        self.assertEqual(self.fake.unpins, [])

    def test_pin_config_flags_reach_the_server(self):
        code, _, err = self.run_client(
            "create", "--session", "c1", "--system-prompt", "be brief",
            "--max-pinned-cells", "8", "--pin-system-prompt", "false")
        self.assertEqual(code, 0, err)
        config = self.fake.sessions["c1"].config
        self.assertEqual(config.policy.max_pinned_cells, 8)
        self.assertTrue(config.HasField("pin_system_prompt"))
        self.assertFalse(config.pin_system_prompt)
        self.run_client("create", "--session", "c2", "--pin-system-prompt", "true")
        self.assertTrue(self.fake.sessions["c2"].config.pin_system_prompt)
        # Without the flag the field stays unset: the server's default.
        self.run_client("create", "--session", "c3")
        config = self.fake.sessions["c3"].config
        self.assertFalse(config.HasField("pin_system_prompt"))
        self.assertEqual(config.policy.max_pinned_cells, 0)

    def test_get_shows_the_pins(self):
        self.run_client("chat", "--session", "g1", "--create",
                        "--system-prompt", "be brief", "--pin",
                        "--message", "my name is Ada", "--turn-id", "abc")
        code, out, err = self.run_client("get", "--session", "g1")
        self.assertEqual(code, 0, err)
        self.assertIn("6 pinned (system prompt 2, turn abc 4)", out)
        self.run_client("create", "--session", "g2")
        code, out, _ = self.run_client("get", "--session", "g2")
        self.assertNotIn("pinned", out)

    def test_admin_commands_send_the_routing_header(self):
        self.run_client("create", "--session", "h1")
        self.fake.headers.clear()
        code, _, err = self.run_client("get", "--session", "h1")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.fake.headers, ["h1"])

    def test_admin_commands(self):
        for i in range(5):
            self.assertEqual(self.run_client("create", "--session", f"s{i}")[0],
                             0)
        code, out, _ = self.run_client("list", "--page-size", "2")
        self.assertEqual(code, 0)
        self.assertEqual([line.split(":")[0] for line in out.splitlines()],
                         [f"s{i}" for i in range(5)])
        self.assertEqual(self.run_client("delete", "--session", "s3")[0], 0)
        code, _, err = self.run_client("get", "--session", "s3")
        self.assertEqual(code, 1)
        self.assertIn("NOT_FOUND", err)


if __name__ == "__main__":
    try:
        unittest.main()
    finally:
        shutil.rmtree(STUBS, ignore_errors=True)
