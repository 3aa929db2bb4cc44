#!/usr/bin/python3
"""End-to-end tests of `sinkserve serve`'s security: TLS and mutual TLS with
certificates made by the openssl CLI, bearer API keys, JWTs, tenants that
cannot see each other, admins, per-tenant quotas, the audit log and key
reloads, against real server processes (see server_testlib.py and
security_testlib.py).
"""

import json
import os
import shutil
import signal
import subprocess
import time
import unittest

import grpc

from security_testlib import (C, POLICY, JwtIssuer, SecurityTestBase, b64url, can_call, config,
                             error_of, stub_for)
from server_testlib import SINKSERVE, SERVING, Server, Stream, code_of, health, metrics, pb
from server_testlib import pb_grpc


class TlsTest(SecurityTestBase):
    def test_tls_is_required_and_verified(self):
        server = self.tls_server(os.path.join(self.tmp, "tls-db"))
        self.assertEqual(health(server.channel), SERVING)
        self.assertTrue(can_call(stub_for(server, self.pki.credentials("ca1"))))
        plain = pb_grpc.SinkServeStub(grpc.insecure_channel(server.address))
        self.assertFalse(can_call(plain))
        self.assertFalse(can_call(stub_for(server, self.pki.credentials("ca2"))))

    def test_mutual_tls_needs_a_client_certificate_of_the_ca(self):
        server = self.tls_server(os.path.join(self.tmp, "mtls-db"), client_ca="ca1")
        self.assertTrue(can_call(stub_for(server, self.pki.credentials("ca1", "client1"))))
        self.assertFalse(can_call(stub_for(server, self.pki.credentials("ca1"))))
        self.assertFalse(can_call(stub_for(server, self.pki.credentials("ca1", "client2"))))

    def test_an_expired_certificate_is_refused(self):
        server = self.tls_server(os.path.join(self.tmp, "expired-db"), cert="expired",
                                 wait=False)
        time.sleep(0.5)
        self.assertFalse(can_call(stub_for(server, self.pki.credentials("ca1"))))

    def test_bad_tls_files_stop_the_server_with_a_clear_error(self):
        out = subprocess.run(
            [SINKSERVE, "serve", "--model", "/nonexistent", "--db",
             os.path.join(self.tmp, "never"), "--tls-cert", self.pki.path("srv1.pem"),
             "--tls-key", self.pki.path("srv2.key")], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("is not the key of --tls-cert", out.stderr)

    def test_rotation_keeps_open_streams(self):
        cert, key = os.path.join(self.tmp, "live.pem"), os.path.join(self.tmp, "live.key")
        shutil.copy(self.pki.path("srv1.pem"), cert)
        shutil.copy(self.pki.path("srv1.key"), key)
        server = Server(os.path.join(self.tmp, "rotate-db"), "--tls-cert", cert, "--tls-key",
                        key, "--tls-reload-seconds", "1", "--default-policy", POLICY,
                        credentials=self.pki.credentials("ca1"))
        self.addCleanup(server.close)
        stream = Stream(stub_for(server, self.pki.credentials("ca1")))
        stream.open("rotating", config=config())
        stream.turn("Once upon a time", max_tokens=4)
        # Rotate to a certificate of another CA: replace both files by rename.
        for src, dst in (("srv2.key", key), ("srv2.pem", cert)):
            shutil.copy(self.pki.path(src), dst + ".new")
            os.rename(dst + ".new", dst)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 15
        while not can_call(stub_for(server, self.pki.credentials("ca2")), timeout=2):
            self.assertLess(time.time(), deadline, "the new certificate was never served")
            time.sleep(0.2)
        self.assertFalse(can_call(stub_for(server, self.pki.credentials("ca1"))))
        # The stream opened before the rotation goes on.
        ids, _, end = stream.turn(" there was a dog", max_tokens=4)
        self.assertEqual(end.usage.generated_tokens, len(ids))
        stream.finish()


class AuthTest(SecurityTestBase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.audit = os.path.join(cls.tmp, "audit.log")
        cls.db = os.path.join(cls.tmp, "auth-db")
        cls.server = Server(cls.db, "--tls-cert", cls.pki.path("srv1.pem"), "--tls-key",
                            cls.pki.path("srv1.key"), "--auth", "api-keys", "--api-keys",
                            cls.key_file, "--audit-log", cls.audit, "--default-policy", POLICY,
                            "--metrics-listen", "127.0.0.1:0",
                            credentials=cls.pki.credentials("ca1"))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        super().tearDownClass()

    def stub(self, key=None, token=None):
        return stub_for(self.server, self.pki.credentials("ca1"),
                        token if token is not None else (self.keys[key] if key else None))

    def audit_records(self):
        with open(self.audit) as f:
            return [json.loads(line) for line in f if line.strip()]

    def test_every_rpc_refuses_missing_or_bad_credentials(self):
        alpha = self.stub("alpha-app")
        alpha.CreateSession(pb.CreateSessionRequest(session_id="guarded", config=config()))
        unauthenticated = 'sinkserve_errors_total{code="UNAUTHENTICATED"}'
        before = metrics(self.server.metrics_port)
        for name, metadata in (("no token", ()),
                               ("unknown key", (("authorization", "Bearer sk_not_a_key"),)),
                               ("a key's hash", (("authorization", "Bearer " + "ab" * 32),)),
                               ("not bearer", (("authorization", "Basic " + self.keys["ops"]),)),
                               ("two values", (("authorization", "Bearer " + self.keys["ops"]),
                                               ("authorization", "Bearer x")))):
            stub = self.stub()
            calls = {
                "Create": lambda: stub.CreateSession(
                    pb.CreateSessionRequest(session_id="x", config=config()), metadata=metadata),
                "Get": lambda: stub.GetSession(pb.GetSessionRequest(session_id="guarded"),
                                               metadata=metadata),
                "List": lambda: stub.ListSessions(pb.ListSessionsRequest(), metadata=metadata),
                "Delete": lambda: stub.DeleteSession(
                    pb.DeleteSessionRequest(session_id="guarded"), metadata=metadata),
                "Chat": lambda: Stream(stub, metadata=metadata).open("guarded", create=False),
            }
            for rpc, call in calls.items():
                code, details = error_of(call)
                self.assertEqual(code, C.UNAUTHENTICATED, f"{rpc} with {name}")
                self.assertEqual(details, "missing or invalid credentials", f"{rpc} with {name}")
        info = alpha.GetSession(pb.GetSessionRequest(session_id="guarded"))
        self.assertEqual(info.tenant, "alpha")
        failures = [r for r in self.audit_records() if r["action"] == "auth.failure"]
        self.assertGreaterEqual(len(failures), 25)
        self.assertTrue(all("peer" in r and r["result"] == "UNAUTHENTICATED" for r in failures))
        self.assertFalse(any(self.keys["ops"] in json.dumps(r) for r in self.audit_records()))
        after = metrics(self.server.metrics_port)
        # Each refused call counts once, as an auth failure and as an error.
        for counter in ("sinkserve_auth_failures_total", unauthenticated):
            self.assertEqual(after.get(counter, 0) - before.get(counter, 0), 25, counter)
        # Health needs no token.
        self.assertEqual(health(self.server.channel), SERVING)

    def test_tenants_cannot_see_or_touch_each_other(self):
        alpha, beta = self.stub("alpha-app"), self.stub("beta-app")
        stream = Stream(alpha)
        stream.open("shared-name", config=config())
        alpha_ids, _, _ = stream.turn("Tom has a red ball", max_tokens=6)
        stream.finish()
        before = alpha.GetSession(pb.GetSessionRequest(session_id="shared-name"))
        snapshot_before = self.export("alpha\x1fshared-name")

        missing = error_of(lambda: beta.GetSession(pb.GetSessionRequest(session_id="nothing")))
        self.assertEqual(missing[0], C.NOT_FOUND)
        for call in (
                lambda: beta.GetSession(pb.GetSessionRequest(session_id="shared-name")),
                lambda: beta.GetSession(pb.GetSessionRequest(session_id="shared-name",
                                                             tenant="alpha")),
                lambda: beta.DeleteSession(pb.DeleteSessionRequest(session_id="shared-name")),
                lambda: beta.DeleteSession(pb.DeleteSessionRequest(session_id="shared-name",
                                                                   tenant="alpha")),
                lambda: Stream(beta).open("shared-name", create=False)):
            code, details = error_of(call)
            self.assertEqual(code, C.NOT_FOUND)
            self.assertEqual(details, missing[1].replace("nothing", "shared-name"))
        # A scoped id sent as a plain one reaches nothing either.
        self.assertEqual(code_of(lambda: beta.GetSession(
            pb.GetSessionRequest(session_id="alpha\x1fshared-name"))), C.INVALID_ARGUMENT)
        # Beta may use the same name: its own, new session.
        stream = Stream(beta)
        opened = stream.open("shared-name", config=config())
        self.assertEqual((opened.session.rounds, opened.session.tenant), (0, "beta"))
        stream.turn("Something else entirely", max_tokens=6)
        stream.finish()

        after = alpha.GetSession(pb.GetSessionRequest(session_id="shared-name"))
        self.assertEqual(before, after)
        self.assertEqual(snapshot_before, self.export("alpha\x1fshared-name"))
        alpha_list = [s.session_id for s in alpha.ListSessions(pb.ListSessionsRequest()).sessions]
        beta_list = [s.session_id for s in beta.ListSessions(pb.ListSessionsRequest()).sessions]
        self.assertIn("shared-name", alpha_list)
        self.assertEqual(beta_list, ["shared-name"])
        self.assertNotIn("guarded", beta_list)
        self.assertEqual(code_of(lambda: beta.ListSessions(
            pb.ListSessionsRequest(all_tenants=True))), C.PERMISSION_DENIED)
        self.assertEqual(code_of(lambda: beta.ListSessions(
            pb.ListSessionsRequest(tenant="alpha"))), C.PERMISSION_DENIED)
        self.assertTrue(alpha_ids)

    def test_admin_reaches_every_tenant_and_is_audited(self):
        alpha, ops = self.stub("alpha-app"), self.stub("ops")
        alpha.CreateSession(pb.CreateSessionRequest(session_id="for-admin", config=config()))
        everything = ops.ListSessions(pb.ListSessionsRequest(all_tenants=True, page_size=1000))
        self.assertIn(("alpha", "for-admin"),
                      [(s.tenant, s.session_id) for s in everything.sessions])
        self.assertEqual(len(ops.ListSessions(pb.ListSessionsRequest()).sessions), 0)
        of_alpha = ops.ListSessions(pb.ListSessionsRequest(tenant="alpha", page_size=1000))
        self.assertIn("for-admin", [s.session_id for s in of_alpha.sessions])
        info = ops.GetSession(pb.GetSessionRequest(session_id="for-admin", tenant="alpha"))
        self.assertEqual(info.tenant, "alpha")
        ops.DeleteSession(pb.DeleteSessionRequest(session_id="for-admin", tenant="alpha"))
        self.assertEqual(code_of(lambda: alpha.GetSession(
            pb.GetSessionRequest(session_id="for-admin"))), C.NOT_FOUND)
        records = self.audit_records()
        actions = [(r["action"], r.get("owner"), r.get("session")) for r in records
                   if r.get("credential") == "ops"]
        self.assertIn(("admin.list", "*", None), actions)
        self.assertIn(("admin.get", "alpha", "for-admin"), actions)
        self.assertIn(("admin.delete", "alpha", "for-admin"), actions)
        creates = [r for r in records if r["action"] == "session.create"
                   and r.get("session") == "for-admin"]
        self.assertEqual(creates[0]["tenant"], "alpha")
        self.assertEqual(creates[0]["credential"], "alpha-app")

    def test_audit_log_holds_no_conversation_text(self):
        stream = Stream(self.stub("alpha-app"))
        stream.open("private", config=config())
        stream.turn("The secret word is xylophone", max_tokens=4)
        stream.finish()
        with open(self.audit) as f:
            text = f.read()
        self.assertIn('"session":"private"', text)
        self.assertNotIn("xylophone", text)

    def test_clients_speak_tls_and_tokens(self):
        from server_testlib import EXAMPLE_CLIENT, STUBS
        token_file = os.path.join(self.tmp, "alpha.token")
        with open(token_file, "w") as f:
            f.write(self.keys["alpha-app"] + "\n")
        tls = ["--tls-ca", self.pki.path("ca1.pem"), "--tls-server-name", "localhost"]
        chat = subprocess.run(
            [SINKSERVE, "chat", "--server", self.server.address, *tls, "--token-file",
             token_file, "--session", "from-cli", "--create", "--message", "Once upon a time",
             "--max-tokens", "4", "--quiet"], capture_output=True, text=True, timeout=60)
        self.assertEqual(chat.returncode, 0, chat.stderr)
        refused = subprocess.run(
            [SINKSERVE, "chat", "--server", self.server.address, *tls, "--session", "from-cli",
             "--message", "hi", "--quiet"], capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "SINKSERVE_TOKEN"})
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("UNAUTHENTICATED", refused.stderr)
        env = dict(os.environ, SINKSERVE_TOKEN=self.keys["alpha-app"])
        listing = subprocess.run(
            ["/usr/bin/python3", EXAMPLE_CLIENT, "--stubs", STUBS, "--server",
             self.server.address, *tls, "list"], capture_output=True, text=True, timeout=60,
            env=env)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("from-cli", listing.stdout)
        beta = dict(os.environ, SINKSERVE_TOKEN=self.keys["beta-app"])
        listing = subprocess.run(
            ["/usr/bin/python3", EXAMPLE_CLIENT, "--stubs", STUBS, "--server",
             self.server.address, *tls, "get", "--session", "from-cli"], capture_output=True,
            text=True, timeout=60, env=beta)
        self.assertNotEqual(listing.returncode, 0)
        self.assertIn("NOT_FOUND", listing.stderr)

    def export(self, scoped_id):
        out = os.path.join(self.tmp, f"export-{time.time_ns()}")
        subprocess.run([SINKSERVE, "sessions", "--db", self.db, "export", scoped_id, out],
                       check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()


class JwtTest(SecurityTestBase):
    def test_jwt_tenants_and_every_rpc_refusing_bad_tokens(self):
        issuer = JwtIssuer()
        jwks = os.path.join(self.tmp, "jwks.json")
        audit = os.path.join(self.tmp, "jwt-audit.log")
        with open(jwks, "w") as f:
            f.write(issuer.jwks())
        server = self.tls_server(os.path.join(self.tmp, "jwt-db"), "--auth", "api-keys,jwt",
                                 "--api-keys", self.key_file, "--jwks", jwks, "--jwt-issuer",
                                 "https://idp.test", "--jwt-audience", "sinkserve",
                                 "--audit-log", audit, "--jwt-leeway-seconds", "0")
        creds = self.pki.credentials("ca1")
        for alg in ("ES256", "RS256"):
            stub = stub_for(server, creds, issuer.token(alg))
            stream = Stream(stub)
            opened = stream.open(f"jwt-{alg}", config=config())
            self.assertEqual(opened.session.tenant, "alpha")
            stream.turn("Once upon a time", max_tokens=4)
            stream.finish()
        # JWT and API key of the same tenant see the same sessions.
        by_key = stub_for(server, creds, self.keys["alpha-app"])
        self.assertEqual(sorted(s.session_id for s in
                                by_key.ListSessions(pb.ListSessionsRequest()).sessions),
                         ["jwt-ES256", "jwt-RS256"])
        beta = stub_for(server, creds, issuer.token(tenant="beta"))
        self.assertEqual(code_of(lambda: beta.GetSession(
            pb.GetSessionRequest(session_id="jwt-ES256"))), C.NOT_FOUND)

        forged = issuer.token(tenant="alpha")
        forged = forged[:forged.rfind(".") + 1] + b64url(b"\0" * 64)
        bad_tokens = {
            "expired": issuer.token(exp=int(time.time()) - 120),
            "not yet valid": issuer.token(nbf=int(time.time()) + 600),
            "wrong audience": issuer.token(aud="billing"),
            "wrong issuer": issuer.token(iss="https://evil.test"),
            "no tenant": issuer.token(tenant=""),
            "bad signature": forged,
        }
        for why, token in bad_tokens.items():
            stub = stub_for(server, creds, token)
            calls = {
                "Create": lambda: stub.CreateSession(
                    pb.CreateSessionRequest(session_id="x", config=config())),
                "Get": lambda: stub.GetSession(pb.GetSessionRequest(session_id="jwt-ES256")),
                "List": lambda: stub.ListSessions(pb.ListSessionsRequest()),
                "Delete": lambda: stub.DeleteSession(
                    pb.DeleteSessionRequest(session_id="jwt-ES256")),
                "Chat": lambda: Stream(stub).open("jwt-ES256", create=False),
            }
            for rpc, call in calls.items():
                self.assertEqual(error_of(call), (C.UNAUTHENTICATED,
                                                  "missing or invalid credentials"),
                                 f"{rpc} with a token {why}")
        self.assertEqual(by_key.GetSession(pb.GetSessionRequest(session_id="jwt-ES256")).rounds,
                         1)
        # A stream lives no longer than its token (here: no leeway, 3 s).
        short = stub_for(server, creds, issuer.token(exp=int(time.time()) + 3))
        stream = Stream(short)
        stream.open("short-lived", config=config())
        stream.turn("Once upon a time", max_tokens=2)
        deadline = time.time() + 20
        while "ended 1 streams of revoked or expired credentials" not in server.log():
            self.assertLess(time.time(), deadline, server.log())
            time.sleep(0.1)
        self.assertEqual(error_of(lambda: stream.turn("and then", max_tokens=2)),
                         (C.UNAUTHENTICATED, "credentials expired"))
        with open(audit) as f:
            reasons = [json.loads(line).get("reason", "") for line in f]
        for why in ("token expired", "nbf", "wrong audience", "wrong issuer", "claim 'tenant'",
                    "bad signature"):
            self.assertEqual(sum(why in r for r in reasons), 5, why)


class QuotaAndReloadTest(SecurityTestBase):
    def server_with(self, db, *extra):
        return self.tls_server(os.path.join(self.tmp, db), "--auth", "api-keys", "--api-keys",
                               self.key_file, *extra)

    def stub(self, server, key):
        return stub_for(server, self.pki.credentials("ca1"), self.keys[key])

    def test_session_limit_refuses_the_next_and_keeps_the_others(self):
        limits = os.path.join(self.tmp, "limits.txt")
        with open(limits, "w") as f:
            f.write("alpha sessions=2\n")
        server = self.server_with("quota-sessions", "--tenant-limits", limits)
        alpha, beta = self.stub(server, "alpha-app"), self.stub(server, "beta-app")
        for i in range(2):
            alpha.CreateSession(pb.CreateSessionRequest(session_id=f"s{i}", config=config()))
        code, details = error_of(lambda: alpha.CreateSession(
            pb.CreateSessionRequest(session_id="s2", config=config())))
        self.assertEqual(code, C.RESOURCE_EXHAUSTED)
        self.assertIn("limit of 2", details)
        self.assertIn("retry", details)
        self.assertEqual(error_of(lambda: Stream(alpha).open("s3", config=config()))[0],
                         C.RESOURCE_EXHAUSTED)
        beta.CreateSession(pb.CreateSessionRequest(session_id="s2", config=config()))
        stream = Stream(alpha)
        stream.open("s0", create=False)
        ids, _, _ = stream.turn("Once upon a time", max_tokens=4)
        self.assertTrue(ids)
        stream.finish()
        alpha.DeleteSession(pb.DeleteSessionRequest(session_id="s1"))
        alpha.CreateSession(pb.CreateSessionRequest(session_id="s2", config=config()))

    def test_stream_limit(self):
        server = self.server_with("quota-streams", "--tenant-max-streams", "1")
        alpha, beta = self.stub(server, "alpha-app"), self.stub(server, "beta-app")
        first = Stream(alpha)
        first.open("one", config=config())
        code, details = error_of(lambda: Stream(alpha).open("two", config=config()))
        self.assertEqual(code, C.RESOURCE_EXHAUSTED)
        self.assertIn("retry", details)
        other = Stream(beta)
        other.open("one", config=config())
        other.finish()
        first.turn("Still here", max_tokens=2)
        first.finish()
        deadline = time.time() + 5
        while True:
            try:
                Stream(alpha).open("two", config=config())
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), C.RESOURCE_EXHAUSTED)
                self.assertLess(time.time(), deadline)
                time.sleep(0.05)

    def test_token_budget_refuses_turns_not_the_stream(self):
        server = self.server_with("quota-tokens", "--tenant-tokens-per-minute", "20")
        alpha, beta = self.stub(server, "alpha-app"), self.stub(server, "beta-app")
        stream = Stream(alpha)
        stream.open("budget", config=config())
        for _ in range(2):  # 12, then 24 >= 20
            ids, _, _ = stream.turn("Once upon a time", max_tokens=12, ignore_eos=True)
            self.assertEqual(len(ids), 12)
        stream.send(turn=pb.UserTurn(text="One more", max_tokens=4, turn_id="t3"))
        response = stream.recv()
        self.assertEqual(response.WhichOneof("kind"), "turn_error")
        self.assertEqual(response.turn_error.code, C.RESOURCE_EXHAUSTED.value[0])
        self.assertIn("retry in", response.turn_error.message)
        # Other tenants are not affected; the refused stream stays open.
        other = Stream(beta)
        other.open("budget", config=config())
        ids, _, _ = other.turn("Once upon a time", max_tokens=12, ignore_eos=True)
        self.assertEqual(len(ids), 12)
        other.finish()
        info = alpha.GetSession(pb.GetSessionRequest(session_id="budget"))
        self.assertEqual(info.rounds, 2)
        stream.finish()

    def test_sighup_reloads_keys(self):
        keys = os.path.join(self.tmp, "reload-keys.txt")
        shutil.copy(self.key_file, keys)
        server = self.tls_server(os.path.join(self.tmp, "reload-db"), "--auth", "api-keys",
                                 "--api-keys", keys)
        key = subprocess.run([SINKSERVE, "keys", "new", "--name", "late", "--tenant", "gamma",
                              "--append", keys], check=True, capture_output=True,
                             text=True).stdout.strip()
        stub = stub_for(server, self.pki.credentials("ca1"), key)
        self.assertEqual(code_of(lambda: stub.ListSessions(pb.ListSessionsRequest())),
                         C.UNAUTHENTICATED)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while code_of(lambda: stub.ListSessions(pb.ListSessionsRequest())) is not None:
            self.assertLess(time.time(), deadline, server.log())
            time.sleep(0.05)
        # A broken file keeps the old keys in force.
        with open(keys, "a") as f:
            f.write("broken line\n")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        self.assertIsNone(code_of(lambda: stub.ListSessions(pb.ListSessionsRequest())))
        self.assertIn("keeping the old API keys", server.log())
        # Revocation: the key's line leaves the file; at the reload its open
        # stream ends too, not only its next calls.
        stream = Stream(stub)
        stream.open("revoked-soon", config=config())
        stream.turn("Once upon a time", max_tokens=2)
        shutil.copy(self.key_file, keys)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "ended 1 streams of revoked or expired credentials" not in server.log():
            self.assertLess(time.time(), deadline, server.log())
            time.sleep(0.05)
        code, details = error_of(lambda: stream.turn("and then", max_tokens=2))
        self.assertEqual((code, details), (C.UNAUTHENTICATED, "credentials revoked"))
        self.assertEqual(code_of(lambda: stub.ListSessions(pb.ListSessionsRequest())),
                         C.UNAUTHENTICATED)

    def test_sessions_from_before_tenants_belong_to_default(self):
        db = os.path.join(self.tmp, "migrate-db")
        old = Server(db, "--default-policy", POLICY, "--metrics-listen", "127.0.0.1:0")
        self.assertIn("WARNING: --auth none", old.log())
        self.assertEqual(metrics(old.metrics_port)['sinkserve_auth_mode{mode="none"}'], 1)
        stream = Stream(old.stub)
        stream.open("old-chat", config=config())
        old_ids, _, _ = stream.turn("Lily had a cat", max_tokens=6)
        stream.finish()
        self.assertEqual(old.terminate(), 0)
        old.close()

        server = self.server_with("migrate-db")
        legacy, alpha = self.stub(server, "legacy"), self.stub(server, "alpha-app")
        info = legacy.GetSession(pb.GetSessionRequest(session_id="old-chat"))
        self.assertEqual((info.tenant, info.rounds), ("default", 1))
        self.assertEqual([s.session_id for s in
                          legacy.ListSessions(pb.ListSessionsRequest()).sessions], ["old-chat"])
        self.assertEqual(code_of(lambda: alpha.GetSession(
            pb.GetSessionRequest(session_id="old-chat"))), C.NOT_FOUND)
        stream = Stream(legacy)
        opened = stream.open("old-chat", create=False)
        self.assertTrue(opened.restored)
        stream.turn("and a dog", max_tokens=4)
        stream.finish()
        self.assertTrue(old_ids)

    def test_reflection_is_off_unless_asked_for(self):
        def reflection_code(server):
            call = server.channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=lambda b: b, response_deserializer=lambda b: b)
            # ServerReflectionRequest{list_services: ""} (field 7).
            return code_of(lambda: list(call(iter([b"\x3a\x00"]), timeout=5)))

        self.assertEqual(reflection_code(self.tls_server(os.path.join(self.tmp, "refl-off"))),
                         C.UNIMPLEMENTED)
        self.assertIsNone(reflection_code(
            self.tls_server(os.path.join(self.tmp, "refl-on"), "--reflection")))


if __name__ == "__main__":
    unittest.main()
