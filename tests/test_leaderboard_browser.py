"""The HTML leaderboard rendered in headless Chromium: it loads, lays out on a phone-sized screen, and
the screenshot is a real image. Skipped only where no Chromium is installed (CI installs it)."""
import shutil
import struct
import subprocess

import pytest

from robustmed.reports.leaderboard import boards, render_html
from robustmed.store import load_runs

from test_reports import EPS, _rows, _run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed")
@pytest.mark.parametrize("width,height", [(390, 844), (1280, 800)], ids=["phone", "desktop"])
def test_leaderboard_renders_in_headless_chromium(tmp_path, width, height):
    runs = [_run("none", [_rows("none", "aa", [1, 0, 0, 0])], "r1"),
            _run("rpan", [_rows("rpan", "aa", [1, 1, 0, 0])], "r2", ["A4"])]
    page = tmp_path / "leaderboard.html"
    page.write_text(render_html(boards(runs, EPS), EPS))
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _png_size(shot) == (width, height)
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<table>" in dom and "yes: A4" in dom and dom.count("<tr") == 3


def test_committed_golden_runs_make_a_leaderboard():
    from test_reports import GOLDEN

    (board,) = boards(load_runs(GOLDEN), EPS)
    (entry,) = board.entries
    assert (board.dataset, entry.defense, entry.n) == ("pneumoniamnist", "none", 64)
    assert 0 <= entry.robust_accuracy <= entry.clean_accuracy
