"""Run every benchmark and rewrite ``benchmarks/results.md``.

Usage::

    python -m benchmarks            # all bench_*.py scripts
    python -m benchmarks loss data  # only bench_loss.py and bench_data*.py
    python -m benchmarks --ingest bench_slide lines.jsonl  # add a by-hand run's lines

Each ``benchmarks/bench_*.py`` script runs in its own process and prints one JSON line per
figure: ``{"name", "value", "unit", "baseline", "ratio", ...}`` where ``baseline`` is the
reference measured in the same run (``null`` when there is none). This runner echoes the
lines and collects them into a markdown table together with the machine they ran on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(saved: dict) -> str:
    """Markdown table of every script's latest rows, with the machine each ran on."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks` (`make bench`) from `results.json`; every figure was",
        "measured by the named script, each against its baseline measured in the same run.",
        "",
    ]
    for stem, entry in sorted(saved.items()):
        lines += [
            f"## {stem}",
            "",
            f"{entry['date']} on {entry['machine']}",
            "",
            "| figure | value | unit | baseline | ratio | notes |",
            "|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            lines.append(
                f"| {r.get('name')} | {_fmt(r.get('value'))} | {r.get('unit', '')} | "
                f"{_fmt(r.get('baseline'))} | {_fmt(r.get('ratio'))} | {r.get('notes', '')} |"
            )
        lines.append("")
    extra = HERE / "notes.md"
    if extra.exists():
        lines += [extra.read_text().strip(), ""]
    return "\n".join(lines)


def ingest(stem: str, path: str) -> int:
    """Add the JSON lines of ``path`` (a script run by hand with its own arguments, e.g.
    ``bench_slide.py --transform deformable``) to ``stem``'s section; a row of the same
    name is replaced, other rows are kept."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.startswith("{")]
    store = HERE / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    names = {r["name"] for r in lines}
    old = [r for r in saved.get(stem, {}).get("rows", []) if r["name"] not in names]
    saved[stem] = {
        "date": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": machine_description(),
        "rows": old + lines,
    }
    store.write_text(json.dumps(saved, indent=1) + "\n")
    (HERE / "results.md").write_text(render_markdown(saved))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--ingest"]:
        if len(argv) != 3:
            print("usage: python -m benchmarks --ingest bench_NAME LINES_FILE", file=sys.stderr)
            return 2
        return ingest(argv[1], argv[2])
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(s.stem.startswith(f"bench_{a}") for a in argv)]
    rows: list[tuple[str, dict]] = []
    failed = []
    for script in scripts:
        print(f"# {script.name}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent
        )
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                print(line, flush=True)
                rows.append((script.stem, json.loads(line)))
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr[-2000:], file=sys.stderr)
    store = HERE / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    now = f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    machine = machine_description()
    for script in scripts:
        if script.name in failed:
            continue
        saved[script.stem] = {
            "date": now,
            "machine": machine,
            "rows": [r for stem, r in rows if stem == script.stem],
        }
    store.write_text(json.dumps(saved, indent=1) + "\n")
    (HERE / "results.md").write_text(render_markdown(saved))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
