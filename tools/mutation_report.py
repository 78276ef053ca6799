"""Summarise a mutmut 3 run (docs/mutation.md): counts per file and every survivor with its diff.

    python tools/mutation_report.py [--mutants DIR] [--json FILE] [--summary]
    python tools/mutation_report.py --sample N [--seed S]   # N not-run mutants' names

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
import random
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
    """Each mutmut function's source: its whole lines, cut from the file's lines once
    (ast.get_source_segment splits the whole file again for every function it is asked for)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            found[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return found


MUTANT_SUFFIX = re.compile(r"__mutmut_\d+$")


def function_of(name: str) -> str:
    """The mutated function of a mutant's name (its number dropped)."""
    return MUTANT_SUFFIX.sub("", name)


def _diff(original: str, mutant: str) -> tuple[str, str]:
    a = [line.strip() for line in original.splitlines()[1:]]  # the def lines differ by name
    b = [line.strip() for line in mutant.splitlines()[1:]]
    removed: list[str] = []
    added: list[str] = []
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


# Survivors of functions reviewed by hand (docs/mutation.md): (class, why) by function name.
# "gap": the behaviour is real and no unit test pins it (its value is said); "equivalent": no
# caller can tell; "integration": only the integration tests (real workers) reach what it changes.
REVIEWED: dict[str, tuple[str, str]] = {
    # The redaction pattern is built once per process and cached: mutmut forked each mutant
    # from a process whose clean run had built it, so its building code never ran in a mutant
    # (the third run's first pass). The redaction tests now rebuild it (secrets.recompile) and
    # these functions' survivors were run again with mutmut's coverage collected afresh:
    # what still survives is classed here.
    "config.secrets.x__base64_forms": (
        "gap",
        "a lone surrogate in a secret; a form a character shorter, an extra alignment, the "
        "padding's handling: the secret is still masked",
    ),
    "config.secrets.x__forms": ("gap", "a lone surrogate in a secret"),
    "config.secrets.x__trie_pattern": (
        "equivalent",
        "another regular expression for the same words",
    ),
    "config.secrets.x__unescaped_char": (
        "gap",
        "escapes past U+10FFFF, \\U escapes, decimal escapes",
    ),
    "config.secrets.x__mask_escaped": ("gap", "an empty match"),
    "tasks.providers.green_api.xǁGreenApiListingsǁchats": (
        "integration",
        "getChats' count is passed by the sweep's binary search (tasks/sweep/finders.py), "
        "which the integration tests run; the chats' fields are asserted in a unit test",
    ),
    "tasks.providers.wassenger.xǁWassengerListingsǁchats_page": (
        "message",
        "the method's name as a label in errors, and the verb's case (httpx upper-cases it)",
    ),
    "tasks.providers.wassenger.x__chat_info": ("gap", "a label object without a name"),
    "tasks.providers.base.x_kind_of": ("gap", "a chat id of an unknown kind"),
    "config.urls.x__embedded_ipv4": (
        "gap",
        "the bounds of an IPv4 address embedded in an IPv6 one (::/96 from 1.0.0.0 up)",
    ),
    "config.urls.x__ip_host": ("message", "the text of a bracketed host that is not IPv6"),
    "config.urls.x__ipv4_host": (
        "gap",
        "the wording of an IPv4 host's meaning, and a ValueError from the legacy parse",
    ),
    "config.accounts.x__looks_like_a_token": ("gap", "exactly two digits in a 20-31 char part"),
    "config.accounts.x__token_problem": ("gap", "a token ending in '~', the last printable"),
    "config.accounts.x__plain": ("gap", "an empty text"),
    "config.errors.x_show": ("gap", "a value exactly as long as the limit"),
    "config.settings.x_cross_variable_problems": (
        "gap",
        "a worst case exactly at 0.9 of the time limit",
    ),
    "config.urls.x__host": (
        "gap",
        "a host whose labels' scripts equal an allowed set exactly; the split into labels",
    ),
    "config.urls.x__scripts": (
        "equivalent",
        "the placeholder name of an unnamed character, and a name's first word either way",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁiter": (
        "equivalent",
        "the inner check stops at the limit as well",
    ),
    "worker.stores.jobs.xǁJobStoreǁpublish_accounts": (
        "equivalent",
        "every node builds the same dict in the same order: sorting its keys changes nothing",
    ),
    "config.files.x_read_bounded": (
        "gap",
        "a file read in more than one chunk, one byte past the limit, and the open flags",
    ),
    "config.per_process.xǁPerProcessǁget": (
        "gap",
        "a value rebuilt on every call in one process: a cache miss, not a wrong value",
    ),
    "config.providers.x_provider_spec": ("message", "the list of known providers in an error"),
    "config.settings.x_redis_url_problem": ("gap", "a unix:// URL with no socket path"),
    "tasks.archive.runner.xǁArchiveRunnerǁrun": (
        "equivalent",
        "a refused permit is always further than the max wait: 'or' and 'and' agree",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_account": (
        "integration",
        "the reload of the accounts file for an unknown account: "
        "tests/integration/test_accounts_reload.py",
    ),
    "worker.stores.circuit.xǁAccountCircuitǁstates": (
        "gap",
        "the detail and opening time a circuit's state shows (status)",
    ),
    "worker.stores.client.x_connect": (
        "gap",
        "redis-py's retry count and timeouts: only a Redis outage shows them",
    ),
    "worker.stores.deadletters.x__bounded": (
        "gap",
        "an integer past 64 bits, and the depth bound of nested values",
    ),
    "worker.stores.deadletters.xǁDeadLetterǁsanitized": (
        "gap",
        "the creation time of an entry read without one, the excerpt's one-line rule",
    ),
    "worker.stores.deadletters.xǁDeadLetterǁfrom_json": ("message", "what a refusal says"),
    "worker.stores.deadletters.x__dump": ("gap", "a NaN in an entry (allow_nan)"),
    "worker.stores.jobs.xǁJobStoreǁdispatch": ("gap", "next_in when nothing is due"),
    "worker.stores.scripts.xǁLuaScriptǁrun": (
        "equivalent",
        "client=None runs on the script's own client: the same one",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_dead_letter": (
        "gap",
        "the default 'given' text, the reason passed on beside the entry, and the last "
        "attempt's time when the delivery has none; outcome count and latency are asserted",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_finish": (
        "gap",
        "what the archived run's count and latency do not pin",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_wait_turn": (
        "gap",
        "the latencies of a run sent back to wait its turn",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_describe": (
        "new test",
        "a transient ending's text names the HTTP status, or 'no answer' (after the run)",
    ),
    "tasks.providers.http.x_transient_backoff": (
        "new test",
        "tenacity's waits at each attempt, jitter at both ends (after the run)",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_conclude": (
        "gap",
        "releasing the probe claim on a transient ending of a run that was not probing, "
        "and the soft-time-limit wording; its latencies now asserted (new test)",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_malformed": (
        "gap",
        "the account a malformed message's dead letter takes from its stored record; the "
        "lease length (86400 vs 86401 s) is equivalent",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_unknown_account": (
        "equivalent",
        "the lease length taken while the job is put back (86400 vs 86401 s)",
    ),
    "tasks.archive.runner.xǁ_RateLimitedǁ__init__": (
        "equivalent",
        "the exception's own message: the runner reads its .why",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_jittered": (
        "gap",
        "the floor of a retry countdown under a second (settings allow 0; default 30 s)",
    ),
    "tasks.archive.pauses.xǁAccountPausesǁrelease_probe": (
        "gap",
        "afresh=False is release_parked's default (equivalent); a probe finding no parked job "
        "(an empty release) is not tested",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁ_counts_field_of": (
        "gap",
        "a salvaged counts field that is missing, and the arguments of its log line",
    ),
    "tasks.archive.runner.xǁArchiveRunnerǁ_park": (
        "log",
        "mostly the arguments of its log line; the parked job is asserted",
    ),
    "config.errors.x_first_pydantic_error": (
        "gap",
        "the wording of a pydantic error around the asserted field and problem: the "
        "'(and N more)' count, the defaults for a missing msg/loc",
    ),
    "config.errors.x_location": (
        "gap",
        "how an unusual key of a field path is quoted; plain keys are asserted",
    ),
    "config.errors.x_one_line": ("gap", "escaping of unprintable characters in a message"),
    "config.errors.xǁConfigErrorǁ__init__": ("message", "the fallback text of an empty error"),
    "config.settings.x__describe": (
        "gap",
        "an ARCHIVER_* error's wording when pydantic gives no msg or a __root__ location",
    ),
    "config.settings.xǁSettingsProblemsǁ__init__": (
        "message",
        "the joined text of several problems; each is asserted on its own line",
    ),
    "config.sweep.x_parse_crontab": (
        "gap",
        "the crontab fields handed to Celery beyond minute (hour, day, month, weekday) and "
        "the error text's length: beat's schedule runs in the integration tests",
    ),
    "config.sweep.xǁSweepEntryǁpolicy": (
        "gap",
        "a policy with 'every' instead of 'schedule' is not built in a unit test",
    ),
    "config.sweep.x__bounded": ("gap", "a duration exactly at a bound is not tested"),
    "config.units.xǁRateǁ__str__": ("gap", "how a rate per hour or minute is printed"),
    "config.units.x_format_duration": ("gap", "how a duration in minutes is printed"),
    "config.units.x_parse_duration": ("message", "what an error quotes of a bad duration"),
    "config.files.x__kind": ("message", "the default wording for an unusual file kind"),
    "config.providers.x__whole": (
        "equivalent",
        "re.ASCII on patterns whose classes are explicit ASCII ranges",
    ),
    "config.accounts.x__token_from_file": (
        "gap",
        "a token file ending in a lone CR: a CRLF file is refused by its LF",
    ),
    "tasks.archive.pauses.xǁAccountPausesǁdead_letter_expired": (
        "gap",
        "edges of the maximum pause (exactly at it, more than 100 parked, a leftover id "
        "removed twice); the common path is asserted",
    ),
    "tasks.archive.pauses.xǁAccountPausesǁresume": (
        "log",
        "the arguments of its log line; the released jobs are asserted",
    ),
    "tasks.archive.pauses.xǁAccountPausesǁdescribe": ("gap", "the reason shown when none is set"),
    "tasks.archive.task.xǁArchiveTaskǁon_failure": (
        "integration",
        "Celery calls it when an exception escapes a task in a real worker "
        "(tests/integration); the unit test drives the runner's own internal_error path",
    ),
    "tasks.probe.x_look_after": (
        "gap",
        "the probe task's return value (what Flower shows), not its effects",
    ),
    "tasks.providers.base.x_failed_request": (
        "gap",
        "an HTTP failure's excerpt and elapsed time; its verdict is asserted",
    ),
    "tasks.providers.base.x_unreadable_answer": (
        "gap",
        "an unreadable listing's status, excerpt and elapsed time; its verdict is asserted",
    ),
    "tasks.providers.base.xǁListingErrorǁ__init__": ("message", "a listing error's text"),
    "tasks.providers.base.xǁResponseReaderǁread": (
        "equivalent",
        "ijson reads fixed-size blocks: a read of all (size < 0) or of 0 never "
        "happens, and a short read only means another call",
    ),
    "tasks.providers.base.xǁResponseReaderǁ__init__": ("gap", "the initial buffer"),
    "tasks.providers.base.xǁRuleǁ__post_init__": (
        "artefact",
        "the provider tables are module constants, built at import before mutmut forks "
        "each mutant: a mutated __post_init__ never runs for them",
    ),
    "tasks.providers.base.x__os_reason": (
        "equivalent",
        "cycle detection in an exception chain: ids of live objects differ",
    ),
    "tasks.providers.wassenger.x_auth_headers": (
        "equivalent",
        "HTTP header names are case-insensitive",
    ),
    "tasks.providers.wassenger.xǁWassengerAdapterǁarchive_request": (
        "equivalent",
        "httpx upper-cases the method",
    ),
    "tasks.providers.wassenger.xǁWassengerAdapterǁanswer_text": (
        "gap",
        "Wassenger's errorCode appended to its message: no rule reads it today",
    ),
    "tasks.sweep.policy.x_skip_reason": (
        "gap",
        "a chat active exactly at the cutoff, or with exactly one unread message",
    ),
    "worker.stores.circuit.xǁAccountCircuitǁchain_turn": (
        "gap",
        "the chain key's TTL margin: only visible as a TTL",
    ),
    "worker.stores.clock.xǁPinnedClockǁ__init__": (
        "equivalent",
        "the pinned start: every test moves relative to it",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁcounts": (
        "equivalent",
        "a counts field holds one '|': partition and rpartition agree",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁfind": (
        "equivalent",
        "one rebuild makes the id set agree; a third pass never runs",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁunique_prefix_length": (
        "equivalent",
        "sorted neighbours share the longest prefix; pages of ids past 1,000 are a "
        "gap (no test holds 1,000 entries)",
    ),
    "worker.stores.deadletters.xǁDeadLetterStoreǁremove": (
        "atomicity",
        "WATCH keys and the retry loop: only a concurrent writer can tell",
    ),
    "worker.stores.endings.xǁEndingsǁwait": ("equivalent", "every caller passes front= explicitly"),
    "worker.stores.endings.xǁEndingsǁpark": ("equivalent", "every caller passes again= explicitly"),
    "worker.stores.endings.xǁEndingsǁdead_letter_stored": (
        "equivalent",
        "call_errbacks: no archive job carries errbacks",
    ),
    "worker.stores.jobs.xǁJobStoreǁrecord": (
        "equivalent",
        "a stored message is JSON on one line: partition and rpartition agree",
    ),
    "worker.stores.jobs.xǁJobStoreǁdead_nodes": (
        "gap",
        "the janitor's list of dead nodes is read by the integration tests only",
    ),
    "worker.stores.metrics.xǁMetricsRecorderǁoutcomes": (
        "equivalent",
        "a field has exactly four parts: split limits and rsplit agree",
    ),
    "worker.stores.metrics.xǁMetricsRecorderǁlatency": (
        "equivalent",
        "a field has exactly three parts: split limits and rsplit agree",
    ),
    "worker.stores.metrics.xǁMetricsRecorderǁrecent": (
        "gap",
        "the list is trimmed to 20; reading 19 is not caught (no test writes 20)",
    ),
    "worker.stores.scripts.x__parse": ("equivalent", "the default encoding is UTF-8 here"),
    "worker.stores.unarchivable.xǁUnarchivableChatsǁsince": (
        "gap",
        "a sweep's list of more than two unarchivable chats",
    ),
}


def reviewed(name: str) -> tuple[str, str] | None:
    return REVIEWED.get(function_of(name))


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
            original = functions.get(f"{function_of(function)}__mutmut_orig", "")
            removed, added = _diff(original, functions.get(function, ""))
            kind, why = classify(removed, added, function)
            if kind == "review" and (known := reviewed(name)) is not None:
                kind, why = known
            survivors.append(Survivor(name, relative, removed, added, kind, why))
        per_file[relative] = counts
    return per_file, survivors


def not_run(mutants: Path) -> list[str]:
    """The names of the mutants mutmut has no result for, sorted."""
    names: list[str] = []
    for meta in mutants.rglob("*.py.meta"):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        names += [name for name, code in codes.items() if code is None]
    return sorted(names)


def markdown(
    per_file: dict[str, Counter[str]], survivors: list[Survivor], summary: bool = False
) -> str:
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
    groups: Counter[tuple[str, str, str]] = Counter(
        (function_of(s.name), s.kind, s.why) for s in survivors
    )
    lines += ["| function | survivors | class | why |", "|---|---|---|---|"]
    for (function, kind, why), n in sorted(groups.items()):
        lines.append(f"| `{function}` | {n} | {kind} | {why or 'not reviewed yet'} |")
    if summary:
        return "\n".join(lines)
    lines += ["", "| mutant | class | removed | added |", "|---|---|---|---|"]
    for s in survivors:
        cut = [text.replace("|", "\\|")[:110] for text in (s.removed, s.added)]
        lines.append(f"| `{s.name}` | {s.kind} | `{cut[0]}` | `{cut[1]}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--json", type=Path, help="also write every survivor here")
    parser.add_argument(
        "--summary", action="store_true", help="counts and survivors by function only"
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="print the names of N mutants not run yet, drawn at random (for `mutmut run`)",
    )
    parser.add_argument("--seed", type=int, default=20261201, help="the sample's seed")
    args = parser.parse_args()
    if not args.mutants.is_dir():
        print(f"no {args.mutants}/ here: run mutmut first (docs/mutation.md)", file=sys.stderr)
        return 2
    if args.sample is not None:
        names = not_run(args.mutants)
        print("\n".join(random.Random(args.seed).sample(names, min(args.sample, len(names)))))
        return 0
    per_file, survivors = collect(args.mutants)
    print(markdown(per_file, survivors, args.summary))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in survivors], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
