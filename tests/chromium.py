"""Headless Chromium for tests of pages the report writes: a screenshot, its console lines, and
how much of it is coloured (plots are; text, tables and blank pages are not)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib import image as mpimg

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)


def needs_chromium():
    """Skip without Chromium, except where CI says it must be there (.ci/run installs it)."""
    if CHROMIUM is None:
        if os.environ.get("CP_REQUIRE_CHROMIUM"):
            pytest.fail("CP_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")


def render(page: Path, out: Path, size=(1200, 3000)):
    """Headless Chromium's screenshot of ``page``: (exit code, RGB array, console lines)."""
    shot = out / "screenshot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={out / 'profile'}", f"--screenshot={shot}",
         f"--window-size={size[0]},{size[1]}", "--enable-logging=stderr", "--v=0",
         page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    pixels = mpimg.imread(shot)[..., :3] if shot.exists() else None
    return proc.returncode, pixels, console


def coloured_fraction(rgb) -> float:
    """Share of clearly coloured pixels: plots have them; text, tables and blank pages don't."""
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3).mean())


def png_pixels(tmp_path, colour):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.fill_between([0, 1], 0, 1, color=colour)
    path = tmp_path / f"{colour}.png"
    fig.savefig(path)
    plt.close(fig)
    return path
