#!/usr/bin/python3
"""A small sinkserve client: chat over a Chat stream and manage sessions.

Uses Debian's python3-grpcio and stubs generated at build time from
proto/sinkserve/v1/sinkserve.proto (the `sinkserve_python_stubs` CMake target
writes them to <build>/examples/python). Point --stubs (or the environment
variable SINKSERVE_PY_STUBS) at that folder.

  sinkserve_client.py --server 127.0.0.1:50051 chat --session s1 --create \
      --message "Hello" --message "And then?"
  sinkserve_client.py list
  sinkserve_client.py delete --session s1

Every call names its session in the `x-session-id` request metadata, so that a
load balancer (deploy/nginx) can route all of a session's calls to the same
replica. Each turn carries a random turn_id: when the server is unreachable
or the stream breaks (UNAVAILABLE), the client reconnects and sends the turn
again with the same id, and a turn that had already completed comes back from
the server's record instead of running twice (deploy/RUNBOOK.md).

A server run with TLS and API keys (README "Running it safely") wants the CA
that signed its certificate and a key, from a file or $SINKSERVE_TOKEN:

  SINKSERVE_TOKEN=$(cat alpha.key) sinkserve_client.py --server host:50051 \
      --tls-ca ca.pem list

Pinning keeps cells in the cache whatever the policy evicts: the system
prompt (on by default, --pin-system-prompt) and turns sent with --pin (or
`/pin TEXT` in interactive chat) until `/unpin TURN_ID` lets them go.
"""

import argparse
import os
import queue
import random
import sys
import time
import uuid

STUBS_ENV = "SINKSERVE_PY_STUBS"
TOKEN_ENV = "SINKSERVE_TOKEN"
# Lower-case names of the proto's PolicyKind and StopReason values, by number
# (client_test.py checks them against the generated enums).
POLICIES = ("unspecified", "full", "window", "streaming", "sirllm")
STOP_REASONS = {0: "unspecified", 1: "eos", 2: "stop_string", 3: "max_tokens",
                4: "cancelled", 5: "context_full"}


SESSION_HEADER = "x-session-id"


def routing(session_id):
    """The request metadata that routes a call to the session's replica."""
    return ((SESSION_HEADER, session_id),)


class TurnRefused(Exception):
    """The server refused one turn or unpin (TurnError) without ending the
    stream."""

    def __init__(self, code, message, turn_id=""):
        super().__init__(f"{code}: {message}")
        self.code_name = code
        self.message = message
        self.turn_id = turn_id


class StreamBroken(Exception):
    """The stream ended (without an error status) before the turn did."""


def retryable(error):
    """Whether a failed turn may be sent again with the same turn_id:
    UNAVAILABLE (server unreachable or draining, connection or stream
    broken), a stream that ended early, and a session still attached to the
    previous, broken stream (released as soon as the server notices)."""
    if isinstance(error, StreamBroken):
        return True
    code = getattr(error, "code", None)
    if not callable(code):
        return False
    name = code().name
    if name == "UNAVAILABLE":
        return True
    details = error.details() if callable(getattr(error, "details", None)) else ""
    return name == "FAILED_PRECONDITION" and "is attached to another stream" in (details or "")


def load_stubs(stubs_dir):
    """Imports the generated modules; exits with a hint when they are missing."""
    if stubs_dir:
        sys.path.insert(0, os.path.abspath(stubs_dir))
    try:
        import grpc  # noqa: F401
    except ImportError:
        sys.exit(f"this Python ({sys.executable}) has no grpc module; run "
                 f"it with /usr/bin/python3 (Debian's python3-grpcio)")
    try:
        from sinkserve.v1 import sinkserve_pb2, sinkserve_pb2_grpc
    except ImportError as e:
        sys.exit(f"cannot import the sinkserve stubs ({e}); build the "
                 f"sinkserve_python_stubs target and pass --stubs "
                 f"<build>/examples/python or set {STUBS_ENV}")
    return sinkserve_pb2, sinkserve_pb2_grpc


def session_config(pb, args):
    config = pb.SessionConfig()
    config.policy.kind = POLICIES.index(args.policy)
    if args.sinks is not None:
        config.policy.sinks = args.sinks
    if args.window is not None:
        config.policy.window = args.window
    if args.entropy is not None:
        config.policy.entropy = args.entropy
    if args.decay is not None:
        config.policy.decay = args.decay
    if args.temperature is not None:
        config.sampling.temperature = args.temperature
    if args.seed is not None:
        config.sampling.seed = args.seed
    if args.max_pinned_cells is not None:
        config.policy.max_pinned_cells = args.max_pinned_cells
    # Left unset without the flag: the server then pins a system prompt
    # when there is one.
    if args.pin_system_prompt is not None:
        config.pin_system_prompt = args.pin_system_prompt == "true"
    config.system_prompt = args.system_prompt
    config.chat_template = args.chat_template
    return config


def describe(info):
    text = (f"{info.session_id}: {info.cells_cached} cells cached, "
            f"{info.rounds} rounds, {info.tokens_seen} tokens seen, "
            f"template {info.chat_template or '(unset)'}")
    if info.pinned_cells or info.pins:
        text += f", {describe_pins(info)}"
    return text


def describe_pins(info):
    """E.g. `17 pinned (system prompt 12, turn abc 5)`."""
    pins = ", ".join(
        f"{'turn ' + pin.turn_id if pin.turn_id else 'system prompt'} {pin.cells}"
        for pin in info.pins)
    return f"{info.pinned_cells} pinned" + (f" ({pins})" if pins else "")


class ChatStream:
    """One bidirectional Chat call: requests go through a queue so that turns
    and cancels can be sent while responses stream back."""

    def __init__(self, stub, pb, timeout, session_id=None):
        self._pb = pb
        self._requests = queue.Queue()
        self._responses = stub.Chat(
            self._request_iter(), timeout=timeout,
            metadata=routing(session_id) if session_id else None)

    def _request_iter(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def open(self, session_id, create, config):
        self._requests.put(self._pb.ChatRequest(open=self._pb.OpenSession(
            session_id=session_id, create_if_missing=create, config=config)))
        response = next(self._responses)
        if response.WhichOneof("kind") != "opened":
            raise RuntimeError(f"expected SessionOpened, got {response}")
        return response.opened

    def turn(self, text, max_tokens, stop, out, turn_id="", pin=False):
        """Sends a user turn, writes tokens to `out` as they arrive and returns
        the TurnEnd. Ctrl-C cancels the turn (the server ends it CANCELLED).
        `pin` keeps the turn's cells until unpin(turn_id)."""
        if pin and not turn_id:
            # The server would refuse it: unpin needs the id to name the turn.
            raise ValueError("a pinned turn needs a turn_id")
        self._requests.put(self._pb.ChatRequest(turn=self._pb.UserTurn(
            text=text, max_tokens=max_tokens, stop=stop, turn_id=turn_id,
            pin=pin)))
        while True:
            try:
                for response in self._responses:
                    kind = response.WhichOneof("kind")
                    if kind == "delta":
                        out.write(response.delta.text)
                        out.flush()
                    elif kind == "turn_end":
                        return response.turn_end
                    elif kind == "turn_error":
                        raise _refused(response.turn_error)
                raise StreamBroken("stream ended before the turn did")
            except KeyboardInterrupt:
                self._requests.put(
                    self._pb.ChatRequest(cancel=self._pb.CancelTurn()))

    def unpin(self, turn_id):
        """Lets a pinned turn's cells go; returns the Unpinned answer. Raises
        TurnRefused (NOT_FOUND) when no pinned turn has that id."""
        self._requests.put(self._pb.ChatRequest(
            unpin=self._pb.UnpinTurn(turn_id=turn_id)))
        # Turns run one at a time and turn() waits for each TurnEnd, so the
        # next response answers this unpin.
        for response in self._responses:
            kind = response.WhichOneof("kind")
            if kind == "unpinned":
                return response.unpinned
            if kind == "turn_error":
                raise _refused(response.turn_error)
            raise RuntimeError(f"expected Unpinned, got {response}")
        raise StreamBroken("stream ended before the unpin was answered")

    def close(self):
        self._requests.put(None)


def _refused(error):
    return TurnRefused(_code_name(error.code), error.message, error.turn_id)


def _code_name(code):
    import grpc
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)


class ReconnectingChat:
    """Turns of one session that survive broken streams: on a retryable
    error the stream is reopened and the turn sent again with the same
    turn_id (bounded tries, exponential backoff with jitter)."""

    def __init__(self, stub, pb, args, retries=5, backoff=0.1, max_backoff=2.0):
        self._stub, self._pb, self._args = stub, pb, args
        self._retries, self._backoff, self._max_backoff = retries, backoff, max_backoff
        self._stream = None

    def _connect(self):
        args = self._args
        self._stream = ChatStream(self._stub, self._pb, args.timeout, args.session)
        opened = self._stream.open(args.session, args.create, session_config(self._pb, args))
        state = "restored" if opened.restored else "attached"
        print(f"[{state} {describe(opened.session)}]", file=sys.stderr)
        for warning in opened.warnings:
            print(f"[warning: {warning}]", file=sys.stderr)

    def turn(self, text, out, turn_id=None, pin=False):
        turn_id = turn_id or new_turn_id()
        return self._retrying(f"turn {turn_id}", lambda stream: stream.turn(
            text, self._args.max_tokens, self._args.stop, out, turn_id, pin))

    def unpin(self, turn_id):
        """Returns the Unpinned answer, or None when a resent unpin found no
        such pin: the try that the broken stream cut off had unpinned it
        (unpinning twice is harmless, so a lost answer is simply resent)."""
        sent = False

        def send(stream):
            nonlocal sent
            try:
                sent_before, sent = sent, True
                return stream.unpin(turn_id)
            except TurnRefused as e:
                if sent_before and e.code_name == "NOT_FOUND":
                    return None
                raise
        return self._retrying(f"unpin {turn_id}", send)

    def _retrying(self, what, send):
        """Runs send(stream) on an open stream, reconnecting and running it
        again on a retryable error."""
        wait = self._backoff
        for attempt in range(self._retries + 1):
            try:
                if self._stream is None:
                    self._connect()
                return send(self._stream)
            except TurnRefused:
                raise  # the stream goes on: keep it for the next request
            except Exception as e:  # grpc.RpcError, StreamBroken
                self.close()
                if not retryable(e) or attempt == self._retries:
                    raise
                print(f"\n[attempt {attempt + 1} failed ({_describe_error(e)}); "
                      f"resending {what}]", file=sys.stderr)
                time.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(2 * wait, self._max_backoff)

    def close(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def new_turn_id():
    return uuid.uuid4().hex


def _describe_error(e):
    if callable(getattr(e, "code", None)):
        return f"{e.code().name}: {e.details()}"
    return str(e)


def cmd_chat(args, pb, stub):
    chat = ReconnectingChat(stub, pb, args, retries=args.retries)
    try:
        messages = list(args.message)
        interactive = not messages
        # A chosen turn id makes sense for one turn only.
        turn_id = args.turn_id if len(messages) == 1 else None
        while True:
            if interactive:
                try:
                    line = input("> ")
                except EOFError:
                    break
                try:
                    chat_line(chat, line)
                except TurnRefused as e:
                    # Only this request was refused: the stream goes on.
                    print(f"[refused: {e}]", file=sys.stderr)
            elif messages:
                send_turn(chat, messages.pop(0), turn_id, args.pin)
            else:
                break
    finally:
        chat.close()


def chat_line(chat, line):
    """One interactive line: `/pin TEXT`, `/unpin TURN_ID` or a plain turn."""
    command, _, rest = line.partition(" ")
    if command == "/pin":
        if not rest.strip():
            print("[usage: /pin TEXT]", file=sys.stderr)
            return
        send_turn(chat, rest, None, pin=True)
    elif command == "/unpin":
        if len(rest.split()) != 1:
            print("[usage: /unpin TURN_ID]", file=sys.stderr)
            return
        unpin_turn(chat, rest.strip())
    else:
        send_turn(chat, line, None, pin=False)


def send_turn(chat, text, turn_id, pin):
    if pin:
        # Chosen here rather than in chat.turn: the user needs it to unpin.
        turn_id = turn_id or new_turn_id()
    end = chat.turn(text, sys.stdout, turn_id, pin)
    print()
    print_turn_end(end)
    if pin:
        print(f"[pinned turn {turn_id}; /unpin {turn_id} lets it go]",
              file=sys.stderr)


def print_turn_end(end):
    usage, timings = end.usage, end.timings
    replayed = ", replayed (the turn had completed)" if end.replayed else ""
    pinned = f" ({usage.cells_pinned} pinned)" if usage.cells_pinned else ""
    print(f"[{STOP_REASONS.get(end.stop_reason, end.stop_reason)}{replayed}: "
          f"{usage.prompt_tokens} prompt + {usage.generated_tokens} "
          f"generated tokens, {usage.cells_kept} cells kept{pinned}, "
          f"{usage.cells_evicted} evicted; first token "
          f"{timings.time_to_first_token_ms:.1f} ms, "
          f"{timings.tokens_per_second:.1f} tok/s]", file=sys.stderr)


def unpin_turn(chat, turn_id):
    unpinned = chat.unpin(turn_id)
    if unpinned is None:
        print(f"[unpinned turn {turn_id} (before the stream broke)]",
              file=sys.stderr)
        return
    print(f"[unpinned turn {unpinned.turn_id}: {unpinned.cells} cells let go, "
          f"{unpinned.pinned_cells} still pinned]", file=sys.stderr)


def cmd_create(args, pb, stub):
    info = stub.CreateSession(pb.CreateSessionRequest(
        session_id=args.session, config=session_config(pb, args)),
        timeout=args.timeout, metadata=routing(args.session))
    print(describe(info))


def cmd_get(args, pb, stub):
    print(describe(stub.GetSession(
        pb.GetSessionRequest(session_id=args.session), timeout=args.timeout,
        metadata=routing(args.session))))


def cmd_list(args, pb, stub):
    token = ""
    while True:
        page = stub.ListSessions(pb.ListSessionsRequest(
            page_size=args.page_size, page_token=token), timeout=args.timeout)
        for info in page.sessions:
            print(describe(info))
        for bad in page.unreadable:
            print(f"{bad.session_id}: UNREADABLE ({bad.error})")
        token = page.next_page_token
        if not token:
            return


def cmd_delete(args, pb, stub):
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=args.session),
                       timeout=args.timeout, metadata=routing(args.session))
    print(f"deleted {args.session}")


def add_config_flags(parser):
    group = parser.add_argument_group("session config (used on creation)")
    group.add_argument("--policy", choices=POLICIES, default="unspecified")
    group.add_argument("--sinks", type=int)
    group.add_argument("--window", type=int)
    group.add_argument("--entropy", type=int)
    group.add_argument("--decay", type=float)
    group.add_argument("--temperature", type=float, help="0 = greedy")
    group.add_argument("--seed", type=int)
    group.add_argument("--system-prompt", default="")
    group.add_argument("--chat-template", default="",
                       help="raw, llama2, llama3, chatml, mistral, zephyr; "
                            "empty = from the model")
    group.add_argument("--max-pinned-cells", type=int, metavar="N",
                       help="most cells the session may pin (taken from the "
                            "window); 0 = only the server's minimum window "
                            "limits pins")
    group.add_argument("--pin-system-prompt", choices=("true", "false"),
                       help="keep the system prompt's cells for the life of "
                            "the session (default: on when there is one)")


def build_parser():
    parser = argparse.ArgumentParser(
        description="sinkserve example client (gRPC, sinkserve.v1)")
    parser.add_argument("--server", default="127.0.0.1:50051",
                        help="host:port of `sinkserve serve`")
    parser.add_argument("--stubs", default=os.environ.get(STUBS_ENV, ""),
                        help="folder with the generated sinkserve/v1 modules "
                             f"(default: ${STUBS_ENV})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="RPC deadline in seconds (default: none)")
    security = parser.add_argument_group("security (serve --tls-cert / --auth api-keys)")
    security.add_argument("--tls", action="store_true",
                          help="connect with TLS (implied by the --tls-* flags)")
    security.add_argument("--tls-ca", help="PEM CA bundle that signed the server's "
                                           "certificate (default: the system's)")
    security.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    security.add_argument("--tls-key", help="PEM key of --tls-cert")
    security.add_argument("--tls-server-name",
                          help="name to check in the server's certificate")
    security.add_argument("--token-file",
                          help="file holding the API key sent as 'authorization: "
                               f"Bearer' (default: ${TOKEN_ENV})")
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="chat over one stream")
    chat.add_argument("--session", required=True)
    chat.add_argument("--create", action="store_true",
                      help="create the session if it does not exist")
    chat.add_argument("--message", action="append", default=[],
                      help="a user turn (repeatable); none = read stdin lines")
    chat.add_argument("--max-tokens", type=int, default=0,
                      help="0 = the server's default")
    chat.add_argument("--stop", action="append", default=[],
                      help="stop string (repeatable)")
    chat.add_argument("--retries", type=int, default=5,
                      help="resend a turn (same turn_id) this many times on "
                           "UNAVAILABLE or a broken stream")
    chat.add_argument("--turn-id", default="",
                      help="turn id of a single --message (default: random)")
    chat.add_argument("--pin", action="store_true",
                      help="pin every --message (interactive: /pin TEXT, "
                           "/unpin TURN_ID)")
    add_config_flags(chat)
    chat.set_defaults(run=cmd_chat)

    create = commands.add_parser("create", help="create a session")
    create.add_argument("--session", required=True)
    add_config_flags(create)
    create.set_defaults(run=cmd_create)

    get = commands.add_parser("get", help="show a session")
    get.add_argument("--session", required=True)
    get.set_defaults(run=cmd_get)

    listing = commands.add_parser("list", help="list sessions")
    listing.add_argument("--page-size", type=int, default=0,
                         help="0 = the server's default")
    listing.set_defaults(run=cmd_list)

    delete = commands.add_parser("delete", help="delete a session")
    delete.add_argument("--session", required=True)
    delete.set_defaults(run=cmd_delete)
    return parser


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(args):
    """A channel to args.server: TLS when asked for, and the API key (from
    --token-file or $SINKSERVE_TOKEN) as a bearer token on every call."""
    import grpc
    options = []
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_file(args.tls_ca) if args.tls_ca else None,
            private_key=read_file(args.tls_key) if args.tls_key else None,
            certificate_chain=read_file(args.tls_cert) if args.tls_cert else None)
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        channel = grpc.secure_channel(args.server, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.server)
    token = (read_file(args.token_file).decode().splitlines() or [""])[0].strip() \
        if args.token_file else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        return channel, channel
    return channel, grpc.intercept_channel(channel, _bearer_interceptor(token))


def _bearer_interceptor(token):
    import grpc

    class Details(grpc.ClientCallDetails):
        def __init__(self, details, metadata):
            self.method, self.timeout = details.method, details.timeout
            self.credentials, self.metadata = details.credentials, metadata
            self.wait_for_ready = getattr(details, "wait_for_ready", None)
            self.compression = getattr(details, "compression", None)

    class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        def _with_token(self, details):
            metadata = list(details.metadata or []) + [("authorization", f"Bearer {token}")]
            return Details(details, metadata)

        def intercept_unary_unary(self, continuation, details, request):
            return continuation(self._with_token(details), request)

        def intercept_stream_stream(self, continuation, details, requests):
            return continuation(self._with_token(details), requests)

    return Bearer()


def main(argv=None):
    args = build_parser().parse_args(argv)
    pb, pb_grpc = load_stubs(args.stubs)
    import grpc
    raw_channel, channel = open_channel(args)
    with raw_channel:
        stub = pb_grpc.SinkServeStub(channel)
        try:
            args.run(args, pb, stub)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except TurnRefused as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except StreamBroken as e:
            print(f"error: UNAVAILABLE: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
