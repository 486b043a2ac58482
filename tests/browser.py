"""Headless Chromium for tests: screenshots, the rendered DOM, and JavaScript checks of a page. Stdlib only.

Chromium comes from Debian's packages (`.ci/install-browser`, i.e. `apt-get install -y chromium`); tests that
need it call `require_chromium()`, which skips with that command when it is missing.

    shot = screenshot("reports/report.html", "reports/report.png", width=1280, height=2400)
    dom = dump_dom("reports/report.html")
    with Browser() as b:                       # DevTools protocol: wait for an SPA, run JS, full-page shots
        b.open("http://127.0.0.1:4200/runs")
        b.wait_for("document.querySelector('.flow-run') !== null", timeout=30)
        checks = b.evaluate(PAGE_CHECKS)       # images loaded, no element wider than the viewport
        b.screenshot("reports/prefect_runs.png", full_page=True)

`Browser` talks to Chromium's DevTools websocket with a minimal client written here (RFC 6455 text frames),
so no websocket package is needed.
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
from pathlib import Path
from typing import Any

INSTALL = ".ci/install-browser  (or: apt-get install -y chromium)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]

# What every page must satisfy: rendered, every <img> decoded, nothing wider than the viewport (elements inside
# a horizontally scrolling container are that container's business, not the page's).
PAGE_CHECKS = r"""(async () => {
  if (document.readyState !== 'complete') await new Promise(r => addEventListener('load', r, {once: true}));
  const vw = document.documentElement.clientWidth;
  const scroller = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
    return false; };
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\s+/).join('.') : '');
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > vw + 1 && !scroller(el)) wide.push({el: name(el), right: Math.round(r.right)});
  }
  const images = [...document.images].map(i => ({alt: i.alt, src: i.src.slice(0, 60),
    loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth,
    shown: Math.round(i.getBoundingClientRect().width)}));
  return {title: document.title, viewport: vw, scrollWidth: document.documentElement.scrollWidth,
          height: document.documentElement.scrollHeight, text: document.body.innerText.length,
          headings: [...document.querySelectorAll('h1,h2')].map(h => h.textContent), images, wide: wide.slice(0, 20)};
})()"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium binary, or skip the calling test naming the install command."""
    import pytest

    path = chromium()
    if path is None:
        pytest.skip(f"Chromium is not installed: run {INSTALL}")
    return path


def _url(target: str | Path) -> str:
    s = str(target)
    return s if "://" in s else Path(s).resolve().as_uri()


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = chromium()
    if binary is None:
        raise RuntimeError(f"Chromium is not installed: run {INSTALL}")
    with tempfile.TemporaryDirectory(prefix="edgeopt-chromium-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def screenshot(target: str | Path, out: str | Path, width: int = 1280, height: int = 2000,
               timeout: float = 60) -> Path:
    """A PNG of the page at width x height (the part below `height` is cut; see Browser for full pages)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _run([f"--screenshot={out}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
                _url(target)], timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-800:]}")
    return out


def dump_dom(target: str | Path, timeout: float = 60) -> str:
    """The DOM after load and scripts (document.documentElement.outerHTML)."""
    res = _run(["--dump-dom", "--virtual-time-budget=5000", _url(target)], timeout)
    if res.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed (exit {res.returncode}): {res.stderr[-800:]}")
    return res.stdout


class Browser:
    """One headless Chromium with a DevTools connection to its first tab."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60):
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0

    def __enter__(self) -> "Browser":
        binary = chromium()
        if binary is None:
            raise RuntimeError(f"Chromium is not installed: run {INSTALL}")
        self._profile = tempfile.mkdtemp(prefix="edgeopt-chromium-")
        self._proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self._profile}",
                                       "--remote-debugging-port=0", "--remote-allow-origins=*",
                                       f"--window-size={self.width},{self.height}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            port = self._port()
            tabs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in tabs if t.get("type") == "page")
            self._ws = _WebSocket(page["webSocketDebuggerUrl"], self.timeout)
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _port(self) -> int:
        active = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if active.is_file() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self._proc.returncode}): {self._proc.stderr.read()[-800:]!r}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def __exit__(self, *exc: Any) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are dropped)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise TimeoutError(f"{method}: no answer within {self.timeout} s")

    def open(self, target: str | Path) -> None:
        """Navigate and wait for the load event."""
        self.call("Page.navigate", url=_url(target))
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JavaScript error: {res['exceptionDetails'].get('text')} "
                               f"{res['exceptionDetails'].get('exception', {}).get('description', '')}")
        return res.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {condition}")
            time.sleep(0.2)

    def screenshot(self, out: str | Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1})
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return out


class _WebSocket:
    """The client half of RFC 6455, enough for DevTools: masked text frames out, (fragmented) frames in."""

    def __init__(self, url: str, timeout: float):
        from urllib.parse import urlparse

        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return bytes(buf)

    def send(self, text: str, opcode: int = 0x1) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping: answer, keep reading
                self.send(payload.decode(errors="replace"), opcode=0xA)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
