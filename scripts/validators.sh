#!/usr/bin/env bash
# The validators CI pipelines use, for benchmarks/bench_validate.py (`make validators`):
# kubeconform and kube-score built with `go install` from the Go module proxy into .venv/bin,
# checkov from PyPI into .venv-checkov (its dependencies would clash with kdist's).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.venv/bin"
GOBIN="$bin" go install github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
GOBIN="$bin" go install github.com/zegl/kube-score/cmd/kube-score@v1.20.0
if [ ! -x .venv-checkov/bin/checkov ]; then
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install -q checkov==3.3.30
fi
"$bin/kubeconform" -v && "$bin/kube-score" version && .venv-checkov/bin/checkov --version
