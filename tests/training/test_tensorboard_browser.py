"""The HPARAMS page as a person sees it: headless Chromium loads a real ``tensorboard`` server's
``#hparams`` page for a log dir with two runs, saves a screenshot (``chromium --headless --screenshot``,
the command README's Development section shows) and reads the rendered page's text.

The text is read through the DevTools protocol over a pipe (``--remote-debugging-pipe``, stdlib only),
not ``--dump-dom``: TensorBoard's HPARAMS dashboard is made of web components whose content lives in
shadow roots, which ``--dump-dom`` leaves out (it prints an empty ``<tf-hparams-dashboard>``).

Skipped when no Chromium binary is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mosaics_lab import constants as C
from mosaics_lab.evaluation.common import EvalResult
from mosaics_lab.evaluation.runner import write_tensorboard
from mosaics_lab.training.callbacks import write_hparams
from tests.training.test_tensorboard_view import serve_tensorboard

pytestmark = pytest.mark.slow

CHROMIUM_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
WINDOW = (1400, 900)  # width, height
CHROMIUM_S = 120  # one page load, at most
PAGE_S = 30  # for the dashboard to fetch the session groups and render the table
# The runs: (TensorBoard run, train.lr, train.weight_decay, the eval's loss as `mosaics-lab eval` writes it)
RUNS = (("trial-0000/tiny lr=0.001", 0.001, 0.1, 2.25), ("trial-0001/tiny lr=0.003", 0.003, 0.2, 1.75))
SWEPT = ["train.lr", "train.weight_decay"]

# Every text node of the page, shadow roots included, without style and script contents.
PAGE_TEXT_JS = """(() => {
  const out = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        const text = child.textContent.trim();
        if (text) out.push(text);
      } else if (!["STYLE", "SCRIPT", "NOSCRIPT", "TEMPLATE"].includes(child.nodeName)) {
        walk(child);
      }
    }
  };
  walk(document);
  return out.join(" ");
})()"""


def chromium_binary() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_command(binary: str) -> list[str]:
    # --no-sandbox: Chromium refuses to start as root (a container, CI) with its sandbox on; the page
    # is our own local TensorBoard.
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"]


class PagePipe:
    """Chromium driven over ``--remote-debugging-pipe``: it reads DevTools protocol messages (JSON, each
    ended by a NUL byte) on its fd 3 and answers on its fd 4."""

    def __init__(self, binary: str) -> None:
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child, before exec: first out of the way, then 3 and 4
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child))
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [*chromium_command(binary), "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # the pipe fds are non-inheritable; only the dup2'd 3 and 4 reach chromium
            preexec_fn=as_fds_3_and_4,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:  # events arrive between the replies: skip them
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed its DevTools pipe (exit {self.process.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page_text(self, url: str, until: list[str], timeout_s: float) -> str:
        """The rendered text of ``url`` once it holds every string of ``until`` (or at the timeout)."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.call(
                "Runtime.evaluate", {"expression": PAGE_TEXT_JS, "returnByValue": True}, session
            )
            text = result["result"].get("value", "")
            if all(s in text for s in until) or time.monotonic() > deadline:
                return text
            time.sleep(0.5)

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=10)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.skip(
            f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
            "install one with `apt-get install chromium` to run the HPARAMS browser test"
        )
    return binary


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """Two sweep trials as training and `mosaics-lab eval` write them: the hparams record (swept keys
    marked, every column listed), a few hp/val_loss points, and an eval's hp/val/loss."""
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb_browser") / "runs"
    columns = [C.HP_VAL_LOSS, C.HP_TRAIN_LOSS, *C.HP_EVAL_METRICS]
    for name, lr, wd, eval_loss in RUNS:
        writer = SummaryWriter(str(root / name))
        hparams = {"model.arch": "mosaic_v2", "train.lr": lr, "train.weight_decay": wd, "seed": 0}
        write_hparams(writer, hparams, [*SWEPT, "model.arch"], columns)
        for step in range(3):
            writer.add_scalar(C.HP_VAL_LOSS, 3.0 - 0.2 * step, step)
        writer.close()
        write_tensorboard(root / name, "val", EvalResult(metrics={"loss": eval_loss, "ppl": None}), 2)
    return root


def test_the_hparams_page_renders_both_runs_with_the_swept_keys_and_the_eval_column(
    chromium, two_runs, tmp_path
):
    from matplotlib.image import imread

    with serve_tensorboard(two_runs) as board:
        url = f"{board.base}/#hparams"
        shot = tmp_path / "hparams.png"
        cmd = [*chromium_command(chromium), "--virtual-time-budget=15000", f"--screenshot={shot}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_S)
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]

        browser = PagePipe(chromium)
        try:
            run_names = [name for name, *_ in RUNS]
            text = browser.page_text(url, [*run_names, *SWEPT, "hp/val/loss"], PAGE_S)
        finally:
            browser.close()

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    colours, counts = np.unique((pixels * 255).round().reshape(-1, 3), axis=0, return_counts=True)
    # not blank: TensorBoard's bar, the table's text and lines give many colours, none covering it all
    assert len(colours) > 50 and counts.max() < 0.9 * counts.sum()

    for name in [*SWEPT, "model.arch", "hp/val_loss", "hp/val/loss", "hp/extrapolation/loss@4x"]:
        assert name in text, f"{name!r} is not on the HPARAMS page; its text: {text[:3000]}"
    for name, lr, _, eval_loss in RUNS:
        # the table's row: the run, its learning rate and its eval loss as TensorBoard formats them
        assert name in text and f"{lr:.7f}" in text and f"{eval_loss:.4f}" in text, text[:3000]
