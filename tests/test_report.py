"""`kdist report`: metrics.jsonl -> a self-contained HTML page with SVG charts on one time axis.

The fixture is a real `kdist run` of 3 nodes where node-2 was killed at 15 s and the job
resumed from its step-50 checkpoint with 2 nodes (steps thinned out away from the kill).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import FIXTURES

from kdist.cli import KdistGroup
from kdist.cli.report import report
from kdist.tools.report import LEFT, WIDTH, RunModel, make_frame, parse, render_html, summary_rows

RUN = FIXTURES / "report" / "elastic-run"
CHARTS = ("chart-loss", "chart-throughput", "chart-world", "chart-nodes")
EVENT_ROW = re.compile(r'<tr><td class="t">([^<]*)</td><td><span [^>]*></span>([^<]*)</td>'
                       r"<td>([^<]*)</td></tr>")


def lines() -> list[str]:
    return (RUN / "metrics.jsonl").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def model() -> RunModel:
    return parse(lines())


@pytest.fixture(scope="module")
def page(model: RunModel) -> str:
    return render_html(model, "elastic-run")


def events(page: str) -> list[tuple[str, str, str]]:
    return EVENT_ROW.findall(page)


def marker_xs(page: str, kind: str) -> list[float]:
    """The x of every vertical marker line of `kind`, in document order (one per chart)."""
    found = re.findall(rf'<g class="marker {kind}">.*?<line x1="([\d.]+)"', page)
    return [float(x) for x in found]


# ---- the model -------------------------------------------------------------------------------


def test_model_of_the_elastic_run(model: RunModel) -> None:
    assert model.nodes == (0, 1, 2)
    assert model.final_step == 300 and model.done
    assert model.restarts == 1
    assert model.world_sizes == (3, 2)
    assert [step for _, step in model.checkpoints] == list(range(25, 301, 25))
    assert model.elapsed == pytest.approx(60.874)
    assert model.skipped == 0 and model.runs_in_file == 1


def test_worker_groups_and_the_pause_between_them(model: RunModel) -> None:
    first, second = model.groups
    assert (first.t0, first.world_size, first.restart) == (8.216, 3, 0)
    assert first.t1 == pytest.approx(15.007)  # the last step before the kill
    assert (second.t0, second.world_size, second.restart, second.resumed_step) == (26.942, 2, 1, 50)
    assert model.paused == pytest.approx(26.942 - 15.007)


def test_lifelines_per_node(model: RunModel) -> None:
    lives = {life.node: life for life in model.lifelines}
    assert lives[2].killed and lives[2].code == -9 and lives[2].t1 == pytest.approx(15.048)
    assert not lives[0].killed and lives[0].code == 0 and lives[1].code == 0


def test_samples_come_from_rank0_and_belong_to_their_group(model: RunModel) -> None:
    assert {s.node for s in model.samples} == {0}
    assert all(s.group == (0 if s.t < 20 else 1) for s in model.samples)
    assert model.samples[-1].step == 300


# ---- the page ----------------------------------------------------------------------------------


def test_page_has_the_four_charts_with_data(page: str) -> None:
    for chart_id in CHARTS:
        assert f'<svg id="{chart_id}" class="chart"' in page
    assert page.count("<svg ") == 4 and page.count("</svg>") == 4
    assert page.count("<polyline ") >= 2 * 2 + 3  # loss, samples/s per group; world + alive
    assert "loss (log scale)" in page  # 2.3 -> 0.002 spans decades


def test_page_is_self_contained(page: str) -> None:
    lowered = page.lower()
    for needle in ("<script", "src=", "href=", "@import", "url(", "<link"):
        assert needle not in lowered
    assert re.findall(r"https?://[^\"]+", page) == ["http://www.w3.org/2000/svg"] * 4
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_elastic_events_at_their_times(page: str) -> None:
    rows = events(page)
    assert ("15.04 s", "node-2 killed", "kdist") in rows
    assert ("15.05 s", "node-2 exited (code -9, killed)", "kdist") in rows
    assert ("26.94 s", "restart 1, world 2 (new rendezvous)", "rank 0 (global) on node-0") in rows
    assert ("26.94 s", "resumed from checkpoint step 50", "rank 0 (global) on node-0") in rows
    assert ("59.19 s", "done at step 300", "rank 0 (global) on node-0") in rows
    assert ("60.87 s", "node-1 exited (code 0)", "kdist") in rows
    times = [float(t.removesuffix(" s")) for t, _, _ in rows]
    assert times == sorted(times) and len(times) == 11


def test_markers_share_one_time_axis_across_charts(model: RunModel, page: str) -> None:
    x = make_frame(model).x
    for kind, t in (("kill", 15.042), ("restart", 26.942), ("resume", 26.942), ("done", 59.191)):
        xs = marker_xs(page, kind)
        assert len(xs) == len(CHARTS) and len(set(xs)) == 1, kind
        assert xs[0] == pytest.approx(x(t), abs=0.06)
        assert LEFT < xs[0] < WIDTH
    assert marker_xs(page, "kill")[0] < marker_xs(page, "restart")[0] < marker_xs(page, "done")[0]


def test_marker_labels_and_checkpoint_ticks(page: str) -> None:
    for label in ("node-0, node-1, node-2 started", "node-2 killed", "restart 1, world 2",
                  "resumed from checkpoint step 50", "done at step 300"):
        assert page.count(f'">{label}') == len(CHARTS), label  # the text, not the <title>
    assert page.count('class="ckpt"') == 12 * 3  # on the three value charts
    assert "<title>checkpoint step 50 at 14.63 s</title>" in page
    assert page.count('class="pause"') == len(CHARTS)  # no training from 15.01 to 26.94 s
    assert "no training from 15.01 s to 26.94 s" in page


def test_summary_table(page: str) -> None:
    summary = dict(re.findall(r'<tr><th scope="row">([^<]*)</th><td>([^<]*)</td></tr>', page))
    assert summary["run"] == "elastic-run"
    assert summary["nodes"] == "3 (node-0, node-1, node-2)"
    assert summary["final step"] == "300"
    assert summary["elapsed"] == "1 min 0.9 s (60.87 s)"
    assert summary["restarts"] == "1"
    assert summary["world sizes seen"] == "3 → 2"
    assert summary["checkpoints"] == "12 (last: step 300 at 59.09 s)"
    assert summary["nodes killed"] == "node-2 at 15.04 s"
    assert "rank 0 (global) on node-0" in page


def test_output_is_deterministic(page: str) -> None:
    assert render_html(parse(lines()), "elastic-run") == page


def test_run_id_is_escaped() -> None:
    page = render_html(parse(lines()), "<b>&run")
    assert "&lt;b&gt;&amp;run" in page and "<b>&run" not in page


# ---- odd inputs --------------------------------------------------------------------------------


def test_empty_and_garbled_lines_are_skipped_and_counted(page: str) -> None:
    noisy = ["", "not json", "[1, 2]", '{"event": "step"}', '{"elapsed": "x", "event": "a"}',
             *lines(), "{truncated"]
    model = parse(noisy)
    assert model.skipped == 6
    assert events(render_html(model, "elastic-run")) == events(page)
    assert "6 empty or garbled lines" in render_html(model, "elastic-run")


def test_a_reused_run_dir_shows_the_last_run() -> None:
    first = [line for line in lines() if '"kdist.' in line][:3]  # a run that only started nodes
    model = parse([*first, *lines()])
    assert model.runs_in_file == 2 and model.final_step == 300
    assert "holds 2 runs" in render_html(model, "r")


def test_a_run_without_trainer_metrics_still_renders() -> None:
    only_kdist = [line for line in lines() if '"kdist.' in line]
    model = parse(only_kdist)
    assert model.samples == () and model.groups == () and model.final_step is None
    page = render_html(model, "r")
    assert page.count(">no data</text>") == 2  # the world chart still shows the nodes alive
    assert "node-2 killed" in page


def test_a_trainer_without_metrics_gets_rounds_restarts_and_world_sizes_from_torchrun() -> None:
    """The tutorial trainer (no KDIST_METRIC) on 3 nodes, node-1 killed at 12 s: kdist wrote the
    rendezvous rounds it read in torchrun's agent logs (`kdist run`, real run)."""
    text = (FIXTURES / "report" / "tutorial-node-lost" / "metrics.jsonl").read_text(encoding="utf-8")
    model = parse(text.splitlines())
    assert model.samples == () and model.final_step is None
    assert [(g.world_size, g.restart) for g in model.groups] == [(3, 0), (2, 1)]
    assert (model.groups[0].t0, model.groups[0].t1, model.groups[1].t0) == (4.547, 12.15, 19.44)
    assert model.restarts == 1 and model.world_sizes == (3, 2)
    assert model.paused == pytest.approx(19.44 - 12.15)
    assert [(life.node, life.t1, life.killed) for life in model.lifelines] == [
        (0, 33.116, False), (1, 12.15, True), (2, 33.125, False)]
    summary = dict(summary_rows(model, "tutorial"))
    assert (summary["restarts"], summary["world sizes seen"]) == ("1", "3 → 2")
    page = render_html(model, "tutorial")
    assert "restart 1, world 2 (new rendezvous)" in page and "training started, world 3" in page


def test_nothing_at_all_renders_an_empty_page() -> None:
    model = parse([])
    assert model == RunModel()
    assert "<svg" in render_html(model, "r")


# ---- the command -------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(KdistGroup(commands={"report": report}), ["report", *args])


def test_report_writes_into_the_run_folder_and_prints_the_path(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-a"
    shutil.copytree(RUN, run_dir)
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run_dir / "report.html")
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "kdist run <code>run-a</code>" in page and 'id="chart-world"' in page
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_report_by_run_id_and_output_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(RUN, tmp_path / ".kdist" / "runs" / "job-1")
    result = invoke("job-1", "--out", "out/page.html")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "out/page.html"
    assert "kdist run <code>job-1</code>" in (tmp_path / "out" / "page.html").read_text()


def test_report_old_o_is_out_with_a_warning(tmp_path: Path) -> None:
    shutil.copytree(RUN, tmp_path / "r")
    old, new = tmp_path / "old.html", tmp_path / "new.html"
    result = invoke(str(tmp_path / "r"), "-o", str(old))
    assert result.exit_code == 0 and result.stdout.strip() == str(old)
    assert result.stderr == f"kdist: warning: -o {old} for a file is deprecated; use --out {old}\n"
    assert invoke(str(tmp_path / "r"), "--out", str(new)).stderr == ""
    assert old.read_text() == new.read_text()
    both = invoke(str(tmp_path / "r"), "-o", str(old), "--out", str(new))
    assert both.exit_code == 2 and "cannot go with --out" in both.stderr
    help_text = invoke("--help").output
    assert "--out FILE" in help_text and "-o," not in help_text and "--output" not in help_text


def test_report_accepts_the_metrics_file_itself(tmp_path: Path) -> None:
    shutil.copytree(RUN, tmp_path / "r")
    result = invoke(str(tmp_path / "r" / "metrics.jsonl"), "--out", str(tmp_path / "x.html"))
    assert result.exit_code == 0 and (tmp_path / "x.html").is_file()


def test_unknown_run_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("nope")
    assert result.exit_code == 2
    assert "no run 'nope'" in result.stderr and ".kdist/runs/nope" in result.stderr


def test_folder_without_metrics(tmp_path: Path) -> None:
    result = invoke(str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'metrics.jsonl'} not found" in result.stderr


def test_metrics_without_any_valid_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("\ngarbage\n{\n", encoding="utf-8")
    result = invoke(str(tmp_path))
    assert result.exit_code == 1
    assert "holds no kdist metrics (3 empty or garbled lines skipped)" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_garbled_lines_are_reported_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("oops\n" + "\n".join(lines()) + "\n{\"cut", "utf-8")
    result = invoke(str(tmp_path))
    assert result.exit_code == 0
    assert "skipped 2 empty or garbled lines" in result.stderr
    assert (tmp_path / "report.html").is_file()
