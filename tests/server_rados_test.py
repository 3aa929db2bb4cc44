#!/usr/bin/python3
"""`sinkserve serve --store rados://...` end to end: a real throwaway Ceph
cluster (scripts/cluster, stopped by the pids it started), a real server on
stories260K that chats two turns and is SIGTERMed, then a second server
process on the same pool that continues the session exactly as one process
alone would have.
"""

import os
import unittest

from security_testlib import Pki, new_key
from server_testlib import CephServerTest, Server, Stream, have_ceph, metrics, reattach
from server_testlib import turns_alone

TEXTS = ["Once upon a time", " The dog barked.", " Lily smiled."]


@unittest.skipUnless(have_ceph(), "Ceph binaries missing: run scripts/setup")
class RadosServerTest(CephServerTest):
    def start(self, ns):
        return self.start_server(ns)

    def test_second_process_continues_the_session_exactly(self):
        # The reference: one process, three turns, on its own namespace.
        server = self.start("reference")
        want = turns_alone(server.stub, "tale", TEXTS)
        self.assertEqual(server.terminate(), 0)

        # Two turns on one process, SIGTERM, the third on another process.
        server = self.start("handover")
        stream = Stream(server.stub)
        stream.open("tale")
        got = [stream.turn(t, max_tokens=20)[0] for t in TEXTS[:2]]
        stream.finish()
        self.assertEqual(got, want[:2])
        self.assertEqual(server.terminate(), 0)

        server = self.start("handover")
        stream = Stream(server.stub)
        opened = stream.open("tale", create=False)
        self.assertTrue(opened.restored)
        self.assertEqual(opened.session.rounds, 2)
        got.append(stream.turn(TEXTS[2], max_tokens=20)[0])
        stream.finish()
        self.assertEqual(got, want)
        self.assertEqual(server.terminate(), 0)


@unittest.skipUnless(have_ceph(), "Ceph binaries missing: run scripts/setup")
class RadosTlsTest(CephServerTest):
    def test_tls_replicas_hand_a_tenant_session_over(self):
        # Mutual TLS and API keys on both replicas: the handoff call from the
        # new owner to the old one must pass the old one's client check.
        pki = Pki(self.tmp)
        key, line = new_key("alpha-app", "alpha")
        keys = os.path.join(self.tmp, "keys.txt")
        with open(keys, "w") as f:
            f.write(line + "\n")
        args = ["--tls-cert", pki.path("srv1.pem"), "--tls-key", pki.path("srv1.key"),
                "--tls-client-ca", pki.path("ca1.pem"), "--tls-ca", pki.path("ca1.pem"),
                "--auth", "api-keys", "--api-keys", keys, "--lease-seconds", "20",
                "--metrics-listen", "127.0.0.1:0"]
        replicas = []
        for i in range(2):
            server = Server(os.path.join(self.tmp, f"tls{i}"), *args,
                            store=self.cluster.url("tls"),
                            credentials=pki.credentials("ca1", "client1"), token=key)
            self.servers.append(server)
            replicas.append(server)
        first, second = replicas
        stream = Stream(first.stub)
        stream.open("tale")
        ids, _, _ = stream.turn(TEXTS[0], max_tokens=8)
        stream.finish()
        # The first replica holds the lease (20 s): only a handoff over TLS
        # lets the second take the session at once.
        stream, opened = reattach(second.stub, "tale")
        self.assertTrue(opened.restored)
        self.assertEqual((opened.session.rounds, opened.session.tenant), (1, "alpha"))
        stream.turn(TEXTS[1], max_tokens=8)
        stream.finish()
        taken = metrics(second.metrics_port)
        self.assertEqual(taken.get('sinkserve_session_takeover_seconds_count{cause="handed_off"}'),
                         1.0, {k: v for k, v in taken.items() if "takeover" in k})
        self.assertTrue(ids)


if __name__ == "__main__":
    unittest.main(verbosity=2)
