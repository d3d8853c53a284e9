"""The repository's documents: every image they show is a file in the repository."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


def tracked_files() -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return set(out.stdout.splitlines())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_image_link_resolves_to_a_tracked_file(doc):
    tracked = tracked_files()
    for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text()):
        if link.startswith(("http://", "https://", "data:")):
            continue
        path = (doc.parent / link).resolve()
        assert path.exists(), f"{doc.name} shows {link}, which does not exist"
        assert str(path.relative_to(REPO.resolve())) in tracked, (
            f"{doc.name} shows {link}, which git does not track (ignored?)")
