"""Every ```python block of README.md runs as written, each in a fresh interpreter in an empty directory.

A block that needs what a test machine does not have starts with a visible marker line,
`# needs: weights ...` (real SD3 / FLUX weights) or `# needs: gpu ...`; such blocks are
skipped, and there may only be a few of them. Expensive blocks are made cheap by the settings
they state themselves (e.g. `train.updates=2`), never by the test.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^# needs: (weights|gpu)\b")
MAX_MARKED = 3  # the real-model blocks: loading SD3 / FLUX, using an export in diffusers


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block."""
    blocks, lines = [], text.splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start:number - 1]) + "\n"))
            start = None
    assert start is None, f"README.md: the ```python block opened at line {start} is never closed"
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks_and_few_are_skipped():
    assert len(BLOCKS) >= 3
    marked = [line for line, code in BLOCKS if MARKER.match(code)]
    assert len(marked) <= MAX_MARKED, f"README blocks marked `# needs:` at lines {marked}: at most {MAX_MARKED}"
    misplaced = [line for line, code in BLOCKS if "# needs:" in code and not MARKER.match(code)]
    assert not misplaced, f"a `# needs:` marker must be the block's first line (blocks at lines {misplaced})"


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
    marker = MARKER.match(code)
    if marker:
        pytest.skip(f"README.md:{line} is marked `# needs: {marker.group(1)}`")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr[-3000:]}"
