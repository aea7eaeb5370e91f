"""`kdist validate` on hostile inputs: it stays inside the given paths, never hangs, never blows
its memory, never echoes a secret, and hostile Compose/RBAC settings are findings.

Inputs that could hang or exhaust memory run the real CLI in a subprocess with a wall-clock
timeout and an address-space limit (MEMORY), so a regression fails the test instead of the host.
"""

from __future__ import annotations

import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from kdist.validate import Options, engine, validate, yamldoc
from kdist.validate.compose import bind_source, host_path_problem, is_root, published_ip

CORPUS = ROOT / "tests" / "validate_corpus"
MEMORY = 1 << 30  # address space of the validate process
TIMEOUT = 60  # seconds; generous for a loaded CI machine, far below a hang
SECRET = "TOPSECRET-4f1c9a"
MANIFEST = (ROOT / "manifests" / "smoke-node0" / "k8s.yaml").read_text(encoding="utf-8")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run(*args: str, cwd: Path, stdin: Any = subprocess.DEVNULL) -> tuple[int, str, float]:
    """(exit status, stdout + stderr, seconds) of `kdist validate --no-docker -o github ARGS`."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kdist.cli.validate", "--no-docker", "-o",
                           "github", *args], cwd=cwd, stdin=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=_limit, check=False)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "MemoryError" not in out, out[-3000:]
    return done.returncode, out, time.monotonic() - start


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with one clean-ish manifest, next to a secret file outside it."""
    (tmp_path / "secret.txt").write_text(SECRET + "\n", encoding="utf-8")
    checkout = tmp_path / "repo"
    (checkout / "manifests").mkdir(parents=True)
    (checkout / "manifests" / "ok.yaml").write_bytes((CORPUS / "image-pull-policy.yaml").read_bytes())
    return checkout


# ---- never leave the given paths ------------------------------------------------------------


def test_symlinked_secret_is_not_read_or_echoed(repo: Path) -> None:
    (repo / "kdist.yaml").symlink_to(repo.parent / "secret.txt")
    (repo / "manifests" / "leak.yaml").symlink_to(repo.parent / "secret.txt")
    for args in (["kdist.yaml"], ["."], ["manifests"], ["**/*.yaml"], []):
        code, out, _ = run(*args, cwd=repo)
        assert code == 2, (args, out)
        assert "a symlink to outside" in out and SECRET not in out, (args, out)


def test_symlink_inside_the_tree_is_followed(repo: Path) -> None:
    (repo / "manifests" / "again.yaml").symlink_to("ok.yaml")
    (repo / "link.yaml").symlink_to("manifests/ok.yaml")
    code, out, _ = run("link.yaml", cwd=repo)
    assert code == 0 and "(1 file," in out, out
    code, out, _ = run("manifests", cwd=repo)
    assert code == 0 and "(1 file," in out, out  # the link and its target count once


def test_symlinked_folder_out_of_the_tree_is_not_entered(repo: Path) -> None:
    outside = repo.parent / "outside"
    outside.mkdir()
    (outside / "x.yaml").write_text(f"apiVersion: v1\nkind: {SECRET}\n", encoding="utf-8")
    (repo / "manifests" / "ext").symlink_to(outside)
    code, out, _ = run(".", cwd=repo)
    assert code == 0 and SECRET not in out and "(1 file," in out, out
    code, out, _ = run("manifests/ext", cwd=repo)
    assert code == 2 and "a symlink to outside" in out and SECRET not in out, out
    code, out, _ = run("manifests/*/x.yaml", cwd=repo)
    assert code == 2 and "a symlink to outside" in out and SECRET not in out, out


def test_globs_skip_hidden_folders_like_glob(repo: Path) -> None:
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "x.yaml").write_text("apiVersion: v1\n", encoding="utf-8")
    code, out, _ = run("**/*.yaml", cwd=repo)
    assert code == 0 and "(1 file," in out, out
    code, out, _ = run(".venv/**/*.yaml", cwd=repo)
    assert code == 1 and "k8s-object" in out, out


def test_symlink_loops_end(repo: Path) -> None:
    deep = repo / "manifests" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "up").symlink_to("../..")
    (deep / "self").symlink_to(".")
    for args in (["."], ["manifests"], ["**/*.yaml"], ["manifests/**"]):
        code, out, seconds = run(*args, cwd=repo)
        assert code == 0 and "(1 file," in out and seconds < TIMEOUT, (args, out)


# ---- regular files only -----------------------------------------------------------------------


def test_fifo_is_a_finding_not_a_hang(repo: Path) -> None:
    os.mkfifo(repo / "manifests" / "pipe.yaml")
    for args in (["manifests/pipe.yaml"], ["manifests"], ["manifests/*.yaml"]):
        code, out, _ = run(*args, cwd=repo)
        assert code == 2 and "not a regular file (a FIFO)" in out, (args, out)


def test_devices_are_not_read(repo: Path) -> None:
    code, out, _ = run("/dev/zero", cwd=repo)
    assert code == 2 and "not a regular file (a device)" in out, out
    (repo / "zero.yaml").symlink_to("/dev/zero")
    code, out, _ = run("zero.yaml", cwd=repo)
    assert code == 2 and "a symlink to outside" in out, out
    with open("/dev/zero", "rb") as zero:
        code, out, _ = run("-", cwd=repo, stdin=zero)
    assert code == 1 and "input-budget" in out and "4 MiB budget" in out, out


# ---- budgets ------------------------------------------------------------------------------------


def _manifests(size: int) -> str:
    """kdist's own k8s render, renamed and repeated to about `size` bytes."""
    parts, total, n = [], 0, 0
    while total < size:
        parts.append(MANIFEST.replace("smoke", f"j{n:05d}"))
        total += len(parts[-1]) + 5
        n += 1
    return "\n---\n".join(parts)


def test_huge_manifest_is_refused_before_reading(repo: Path) -> None:
    big = repo / "manifests" / "big.yaml"
    big.write_text(_manifests(45 * 2**20), encoding="utf-8")
    code, out, seconds = run(str(big), cwd=repo)
    assert code == 1 and "input-budget" in out and "MiB is above the 4 MiB budget" in out, out
    assert seconds < 10, seconds


def test_manifest_within_budget_is_checked(repo: Path) -> None:
    path = repo / "manifests" / "many.yaml"
    path.write_text(_manifests(2**20), encoding="utf-8")
    code, out, seconds = run(str(path), cwd=repo, stdin=subprocess.DEVNULL)
    assert code == 0 and "input-budget" not in out and "validate: OK" in out, out[-2000:]
    assert seconds < yamldoc.MAX_SECONDS, seconds


def _bomb(documents: int) -> str:
    """Each document expands to about 600 000 items, under the node budget alone; the budget
    counts all documents of the file together, so the second document ends it."""
    doc = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for below, name in zip("abcde", "bcdef", strict=True):
        doc += f"{name}: &{name} [{', '.join(['*' + below] * 9)}]\n"
    return "---\n".join([doc] * documents)


def test_alias_bomb_spread_over_documents(repo: Path) -> None:
    path = repo / "bomb.yaml"
    path.write_text(_bomb(40), encoding="utf-8")
    assert path.stat().st_size < 20_000
    code, out, _ = run(str(path), cwd=repo)
    assert code == 1 and "input-budget" in out and "more than 1000000 nodes" in out, out


def test_document_depth_and_count_budgets(repo: Path) -> None:
    many = repo / "many.yaml"
    many.write_text("---\na: 1\n" * (yamldoc.MAX_DOCUMENTS + 1), encoding="utf-8")
    code, out, _ = run(str(many), cwd=repo)
    assert code == 1 and f"more than {yamldoc.MAX_DOCUMENTS} YAML documents" in out, out
    deep = repo / "deep.yaml"
    deep.write_text("a: " + "[" * 500 + "]" * 500 + "\n", encoding="utf-8")
    code, out, _ = run(str(deep), cwd=repo)
    assert code == 1 and "input-budget" in out and "nested more than 100 levels" in out, out


def test_time_budget_ends_in_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_SECONDS", 0.0)
    findings = validate([str(ROOT / "manifests" / "smoke-node0" / "k8s.yaml")], Options()).findings
    assert [f.rule for f in findings] == ["input-budget"]
    assert "took more than" in findings[0].message


# ---- nothing echoed ---------------------------------------------------------------------------

SECRET_FILES = {
    "token": f"ghp_{SECRET}\n",
    "env": f"API_TOKEN={SECRET}\nOTHER=1\n",
    "pem": f"-----BEGIN RSA PRIVATE KEY-----\nMIIE{SECRET}\n-----END RSA PRIVATE KEY-----\n",
    "broken": f'password: "{SECRET}\n  more: [\n',
    "tab": f"a: b\n\t{SECRET}: 1\n",
}


@pytest.mark.parametrize("name", sorted(SECRET_FILES))
def test_secret_content_is_never_echoed(name: str, repo: Path) -> None:
    (repo / "kdist.yaml").write_text(SECRET_FILES[name], encoding="utf-8")
    (repo / "manifests" / "x.yaml").write_text(SECRET_FILES[name], encoding="utf-8")
    for args in (["kdist.yaml"], ["manifests/x.yaml"]):
        code, out, _ = run(*args, cwd=repo)
        assert code == 1 and SECRET not in out, (args, out)


# ---- torchrun checks see arguments with newlines ---------------------------------------------


def test_argument_with_a_newline_keeps_torchrun_checks(tmp_path: Path) -> None:
    case = CORPUS / "rdzv-endpoint-unknown.yaml"
    docs = list(yaml.safe_load_all(case.read_text(encoding="utf-8")))
    sts = next(d for d in docs if d and d["kind"] == "StatefulSet")
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "trainers/train.py" in command[2]
    command[2] = command[2].replace("trainers/train.py",
                                    "trainers/train.py " + shlex.quote("a\nb"))
    path = tmp_path / "k8s.yaml"
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    findings = validate([str(path)], Options()).findings
    assert [f.rule for f in findings] == ["rdzv-endpoint"]  # as without the newline


# ---- the Compose, RBAC and NetworkPolicy rules in more spellings -----------------------------


def test_uid_zero_spellings() -> None:
    assert all(is_root(u) for u in ("", "root", "0", "00", "000:1000", " 0 ", "root:root"))
    assert not any(is_root(u) for u in ("1000", "1000:0", "10", "nobody"))


def test_published_ports() -> None:
    everywhere = ["80:80", "0.0.0.0:80:80", "[::]:80:80", "80", "8000-8010:8000-8010/tcp",
                  {"published": 80, "target": 80}, {"published": "80", "target": 80,
                                                     "host_ip": "0.0.0.0"}]
    assert [published_ip(p) for p in everywhere] == ["", "0.0.0.0", "::", "", "", "", "0.0.0.0"]
    assert published_ip("127.0.0.1:80:80") == "127.0.0.1"
    assert published_ip("[::1]:80:80") == "::1"
    assert published_ip({"target": 80}) is None


def test_host_mounts() -> None:
    bad = ["/:/host", "/var/run/docker.sock:/var/run/docker.sock", "/etc:/etc:ro",
           "/run/containerd/containerd.sock:/c", "//proc/:/p",
           {"type": "bind", "source": "/var/lib/kubelet", "target": "/k"}]
    for volume in bad:
        source = bind_source(volume)
        assert source is not None and host_path_problem(source), volume
    fine = ["./data:/data", "checkpoints:/checkpoints", "/data/set:/data",
            {"type": "volume", "source": "x", "target": "/x"}, "/tmp/shared:/shared"]
    for volume in fine:
        source = bind_source(volume)
        assert source is None or not host_path_problem(source), volume


def _compose_rules(service: dict[str, Any], tmp_path: Path) -> set[str]:
    base = {"image": "x:1", "user": "1000:1000", "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"]}
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump({"services": {"node": {**base, **service}}}), encoding="utf-8")
    return {f.rule for f in validate([str(path)], Options()).findings}


@pytest.mark.parametrize(("service", "rule"), [
    ({"user": 0}, "compose-user"),
    ({"cap_add": ["NET_ADMIN"]}, "compose-cap-add"),
    ({"security_opt": ["no-new-privileges:true", "apparmor=unconfined"]}, "compose-unconfined"),
    ({"network_mode": "host"}, "compose-host-namespaces"),
    ({"ipc": "host"}, "compose-host-namespaces"),
    ({"ports": [{"target": 29400, "published": 29400}]}, "compose-ports-host-ip"),
    ({"volumes": [{"type": "bind", "source": "/", "target": "/host"}]}, "compose-host-mount"),
    ({"use_api_socket": True}, "compose-host-mount"),
    ({"devices": ["/dev/sda:/dev/sda"]}, "compose-devices"),
    ({"privileged": "true"}, "compose-privileged"),
])
def test_compose_host_access(service: dict[str, Any], rule: str, tmp_path: Path) -> None:
    assert _compose_rules(service, tmp_path) == {rule}


def test_compose_safe_settings_pass(tmp_path: Path) -> None:
    safe = {"ports": ["127.0.0.1:29400:29400"], "volumes": ["./data:/data:ro"],
            "devices": ["/dev/fuse:/dev/fuse"], "security_opt": ["no-new-privileges:true",
                                                                 "seccomp:./profile.json"]}
    assert _compose_rules(safe, tmp_path) == set()


def test_netem_helper_keeps_its_carve_out(tmp_path: Path) -> None:
    helper = {"user": "0", "network_mode": "service:node-0", "cap_add": ["NET_ADMIN"]}
    assert _compose_rules(helper, tmp_path) == set()
    assert _compose_rules({**helper, "cap_add": ["NET_ADMIN", "SYS_ADMIN"]}, tmp_path) == {
        "compose-user", "compose-cap-add"}


def _rbac_case(tmp_path: Path, edit: str, new: str) -> set[str]:
    text = (CORPUS / "rbac-controller-patch.yaml").read_text(encoding="utf-8")
    assert edit in text
    path = tmp_path / "k8s.yaml"
    path.write_text(text.replace(edit, new, 1), encoding="utf-8")
    return {f.rule for f in validate([str(path)], Options()).findings}


def test_rbac_scale_subresource_alone_is_fine(tmp_path: Path) -> None:
    assert _rbac_case(tmp_path, "  - statefulsets\n  resourceNames", "  - statefulsets/scale\n"
                      "  resourceNames") == set()


def test_rbac_pods_without_a_token_are_fine(tmp_path: Path) -> None:
    assert _rbac_case(tmp_path, "automountServiceAccountToken: true",
                      "automountServiceAccountToken: false") == set()


def test_rbac_the_service_account_decides_when_the_pod_does_not(tmp_path: Path) -> None:
    unset = "      automountServiceAccountToken: true\n"
    assert _rbac_case(tmp_path, unset, "") == {"rbac-controller-patch"}
    text = (CORPUS / "rbac-controller-patch.yaml").read_text(encoding="utf-8").replace(unset, "")
    account = "kind: ServiceAccount\nmetadata:\n  name: smoke\n"
    assert account in text
    path = tmp_path / "sa.yaml"
    path.write_text(text.replace(account, "kind: ServiceAccount\n"
                                 "automountServiceAccountToken: false\nmetadata:\n  name: smoke\n"),
                    encoding="utf-8")
    assert validate([str(path)], Options()).findings == []


def test_rbac_other_service_account_is_fine(tmp_path: Path) -> None:
    assert _rbac_case(tmp_path, "subjects:\n- kind: ServiceAccount\n  name: smoke",
                      "subjects:\n- kind: ServiceAccount\n  name: someone-else") == set()


def test_rbac_wildcard_that_also_patches_controllers(tmp_path: Path) -> None:
    assert _rbac_case(tmp_path, "  - statefulsets\n  resourceNames", "  - '*'\n"
                      "  resourceNames") == {"rbac-wildcard", "rbac-controller-patch"}
