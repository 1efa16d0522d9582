"""The command outputs shown in README.md and docs/*.md, run for real.

A shown output is a marker line followed by a fenced block:

    <!-- example: quant verify models/gesture_model_int8/gesture_model_int8.espdl -->
    ```text
    $ quant verify models/gesture_model_int8/gesture_model_int8.espdl
    PASS ...
    ```

The block is `$ COMMAND`, then what the command printed (stdout and stderr, in that order), then
`[exit N]` when N is not 0. `quant ...` runs this tree's `python -m quant` from the repository root;
`{tmp}` in a command is a fresh temporary folder; a trailing `| head -n N` keeps the first N lines.
Only fast commands belong here (inspect, verify, report, --help, error messages): nothing that quantizes.

    python tests_host/doc_examples.py            # check: exit 1 and a diff when a block is stale
    python tests_host/doc_examples.py --write    # rewrite every block from the current code (make docs-examples)

tests_host/test_doc_examples.py runs the check, one test per example.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- example: (?P<cmd>.+?) -->\n```text\n(?P<body>.*?)^```\n", re.M | re.S)
HEAD = re.compile(r"\s*\|\s*head -n (\d+)\s*$")
# parts of an output that change from run to run or machine to machine; compared as placeholders
VOLATILE = [
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:s|ms|us)\b"), "<time>"),
    (re.compile(r"\b\d{8}T\d{6}Z\b"), "<stamp>"),
    (re.compile(r"/tmp/[^\s'\"]+"), "<tmp>"),
]


@dataclass(frozen=True)
class Example:
    file: Path
    command: str
    shown: str  # the block's text as stored

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(REPO) if self.file.is_relative_to(REPO) else self.file.name}: {self.command}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def examples(files: list[Path] | None = None) -> list[Example]:
    return [Example(f, m["cmd"], m["body"]) for f in (files or doc_files()) for m in MARKER.finditer(f.read_text())]


def run(command: str) -> str:
    """The block text for `command`, as the current code prints it."""
    m = HEAD.search(command)
    head = int(m.group(1)) if m else None
    cmd = command[: m.start()] if m else command
    with tempfile.TemporaryDirectory(prefix="doc-example-") as tmp:
        argv = shlex.split(cmd.replace("{tmp}", tmp))
        if argv[0] == "quant":
            argv = [sys.executable, "-m", "quant", *argv[1:]]
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="0", COLUMNS="100", NO_COLOR="1")
        p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        text = (p.stdout + p.stderr).replace(tmp, "/tmp/example").replace(str(REPO) + "/", "").replace(str(REPO), ".")
    lines = text.rstrip("\n").split("\n")
    if head is not None:
        lines = lines[:head] + ["..."]
    out = f"$ {command}\n" + "\n".join(lines).rstrip() + "\n"
    return out + (f"[exit {p.returncode}]\n" if p.returncode else "")


def normalize(text: str) -> str:
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


def stale(example: Example) -> str | None:
    """None when the block is what the command prints now, else a unified diff."""
    fresh = run(example.command)
    if normalize(fresh) == normalize(example.shown):
        return None
    return "".join(difflib.unified_diff(example.shown.splitlines(True), fresh.splitlines(True), "shown", "now"))


def write(files: list[Path] | None = None) -> int:
    changed = 0
    for f in files or doc_files():
        old = f.read_text()
        new = MARKER.sub(lambda m: f"<!-- example: {m['cmd']} -->\n```text\n{run(m['cmd'])}```\n", old)
        if new != old:
            f.write_text(new)
            changed += 1
            print(f"rewrote {f.relative_to(REPO) if f.is_relative_to(REPO) else f}")
    print(f"{len(examples(files))} examples, {changed} file(s) changed")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        return write()
    if argv:
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    bad = [(e, d) for e in examples() if (d := stale(e))]
    for e, d in bad:
        print(f"STALE {e.id}\n{d}")
    print(f"{len(examples()) - len(bad)} of {len(examples())} examples up to date"
          + ("" if not bad else "; run `make docs-examples` (python tests_host/doc_examples.py --write)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
