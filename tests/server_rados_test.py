#!/usr/bin/python3
"""`sinkserve serve --store rados://...` end to end: a real throwaway Ceph
cluster (scripts/cluster, stopped by the pids it started), a real server on
stories260K that chats two turns and is SIGTERMed, then a second server
process on the same pool that continues the session exactly as one process
alone would have.
"""

import unittest

from server_testlib import CephServerTest, Stream, have_ceph, turns_alone

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


if __name__ == "__main__":
    unittest.main(verbosity=2)
