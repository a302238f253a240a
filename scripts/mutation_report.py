"""Write benchmarks/MUTATION.md from mutmut's results in mutants/ (run by scripts/mutation.sh).

Per module: mutants, killed, survived, timed out, without a covering test, not run, and
the score (killed or timed out, over the mutants checked, those no selected test calls
among them, less the survivors explained as equivalent). Every survivor is listed with
its change and a one-line reason, read from benchmarks/mutation_reasons.toml by module
and changed line (mutant numbers shift when the code changes; the line does not); a
survivor without one is marked UNEXPLAINED.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tomllib
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

REASONS = Path("benchmarks/mutation_reasons.toml")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
# A mutant that crashes the test process (SIGABRT, SIGSEGV: say a null pointer handed to
# llama.cpp) fails the run as surely as a failed assertion.
STATUS |= {-6: "killed", -11: "killed"}
TARGET = 85.0  # percent of non-equivalent mutants killed, per module


def status(code: int | None) -> str:
    if code is None:
        return "not run"
    return STATUS.get(code, "suspicious")


def change(name: str, path: Path) -> str:
    """The mutant's change as one line: its added lines (or the removed ones)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=path).splitlines()
    added = [line[1:].strip() for line in diff if line.startswith("+") and line[:3] != "+++"]
    removed = [line[1:].strip() for line in diff if line.startswith("-") and line[:3] != "---"]
    if added:
        return " / ".join(added)
    return "removed: " + " / ".join(removed)


def load_reasons() -> dict[tuple[str, str], dict]:
    if not REASONS.exists():
        return {}
    entries = tomllib.loads(REASONS.read_text())["survivor"]
    return {(e["module"], e["change"]): e for e in entries}


def module_path(module: str) -> Path:
    return Path("mutants") / (module.replace(".", "/") + ".py.meta")


def previous_report(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], str, str]:
    """The previous report's table cells and survivor lines by module, when it was
    generated and the commit it was last committed in (to tell whether a module changed).

    The committed report, kept in mutants/ at the first call after mutants/ was made
    fresh, so that later runs resumed into the same mutants/ compare with it too."""
    kept = Path("mutants/previous-report.md")
    if not kept.exists():
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", str(path)], capture_output=True, text=True
        ).stdout.strip()
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
        if not commit or shown.returncode:
            return {}, {}, "", ""
        kept.write_text(f"<!-- commit {commit} -->\n" + shown.stdout)
    text = kept.read_text()
    commit = text.split()[2]
    cells, sections, current = {}, {}, None
    for line in text.splitlines():
        if m := re.match(r"\| `([\w.]+)` \|(.*)\|$", line):
            cells[m[1]] = [c.strip() for c in m[2].split("|")]
        elif m := re.match(r"### `([\w.]+)`", line):
            current = m[1]
            sections[current] = []
        elif line.startswith("## ") or line.startswith("### "):
            current = None
        elif current and line.startswith("- "):
            sections[current].append(line)
    when = m[1] if (m := re.search(r" on (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", text)) else "?"
    return cells, sections, when, commit


def unchanged_since(commit: str, module: str) -> bool:
    """Whether the module's source is the same now (working tree) as at ``commit``."""
    if not commit:
        return False
    source = module.replace(".", "/") + ".py"
    return subprocess.run(["git", "diff", "--quiet", commit, "--", source]).returncode == 0


def score_of(cells: list[str] | None) -> str:
    """The score cell of a previous row (the cell before the run column), or a dash."""
    if not cells or len(cells) < 2 or not cells[-2]:
        return "—"
    return cells[-2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", default="scripts/mutation.sh")
    parser.add_argument(
        "--previous",
        type=Path,
        help="the report this one replaces: its score is each module's 'before', and a "
        "module not run now keeps its row if its code is unchanged since that report",
    )
    args = parser.parse_args()
    old_cells, old_sections, old_when, old_commit = (
        previous_report(args.previous) if args.previous else ({}, {}, "", "")
    )

    runs = {}
    if args.runs.exists():
        for line in args.runs.read_text().splitlines():
            module, seconds, state = line.split("\t")
            runs[module] = (int(seconds), state)
    reasons = load_reasons()
    used: set[tuple[str, str]] = set()
    rows, details, unexplained = [], [], 0
    for module in args.modules:
        meta = module_path(module)
        before = score_of(old_cells.get(module))
        if module not in runs or not meta.exists():
            old = old_cells.get(module)
            if old and old[-1] != "not run" and unchanged_since(old_commit, module):
                # Kept from the previous report: the module's code has not changed since.
                # A row that report kept from an older one keeps that run's date.
                when = m[1] if (m := re.match(r"earlier run \(([^;]+);", old[-1])) else old_when
                run = old[-1] if m else f"earlier run ({old_when}; code unchanged since): {old[-1]}"
                rows.append(f"| `{module}` | {before} | " + " | ".join(old[-8:-1]) + f" | {run} |")
                if old_sections.get(module):
                    details.append(f"### `{module}` (earlier run, {when})\n")
                    details.extend(old_sections[module])
                    details.append("")
                    unexplained += sum("**UNEXPLAINED**" in x for x in old_sections[module])
            else:
                rows.append(f"| `{module}` | {before} | | | | | | | | not run |")
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        survivors = sorted(
            (name for name, code in codes.items() if status(code) in ("survived", "no tests")),
            key=lambda n: int(n.rpartition("_")[2]),
        )
        equivalent = 0
        lines = []
        for name in survivors:
            what = change(name, Path(module.replace(".", "/") + ".py"))
            entry = reasons.get((module, what))
            if entry is None:
                unexplained += 1
                reason = "**UNEXPLAINED**: needs a test or a reason in " + str(REASONS)
            else:
                used.add((module, what))
                equivalent += entry["kind"] == "equivalent"
                reason = f"{entry['kind']}: {entry['reason']}"
            short = name.rpartition(".")[2].replace("\u01c1", ".").strip(".")
            untested = " (no test calls it)" if status(codes[name]) == "no tests" else ""
            lines.append(f"- `{short}`{untested} `{what}`: {reason}")
        checked = sum(counts.values()) - counts["not run"]  # "no tests" count as not killed
        caught = counts["killed"] + counts["timeout"]
        denominator = checked - equivalent
        if not codes:
            shown = "no mutants"
        elif denominator:
            score = 100.0 * caught / denominator
            shown = f"{score:.1f}%{'' if score >= TARGET else ' (below target)'}"
        else:
            shown = "none checked"
        seconds, state = runs[module]
        rows.append(
            f"| `{module}` | {before} | {len(codes)} | {counts['killed']} | {counts['survived']} "
            f"({equivalent} equivalent) | {counts['timeout']} | {counts['no tests']} "
            f"| {counts['not run']} | {shown} | {state}, {seconds} s |"
        )
        if lines or counts["no tests"] or counts["suspicious"]:
            details.append(f"### `{module}`\n")
            if counts["suspicious"]:
                details.append(f"{counts['suspicious']} mutants ended oddly (suspicious).\n")
            details.extend(lines)
            details.append("")
    run = {module for module in args.modules if module in runs and module_path(module).exists()}
    stale = sorted(key for key in set(reasons) - used if key[0] in run)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Mutation testing",
        "",
        f"Generated by `{args.command}` on {now} with mutmut {version('mutmut')}, "
        f"Python {platform.python_version()}, on a machine shared with other jobs (mutants "
        "that hit their CPU-time limit count as timed out). Do not edit: rerun the script. "
        "Reasons for survivors (and for mutants no test calls) live in "
        "`benchmarks/mutation_reasons.toml`.",
        "",
        "Score: killed or timed out, over the mutants checked less the survivors explained "
        f'as equivalent (target: {TARGET:g}% per module). "No test": mutants in code that '
        'none of the selected tests calls; they count as not killed. "Not run": mutants '
        "the module's budget did not reach; they are not counted."
        + (
            f' "Before": the score in the report this one replaced ({old_when}); a module '
            "not run this time keeps that report's row when its code is unchanged since."
            if args.previous
            else ""
        ),
        "",
        "| module | before | mutants | killed | survived | timed out | no test | not run "
        "| score | run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        f"Unexplained survivors: {unexplained}.",
        "",
        "## Survivors",
        "",
        *details,
    ]
    if stale:
        out += ["## Reasons no survivor matched (code changed, or the mutant is killed)", ""]
        out += [f"- `{module}` `{what}`" for module, what in stale]
        out.append("")
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}: {unexplained} unexplained survivors")


if __name__ == "__main__":
    main()
