"""Which of kdist validate's broken Kubernetes cases (tests/validate_corpus) the validators CI
pipelines use catch (`make validators` first; not a test).

    python benchmarks/validators_corpus.py     # table on stdout, benchmarks/results/validators-corpus.json

Every case is one broken input that exactly one kdist rule names (tests/test_validate.py checks
that). kubeconform catches a case when it finds the file invalid or unreadable. For kube-score
(grades CRITICAL and WARNING) and checkov (failed checks) a case counts as caught when the tool
reports a check on it that it does not report on kdist's own renderings (manifests/*/k8s.yaml),
which have none of the breaks: their background (probes, pull policy, uid, ...) would otherwise
mark every case. The check ids are listed, so each "caught" can be read for what it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "validate_corpus"
RESULTS = ROOT / "benchmarks" / "results" / "validators-corpus.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_validate import tool  # noqa: E402
from standalone_schemas import write  # noqa: E402


def cases() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*.yaml") if not p.name.startswith(("compose-", "spec-")))


def kube_score(binary: str, files: list[Path]) -> dict[str, set[str]]:
    """file -> check ids graded CRITICAL or WARNING (one run a file: a file it cannot parse
    ends the run with no output)."""
    found: dict[str, set[str]] = {}
    for f in files:
        out = subprocess.run([binary, "score", "-o", "json", str(f)], capture_output=True,
                             text=True, check=False)
        objects = json.loads(out.stdout) if out.stdout.strip().startswith("[") else []
        found[f.name] = {c["check"]["id"] for obj in objects for c in obj["checks"]
                         if not c["skipped"] and c["grade"] < 10}
    return found


def checkov(binary: str, folder: Path) -> dict[str, set[str]]:
    """file -> failed check ids (one checkov run over the folder)."""
    out = subprocess.run([binary, "-d", str(folder), "--framework", "kubernetes", "-o", "json",
                          "--quiet", "--skip-download"], capture_output=True, text=True, check=False)
    data = json.loads(out.stdout or "{}")
    reports = data if isinstance(data, list) else [data]
    found: dict[str, set[str]] = {}
    for report in reports:
        for check in (report.get("results") or {}).get("failed_checks", []):
            found.setdefault(Path(check["file_path"]).name, set()).add(check["check_id"])
    return found


def kubeconform(binary: str, files: list[Path], schemas: Path) -> dict[str, bool]:
    """file -> found invalid or unreadable."""
    location = f"{schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"
    caught = {}
    for f in files:  # one run a file: a file it cannot parse must not hide the others
        run = subprocess.run([binary, "-strict", "-schema-location", location, str(f)],
                             capture_output=True, text=True, check=False)
        caught[f.name] = run.returncode != 0
    return caught


def copies(files: list[Path], folder: Path) -> list[Path]:
    """The files in a folder of their own (checkov reads a folder), named by case or example."""
    folder.mkdir()
    out = []
    for f in files:
        name = f"{f.parent.name}.yaml" if f.name == "k8s.yaml" else f.name
        (folder / name).write_bytes(f.read_bytes())
        out.append(folder / name)
    return out


def expected_rule(case: Path) -> str:
    first = case.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    return first.removeprefix("# expect:").strip()


def main() -> None:
    files = cases()
    binaries = {name: tool(name, ".venv-checkov") for name in ("kubeconform", "kube-score", "checkov")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (make validators)")
    ks_bin, cv_bin = str(binaries["kube-score"]), str(binaries["checkov"])
    with tempfile.TemporaryDirectory() as tmp:
        write("1.31", Path(tmp) / "schemas")
        conform = kubeconform(str(binaries["kubeconform"]), files, Path(tmp) / "schemas")
        corpus = copies(files, Path(tmp) / "corpus")
        renderings = copies(sorted(ROOT.glob("manifests/*/k8s.yaml")), Path(tmp) / "renderings")
        ks = kube_score(ks_bin, corpus)
        cv = checkov(cv_bin, Path(tmp) / "corpus")
        ks_bg = set().union(*kube_score(ks_bin, renderings).values())
        cv_bg = set().union(*checkov(cv_bin, Path(tmp) / "renderings").values())
    rows = [{"case": f.stem, "kdist": expected_rule(f), "kubeconform": conform[f.name],
             "kube_score": sorted(ks.get(f.name, set()) - ks_bg),
             "checkov": sorted(cv.get(f.name, set()) - cv_bg)} for f in files]
    background = {"kube_score": sorted(ks_bg), "checkov": sorted(cv_bg)}
    RESULTS.write_text(json.dumps({"cases": len(rows), "rows": rows, "background": background},
                                  indent=2) + "\n", encoding="utf-8")
    print(f"{'case':<36}{'kubeconform':<13}{'kube-score':<40}checkov")
    for r in rows:
        print(f"{r['case']:<36}{'yes' if r['kubeconform'] else '-':<13}"
              f"{','.join(r['kube_score']) or '-':<40}{','.join(r['checkov']) or '-'}")
    counts = {key: sum(1 for r in rows if r[key]) for key in ("kubeconform", "kube_score", "checkov")}
    anyone = sum(1 for r in rows if r["kubeconform"] or r["kube_score"] or r["checkov"])
    print(f"{len(rows)} cases, each named by kdist validate; caught by kubeconform "
          f"{counts['kubeconform']}, kube-score {counts['kube_score']}, checkov {counts['checkov']}, "
          f"any of them {anyone}; background: {background}; wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
