"""Drive a real JupyterHub (scripts/jupyterhub.sh) the way a browser does, standard library
only: log in with the user's PAM password (the hub's login form), make a token, start the
user's server through the hub's API, start a kernel through the server's REST API and run
code over the kernel's websocket (Jupyter messaging: ``execute_request`` on the shell
channel, output from iopub), stop the server.

Passwords and tokens go only to a hub port whose listener is root's (``Hub.check_listener``):
any local account may bind a free loopback port, and one squatting the hub's port while the
hub is down must not receive alice's password.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from harness.processes import HarnessError, listener_uid, wait_until
from harness.websocket import WebSocket

TOKEN_LIFETIME = 3600  # seconds: the harness's tokens do not pile up in the hub's database


@dataclass(frozen=True)
class Session:
    """A logged-in browser: its cookies (in ``opener``) and the ``_xsrf`` value the hub wants
    back in ``X-XSRFToken`` with requests made with those cookies."""

    opener: urllib.request.OpenerDirector
    xsrf: str


@dataclass
class Execution:
    """What a cell printed and returned: stdout and stderr text, the ``text/plain`` of its
    result (None if it had none), its error as ``"Name: value"`` (None if it raised
    nothing), with the traceback."""

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: str | None = None
    traceback: list[str] = field(default_factory=list)


def request(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: object = None,
    opener: urllib.request.OpenerDirector | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, object]:
    """One HTTP request: (status, the JSON body, or the text if it is not JSON)."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"token {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


class Hub:
    """A JupyterHub at ``url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.api = f"{self.url}/hub/api"
        parts = urllib.parse.urlsplit(self.url)
        if parts.hostname != "127.0.0.1":  # check_listener reads loopback listeners only
            raise HarnessError(f"the harness drives a hub on 127.0.0.1 only, not {url}")
        self.port = parts.port or 80

    def check_listener(self) -> None:
        """Raise HarnessError unless the hub's port on 127.0.0.1 is root's (the hub's proxy):
        called before a password or token is sent there."""
        uid = listener_uid(self.port)
        if uid != 0:
            who = "nobody" if uid is None else f"uid {uid}, not root"
            raise HarnessError(
                f"127.0.0.1:{self.port} is listened on by {who}: not the hub; "
                "no password or token is sent there"
            )

    def request(
        self, url: str, method: str = "GET", token: str | None = None, **kwargs
    ) -> tuple[int, object]:
        """:func:`request` to the hub's port, after :meth:`check_listener`."""
        self.check_listener()
        return request(url, method, token, **kwargs)

    def login(self, user: str, password: str) -> Session:
        """Log in through the hub's login form (PAM); raises HarnessError if refused."""
        self.check_listener()
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(f"{self.url}/hub/login", timeout=30) as resp:
            resp.read()
        xsrf = next((c.value for c in jar if c.name == "_xsrf"), "")
        form = urllib.parse.urlencode({"username": user, "password": password, "_xsrf": xsrf})
        req = urllib.request.Request(f"{self.url}/hub/login?next=", data=form.encode())
        self.check_listener()
        try:
            with opener.open(req, timeout=60) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise HarnessError(f"login as {user} refused: {exc.code}") from exc
        if not any(c.name == "jupyterhub-session-id" for c in jar) or not any(
            c.name.startswith("jupyterhub-hub-login") for c in jar
        ):
            raise HarnessError(f"login as {user} refused (no session cookie)")
        return Session(opener, next((c.value for c in jar if c.name == "_xsrf"), xsrf))

    def user_token(
        self, user: str, password: str, expires_in: int = TOKEN_LIFETIME, note: str = "harness"
    ) -> str:
        """A token of ``user``'s own, made after logging in with the password, as a user does
        on the hub's token page, valid ``expires_in`` seconds."""
        session = self.login(user, password)
        status, answer = self.request(
            f"{self.api}/users/{user}/tokens",
            "POST",
            body={"note": note, "expires_in": expires_in},
            opener=session.opener,
            headers={"X-XSRFToken": session.xsrf, "Referer": f"{self.url}/hub/token"},
        )
        if status != 201:
            raise HarnessError(f"token for {user}: {status} {answer}")
        return answer["token"]

    def whoami(self, token: str) -> tuple[int, object]:
        return self.request(f"{self.api}/user", token=token)

    def server_state(self, user: str, token: str) -> dict | None:
        """The user's default server as the hub reports it (None: not running)."""
        status, model = self.request(f"{self.api}/users/{user}", token=token)
        if status != 200:
            raise HarnessError(f"user {user}: {status} {model}")
        return model.get("servers", {}).get("")

    def start_server(self, user: str, token: str, timeout: float = 120) -> None:
        """Start the user's server (POST .../server) and wait until the hub says it is ready."""
        status, answer = self.request(f"{self.api}/users/{user}/server", "POST", token=token)
        if status not in (201, 202, 400):  # 400: already running
            raise HarnessError(f"starting {user}'s server: {status} {answer}")

        def ready() -> bool:
            server = self.server_state(user, token)
            return bool(server and server.get("ready"))

        if not wait_until(ready, timeout, 1):
            raise HarnessError(f"{user}'s server not ready after {timeout} s")

    def stop_server(self, user: str, token: str, timeout: float = 60) -> None:
        """Stop the user's server and wait until the hub has none."""
        status, answer = self.request(f"{self.api}/users/{user}/server", "DELETE", token=token)
        if status not in (202, 204, 400):
            raise HarnessError(f"stopping {user}'s server: {status} {answer}")
        if not wait_until(lambda: self.server_state(user, token) is None, timeout, 1):
            raise HarnessError(f"{user}'s server still there after {timeout} s")

    def server(self, user: str, token: str) -> SingleUser:
        return SingleUser(self, user, token)


class SingleUser:
    """The user's single-user server, reached through the hub's proxy with the user's token."""

    def __init__(self, hub: Hub, user: str, token: str):
        self.hub = hub
        self.base = f"{hub.url}/user/{user}"
        self.user = user
        self.token = token
        self.kernels: list[str] = []  # started here and not shut down yet

    def start_kernel(self, name: str = "python3") -> str:
        status, model = self.hub.request(
            f"{self.base}/api/kernels", "POST", token=self.token, body={"name": name}
        )
        if status != 201:
            raise HarnessError(f"starting a kernel for {self.user}: {status} {model}")
        self.kernels.append(model["id"])
        return model["id"]

    def interrupt_kernel(self, kernel_id: str) -> None:
        """Interrupt what the kernel runs (SIGINT: KeyboardInterrupt in the cell)."""
        url = f"{self.base}/api/kernels/{kernel_id}/interrupt"
        status, answer = self.hub.request(url, "POST", token=self.token)
        if status != 204:
            raise HarnessError(f"interrupting {self.user}'s kernel: {status} {answer}")

    def shutdown_kernel(self, kernel_id: str) -> None:
        url = f"{self.base}/api/kernels/{kernel_id}"
        status, answer = self.hub.request(url, "DELETE", token=self.token)
        if status not in (204, 404):  # 404: gone already
            raise HarnessError(f"shutting down {self.user}'s kernel: {status} {answer}")
        if kernel_id in self.kernels:
            self.kernels.remove(kernel_id)

    def run(self, kernel_id: str, code: str, timeout: float = 300) -> Execution:
        """Run ``code`` in the kernel over its websocket, as JupyterLab does; return what it
        printed, returned or raised once the kernel is idle again."""
        url = self.base.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"
        self.hub.check_listener()
        ws = WebSocket(
            f"{url}?session_id={uuid.uuid4().hex}", {"Authorization": f"token {self.token}"}
        )
        try:
            msg_id = _send_execute(ws, code)
            return _collect(ws, msg_id, timeout)
        finally:
            ws.close()


def _send_execute(ws: WebSocket, code: str) -> str:
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "harness",
                    "session": uuid.uuid4().hex,
                    "date": datetime.now(UTC).isoformat(),
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    return msg_id


def _collect(ws: WebSocket, msg_id: str, timeout: float) -> Execution:
    """Gather the iopub messages answering ``msg_id`` until the kernel is idle again."""
    out = Execution()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HarnessError(f"no answer from the kernel within {timeout} s: {out}")
        ws.settimeout(left)
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                out.stdout += content["text"]
            else:
                out.stderr += content["text"]
        elif kind == "execute_result":
            out.result = content["data"].get("text/plain")
        elif kind == "error":
            out.error = f"{content['ename']}: {content['evalue']}"
            out.traceback = content.get("traceback", [])
        elif kind == "status" and content["execution_state"] == "idle":
            return out
