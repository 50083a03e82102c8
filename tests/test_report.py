"""dqt-report on synthetic run directories whose numbers the tests choose, so every table value and verdict
can be worked out by hand."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from dqt import report

STEPS = [1000, 2000, 3000, 4000, 5000]


def write_run(path, scores, time_s=60.0, success=True, **overrides):
    """A run directory as dqt-train leaves it: .hydra/config.yaml (conf/config.yaml plus `overrides`, dotted
    keys written with __ for .) and metrics.jsonl with one evaluation per entry of `scores`."""
    config = OmegaConf.load(ROOT / "conf" / "config.yaml")
    del config["defaults"], config["hydra"]
    for key, value in overrides.items():
        OmegaConf.update(config, key.replace("__", "."), value, force_add=True)
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, path / ".hydra" / "config.yaml")
    agents = config.num_agents or 2
    rows = []
    for i, (step, score) in enumerate(zip(STEPS, scores)):
        base = {"env_steps": step, "total_env_steps": step * agents, "updates": step // 4,
                "time_s": time_s * (i + 1) / len(scores)}
        rows.append({**base, "train/loss": 0.1})
        row = {**base, "eval/return": 100 * score, "eval/episodes": 50}
        if success:
            row["eval/success_rate"] = score
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_cell(root, name, curve, spread=0.01, **overrides):
    """Three seeds of one cell: `curve` shifted by -spread, 0 and +spread, or one curve per seed."""
    curves = curve if isinstance(curve[0], list) else [[v + shift * spread for v in curve] for shift in (-1, 0, 1)]
    for seed, scores in enumerate(curves, 1):
        write_run(root / name / str(seed), scores, seed=seed, **overrides)


def build(tmp_path):
    """Write the report of tmp_path/runs into tmp_path/out; return its text."""
    path = report.write_report([tmp_path / "runs"], tmp_path / "out")
    return path.read_text()


def verdict_of(text, claim):
    line = next(line for line in text.splitlines() if line.startswith(f"### {claim}"))
    return line.split("**")[1]


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 31)) + [40, 60, 120]:
        assert report.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
    assert report.t975(35) == report.t975(30)  # between rows: the wider interval
    assert report.t975(500) == 1.96


def test_table_values_follow_from_the_numbers(tmp_path):
    runs = tmp_path / "runs"
    # three seeds of one cell (num_agents=1), hand-made curves (success rate at 1k..5k env steps per agent)
    write_run(runs / "a1", [0.2, 0.4, 0.6, 0.8, 1.0], time_s=60, num_agents=1, seed=1)   # final 0.8, first 0.8 at 4000
    write_run(runs / "a2", [0.0, 0.2, 0.4, 0.5, 0.6], time_s=120, num_agents=1, seed=2)  # final 0.5, never
    write_run(runs / "a3", [0.1, 0.8, 0.0, 0.3, 0.3], time_s=180, num_agents=1, seed=3)  # final 0.2, first at 2000
    write_run(runs / "b1", [0.5] * 5, num_agents=2, seed=1)

    cells = report.group_cells([report.load_run(p) for p in report.find_run_dirs([runs])])
    assert [c.label for c in cells] == ["num_agents=1", "num_agents=2"]
    s = report.summarise(cells[0], "eval/success_rate")
    assert s.seeds == 3
    # final: mean(0.8, 0.5, 0.2) = 0.5, sd 0.3, t(2) = 4.303: 4.303 * 0.3 / sqrt(3) = 0.74532
    assert s.final.mean == pytest.approx(0.5) and s.final.half == pytest.approx(4.303 * 0.3 / math.sqrt(3))
    # steps to 0.8 over the 2 seeds that reached it: mean(4000, 2000) = 3000, sd 1414.2, t(1) = 12.706 -> 12706
    assert (s.reached, s.steps.n) == (2, 2)
    assert s.steps.mean == 3000 and s.steps.half == pytest.approx(12706)
    # area / width: seed 1 (0.1 + 0.4 + 0.6 + 0.8 + 0.5) / 4 = 0.6, seed 2 1.4 / 4 = 0.35, seed 3 1.3 / 4 = 0.325
    assert s.area.mean == pytest.approx((0.6 + 0.35 + 0.325) / 3)
    # roughness: mean |change| 0.2, 0.15, (0.7 + 0.8 + 0.3 + 0) / 4 = 0.45
    assert s.roughness.mean == pytest.approx((0.2 + 0.15 + 0.45) / 3)
    # wall: 1, 2 and 3 minutes: mean 2, sd 1, 4.303 / sqrt(3) = 2.484
    assert s.wall_min.mean == pytest.approx(2.0) and s.wall_min.half == pytest.approx(4.303 / math.sqrt(3))

    text = build(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| num_agents=1 |")).split(" | ")
    assert row[1:3] == ["3", "0.50 ± 0.75"] and row[4:6] == ["3,000 ± 12,706", "2/3"] and row[7] == "2.0 ± 2.5 |"
    one_seed = next(line for line in text.splitlines() if line.startswith("| num_agents=2 |"))
    assert "| 1 | 0.50 |" in one_seed  # one seed: a mean without an interval


def test_return_is_the_score_when_runs_report_no_success(tmp_path):
    write_cell(tmp_path / "runs", "gym", [0.1, 0.2, 0.3, 0.4, 0.5], success=False, task="gym:Pendulum-v1")
    text = build(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| all runs |"))
    assert "final return" in text and row.startswith("| all runs | 3 | 40.00 ± 2.48 |")  # 100 * mean(.3,.4,.5)
    assert "| — | — |" in row  # no steps to 0.8 without a success rate


def test_nested_run_directories_are_found_and_figures_written(tmp_path):
    deep = tmp_path / "runs" / "multirun" / "scaling" / "2025-01-01_00-00-00"
    write_cell(deep, "0", [0.1, 0.3, 0.5, 0.7, 0.9], num_agents=1, wandb__group="scaling")
    write_cell(deep, "1", [0.2, 0.4, 0.6, 0.8, 0.9], num_agents=2, wandb__group="scaling")
    write_cell(tmp_path / "runs" / "other", "x", [0.5] * 5, lr_schedule="constant", wandb__group="lr")
    text = build(tmp_path)
    assert "9 runs in 3 cells" in text
    assert "## Study `lr`" in text and "## Study `scaling`" in text
    for study in ("scaling", "lr"):
        figure = tmp_path / "out" / f"curves_{study}.png"
        assert figure.stat().st_size > 1000 and f"]({figure.name})" in text


def test_seed_and_bookkeeping_keys_do_not_split_cells(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "1", [0.5] * 5, seed=1, threads=1, progress=False, wandb__name="a")
    write_run(runs / "2", [0.5] * 5, seed=2, threads=2, device="cpu", resume=True)
    write_run(runs / "3", [0.5] * 5, seed=3, noise__std=0, noise__reads=1)  # the defaults, written out (0 is 0.0)
    cells = report.group_cells([report.load_run(p) for p in report.find_run_dirs([runs])])
    assert len(cells) == 1 and len(cells[0].runs) == 3 and cells[0].label == "all runs"


RISING = [0.1, 0.3, 0.5, 0.6, 0.6]


@pytest.mark.parametrize("curves, spread, expected_a, expected_b", [
    # N=1 < N=4 < N=7 everywhere, seeds within 0.01: faster at every step up, 7 best
    ({1: [0.0, 0.1, 0.2, 0.3, 0.3], 4: RISING, 7: [0.5, 0.8, 0.9, 0.9, 0.9]}, 0.01, "supported", "supported"),
    # N=7 falls below N=4
    ({1: [0.0, 0.1, 0.2, 0.3, 0.3], 4: [0.5, 0.8, 0.9, 0.9, 0.9], 7: RISING}, 0.01, "not supported", "not supported"),
    # seeds spread by ±0.3: every interval overlaps
    ({1: [0.0, 0.1, 0.2, 0.3, 0.3], 4: RISING, 7: [0.3, 0.4, 0.5, 0.6, 0.6]}, 0.3, "inconclusive", "inconclusive"),
    # no seven-agent cell
    ({1: [0.0, 0.1, 0.2, 0.3, 0.3], 4: RISING}, 0.01, "supported", "not tested"),
])
def test_scaling_verdicts(tmp_path, curves, spread, expected_a, expected_b):
    for n, curve in curves.items():
        write_cell(tmp_path / "runs", f"n{n}", curve, spread=spread, num_agents=n)
    text = build(tmp_path)
    assert verdict_of(text, "1a.") == expected_a
    assert verdict_of(text, "1b.") == expected_b
    assert verdict_of(text, "2.") == "not tested" and verdict_of(text, "3a.") == "not tested"


def test_fewer_steps_to_threshold_counts_as_faster_when_areas_overlap(tmp_path):
    # equal areas (1.9 / 4): N=1 reaches 0.8 at 4000, N=2 at 2000 in every seed
    write_cell(tmp_path / "runs", "n1", [0.3, 0.4, 0.3, 0.85, 0.4], num_agents=1)
    write_cell(tmp_path / "runs", "n2", [0.3, 0.85, 0.3, 0.4, 0.4], num_agents=2)
    text = build(tmp_path)
    assert verdict_of(text, "1a.") == "supported" and "**faster**" in text


@pytest.mark.parametrize("smoothed, spread, expected", [
    ([0.5, 0.7, 0.8, 0.9, 0.9], 0.01, "supported"),
    ([0.0, 0.1, 0.1, 0.2, 0.2], 0.01, "not supported"),
    ([0.5, 0.7, 0.8, 0.9, 0.9], 0.4, "inconclusive"),
])
def test_smoothing_verdicts(tmp_path, smoothed, spread, expected):
    runs = tmp_path / "runs"
    noise = {"noise__std": 0.5, "noise__mean": 0.0, "num_agents": 4}
    write_cell(runs, "plain", [0.2, 0.4, 0.5, 0.5, 0.5], noise__reads=1, **noise)
    write_cell(runs, "smooth", smoothed, spread=spread, noise__reads=5, noise__reduce="median", **noise)
    # high noise (std 5) is not "low noise": smoothing losing there does not count against the claim
    high = {**noise, "noise__std": 5.0}
    write_cell(runs, "plain5", [0.2, 0.4, 0.5, 0.5, 0.5], noise__reads=1, **high)
    write_cell(runs, "smooth5", [0.0] * 5, noise__reads=5, noise__reduce="median", **high)
    text = build(tmp_path)
    assert verdict_of(text, "2.") == expected
    assert text.count("with noise.reads=1: **") == 1  # one low-noise pair


@pytest.mark.parametrize("log, spread, best, smoothest", [
    ([0.6, 0.8, 0.9, 0.9, 0.9], 0.01, "supported", "supported"),
    ([0.6, 0.2, 0.6, 0.2, 0.6], 0.01, "not supported", "not supported"),
    # seeds differ in final score and in roughness (0.05, 0.5, 0.325): both intervals overlap the others'
    ([[0.5, 0.6, 0.7, 0.7, 0.7], [0.2, 0.9, 0.3, 0.8, 0.6], [0.9, 0.5, 0.9, 0.6, 0.8]], 0, "inconclusive",
     "inconclusive"),
])
def test_schedule_verdicts(tmp_path, log, spread, best, smoothest):
    runs = tmp_path / "runs"
    write_cell(runs, "log", log, spread=spread, lr_schedule="log")
    write_cell(runs, "linear", [0.2, 0.5, 0.7, 0.8, 0.8], lr_schedule="linear")
    write_cell(runs, "constant", [0.3, 0.5, 0.7, 0.6, 0.7], lr_schedule="constant")
    text = build(tmp_path)
    assert verdict_of(text, "3a.") == best and verdict_of(text, "3b.") == smoothest
    assert "lr_schedule=log" in text and "Rule: Cells that differ only in lr_schedule" in text


def test_no_runs_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dqt-report: no runs under")
    assert not (tmp_path / "empty" / "report.md").exists()
    assert report.main([str(tmp_path / "nonexistent")]) == 2
    assert capsys.readouterr().err.strip() == f"dqt-report: {tmp_path / 'nonexistent'} is not a directory"


def test_python_dash_m_writes_the_report_into_the_first_dir(tmp_path):
    write_cell(tmp_path / "runs", "c", [0.1, 0.3, 0.5, 0.7, 0.9])
    result = subprocess.run([sys.executable, "-m", "dqt.report", str(tmp_path / "runs")], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)  # cwd: this checkout's dqt, as run_train does
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "report.md").exists() and (tmp_path / "runs" / "curves_runs.png").exists()


def test_runs_of_older_versions_join_the_cell_of_the_default_they_had(tmp_path):
    # runs written before bad_data existed stopped on bad data, as bad_data=error does
    write_run(tmp_path / "runs" / "old", [0.5] * 5, num_agents=1, seed=1)
    config = OmegaConf.load(tmp_path / "runs" / "old" / ".hydra" / "config.yaml")
    del config["bad_data"]
    del config["model"]["levels"], config["model"]["critic_backup"]  # keys added later, at the values they had then
    OmegaConf.save(config, tmp_path / "runs" / "old" / ".hydra" / "config.yaml")
    write_run(tmp_path / "runs" / "new", [0.5] * 5, num_agents=1, seed=2)
    cells = report.group_cells([report.load_run(p) for p in report.find_run_dirs([tmp_path / "runs"])])
    assert len(cells) == 1 and len(cells[0].runs) == 2
