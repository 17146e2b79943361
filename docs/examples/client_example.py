"""The POP3 client: list a mailbox, read headers, save every message to a directory, delete what
was saved. Any POP3 server will do; its tests run it against ``maildir_server.py`` over real TLS
(``twisted_pop3ng/test/test_docs_examples.py``).

    python3 client_example.py pop3s://alice@mail.example.org DIRECTORY [CAFILE]

The password comes from the ``POP3_PASSWORD`` environment variable.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from twisted.internet import defer, task

from twisted_pop3ng.client import connect


async def list_mailbox(reactor: Any, url: str, password: str, cafile: Optional[str] = None) -> Dict[str, Any]:
    """The message count, total size, UIDLs and each message's Subject line, without downloading
    the bodies (TOP n 0: the header only)."""
    client = await connect(reactor, url, password=password, cafile=cafile)  # TLS verified, logged in
    try:
        count, octets = await client.stat()
        uids = await client.uidl()  # {1: "uid-a", 2: "uid-b", ...}
        subjects = {}
        for number in uids:
            header = await client.top(number, 0)  # bytes, since no consumer is given
            subjects[number] = _subject(header)
    finally:
        await client.quit()
    return {"count": count, "octets": octets, "uids": uids, "subjects": subjects}


async def save_all(reactor: Any, url: str, password: str, directory: str, cafile: Optional[str] = None,
                   delete: bool = False) -> List[str]:
    """Stream every message into ``directory/UIDL.eml``; with ``delete``, delete them on the server
    once all are saved. Deletions take effect at QUIT: if anything fails before, none happens."""
    client = await connect(reactor, url, password=password, cafile=cafile)
    saved, numbers = [], []
    try:
        for number, uid in (await client.uidl()).items():
            path = os.path.join(directory, "%s.eml" % uid.replace("/", "_"))
            with open(path + ".part", "wb") as f:
                await client.retrieve(number, f)  # streamed into the file as it arrives
                f.flush()
                os.fsync(f.fileno())
            os.rename(path + ".part", path)
            saved.append(path)
            numbers.append(number)
        if delete:
            # Pipelined when the server offers PIPELINING: one round trip for all of them.
            await defer.gatherResults([client.delete(n) for n in numbers])
        await client.quit()  # the server deletes now
    except BaseException:
        client.transport.abortConnection()  # no QUIT: the server deletes nothing
        raise
    return saved


def _subject(header: bytes) -> str:
    for line in header.split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode("utf-8", "replace")
    return ""


def main(reactor: Any, url: str, directory: str, cafile: Optional[str] = None) -> defer.Deferred:
    password = os.environ["POP3_PASSWORD"]

    async def run() -> None:
        listing = await list_mailbox(reactor, url, password, cafile)
        for number, subject in listing["subjects"].items():
            print(number, listing["uids"][number], subject)
        for path in await save_all(reactor, url, password, directory, cafile):
            print("saved", path)

    return defer.ensureDeferred(run())


if __name__ == "__main__":  # pragma: no cover
    task.react(main, sys.argv[1:])
