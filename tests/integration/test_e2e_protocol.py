"""Black-box conformance: greeting, CAPA, authentication, every command and every error path,
pipelining and hostile input, byte for byte over real sockets against ``twistd -n pop3ng``."""

from __future__ import annotations

import os
import re
import time

from .e2e import STATUS_RE, TwistdTestCase, stuffed, top_lines, wire_lines, wire_message

MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nfirst body\n.dotted\nlast\n",
    b"From: b@example.org\r\nSubject: two\r\n\r\nsecond body\r\n",
    b".leading dot header\nSubject: three\n\nl1\nl2\nl3\n",
]


class GreetingAndAuthTests(TwistdTestCase):
    def test_greeting(self):
        s = self.session()
        greeting = s.line()
        self.assertTrue(greeting.startswith(b"+OK"), greeting)
        self.assertTrue(STATUS_RE.match(greeting), greeting)
        self.assertLessEqual(len(greeting), 512)
        # TCP_NODELAY or one write per reply: the greeting is one complete line, nothing more.
        self.assertEqual(s.buffer, b"")

    def _capa(self, s):
        status = s.command(b"CAPA")
        self.assertTrue(status.startswith(b"+OK"), status)
        body = s.body()
        self.assertTrue(body.endswith(b"\r\n.\r\n"), body)
        lines = body[:-5].split(b"\r\n")
        for line in lines:
            self.assertTrue(re.match(rb"\A[A-Z0-9-]+( [\x20-\x7e]+)?\Z", line), line)
        return lines

    def test_capa_before_login(self):
        s = self.session()
        s.line()
        lines = self._capa(s)
        names = {line.split(b" ")[0] for line in lines}
        for cap in (b"TOP", b"USER", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                    b"IMPLEMENTATION"):
            self.assertIn(cap, names)
        impl = [line for line in lines if line.startswith(b"IMPLEMENTATION")]
        self.assertEqual(len(impl), 1)
        self.assertTrue(len(impl[0]) > len(b"IMPLEMENTATION "))
        self.assertEqual(len(lines), len(set(lines)))

    def test_capa_after_login(self):
        user, _ = self.fresh_user()
        s = self.login(user)
        names = {line.split(b" ")[0] for line in self._capa(s)}
        for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"IMPLEMENTATION"):
            self.assertIn(cap, names)
        self.ok(s, b"NOOP")

    def test_password_with_spaces_and_case_insensitive_verbs(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.session()
        s.line()
        self.assertEqual(s.command(b"user " + user.encode())[:4], b"+OK ")
        reply = s.command(b"pAsS " + password.encode())
        self.assertEqual(reply[:4], b"+OK ", reply)
        self.assertEqual(s.command(b"stat"), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))
        self.assertEqual(s.command(b"LiSt 1"), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))
        self.assertEqual(s.command(b"noop")[:3], b"+OK")
        self.assertTrue(s.command(b"retr 1").startswith(b"+OK"))
        self.assertEqual(s.body(), stuffed(wire_lines(MESSAGES[0])))
        self.assertEqual(s.command(b"quit")[:3], b"+OK")
        self.assertTrue(s.closed())

    def test_wrong_password_and_unknown_user_same_reply(self):
        user, password = self.fresh_user()
        replies = []
        for name, pw in [(user, password + "x"), (user, password.replace(" ", "")),
                         ("nosuchuser", password), (user, password.split(" ")[0])]:
            s = self.session()
            s.line()
            s.command(b"USER " + name.encode())
            replies.append(s.command(b"PASS " + pw.encode()))
            self.assertTrue(replies[-1].startswith(b"-ERR [AUTH]"), replies[-1])
            # The session goes on: a correct login afterwards works.
            if name == user:
                self.assertEqual(s.command(b"USER " + user.encode())[:3], b"+OK")
                self.assertEqual(s.command(b"PASS " + password.encode())[:3], b"+OK")
                self.ok(s, b"QUIT")
        self.assertEqual(len(set(replies)), 1, replies)

    def test_pass_without_user(self):
        user, password = self.fresh_user()
        s = self.session()
        s.line()
        self.err(s, b"PASS " + password.encode())
        self.err(s, b"PASS")
        self.ok(s, b"USER " + user.encode())
        self.ok(s, b"PASS " + password.encode())
        self.ok(s, b"STAT")

    def test_user_without_name(self):
        s = self.session()
        s.line()
        self.err(s, b"USER")
        self.err(s, b"USER ")
        self.ok(s, b"CAPA")
        s.body()

    def test_quit_in_authorization_state(self):
        s = self.session()
        s.line()
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())

    def test_quit_after_user(self):
        user, _ = self.fresh_user()
        s = self.session()
        s.line()
        self.ok(s, b"USER " + user.encode())
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())

    def test_quit_in_transaction_state(self):
        user, _ = self.fresh_user()
        s = self.login(user)
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())
        # the lock is released: a new session logs in at once
        self.ok(self.login(user), b"STAT")

    def test_commands_in_wrong_state(self):
        s = self.session()
        s.line()
        for command in (b"STAT", b"LIST", b"LIST 1", b"UIDL", b"RETR 1", b"TOP 1 1", b"DELE 1", b"RSET",
                        b"NOOP"):
            self.err(s, command)
        user, password = self.fresh_user()
        self.ok(s, b"USER " + user.encode())
        self.ok(s, b"PASS " + password.encode())
        self.err(s, b"USER " + user.encode())
        self.err(s, b"PASS " + password.encode())
        self.ok(s, b"NOOP")

    def test_unknown_and_empty_commands(self):
        s = self.session()
        s.line()
        for command in (b"FOO", b"XYZZY 1 2", b"", b" ", b"APOP", b"123", b"LISTX", b"\tNOOP"):
            self.err(s, command)
        user, _ = self.fresh_user()
        s2 = self.login(user)
        for command in (b"FOO", b"", b"   ", b"RETR1", b"STLSX"):
            self.err(s2, command)
            self.ok(s2, b"NOOP")


class TransactionTests(TwistdTestCase):
    def setUp(self):
        super().setUp()
        self.user, self.password = self.fresh_user()
        for message in MESSAGES:
            self.server.deliver(self.user, message)
        self.s = self.login(self.user)

    def sizes(self):
        return [len(wire_message(m)) for m in MESSAGES]

    def test_stat(self):
        self.assertEqual(self.s.command(b"STAT"), b"+OK 3 %d\r\n" % sum(self.sizes()))

    def test_list(self):
        status, body = self.multi(self.s, b"LIST")
        self.assertEqual(body, b"".join(b"%d %d\r\n" % (i + 1, n) for i, n in enumerate(self.sizes()))
                         + b".\r\n")
        for i, n in enumerate(self.sizes()):
            self.assertEqual(self.s.command(b"LIST %d" % (i + 1)), b"+OK %d %d\r\n" % (i + 1, n))

    def test_uidl(self):
        uids = self.uidl_map(self.s)
        self.assertEqual(sorted(uids), [1, 2, 3])
        self.assertEqual(len(set(uids.values())), 3)
        for number, uid in uids.items():
            self.assertTrue(re.match(rb"\A[\x21-\x7e]{1,70}\Z", uid), uid)
            self.assertEqual(self.s.command(b"UIDL %d" % number), b"+OK %d %s\r\n" % (number, uid))

    def test_retr(self):
        for i, message in enumerate(MESSAGES):
            status = self.s.command(b"RETR %d" % (i + 1))
            self.assertTrue(status.startswith(b"+OK"), status)
            self.assertEqual(self.s.body(), stuffed(wire_lines(message)))
        self.ok(self.s, b"NOOP")

    def test_top(self):
        for i, message in enumerate(MESSAGES):
            # any non-negative count is valid, however many digits it has (Dovecot agrees)
            for n in (0, 1, 2, 3, 100, 4294967295, 99999999999, 10 ** 30):
                status = self.s.command(b"TOP %d %d" % (i + 1, n))
                self.assertTrue(status.startswith(b"+OK"), (n, status))
                self.assertEqual(self.s.body(), stuffed(top_lines(message, n)), (i, n))
            self.assertEqual(self.multi(self.s, b"TOP %d 007" % (i + 1))[1], stuffed(top_lines(message, 7)))

    def test_dele_rset(self):
        self.assertEqual(self.s.command(b"DELE 2")[:4], b"+OK ")
        sizes = self.sizes()
        self.assertEqual(self.s.command(b"STAT"), b"+OK 2 %d\r\n" % (sizes[0] + sizes[2]))
        _, body = self.multi(self.s, b"LIST")
        self.assertEqual(body, b"1 %d\r\n3 %d\r\n.\r\n" % (sizes[0], sizes[2]))
        _, body = self.multi(self.s, b"UIDL")
        self.assertEqual(len(body.split(b"\r\n")), 4)
        self.assertFalse(body.startswith(b"2 ") or b"\r\n2 " in body)
        for command in (b"DELE 2", b"RETR 2", b"TOP 2 0", b"LIST 2", b"UIDL 2"):
            self.err(self.s, command)
            self.ok(self.s, b"NOOP")
        self.assertEqual(self.s.command(b"RSET")[:3], b"+OK")
        self.assertEqual(self.s.command(b"STAT"), b"+OK 3 %d\r\n" % sum(sizes))
        self.assertEqual(self.retr(self.s, 2), stuffed(wire_lines(MESSAGES[1])))

    def test_noop(self):
        reply = self.s.command(b"NOOP")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(STATUS_RE.match(reply))

    def test_every_argument_error_keeps_the_session(self):
        bad = []
        for verb in (b"LIST", b"UIDL", b"RETR", b"DELE"):
            bad += [verb + b" 0", verb + b" 4", verb + b" 99999999999999999999", verb + b" -1",
                    verb + b" +1", verb + b" a", verb + b" 1a", verb + b" 0x1", verb + b" 1.0",
                    verb + b" 1 2", verb + b" 1 1 1", verb + b" \xff", verb + b" \xd9\xa1"]
        for verb in (b"RETR", b"DELE"):
            bad.append(verb)
        for args in (b"", b" 1", b" 0 1", b" 4 1", b" a 1", b" 1 a", b" 1 -1", b" -1 1", b" 1 1 1",
                     b" 1 +1", b" 99999999999999999999 1"):
            bad.append(b"TOP" + args)
        for verb in (b"STAT", b"NOOP", b"RSET", b"QUIT", b"CAPA"):
            bad.append(verb + b" 1")
        # more errors than any bad-command limit: interleaved with good commands they never disconnect
        self.assertGreater(len(bad), 40)
        for command in bad:
            self.err(self.s, command)
            self.ok(self.s, b"NOOP")
        self.assertEqual(self.s.command(b"STAT"), b"+OK 3 %d\r\n" % sum(self.sizes()))

    def test_trailing_space_and_bare_lf(self):
        self.s.send(b"STAT\n")
        self.assertEqual(self.s.line(), b"+OK 3 %d\r\n" % sum(self.sizes()))
        self.s.send(b"LIST 1\n")
        self.assertEqual(self.s.line(), b"+OK 1 %d\r\n" % self.sizes()[0])
        self.s.send(b"RETR 3\n")
        self.assertTrue(self.s.line().startswith(b"+OK"))
        self.assertEqual(self.s.body(), stuffed(wire_lines(MESSAGES[2])))

    def test_deletions_only_at_quit(self):
        self.ok(self.s, b"DELE 1")
        self.ok(self.s, b"DELE 3")
        self.assertEqual(len(self._files()), 3)
        reply = self.s.command(b"QUIT")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(self.s.closed())
        self.assertEqual(len(self._files()), 1)
        s = self.login(self.user)
        self.assertEqual(s.command(b"STAT"), b"+OK 1 %d\r\n" % self.sizes()[1])
        self.assertEqual(self.retr(s, 1), stuffed(wire_lines(MESSAGES[1])))

    def _files(self):
        from .e2e import maildir_files
        return maildir_files(self.server, self.user)


class PipeliningTests(TwistdTestCase):
    def _transcript(self, user, commands, pipelined):
        s = self.session()
        out = [s.line()]
        if pipelined:
            s.send(b"".join(c + b"\r\n" for c in commands))
        for c in commands:
            if not pipelined:
                s.send(c + b"\r\n")
            status = s.line()
            out.append(status)
            verb = c.split(b" ")[0].upper()
            if status.startswith(b"+OK") and (
                    verb in (b"RETR", b"TOP", b"CAPA") or (verb in (b"LIST", b"UIDL") and b" " not in c)):
                out.append(s.body())
        if commands[-1] == b"QUIT":
            self.assertTrue(s.closed())
        return out

    def test_login_and_fetch_in_one_write(self):
        user, password = self.fresh_user()
        for m in MESSAGES:
            self.server.deliver(user, m)
        commands = [b"CAPA", b"USER " + user.encode(), b"PASS " + password.encode(), b"STAT", b"LIST",
                    b"UIDL", b"RETR 1", b"TOP 3 1", b"RETR 2", b"LIST 2", b"UIDL 3", b"RETR 3", b"FOO",
                    b"RETR 9", b"NOOP", b"DELE 9", b"RSET", b"QUIT"]
        one_by_one = self._transcript(user, commands, pipelined=False)
        pipelined = self._transcript(user, commands, pipelined=True)
        self.assertEqual(pipelined, one_by_one)
        self.assertEqual(one_by_one[3][:3], b"+OK")  # PASS
        self.assertIn(stuffed(wire_lines(MESSAGES[0])), one_by_one)
        self.assertIn(stuffed(wire_lines(MESSAGES[2])), one_by_one)

    def test_failed_login_then_login_in_one_write(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        commands = [b"USER " + user.encode(), b"PASS wrong password", b"STAT", b"USER " + user.encode(),
                    b"PASS " + password.encode(), b"STAT", b"QUIT"]
        out = self._transcript(user, commands, pipelined=True)
        self.assertEqual([o[:3] for o in out[1:]], [b"+OK", b"-ER", b"-ER", b"+OK", b"+OK", b"+OK", b"+OK"])
        self.assertEqual(out[6], b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))

    def test_many_commands_in_one_write(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[1])
        s = self.login(user)
        n = 2000
        s.send(b"".join(b"LIST 1\r\nNOOP\r\nRETR 1\r\n" for _ in range(n)) + b"STAT\r\n")
        expected_retr = stuffed(wire_lines(MESSAGES[1]))
        size = len(wire_message(MESSAGES[1]))
        for _ in range(n):
            self.assertEqual(s.line(), b"+OK 1 %d\r\n" % size)
            self.assertTrue(s.line().startswith(b"+OK"))
            self.assertTrue(s.line().startswith(b"+OK"))
            self.assertEqual(s.body(), expected_retr)
        self.assertEqual(s.line(), b"+OK 1 %d\r\n" % size)


class HostileInputTests(TwistdTestCase):
    tracebacks_allowed = False

    def test_long_command_line_continues(self):
        s = self.session()
        s.line()
        self.err(s, b"NOOP " + b"x" * 300)
        self.err(s, b"USER " + b"u" * 300)
        self.err(s, b"X" * 300)
        user, password = self.fresh_user()
        self.ok(s, b"USER " + user.encode())
        self.ok(s, b"PASS " + password.encode())
        self.err(s, b"LIST " + b"1" * 300)
        self.err(s, b"RETR 1" + b" " * 300)
        self.ok(s, b"STAT")

    def test_command_of_255_octets_is_accepted(self):
        user, password = self.fresh_user()
        s = self.session()
        s.line()
        line = b"USER " + user.encode()
        line += b" " * (253 - len(line))
        self.assertEqual(len(line) + 2, 255)
        self.ok(s, line)
        self.ok(s, b"PASS " + password.encode())

    def test_huge_line_without_newline_disconnects(self):
        s = self.session()
        s.line()
        try:
            s.send(b"A" * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            reply = s.line()
        except ConnectionResetError:
            pass
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        self.assertTrue(s.closed())
        self.assertNoTraceback()
        # the server is fine
        t = self.session()
        self.assertTrue(t.line().startswith(b"+OK"))

    def test_huge_line_after_login_disconnects_without_commit(self):
        user, _ = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.login(user)
        self.ok(s, b"DELE 1")
        try:
            s.send(b"B" * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = s.line()
        except ConnectionResetError:
            reply = b""
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        self.assertTrue(s.closed())
        self.assertEqual(self.login(user).command(b"STAT")[:6], b"+OK 1 ")
        self.assertNoTraceback()

    def test_nul_bytes(self):
        s = self.session()
        s.line()
        self.err(s, b"NOOP\x00")
        self.err(s, b"\x00")
        self.err(s, b"US\x00ER x")
        user, password = self.fresh_user()
        s.command(b"USER " + user.encode() + b"\x00")
        self.assertTrue(s.command(b"PASS " + password.encode()).startswith(b"-ERR"))
        self.ok(s, b"USER " + user.encode())
        self.assertTrue(s.command(b"PASS " + password.encode() + b"\x00").startswith(b"-ERR"))
        self.ok(s, b"USER " + user.encode())
        self.ok(s, b"PASS " + password.encode())
        self.err(s, b"LIST 1\x00")
        self.err(s, b"RETR \x00")
        self.ok(s, b"STAT")
        self.assertNoTraceback()

    def test_non_utf8(self):
        s = self.session()
        s.line()
        self.err(s, b"\xff\xfe\xfd")
        self.err(s, b"N\xc3\xb6OP")
        s.command(b"USER \xff\xfe")
        self.assertTrue(s.command(b"PASS \xc3\x28 x").startswith(b"-ERR [AUTH]"))
        s.command(b"USER ../../etc")
        self.assertTrue(s.command(b"PASS x").startswith(b"-ERR"))
        self.ok(s, b"CAPA")
        s.body()
        self.assertNoTraceback()

    def test_bare_lf_and_mixed_line_endings(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.session()
        s.line()
        s.send(b"USER " + user.encode() + b"\nPASS " + password.encode() + b"\r\nSTAT\nNOOP\r\n")
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertEqual(s.line(), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))
        self.assertTrue(s.line().startswith(b"+OK"))

    def test_many_bad_commands_in_a_row_disconnect(self):
        s = self.session()
        s.line()
        replies = []
        for i in range(200):
            try:
                s.send(b"BOGUS %d\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            line = s.line()
            if not line:
                break
            replies.append(line)
        self.assertLess(len(replies), 200)
        self.assertTrue(all(r.startswith(b"-ERR") for r in replies), replies)
        self.assertTrue(s.closed())

    def test_many_bad_commands_after_login_disconnect(self):
        user, _ = self.fresh_user()
        s = self.login(user)
        count = 0
        for i in range(200):
            try:
                s.send(b"RETR 0\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            line = s.line()
            if not line:
                break
            self.assertTrue(line.startswith(b"-ERR"), line)
            count += 1
        self.assertLess(count, 200)
        self.assertTrue(s.closed())


class SessionEndTests(TwistdTestCase):
    def test_commands_after_quit_in_the_same_write_are_ignored(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.session()
        s.line()
        s.send(b"USER %s\r\nPASS %s\r\nQUIT\r\nDELE 1\r\nQUIT\r\n" % (user.encode(), password.encode()))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.closed())
        self.assertEqual(s.buffer, b"")
        self.assertEqual(self.login(user).command(b"STAT")[:6], b"+OK 1 ")

    def test_dele_and_quit_in_one_write(self):
        user, password = self.fresh_user()
        for m in MESSAGES:
            self.server.deliver(user, m)
        s = self.session()
        s.line()
        s.send(b"USER %s\r\nPASS %s\r\nDELE 1\r\nDELE 3\r\nQUIT\r\n" % (user.encode(), password.encode()))
        for _ in range(5):
            self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.closed())
        s = self.login(user)
        self.assertEqual(s.command(b"STAT"), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[1])))

    def test_huge_line_over_tls(self):
        s = self.session(tls=True)
        s.line()
        try:
            s.send(b"C" * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = s.line()
        except (ConnectionResetError, OSError):
            reply = b""
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        t = self.session(tls=True)
        self.assertTrue(t.line().startswith(b"+OK"))

    def test_client_closes_mid_command(self):
        s = self.session()
        s.line()
        s.send(b"USER x")
        s.close()
        t = self.session()
        self.assertTrue(t.line().startswith(b"+OK"))
        self.assertNoTraceback()


class ByteByByteTests(TwistdTestCase):
    def test_commands_one_byte_per_segment(self):
        import socket as socket_module

        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.session()
        s.sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
        s.line()
        data = b"USER %s\r\nPASS %s\r\nSTAT\nLIST 1\r\nRETR 1\r\nQUIT\r\n" % (user.encode(), password.encode())
        for i in range(len(data)):
            s.send(data[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.001)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.line().startswith(b"+OK"))
        size = len(wire_message(MESSAGES[0]))
        self.assertEqual(s.line(), b"+OK 1 %d\r\n" % size)
        self.assertEqual(s.line(), b"+OK 1 %d\r\n" % size)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertEqual(s.body(), stuffed(wire_lines(MESSAGES[0])))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.closed())


class TLSPortTests(TwistdTestCase):
    def test_plaintext_on_the_tls_port(self):
        import socket as socket_module

        sock = socket_module.create_connection(("127.0.0.1", self.server.tls_port), 10)
        self.addCleanup(sock.close)
        sock.sendall(b"USER alice\r\nPASS x\r\nQUIT\r\n")
        sock.settimeout(10)
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        self.assertNotIn(b"+OK", data)
        self.assertNoTraceback()

    def test_client_rejecting_the_certificate(self):
        import socket as socket_module
        import ssl

        sock = socket_module.create_connection(("127.0.0.1", self.server.tls_port), 10)
        context = ssl.create_default_context()  # does not know the test CA
        with self.assertRaises(ssl.SSLCertVerificationError) as caught:
            context.wrap_socket(sock, server_hostname="localhost")
        sock.close()
        # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: the client refused the issuer, as it should
        self.assertEqual(caught.exception.verify_code, 20, caught.exception)
        # the server goes on
        s = self.session(tls=True)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertNoTraceback()

    def test_tls_session_works_like_plain(self):
        user, password = self.fresh_user()
        self.server.deliver(user, MESSAGES[0])
        s = self.session(tls=True)
        self.assertTrue(s.line().startswith(b"+OK"))
        s.send(b"USER %s\r\nPASS %s\r\nSTAT\r\nRETR 1\r\nQUIT\r\n" % (user.encode(), password.encode()))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertEqual(s.line(), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertEqual(s.body(), stuffed(wire_lines(MESSAGES[0])))
        self.assertTrue(s.line().startswith(b"+OK"))


class CaseInsensitiveTests(TwistdTestCase):
    def test_every_verb_in_any_case(self):
        user, password = self.fresh_user()
        for m in MESSAGES:
            self.server.deliver(user, m)
        s = self.session()
        s.line()
        self.assertTrue(s.command(b"capa").startswith(b"+OK"))
        s.body()
        self.assertTrue(s.command(b"uSeR " + user.encode()).startswith(b"+OK"))
        self.assertTrue(s.command(b"PaSs " + password.encode()).startswith(b"+OK"))
        sizes = [len(wire_message(m)) for m in MESSAGES]
        self.assertEqual(s.command(b"sTaT"), b"+OK 3 %d\r\n" % sum(sizes))
        listing = b"".join(b"%d %d\r\n" % (i + 1, n) for i, n in enumerate(sizes)) + b".\r\n"
        self.assertEqual(self.multi(s, b"list")[1], listing)
        self.assertEqual(self.multi(s, b"Uidl")[1], self.multi(s, b"UIDL")[1])
        self.assertEqual(s.command(b"uidl 2"), s.command(b"UIDL 2"))
        self.assertEqual(self.multi(s, b"rEtR 1")[1], stuffed(wire_lines(MESSAGES[0])))
        self.assertEqual(self.multi(s, b"tOp 3 1")[1], stuffed(top_lines(MESSAGES[2], 1)))
        self.assertTrue(s.command(b"dele 1").startswith(b"+OK"))
        self.assertTrue(s.command(b"Noop").startswith(b"+OK"))
        self.assertTrue(s.command(b"rset").startswith(b"+OK"))
        self.assertTrue(s.command(b"dele 2").startswith(b"+OK"))
        self.assertTrue(s.command(b"qUiT").startswith(b"+OK"))
        self.assertTrue(s.closed())
        self.assertEqual(self.login(user).command(b"STAT"), b"+OK 2 %d\r\n" % (sizes[0] + sizes[2]))


class UserNameTests(TwistdTestCase):
    def test_address_like_user_added_while_running(self):
        # the passwd-file is re-read when it changes; user names may look like addresses
        name, password = "bob.smith+pop@example.org", "  leading and trailing spaces  "
        with open(os.path.join(self.server.root, "users"), "a") as f:
            f.write("%s:{PLAIN}%s\n" % (name, password))
        self.server.deliver(name, MESSAGES[1])
        s = self.session()
        s.line()
        self.ok(s, b"USER " + name.encode())
        reply = s.command(b"PASS " + password.encode())
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(self.multi(s, b"RETR 1")[1], stuffed(wire_lines(MESSAGES[1])))
