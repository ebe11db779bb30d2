#!/usr/bin/env python3
"""A real SMTP server for leadloop's tests: aiosmtpd with STARTTLS and AUTH on 127.0.0.1,
plus a small HTTP interface to read what it received and to inject faults.

HTTP (127.0.0.1:--http-port):
  GET  /messages  -> JSON list of {mail_from, rcpt_tos, data, message_id}
  POST /reset     -> forget messages and faults
  POST /faults    -> JSON {"tempfail": N, "tempfail_code": 451, "unavailable": N,
                           "reject": ["addr", ...], "drop_after_data": N}
      tempfail:        answer the next N DATA commands with 451 (or tempfail_code)
      unavailable:     answer the next N MAIL commands with 421 and close
      reject:          answer RCPT TO for these addresses with 550 user unknown
      drop_after_data: accept the next N messages, then close without the final reply
Prints "ready" on stdout once both listeners accept connections.
"""

import argparse
import asyncio
import email
import json
import ssl
import sys
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, SMTP

# aiosmtpd's own AUTH code logs a deprecation warning on every login; not ours to fix.
logging.getLogger("mail.log").setLevel(logging.ERROR)

LOCK = threading.Lock()
IMPLICIT_TLS = False
STATE = {"messages": [], "faults": {}}


def fault(name, default=0):
    with LOCK:
        return STATE["faults"].get(name, default)


def take(name):
    """Consumes one unit of a counted fault; True if it applied."""
    with LOCK:
        left = STATE["faults"].get(name, 0)
        if left > 0:
            STATE["faults"][name] = left - 1
            return True
        return False


class Handler:
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if take("unavailable"):
            server.transport.close()
            return "421 4.3.2 service not available, closing channel"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in [a.lower() for a in fault("reject", [])]:
            return "550 5.1.1 <%s>: user unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if take("tempfail"):
            code = fault("tempfail_code", 451)
            return "%d 4.3.0 temporary failure, try again later" % code
        data = envelope.content.decode("utf-8", errors="replace")
        parsed = email.message_from_string(data)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": data,
            "message_id": parsed.get("Message-ID", ""),
            "tls": session.ssl is not None or IMPLICIT_TLS,
            "authenticated": bool(session.authenticated),
            "received_at": time.time(),
        }
        with LOCK:
            STATE["messages"].append(record)
        if take("drop_after_data"):
            # The message is stored, but the client never hears 250.
            server.transport.abort()
        return "250 2.0.0 OK queued"


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body):
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/messages":
            with LOCK:
                self.reply(200, STATE["messages"])
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            if self.path == "/reset":
                STATE["messages"] = []
                STATE["faults"] = {}
            elif self.path == "/faults":
                STATE["faults"].update(body)
            else:
                self.reply(404, {"error": "not found"})
                return
        self.reply(200, {"ok": True})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user", default="leadloop")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (SMTPS)")
    args = parser.parse_args()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            hasattr(auth_data, "login")
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        # handled=False: aiosmtpd answers 535 itself on a failure (handled=True, the default,
        # would leave the client waiting for a reply that never comes).
        return AuthResult(success=ok, handled=False)

    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)

    implicit = args.implicit_tls and tls is not None
    global IMPLICIT_TLS
    IMPLICIT_TLS = implicit

    class Factory(Controller):
        def factory(self):
            return SMTP(
                self.handler,
                hostname="localhost",
                tls_context=None if implicit else tls,
                require_starttls=tls is not None and not implicit,
                authenticator=authenticator,
                auth_required=True,
                auth_require_tls=tls is not None and not implicit,
                timeout=30,
            )

    controller = Factory(
        Handler(),
        hostname="127.0.0.1",
        port=args.port,
        ready_timeout=10,
        ssl_context=tls if implicit else None,
    )
    controller.start()
    http = ThreadingHTTPServer(("127.0.0.1", args.http_port), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the test harness closes our stdin or kills us
    finally:
        controller.stop()
        http.shutdown()


if __name__ == "__main__":
    main()
