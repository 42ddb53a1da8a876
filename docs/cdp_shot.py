"""Capture a TensorBoard view with headless Chromium after ticking one of its check boxes.

Used by ``docs/screenshots.sh`` for the IMAGES tab, where "Show actual image size" is a setting
the URL cannot carry: Chromium is driven over its DevTools protocol (the ``websockets`` package).

    python docs/cdp_shot.py URL OUTPUT.png WIDTH HEIGHT [CHECKBOX LABEL]
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

# find a check box by its label through every shadow root, and tick it
CLICK = """
(label) => {
  const seen = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if ((el.tagName === 'PAPER-CHECKBOX' || el.tagName === 'MAT-CHECKBOX') &&
          el.textContent.trim().startsWith(label)) seen.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  seen.forEach((el) => el.click());
  return seen.length;
}
"""


async def shoot(port: int, url: str, out: str, width: int, height: int, label: str | None) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
        n = 0

        async def call(method: str, **params):
            nonlocal n
            n += 1
            await ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == n:
                    return msg.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=url)
        await asyncio.sleep(8)
        if label:
            res = await call("Runtime.evaluate", expression=f"({CLICK})({json.dumps(label)})", returnByValue=True)
            print(f"{label!r}: {res.get('result', {}).get('value')} check box(es) ticked", file=sys.stderr)
            await asyncio.sleep(4)
        shot = await call("Page.captureScreenshot", format="png")
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))


def main() -> None:
    url, out, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    label = sys.argv[5] if len(sys.argv) > 5 else None
    port = 9333
    chrome = subprocess.Popen(
        [os.environ.get("CHROMIUM", "chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tempfile.mkdtemp()}", f"--remote-debugging-port={port}",
         "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version")
                break
            except OSError:
                time.sleep(0.2)
        asyncio.run(shoot(port, url, out, width, height, label))
    finally:
        chrome.terminate()
        chrome.wait()


if __name__ == "__main__":
    main()
