"""Drive the real ComfyUI frontend in headless Chromium over the DevTools protocol (no extra packages).

:class:`Browser` starts ``chromium --headless --remote-debugging-port``, opens a page on the ComfyUI
server and evaluates JavaScript in it (``evaluate(expr)`` awaits promises and returns JSON values).
The WebSocket client is a minimal RFC 6455 implementation on a plain socket (text frames, no
extensions), enough for the DevTools protocol.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from urllib.parse import urlparse

from processes import free_port


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class WebSocket:
    def __init__(self, url: str, timeout: float = 120.0):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        target = u.path + (f"?{u.query}" if u.query else "")
        request = (f"GET {target} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("WebSocket handshake: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"WebSocket handshake refused: {status!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("WebSocket closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str | bytes:
        """The next message: ``str`` for a text message, ``bytes`` for a binary one."""
        parts, first = [], None
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, data)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the peer")
            if first is None:
                first = opcode
            parts.append(data)
            if b0 & 0x80:
                payload = b"".join(parts)
                return payload.decode() if first == 0x1 else payload

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        finally:
            self.sock.close()


class Browser:
    """Headless Chromium with one page; ``evaluate`` runs JavaScript in it."""

    def __init__(self, chromium: str, port: int = 0):
        self.profile = tempfile.mkdtemp(prefix="surgsora-chromium-")
        port = port or free_port()
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}", "--window-size=1600,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        pages = None
        while time.time() < deadline:
            try:
                pages = json.loads(urllib.request.urlopen(f"{self.base}/json/list", timeout=2).read())
                if any(p.get("type") == "page" for p in pages):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        if not pages:
            self.close()
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        page = next(p for p in pages if p.get("type") == "page")
        self.ws = WebSocket(page["webSocketDebuggerUrl"])
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str, timeout: float = 120.0):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                           timeout=int(timeout * 1000))
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"JavaScript error: {text}")
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    # ---- real input events (Input.dispatch*: the browser hit-tests, focuses and builds click counts itself)
    MODIFIERS = {"alt": 1, "ctrl": 2, "meta": 4, "shift": 8}

    def mouse(self, kind: str, x: float, y: float, button: str = "left", buttons: int = 1, clicks: int = 1,
              modifiers: int = 0) -> None:
        """One mouse event: ``kind`` is mousePressed, mouseMoved or mouseReleased."""
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, buttons=buttons, clickCount=clicks,
                  modifiers=modifiers)

    def click(self, x: float, y: float, button: str = "left", clicks: int = 1, modifiers: int = 0) -> None:
        """Press and release; ``clicks=2`` is the second click of a double-click (the browser sends dblclick)."""
        held = {"left": 1, "right": 2, "middle": 4}[button]
        self.mouse("mousePressed", x, y, button, held, clicks, modifiers)
        self.mouse("mouseReleased", x, y, button, 0, clicks, modifiers)

    def double_click(self, x: float, y: float) -> None:
        self.click(x, y, clicks=1)
        self.click(x, y, clicks=2)

    def drag(self, points: list[tuple[float, float]]) -> None:
        """Press at the first point, move through the others, release at the last."""
        self.mouse("mousePressed", *points[0])
        for x, y in points[1:]:
            self.mouse("mouseMoved", x, y)
        self.mouse("mouseReleased", *points[-1], buttons=0)

    def shortcut(self, key: str, *mods: str) -> None:
        """A key pressed with modifiers as a person does it: modifiers down, key down/up, modifiers up,
        e.g. ``shortcut("z", "ctrl")``. ``key`` is a letter."""
        names = {"ctrl": ("Control", "ControlLeft", 17), "shift": ("Shift", "ShiftLeft", 16),
                 "alt": ("Alt", "AltLeft", 18), "meta": ("Meta", "MetaLeft", 91)}
        held = 0
        for m in mods:
            held |= self.MODIFIERS[m]
            k, code, vk = names[m]
            self.call("Input.dispatchKeyEvent", type="rawKeyDown", key=k, code=code, windowsVirtualKeyCode=vk,
                      modifiers=held)
        shown = key.upper() if "shift" in mods else key.lower()
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=shown, code=f"Key{key.upper()}",
                      windowsVirtualKeyCode=ord(key.upper()), modifiers=held)
        for m in reversed(mods):
            held &= ~self.MODIFIERS[m]
            k, code, vk = names[m]
            self.call("Input.dispatchKeyEvent", type="keyUp", key=k, code=code, windowsVirtualKeyCode=vk,
                      modifiers=held)

    def wait_for(self, expression: str, timeout: float = 90.0, interval: float = 0.5):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.evaluate(expression, timeout=10)
                if last:
                    return last
            except (RuntimeError, ConnectionError):
                pass
            time.sleep(interval)
        raise TimeoutError(f"timed out waiting for {expression!r} (last value {last!r})")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

