"""Summarise a mutmut 3 run (tests/MUTATION.md): counts per file and every survivor with its diff.

    python tests/mutation_report.py [--mutants DIR] [--json FILE]

Reads mutmut's own records (``mutants/**/*.py.meta``: an exit code per mutant) and, for each
survivor, the original and the mutated function from the mutated copy, so no ``mutmut show``
process is started per mutant. Survivors of a few mechanical kinds are classed automatically
(``--json`` keeps the class and the reason); everything else is "review".
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

# mutmut 3.8's exit codes (mutmut/stats.py).
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "type check",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    None: "not run",
}
COLUMNS = ("killed", "type check", "survived", "timeout", "no tests", "not run", "other")


@dataclass
class Survivor:
    name: str
    file: str
    removed: str
    added: str
    kind: str
    why: str


def _functions(path: Path) -> dict[str, str]:
    source = path.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            found[node.name] = ast.get_source_segment(source, node) or ""
    return found


def _diff(original: str, mutant: str) -> tuple[str, str]:
    a = [line.strip() for line in original.splitlines()[1:]]  # the def lines differ by name
    b = [line.strip() for line in mutant.splitlines()[1:]]
    removed, added = [], []
    for line in difflib.unified_diff(a, b, lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return " / ".join(removed), " / ".join(added)


LOG_CALL = re.compile(r"\blogger\.(debug|info|warning|error|exception)\(|\blogging\.")
PIPELINE_FLAG = re.compile(r"pipeline\(transaction=")
STRICT_ZIP = re.compile(r"zip\(.*strict=")
CODEC = re.compile(r"""\.(en|de)code\(|encoding=""")
MESSAGE = re.compile(r"""raise |Error\(|^f?["']""")


def _only_strings_differ(removed: str, added: str) -> bool:
    """The mutation changed the inside of a string literal: XX added, or its case."""
    return added.replace("XX", "") == removed or (added.lower() == removed.lower() != added)


def classify(removed: str, added: str, function: str = "") -> tuple[str, str]:
    """A class and a reason for the mechanical kinds; ("review", "") for the rest."""
    if "ǁ_log_" in function or function.startswith("x__log_"):
        return "log", "a function that only writes a log line: its wording is not asserted"
    if LOG_CALL.search(removed) and (LOG_CALL.search(added) or not added):
        return "log", "a log line's wording or arguments: not asserted"
    if PIPELINE_FLAG.search(removed) and PIPELINE_FLAG.search(added):
        return (
            "atomicity",
            "MULTI/EXEC on or off: only a concurrent writer can tell (not unit-testable)",
        )
    if STRICT_ZIP.search(removed) and "zip(" in added:
        return "equivalent", "the zipped sequences have one reply per request: strict never fires"
    if CODEC.search(removed) and added.lower() == removed.lower():
        return "equivalent", "a codec name's case: Python's codec names are case-blind"
    if MESSAGE.search(removed) and _only_strings_differ(removed, added):
        return "message", "an error message's wording beyond the part its tests assert"
    if MESSAGE.search(removed) and ("show(None" in added or "show(" in removed):
        return "message", "what an error message quotes: its tests assert the field, not this"
    if _only_strings_differ(removed, added) and added.lower() == removed.lower():
        return "case", "a string's case only: check whether the reader is case-blind"
    return "review", ""


def collect(mutants: Path) -> tuple[dict[str, Counter[str]], list[Survivor]]:
    per_file: dict[str, Counter[str]] = {}
    survivors: list[Survivor] = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        source = meta.with_suffix("")
        relative = str(source.relative_to(mutants))
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        counts: Counter[str] = Counter()
        functions = _functions(source) if 0 in codes.values() else {}
        for name, code in codes.items():
            status = STATUS.get(code, "other")
            counts[status] += 1
            if status != "survived":
                continue
            function = name.rsplit(".", 1)[-1]
            original = functions.get(re.sub(r"__mutmut_\d+$", "__mutmut_orig", function), "")
            removed, added = _diff(original, functions.get(function, ""))
            kind, why = classify(removed, added, function)
            survivors.append(Survivor(name, relative, removed, added, kind, why))
        per_file[relative] = counts
    return per_file, survivors


def markdown(per_file: dict[str, Counter[str]], survivors: list[Survivor]) -> str:
    lines = ["| file | mutants | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    total: Counter[str] = Counter()
    for file, counts in per_file.items():
        total.update(counts)
        cells = " | ".join(str(counts.get(c, 0)) for c in COLUMNS)
        lines.append(f"| {file} | {sum(counts.values())} | {cells} |")
    cells = " | ".join(f"**{total.get(c, 0)}**" for c in COLUMNS)
    lines.append(f"| **all** | **{sum(total.values())}** | {cells} |")
    lines += [
        "",
        "Survivors by class: "
        + ", ".join(f"{kind} {n}" for kind, n in Counter(s.kind for s in survivors).most_common()),
        "",
    ]
    lines += ["| mutant | class | removed | added |", "|---|---|---|---|"]
    for s in survivors:
        cut = [text.replace("|", "\\|")[:110] for text in (s.removed, s.added)]
        lines.append(f"| `{s.name}` | {s.kind} | `{cut[0]}` | `{cut[1]}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--json", type=Path, help="also write every survivor here")
    args = parser.parse_args()
    if not args.mutants.is_dir():
        print(f"no {args.mutants}/ here: run mutmut first (tests/MUTATION.md)", file=sys.stderr)
        return 2
    per_file, survivors = collect(args.mutants)
    print(markdown(per_file, survivors))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in survivors], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
