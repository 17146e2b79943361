"""``_fs.open_dir_no_symlinks`` (openat2 with RESOLVE_NO_SYMLINKS) and the maildir store's use of
it: the same maildirs opened, the same ones refused, with it and with the walk it replaces."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from twisted.trial import unittest

from twisted_pop3ng import _fs
from twisted_pop3ng.errors import POP3Error
from twisted_pop3ng.mailbox import maildir as md
from twisted_pop3ng.test import test_maildir


def openat2_here() -> bool:
    """Whether this system opens a directory with openat2 (the descriptor of the probe closed)."""
    fd = _fs.open_dir_no_symlinks("/")
    if fd is None:
        return False
    os.close(fd)
    return True


def without_openat2(case: unittest.TestCase) -> None:
    """As on a kernel before 5.6 or under a seccomp filter that refuses openat2."""
    case.patch(_fs, "_openat2", False)


class OpenDirTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.real = os.path.join(self.root, "real", "a", "b")
        os.makedirs(self.real)
        os.symlink(os.path.join(self.root, "real"), os.path.join(self.root, "link"))
        if not openat2_here():
            raise unittest.SkipTest("no openat2 here")  # (the walk's own tests still run)

    def opened(self, path: str, dir_fd: "int | None" = None) -> os.stat_result:
        fd = _fs.open_dir_no_symlinks(path, dir_fd)
        assert fd is not None
        try:
            self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            return os.fstat(fd)
        finally:
            os.close(fd)

    def test_a_directory_without_symlinks_is_opened(self) -> None:
        self.assertEqual(self.opened(self.real).st_ino, os.stat(self.real).st_ino)
        above = os.open(os.path.join(self.root, "real"), os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, above)
        self.assertEqual(self.opened("a/b", above).st_ino, os.stat(self.real).st_ino)

    def test_a_symlink_anywhere_on_the_way_is_eloop(self) -> None:
        for path in (os.path.join(self.root, "link", "a", "b"), os.path.join(self.root, "link")):
            with self.assertRaises(OSError) as caught:
                _fs.open_dir_no_symlinks(path)
            self.assertEqual(caught.exception.errno, errno.ELOOP)
            self.assertEqual(caught.exception.filename, path)

    def test_errors_are_those_of_os_open(self) -> None:
        plain = os.path.join(self.root, "file")
        open(plain, "w").close()
        self.assertRaises(NotADirectoryError, _fs.open_dir_no_symlinks, plain)
        self.assertRaises(FileNotFoundError, _fs.open_dir_no_symlinks, plain + ".missing")

    def test_unsupported_architectures_are_not_probed(self) -> None:
        import platform

        self.patch(platform, "machine", lambda: "alpha")  # openat2 is not 437 there
        self.assertIs(_fs._probe_openat2(), False)
        self.patch(_fs, "_openat2", False)
        self.assertIsNone(_fs.open_dir_no_symlinks(self.real))


class MaildirThroughAdministratorsLinkTests(unittest.TestCase):
    """The administrator's part of the template holds a symlink (``/var/mail`` -> ``/srv/mail``):
    followed, as always, and the user's part still opened without following any."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "srv"))
        os.symlink(os.path.join(self.root, "srv"), os.path.join(self.root, "mail"))
        self.store = md.MaildirStore(os.path.join(self.root, "mail", "{user}", "Maildir"))

    def login(self, user: str) -> "list[bytes]":
        box = self.store.open_mailbox(user)
        try:
            return [box.read_whole(i, 1000) for i in range(len(box.list_messages()))]
        finally:
            box.close()

    def test_followed_and_remembered(self) -> None:
        md.deliver(self.store.path_for("alice"), b"hello\n", "1700000001.a.host")
        for _ in range(2):
            self.assertEqual(self.login("alice"), [b"hello\n"])
        self.assertEqual(self.store._links_above, openat2_here())

    def test_a_symlink_in_the_users_part_is_still_refused(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("two owners are needed: run as root")
        md.deliver(self.store.path_for("alice"), b"hello\n", "1700000001.a.host")
        self.login("alice")  # (the administrator's link now known)
        bob = os.path.join(self.root, "srv", "bob")
        os.makedirs(os.path.join(self.root, "elsewhere"))
        md.deliver(os.path.join(self.root, "elsewhere", "Maildir"), b"not bob's\n", "1700000002.b.host")
        os.symlink(os.path.join(self.root, "elsewhere"), bob)
        os.lchown(bob, 65534, 65534)  # bob's own link to a directory that is not his
        error = self.assertRaises(POP3Error, self.store.open_mailbox, "bob")
        self.assertEqual(error.code, "SYS/PERM")

    def test_created_when_missing(self) -> None:
        self.assertEqual(self.login("carol"), [])
        maildir = os.path.join(self.root, "srv", "carol", "Maildir")
        self.assertLessEqual({"cur", "new", "tmp"}, set(os.listdir(maildir)))
        self.assertTrue(stat.S_ISDIR(os.lstat(os.path.join(maildir, "tmp")).st_mode))


class MaildirWalkTests(test_maildir.MaildirTests):
    """Every maildir test again where openat2 is refused: the walk reaches the same maildirs."""

    def setUp(self) -> None:
        without_openat2(self)
        super().setUp()


class AdministratorsLinkWalkTests(MaildirThroughAdministratorsLinkTests):
    def setUp(self) -> None:
        without_openat2(self)
        super().setUp()

    def test_followed_and_remembered(self) -> None:
        md.deliver(self.store.path_for("alice"), b"hello\n", "1700000001.a.host")
        self.assertEqual(self.login("alice"), [b"hello\n"])
        self.assertFalse(self.store._links_above)  # (nothing tried, nothing learnt)

