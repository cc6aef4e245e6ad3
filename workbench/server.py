"""The app as the workbench serves it: Streamlit's ``st.App`` around ``workbench/app.py``, with the token gate in
front of every request when a token is set (``workbench app --host``; on 127.0.0.1 nothing changes).

The page's own form (``workbench.auth.gate``) guards the script, but a Streamlit server also answers requests
no script sees: ``/media/<hash>`` (an X-ray shown on a page) and ``/_stcore/metrics`` (which functions ran).
``TokenGate`` asks for the token before any of those: a login form for a page, 403 for anything else; the
token from the form or from ``?token=`` becomes a session cookie holding an HMAC of it (not the token), and
the browser is redirected to the same address without ``?token=`` (a redirect leaves no history entry with the
token in it). ``/_stcore/metrics`` is never served to a visitor. Wrong tokens wait as in ``auth``.
"""

from __future__ import annotations

import hmac
import html
import os
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import streamlit as st
from starlette.middleware import Middleware

from workbench import auth
from workbench.auth import COOKIE, cookie_value

OPEN = ("/_stcore/health", "/_stcore/script-health-check", "/static/", "/favicon.png", "/manifest.json")


class TokenGate:
    """ASGI middleware: every request but Streamlit's health check and its static code needs the session cookie."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        token = os.environ.get(auth.TOKEN_ENV, "")
        if scope["type"] not in ("http", "websocket") or not token:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.endswith("/_stcore/metrics"):
            return await _reply(scope, send, 404, "not served")
        if _has_cookie(scope, token) or (scope["type"] == "http" and path.startswith(OPEN)):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 4401})
        given = await _given_token(scope, receive)
        if given is not None:
            verdict = auth.check(given, token)
            if verdict:
                return await _redirect_in(scope, send, token)
            message = "Too many wrong tokens: wait a little." if verdict is None else "That token is not the one " \
                "this server was started with."
        else:
            message = ""
        if path.startswith(("/media/", "/_stcore/")) or scope.get("method") not in ("GET", "POST"):
            return await _reply(scope, send, 403, "the workbench's token is needed")
        return await _reply(scope, send, 401, _login_page(message), "text/html; charset=utf-8")


def _has_cookie(scope, token: str) -> bool:
    raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
    morsel = SimpleCookie(raw).get(COOKIE) if raw else None
    return morsel is not None and hmac.compare_digest(morsel.value, cookie_value(token))


async def _given_token(scope, receive) -> str | None:
    """The token of ``?token=`` or of the login form's POST body; None when neither gives one."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "token" in query:
        return query["token"][0]
    if scope["type"] == "http" and scope.get("method") == "POST":
        body, more = b"", True
        while more and len(body) < 4096:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return parse_qs(body.decode("utf-8", "replace")).get("token", [None])[0]
    return None


async def _redirect_in(scope, send, token: str):
    query = {k: v for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items() if k != "token"}
    location = scope.get("path", "/") + (f"?{urlencode(query, doseq=True)}" if query else "")
    cookie = f"{COOKIE}={cookie_value(token)}; Path=/; HttpOnly; SameSite=Strict"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                            (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]})
    await send({"type": "http.response.body", "body": b""})


async def _reply(scope, send, status: int, text: str, kind: str = "text/plain; charset=utf-8"):
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 4403})
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]})
    await send({"type": "http.response.body", "body": body})


def _login_page(message: str) -> str:
    note = f"<p style='color:#b00'>{html.escape(message)}</p>" if message else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>CoT Drift Workbench</title>"
            "<link rel='icon' href='data:,'></head><body style='font-family:sans-serif;margin:4rem'>"
            "<h1>CoT Drift Workbench</h1><form method='post'><label>Access token "
            "<input type='password' name='token' autofocus></label> <button type='submit'>Open</button></form>"
            f"{note}<p>printed by <code>workbench app</code> when it started, or given with --token-file</p>"
            "</body></html>")


app = st.App(str(Path(__file__).with_name("app.py")), middleware=[Middleware(TokenGate)])
