#!/bin/sh
# A POP3S-only server with hashed passwords, run as an unprivileged user: the commands of
# docs/tutorial.rst, in order. Run it as root. Every path and name can be changed through the
# environment; tests/integration/test_docs_tutorial.py runs this very file with them pointing at
# a temporary directory, a test certificate and a free port, then fetches mail through it.
set -eu

ETC=${POP3NG_ETC:-/etc/pop3ng}
MAIL=${POP3NG_MAIL:-/var/mail/vhosts}
RUN=${POP3NG_RUN:-/run/pop3ng}
PORT=${POP3S_PORT:-995}
SERVER_USER=${POP3NG_USER:-vmail}
SERVER_GROUP=${POP3NG_GROUP:-$SERVER_USER}
CERT=${POP3NG_CERT:-/etc/letsencrypt/live/mail.example.org/fullchain.pem}
KEY=${POP3NG_KEY:-/etc/letsencrypt/live/mail.example.org/privkey.pem}

# [users]
# The passwd-file: one "user:{SCHEME}hash" line per user. pop3ng passwd reads the password from
# the terminal (twice), or from the first line of stdin when that is not a terminal.
install -d -m 750 -g "$SERVER_GROUP" "$ETC"
printf '%s\n' "$ALICE_PASSWORD" | pop3ng passwd -s SHA512-CRYPT | sed 's/^/alice:/' >> "$ETC/users"
chgrp "$SERVER_GROUP" "$ETC/users"
chmod 640 "$ETC/users"
# [/users]

# [mail]
# Each user's Maildir is created (mode 0700) at their first login, by the server, as its user.
install -d -m 750 -o "$SERVER_USER" -g "$SERVER_GROUP" "$MAIL"
# [/mail]

# [certificate]
# The certificate chain and its key, readable by the server's group: twistd reads them again,
# as that user, on every SIGHUP.
chgrp "$SERVER_GROUP" "$CERT" "$KEY"
chmod 640 "$CERT" "$KEY"
# [/certificate]

# [run]
# Bind port 995 as root, then run as $SERVER_USER. Only --tls-listen: no plaintext port at all.
install -d -m 755 -o "$SERVER_USER" -g "$SERVER_GROUP" "$RUN"
cd /
exec twistd --nodaemon --pidfile="$RUN/twistd.pid" --uid="$SERVER_USER" --gid="$SERVER_GROUP" \
    pop3ng \
    --tls-listen "tcp:$PORT" --tls-cert "$CERT" --tls-key "$KEY" \
    --auth "passwd-file:$ETC/users" \
    --mailbox "maildir:$MAIL/{user}/Maildir"
# [/run]
