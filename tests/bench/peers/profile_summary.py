"""Summarise py-spy's raw (collapsed-stack) profiles: where each process spends its CPU.

    python tests/bench/peers/run.py --modes kafka --cells c=1 --profile build/prof \\
        --profile-format raw
    python tests/bench/peers/profile_summary.py build/prof/*.txt

For each file: samples, and the share of samples whose innermost Python frame belongs to
each package (site-packages top-level name, ``switchyard.<part>``, or the standard
library module), and the top inclusive frames of our own code. py-spy samples only
threads that are running (not idle), so shares are of the CPU the process used.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def package(path: str) -> str:
    if "site-packages/" in path:
        rest = path.split("site-packages/", 1)[1]
        top = rest.split("/", 1)[0]
        if top == "switchyard":
            parts = rest.split("/")
            return "switchyard." + (parts[1] if len(parts) > 2 else parts[-1])
        return top.removesuffix(".py")
    if "/src/switchyard/" in path:
        return "switchyard." + path.split("/src/switchyard/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in path:
        return "stdlib:" + path.rsplit("/lib/python3.", 1)[1].split("/", 1)[1].split("/")[0]
    return path or "?"


def summarise(path: Path, top: int = 12) -> str:
    self_by_package: Counter[str] = Counter()
    inclusive_own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [FRAME.match(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_by_package[package(frames[-1]["file"])] += samples
        seen = set()
        for f in frames:
            if "switchyard" in f["file"]:
                key = f"{f['func']} ({f['file'].split('switchyard/', 1)[-1]})"
                if key not in seen:
                    seen.add(key)
                    inclusive_own[key] += samples
    lines = [f"## {path.name}: {total} samples", "", "| innermost frame in | share |", "|---|---:|"]
    for name, samples in self_by_package.most_common(top):
        lines.append(f"| {name} | {100 * samples / total:.1f}% |")
    lines += ["", "| our frame (inclusive) | share |", "|---|---:|"]
    for name, samples in inclusive_own.most_common(top):
        lines.append(f"| {name} | {100 * samples / total:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(summarise(Path(argument)))
