"""Forwarding destinations of ``pop3ng fetch``: hand each message to an MTA over SMTP or LMTP.

``smtp://HOST[:PORT]`` (25), ``smtps://HOST[:PORT]`` (465, TLS from the first byte),
``lmtp://HOST[:PORT]`` (24) and ``lmtp:/PATH`` (a UNIX socket). The connection is opened at the
first message and kept for the run; STARTTLS is used when the server offers it (``forward_starttls
= "auto"``), demanded (``"require"``) or never tried (``"never"``; and never on a UNIX socket unless
required); the certificate is verified against ``forward_cafile`` or the system's CAs.

A message counts as delivered only once the MTA answered ``250`` to its DATA (one recipient, so
LMTP gives exactly one reply). Then the fetcher records it (``batch_limit = 1``: each message is
recorded as soon as it is accepted). :meth:`ForwardDestination.commit` blocks (``smtplib``): the
fetcher calls it in a thread, one message at a time and in order (``blocking = True``), so the
reactor keeps receiving the next messages, and other accounts' sessions keep going, meanwhile.

Replies, as fetchmail's ``softbounce`` default treats them:

* ``4xx`` (to MAIL, RCPT or DATA): :class:`ForwardDeferred`; the run stops, the message and all
  not yet forwarded stay on the server for the next poll;
* ``5xx``: the message is *rejected*: reported, and left on the server (``on_reject = "keep"``,
  the default) or deleted from it (``on_reject = "delete"``); the run goes on with the others.
  No bounce is sent: the sender of fetched mail is often forged, and a bounce to it is backscatter.

Exactly-once is impossible here, as with any MTA hand-off: a kill after the MTA's 250 and before
the state write re-forwards that one message next run (at most one duplicate per kill); the MTA's
side cannot be asked whether it already has a message.
"""

from __future__ import annotations

import getpass
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence
from urllib.parse import urlsplit

from twisted_pop3ng._redact import redact
from twisted_pop3ng.fetch.delivery import DeliveryError, HandOffDestination, _Spool
from twisted_pop3ng.wire.message import MessageEncoder

__all__ = ["ForwardSettings", "ForwardDestination", "ForwardDeferred", "parse_forward_url",
           "ForwardURL"]

DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "lmtp": 24}
#: An envelope address taken from a message (Return-Path): no spaces, brackets or controls, so
#: that a hostile message can never add an SMTP command line.
_ADDRESS = re.compile(rb"[!-;=?-~]{1,254}")
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<([^<>\r\n]*)>[ \t]*\r?$")


class ForwardDeferred(DeliveryError):
    """The MTA answered 4xx: try again later; nothing more is forwarded in this run."""


@dataclass(frozen=True)
class ForwardURL:
    scheme: str                 # smtp | smtps | lmtp
    host: Optional[str]
    port: Optional[int]
    socket_path: Optional[str]  # lmtp:/path

    def __str__(self) -> str:
        if self.socket_path:
            return "lmtp:%s" % self.socket_path
        return "%s://%s:%d" % (self.scheme, self.host, self.port or 0)


def parse_forward_url(url: str) -> ForwardURL:
    """Parse a forward URL; ValueError names what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("a forward URL is smtp://HOST[:PORT], smtps://HOST[:PORT], "
                         "lmtp://HOST[:PORT] or lmtp:/PATH/TO/SOCKET, not %r" % redact(url))
    if scheme == "lmtp" and not parts.netloc:
        if not parts.path.startswith("/"):
            raise ValueError("lmtp:PATH needs an absolute socket path: lmtp:/run/dovecot/lmtp")
        return ForwardURL("lmtp", None, None, parts.path)
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError("a forward URL is %s://HOST[:PORT] with nothing after it (no user or "
                         "password: the MTA is trusted by address), not %r" % (scheme, redact(url)))
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad port in forward URL %r" % redact(url))
    return ForwardURL(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], None)


@dataclass
class ForwardSettings:
    url: str
    #: Envelope recipient (RCPT TO); default: the local user running the fetch, as fetchmail.
    recipient: Optional[str] = None
    #: Envelope sender (MAIL FROM); None: the message's Return-Path, else the null sender <>.
    sender: Optional[str] = None
    cafile: Optional[str] = None
    starttls: str = "auto"      # auto | require | never
    on_reject: str = "keep"     # keep | delete
    timeout: float = 120.0


class ForwardDestination(HandOffDestination):
    """Forward each message to an SMTP or LMTP server (see the module doc)."""

    def __init__(self, settings: ForwardSettings, account: str) -> None:
        self.settings = settings
        self.url = parse_forward_url(settings.url)
        self.recipient = settings.recipient or getpass.getuser()
        self.delete_rejected = settings.on_reject == "delete"
        self._connection: Optional[smtplib.SMTP] = None
        #: :attr:`FetchOptions.crash_hook`, told ``forward-sent`` when a message's data went out
        #: and its reply is not yet read (the crash tests' way in).
        self.crash_hook: Any = None

    def commit(self, sinks: Sequence[_Spool]) -> Dict[str, str]:
        """Forward each message; returns the rejected ones (5xx) as ``{uid: reply}``."""
        rejected: Dict[str, str] = {}
        try:
            for sink in sinks:
                reply = self._forward(sink)
                if reply is not None:
                    rejected[sink.uid] = reply
        except ForwardDeferred:
            raise
        except (smtplib.SMTPException, OSError, ssl.SSLError) as error:
            self._drop()
            raise DeliveryError("cannot forward to %s: %s" % (self.url, _describe(error)))
        finally:
            for sink in sinks:
                sink.abort()
        return rejected

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                connection.close()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        url, settings = self.url, self.settings
        context = ssl.create_default_context(cafile=settings.cafile)
        # The host goes to the constructor: it connects, checks the 220 greeting, and keeps
        # the name that STARTTLS verifies the certificate against.
        connection: smtplib.SMTP
        try:
            if url.scheme == "lmtp":
                connection = smtplib.LMTP(url.socket_path or url.host or "", url.port or 0,
                                          timeout=settings.timeout)
            elif url.scheme == "smtps":
                connection = smtplib.SMTP_SSL(url.host or "", url.port or 0,
                                              timeout=settings.timeout, context=context)
            else:
                connection = smtplib.SMTP(url.host or "", url.port or 0, timeout=settings.timeout)
        except smtplib.SMTPConnectError as error:
            raise self._refused("greeted", error.smtp_code, error.smtp_error)
        try:
            code, text = connection.ehlo()
            if code != 250:
                raise self._refused("refused " + ("LHLO" if url.scheme == "lmtp" else "EHLO"),
                                    code, text)
            offered = connection.has_extn("starttls")
            wanted = url.scheme != "smtps" and (settings.starttls == "require" or (
                settings.starttls == "auto" and offered and url.socket_path is None))
            if wanted:
                if not offered:
                    raise DeliveryError("%s does not offer STARTTLS, which forward_starttls = "
                                        '"require" demands' % url)
                connection.starttls(context=context)
                connection.ehlo()
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _forward(self, sink: _Spool) -> Optional[str]:
        """One transaction; None when the MTA accepted the message, else its 5xx reply."""
        connection = self._connect()
        sender = self.settings.sender if self.settings.sender is not None else _return_path(sink)
        for verb, (code, text) in (("MAIL FROM", connection.mail(sender)),
                                   ("RCPT TO", connection.rcpt(self.recipient))):
            if code not in (250, 251):
                return self._reply(connection, sink, verb, code, text)
        code, text = connection.docmd("DATA")
        if code != 354:
            return self._reply(connection, sink, "DATA", code, text)
        encoder = MessageEncoder()
        for chunk in sink.chunks():
            connection.send(encoder.feed(chunk))
        connection.send(encoder.finish())
        if self.crash_hook is not None:
            self.crash_hook("forward-sent")
        code, text = connection.getreply()
        if code != 250:
            return self._reply(connection, sink, "the message", code, text, reset=False)
        return None

    def _reply(self, connection: smtplib.SMTP, sink: _Spool, verb: str, code: int, text: bytes,
               reset: bool = True) -> str:
        """A refusal: 4xx raises :class:`ForwardDeferred`, 5xx is returned as the rejection."""
        if reset:
            try:
                connection.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        reply = "%s answered %d %s to %s" % (self.url, code, _text(text), verb)
        if 400 <= code < 500:
            raise ForwardDeferred("%s: %s; left on the server for the next run" % (sink.uid, reply))
        if 500 <= code < 600:
            return reply
        raise DeliveryError("%s: %s, not a reply SMTP allows" % (sink.uid, reply))

    def _refused(self, what: str, code: int, text: Any) -> DeliveryError:
        cls = ForwardDeferred if 400 <= code < 500 else DeliveryError
        return cls("%s %s with %d %s" % (self.url, what, code, _text(text)))


def _return_path(sink: _Spool) -> str:
    """The message's Return-Path (its first, in the header), when it is a plain address."""
    head = b""
    for chunk in sink.chunks(64 << 10):
        head = chunk
        break
    end = re.search(rb"\r?\n\r?\n", head)
    found = _RETURN_PATH.search(head[:end.start()] if end else head)
    if found and _ADDRESS.fullmatch(found.group(1)):
        return found.group(1).decode("ascii")
    return ""


def _text(text: Any) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:300]


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "timed out"
    if isinstance(error, smtplib.SMTPResponseException):
        return "%d %s" % (error.smtp_code, _text(error.smtp_error))
    return str(error) or error.__class__.__name__
