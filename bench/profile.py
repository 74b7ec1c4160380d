"""Optional sampling profile of our server while it is under load (``--profile DIR``).

Uses ``py-spy`` (not a project dependency: ``.venv/bin/pip install py-spy``), attached to the
server process for the measured phase of each of our scenarios. It writes py-spy's collapsed
stacks (``DIR/<scenario>.txt``, loadable by speedscope or flamegraph.pl) and a summary
(``DIR/<scenario>-summary.txt``): where the samples' innermost frames are (self time) and
which frames of our own code the samples pass through (inclusive time).

The profiler takes CPU from the machine it measures: figures of a profiled run are for finding
hot spots, not for the table in docs/benchmarks.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "find_py_spy", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_dir: Path, rate: int = 200) -> None:
        exe = find_py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.exe = exe
        self.out_dir = out_dir
        self.rate = rate
        out_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._name = ""

    def start(self, pid: int, name: str, seconds: float) -> None:
        self._name = name
        self._proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate),
             "--duration", str(max(1, int(seconds))), "--format", "raw",
             "--output", str(self.out_dir / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path | None:
        if self._proc is None:
            return None
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None
        raw = self.out_dir / f"{self._name}.txt"
        if not raw.exists():
            return None
        summary = self.out_dir / f"{self._name}-summary.txt"
        summary.write_text(summarise(raw))
        return summary


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/breeze_mcp/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker == "site-packages/" else (
                marker.strip("/") + "/" + path.split(marker, 1)[1])
            break
    line = f":{match['line']}" if match["line"] else ""
    return f"{match['func']} ({path}{line})"


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample counts from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[_short(frames[-1])] += count
        files = [m["file"] if (m := _FRAME.match(f.strip())) else "?" for f in frames]
        packages[_package(files[-1])] += count
        for package in {_package(f) for f in files}:
            on_stack[package] += count
        seen: set[str] = set()
        for frame in frames:
            short = _short(frame)
            if "breeze_mcp/" in short and short not in seen:
                seen.add(short)
                inclusive[short] += count
    if not total:
        return "no samples\n"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [f"{total} samples", "", "Self time by package (innermost frame):"]
    out += [f"  {pct(n)}  {name}" for name, n in packages.most_common(15)]
    out += ["", "Samples with the package anywhere on the stack (inclusive):"]
    out += [f"  {pct(n)}  {name}" for name, n in on_stack.most_common(20)]
    out += ["", f"Top {top} innermost frames (self time):"]
    out += [f"  {pct(n)}  {name}" for name, n in own.most_common(top)]
    out += ["", f"Top {top} frames of breeze_mcp on the stack (inclusive time):"]
    out += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


def _package(path: str) -> str:
    """Top-level package (or stdlib module) of a frame's file; py-spy shortens the paths."""
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker != "site-packages/":
                path = path.split("/", 1)[-1]
            break
    if "/breeze_mcp/" in path:
        return "breeze_mcp"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"
