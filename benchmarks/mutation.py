#!/usr/bin/env python
"""Mutation testing of the modules whose mistakes corrupt a user's data (issue 16).

    python benchmarks/mutation.py                      # every module below, one after another
    python benchmarks/mutation.py cogeneration export  # some of them
    python benchmarks/mutation.py --list               # the module -> tests map
    make mutation                                      # the same as the first line

The tool is mutmut 3 (requirements-dev.txt). It fits a per-module map of tests: each module
is mutated in its own scratch copy of the project (`.mutation/NAME/`, git-ignored; mutmut
works in `mutants/` under its current directory and reads `[tool.mutmut]` from the
pyproject.toml there), with `only_mutate` naming the module's file(s) and
`pytest_add_cli_args_test_selection` naming its test files. mutmut then runs, for each
mutant, only the tests of that selection that call the mutated function (it records which
test reaches which function once, before mutating), in a forked worker: a mutant costs a
fraction of a second, not a pytest start. A MODULE may restrict mutation to some functions
(data.py: only the geometry round trip).

A mutant is killed when a test fails (or times out) with it; it survives when every test
passes. Each survivor is either killed by a new test or explained as equivalent (it cannot
change what a user gets): explanations live in benchmarks/results/mutation_explanations.json,
keyed by module, function and the mutated line (old -> new), so a re-run keeps them while
the code keeps them meaningful; a survivor whose key is not there is reported UNEXPLAINED.

Writes benchmarks/results/mutation.md and mutation.json (per module: mutants made, killed,
survived, timeouts, survivors with file:line, the mutation and the explanation; the command,
CPU, date, commit, duration). A run with some modules keeps the other modules' last results.
Not part of CI (it takes tens of minutes on 2 cores); re-run when a module below changes.
Run it niced on a shared machine: `nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/mutation.py`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name, git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
EXPLANATIONS = RESULTS / "mutation_explanations.json"
SCRATCH = REPO / ".mutation"

# Tests that fail at the commit this map was written on (not mutation's business; they
# would stop mutmut's clean run). Remove an entry once the test passes again.
KNOWN_FAILING: list[str] = []   # they pass on main since the merge

# module -> the file(s) it mutates, the functions kept (None: all), the tests that cover it.
MODULES: dict[str, dict] = {
    "cogeneration": dict(files=["comining/cogeneration.py"], functions=None,
                         tests=["tests/test_cogeneration.py"]),
    "objects": dict(files=["comining/objects.py"], functions=None,
                    tests=["tests/test_objects.py"]),
    "sparsify": dict(files=["comining/sparsify.py"], functions=None,
                     tests=["tests/test_sparsify.py"]),
    "geometry": dict(files=["comining/data.py"], functions=["apply_geometry", "boxes_to_original"],
                     tests=["tests/test_data.py", "tests/test_original_pixels.py"]),
    "export": dict(files=["comining/export.py"], functions=None,
                   tests=["tests/test_export.py", "tests/test_objects.py"]),
    "review": dict(files=["comining/review/writing.py", "comining/review/items.py"], functions=None,
                   tests=["tests/test_review_logic.py", "tests/test_review_decisions.py",
                          "tests/test_objects.py"]),
    "store": dict(files=["comining/store.py"], functions=None,
                  tests=["tests/test_store.py", "tests/test_objects.py", "tests/test_review_logic.py",
                         "tests/test_review_decisions.py", "tests/test_export.py"]),
    "mining": dict(files=["comining/mining.py"], functions=None,
                   tests=["tests/test_mining_candidates.py", "tests/test_original_pixels.py",
                          "tests/test_objects.py"]),
}

# What a scratch copy needs: the package, the tests and what they import, the pytest config.
COPY = ["comining", "app", "tests", "benchmarks/common.py", "benchmarks/__init__.py"]
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not browser and not slow and not gpu", "-q"]

STATUS_KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str, spec: dict) -> Path:
    work = SCRATCH / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "artifacts")
    for rel in COPY:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, work / rel, ignore=ignore)
        elif src.exists():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    deselect = [a for t in KNOWN_FAILING if t.split("::")[0] in spec["tests"] for a in ("--deselect", t)]
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject += (
        "\n[tool.mutmut]\n"
        'source_paths = ["comining"]\n'
        f"only_mutate = {_toml_list(spec['files'])}\n"
        f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS + deselect)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(spec['tests'])}\n"
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(pyproject)
    return work


def function_key(mutant: str) -> tuple[str, str]:
    """'comining.data.x_apply_geometry__mutmut_3' -> ('apply_geometry', ''),
    'comining.store.xǁStoreǁadd__mutmut_1' -> ('add', 'Store')."""
    base = mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    if base.startswith("xǁ"):
        _, cls, fn = base.split("ǁ")
        return fn, cls
    return base[2:] if base.startswith("x_") else base, ""


def function_lines(source: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(function, class) -> (first line, last line) in the original file."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[(node.name, "")] = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[(sub.name, node.name)] = (sub.lineno, sub.end_lineno)
    return out


def describe(work: Path, mutant: str, file: str) -> dict:
    """The mutation as file:line, old -> new (from `mutmut show`)."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work,
                          capture_output=True, text=True, timeout=300).stdout
    body = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@", "#"))]
    old = [ln[1:] for ln in body if ln.startswith("-")]
    new = [ln[1:] for ln in body if ln.startswith("+")]
    fn, cls = function_key(mutant)
    source = (REPO / file).read_text()
    lines = source.splitlines()
    first, last = function_lines(source).get((fn, cls), (1, len(lines)))
    line = None
    if old:
        for i in range(first - 1, last):
            if lines[i].strip() == old[0].strip():
                line = i + 1
                break
    where = f"{file}:{line}" if line else f"{file}:{first}"
    qual = f"{cls}.{fn}" if cls else fn
    return dict(mutant=mutant, where=where, function=qual,
                old=" / ".join(s.strip() for s in old), new=" / ".join(s.strip() for s in new))


def explanation_key(s: dict) -> str:
    return f"{s['function']}: {s['old']} -> {s['new']}"


def run_module(name: str, spec: dict, jobs: int, explanations: dict) -> dict:
    work = prepare(name, spec)
    args = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)]
    if spec["functions"]:
        stem = spec["files"][0][:-3].replace("/", ".")
        args += [f"{stem}.x_{f}__mutmut_*" for f in spec["functions"]]
    t0 = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONPATH", None)  # the scratch copy's comining, never the repo's
    proc = subprocess.run(args, cwd=work, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - t0
    (work / "mutmut-run.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)

    from mutmut.stats import status_by_exit_code

    counts = dict(mutants=0, killed=0, survived=0, timeout=0, no_tests=0, other=0)
    survivors, untested = [], []
    for file in spec["files"]:
        meta = work / "mutants" / (file + ".meta")
        if not meta.exists():
            raise SystemExit(f"{name}: mutmut made no results (see {work / 'mutmut-run.log'})\n"
                             + proc.stdout[-3000:] + proc.stderr[-3000:])
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for mutant, code in sorted(codes.items(), key=lambda kv: (kv[0].rsplit("__mutmut_", 1)[0],
                                                                  int(kv[0].rsplit("_", 1)[1]))):
            if spec["functions"] and function_key(mutant)[0] not in spec["functions"]:
                continue
            status = status_by_exit_code[code]
            counts["mutants"] += 1
            if status == "timeout":
                counts["timeout"] += 1
                counts["killed"] += 1
            elif status in STATUS_KILLED:
                counts["killed"] += 1
            elif status == "survived":
                counts["survived"] += 1
                survivors.append(describe(work, mutant, file))
            elif status == "no tests":
                counts["no_tests"] += 1
                untested.append(describe(work, mutant, file))
            else:
                counts["other"] += 1
                untested.append(dict(describe(work, mutant, file), status=status))
    if counts["mutants"] == 0:
        raise SystemExit(f"{name}: no mutants (see {work / 'mutmut-run.log'})\n" + proc.stdout[-3000:])
    tested = counts["mutants"]
    r = dict(module=name, files=spec["files"], functions=spec["functions"], tests=spec["tests"],
             **counts, killed_pct=round(100.0 * counts["killed"] / tested, 1),
             survivors=survivors, not_run=untested, seconds=round(seconds, 1),
             mutmut_rc=proc.returncode)
    return explain(r, explanations)


def explain(r: dict, explanations: dict) -> dict:
    """Attach each survivor's explanation (None: unexplained) and count them."""
    mine = explanations.get(r["module"], {})
    rows = r["survivors"] + r["not_run"]
    for s in rows:
        s["explanation"] = mine.get(explanation_key(s))
    r["explained"] = sum(s["explanation"] is not None for s in rows)
    r["unexplained"] = len(rows) - r["explained"]
    # an equivalent (or unreachable) mutant cannot be killed: the score leaves it out
    r["equivalent"] = sum((s["explanation"] or "").startswith(("equivalent", "unreachable"))
                          for s in rows)
    real = r["mutants"] - r["equivalent"]
    r["killed_pct_of_killable"] = round(100.0 * r["killed"] / real, 1) if real else 100.0
    return r


def write(results: dict, meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(dict(meta, modules=results), indent=2) + "\n")
    out = ["# Mutation testing", "",
           "`benchmarks/mutation.py` (mutmut 3, one scratch copy per module, each module's mutants run "
           "against its own test files only). A mutant is killed when a test fails or times out with "
           "it. Every survivor is listed with why it cannot be killed (an equivalent mutant), or "
           "**UNEXPLAINED**. Not part of CI; re-run when a module changes.", "",
           f"- command: `{meta['command']}`",
           f"- CPU: {meta['cpu']} ({meta['cores']} cores, {meta['jobs']} mutmut worker(s))",
           f"- date: {meta['date']}",
           f"- commit: {meta['commit']}",
           f"- mutmut: {meta['mutmut']}",
           f"- duration of this invocation: {meta['seconds'] / 60:.1f} min; of all the modules' "
           f"last runs below: {sum(r['seconds'] for r in results.values()) / 60:.1f} min",
           "- each module's row names the commit and date its run measured (a run with some "
           "modules keeps the others' last results)", "",
           "- killed % of killable: killed / (mutants - equivalent or unreachable ones); the "
           "target is >= 90 % per module and every survivor explained", "",
           "| module | files | tests | mutants | killed | survived | timeouts | no tests | killed % "
           "| equivalent | killed % of killable | explained | run (s) | commit, date |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        files = ", ".join(f.removeprefix("comining/") for f in r["files"])
        if r["functions"]:
            files += " (" + ", ".join(r["functions"]) + ")"
        tests = ", ".join(t.removeprefix("tests/") for t in r["tests"])
        out.append(f"| {name} | {files} | {tests} | {r['mutants']} | {r['killed']} | {r['survived']} "
                   f"| {r['timeout']} | {r['no_tests']} | {r['killed_pct']} | {r['equivalent']} | "
                   f"{r['killed_pct_of_killable']} | "
                   f"{r['explained']}/{r['explained'] + r['unexplained']} | {r['seconds']} "
                   f"| {r.get('commit', '?')}, {r.get('date', '?')} |")
    for name, r in results.items():
        rows = r["survivors"] + r["not_run"]
        if not rows:
            continue
        out += ["", f"## {name}: survivors", "",
                "| where | function | mutation | why it survives |", "|---|---|---|---|"]
        for s in rows:
            why = s["explanation"] or "**UNEXPLAINED**"
            if s in r["not_run"]:
                why = f"(not run: {s.get('status', 'no test reaches it')}) " + why
            mutation = f"`{s['old']}` -> `{s['new']}`".replace("|", "\\|")
            out.append(f"| {s['where']} | {s['function']} | {mutation} | {why.replace('|', '/')} |")
    (RESULTS / "mutation.md").write_text("\n".join(out) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="mutmut workers (default 1: a shared machine)")
    p.add_argument("--list", action="store_true", help="print the module -> tests map and stop")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite mutation.md/.json from the last results and the "
                        "current explanations (after editing mutation_explanations.json)")
    a = p.parse_args(argv)
    if a.list:
        for name, spec in MODULES.items():
            print(f"{name}: {' '.join(spec['files'])} {spec['functions'] or ''} <- {' '.join(spec['tests'])}")
        return 0
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    explanations = json.loads(EXPLANATIONS.read_text()) if EXPLANATIONS.exists() else {}
    if a.report_only:
        saved = json.loads((RESULTS / "mutation.json").read_text())
        meta = {k: v for k, v in saved.items() if k != "modules"}
        results = {k: explain(v, explanations) for k, v in saved["modules"].items()}
        write(results, meta)
        for r in results.values():
            print(f"{r['module']}: {r['killed_pct']} % killed, {r['killed_pct_of_killable']} % of "
                  f"killable, {r['unexplained']} unexplained")
        return 0
    import mutmut

    t0 = time.monotonic()
    for name in a.modules or list(MODULES):
        print(f"{name}: mutating {' '.join(MODULES[name]['files'])} against "
              f"{' '.join(MODULES[name]['tests'])}", flush=True)
        commit = git_commit()   # of the code the scratch copy is taken from
        r = run_module(name, MODULES[name], a.jobs, explanations)
        r["commit"] = commit
        r["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        # the other modules' last results, read now (another invocation may have written)
        results = {}
        if (RESULTS / "mutation.json").exists():
            results = json.loads((RESULTS / "mutation.json").read_text()).get("modules", {})
        results[name] = r
        print(f"  {r['mutants']} mutants, {r['killed']} killed ({r['killed_pct']} %; "
              f"{r['killed_pct_of_killable']} % of killable), {r['survived']} "
              f"survived, {r['no_tests']} without a test, {r['unexplained']} unexplained, "
              f"{r['seconds']:.0f} s", flush=True)
        for s in r["survivors"] + r["not_run"]:
            if not s["explanation"]:
                print(f"    UNEXPLAINED {s['where']} {s['function']}: {s['old']} -> {s['new']}  [{s['mutant']}]")
        ordered = {k: results[k] for k in MODULES if k in results}
        write(ordered, dict(command="python benchmarks/mutation.py " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:]),
                            cpu=cpu_name(), cores=os.cpu_count(), jobs=a.jobs,
                            date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            commit=commit, mutmut=getattr(mutmut, "__version__", "3"),
                            seconds=time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
