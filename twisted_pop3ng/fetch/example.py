"""The commented example config printed by ``pop3ng fetch --print-example-config`` (and shown in
docs/fetch.rst); a test parses it, so it never goes stale."""

EXAMPLE_CONFIG = '''\
# pop3ng fetch --config ~/.config/pop3ng/fetch.toml
# Every key of an account may also be given in [defaults]; an account's own value wins
# (its own destination or password source replaces the default one).

[defaults]
# cafile = "/etc/ssl/certs/my-ca.pem"   # CA certificates to trust instead of the system's
keep = false                             # leave mail on the server (keep_days = N: delete later)
timeout = 120                            # seconds without progress before giving up
poll_interval = 300                      # --daemon: seconds between polls of an account

[daemon]
parallel = 4                             # accounts fetched at the same time
max_backoff = 3600                       # longest wait after repeated failures (seconds)

# Into a Maildir, the password from a file (first line).
[accounts.work]
url = "pop3s://alice@mail.example.org"   # pop3:// uses STLS; pop3s:// TLS from the first byte
password_file = "~/.config/pop3ng/work.password"
maildir = "~/Mail/work"

# Handed to the local MTA over LMTP (or smtp://host:port), as fetchmail does.
[accounts.home]
url = "pop3://alice@pop.example.net"
password_command = "pass show mail/home" # first line of the command's output
forward = "lmtp:/var/run/dovecot/lmtp"   # or "lmtp://127.0.0.1:24", "smtp://localhost:25"
forward_to = "alice"                     # envelope recipient (default: your user name)
# forward_from = "alice@example.net"     # envelope sender (default: the message's Return-Path)
# forward_starttls = "auto"              # "require" or "never"; forward_cafile = "..." to verify
on_reject = "keep"                       # a 5xx from the MTA: "keep" on the server, or "delete"
keep = true
keep_days = 14                           # delete from the server 14 days after delivery

# OAuth 2 (XOAUTH2 / OAUTHBEARER): a refresh token traded for access tokens, cached.
[accounts.cloud]
url = "pop3s://alice@pop.cloud.example"
oauth_token_endpoint = "https://login.cloud.example/oauth2/token"
oauth_client_id = "my-client-id"
oauth_client_secret_file = "~/.config/pop3ng/cloud.client-secret"
oauth_refresh_token_file = "~/.config/pop3ng/cloud.refresh-token"
mbox = "~/Mail/cloud.mbox"
poll_interval = 900
'''
