"""The entry point's own behaviour: resume, refusing to overwrite a run, outputs."""
from __future__ import annotations

import json

import pytest

from conftest import newest_checkpoint, run_train, start_train
from dqt import generations

pytestmark = pytest.mark.slow

TOY = ("task=gym:toy_env:Combo-v0", "num_agents=1", "demos=0", "episode_length=1", "action_repeat=1", "bins=8",
       "num_envs=4", "seed_steps=40", "batch_size=16", "updates_per_step=0.25", "model.dim=16", "model.depth=1", "model.heads=2",
       "pretrain_updates=10", "eval_every=100", "eval_episodes=8", "log_every=100", "checkpoint_every=100", "progress=false",
       "wandb.mode=disabled")


def test_resume_continues_the_run_and_a_run_is_never_overwritten(tmp_path):
    first = run_train(*TOY, "train_steps=200", f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = newest_checkpoint(tmp_path, 0)
    assert saved["counters"]["env_steps"] == 200 and saved["learner"]["updates"] == 40  # (200 - 40) * 0.25: pretraining needs demos

    again = run_train(*TOY, "train_steps=400", f"hydra.run.dir={tmp_path}")
    assert again.returncode == 2
    assert "resume=false is not allowed" in again.stderr and "Traceback" not in again.stderr

    resumed = run_train(*TOY, "train_steps=400", "resume=true", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = newest_checkpoint(tmp_path, 0)
    assert final["counters"]["env_steps"] == 400 and final["learner"]["updates"] == 90  # 40 + 200 * 0.25
    assert final["replay"]["transitions_added"] == 400  # the first part's data was kept
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows if "eval/return" in r] == [100, 200, 300, 400]
    assert [r["updates"] for r in rows if "train/loss" in r] == [15, 40, 65, 90]



def test_a_run_resumed_before_learning_starts_maps_values_from_all_rewards_seen(tmp_path):
    # the value map of a gym: task is fixed when learning starts (after seed_steps), from the reward range
    # seen so far: a checkpoint before then carries that range, so the resumed run gets the whole run's map
    noisy = (*TOY, "threads=1", "noise.std=3.0", "seed_steps=100", "eval_every=200", "log_every=200",
             "reward_scale=map")  # the value map (MetaWorld's auto; gym: tasks learn on raw rewards by default)
    # the uninterrupted run alongside the split one (one core each)
    whole = start_train(*noisy, "train_steps=200", f"hydra.run.dir={tmp_path / 'whole'}", stderr=tmp_path / "whole.err")
    try:
        first = run_train(*noisy, "train_steps=100", f"hydra.run.dir={tmp_path / 'split'}")
        assert first.returncode == 0, first.stderr[-3000:]
        assert newest_checkpoint(tmp_path / "split", 0)["learner"]["updates"] == 0  # learning had not started
        second = run_train(*noisy, "train_steps=200", "resume=true", f"hydra.run.dir={tmp_path / 'split'}")
        assert second.returncode == 0, second.stderr[-3000:]
        assert whole.wait(timeout=300) == 0, (tmp_path / "whole.err").read_text()[-3000:]
    finally:  # a failed test leaves no process behind
        whole.kill()
        whole.wait()
    expected = newest_checkpoint(tmp_path / "whole", 0)["learner"]["value_map"]
    assert newest_checkpoint(tmp_path / "split", 0)["learner"]["value_map"] == expected
    assert expected[1] < 0  # noisy rewards below 0 were seen: the map is not the default one
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train/loss" in r][-1]
    assert [last["train/value_scale"], last["train/value_low"]] == expected  # logged as the learner holds it
    train_rows = [r for r in rows if "train/lr" in r]
    assert [r["updates"] > 0 for r in train_rows] == [False, True]  # the row at 100 comes before learning starts,
    assert ["train/value_scale" in r for r in train_rows] == [False, True]  # when the map is not yet set


def test_a_multirun_starts_one_job_per_combination_and_started_again_skips_finished_runs(tmp_path):
    sweep = ("--multirun", *TOY, "threads=1", "train_steps=200", "resume=auto", "seed=1,2",
             f"hydra.sweep.dir={tmp_path}")
    first = run_train(*sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # one job per seed, each with its own overrides, each run to the end
    seeds = [(tmp_path / job / ".hydra" / "overrides.yaml").read_text() for job in jobs]
    assert "seed=1" in seeds[0] and "seed=2" in seeds[1]
    for job in jobs:
        rows = [json.loads(line) for line in (tmp_path / job / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["env_steps"] == 200
    assert [g.step for g in generations.complete(tmp_path / "1")] == [200, 100]
    finished = {path: path.read_bytes() for path in (tmp_path / "0").rglob("*") if path.is_file()
                and ".hydra" not in path.parts}
    # job 1 is cut off while it writes its final generation: its rows at step 200 are logged, the generation
    # is not complete, so step 100's is the newest
    (generations.generation_dir(tmp_path / "1", 200) / generations.MANIFEST).unlink()

    again = run_train(*sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"dqt: {tmp_path / '0'} already finished at 200 steps, skipped" in again.stderr.splitlines()
    assert "unusable" not in again.stderr and "Traceback" not in again.stderr
    assert {path: path.read_bytes() for path in finished} == finished  # job 0: metrics and checkpoints untouched
    resumed = newest_checkpoint(tmp_path / "1", 0)
    assert resumed["counters"]["env_steps"] == 200 and resumed["learner"]["updates"] == 40
    evals = [json.loads(line)["env_steps"] for line in (tmp_path / "1" / "metrics.jsonl").read_text().splitlines()
             if "eval/return" in line]
    assert evals.count(100) == 1 and evals[-1] == 200  # continued from step 100, not started again

    # a single run is skipped before hydra rewrites anything, .hydra/ included
    record = (tmp_path / "0" / ".hydra" / "overrides.yaml").read_bytes()
    single = run_train(*TOY, "train_steps=200", "resume=auto", f"hydra.run.dir={tmp_path / '0'}")
    assert single.returncode == 0 and single.stderr.strip().splitlines() == [
        f"dqt: {tmp_path / '0'} already finished at 200 steps, skipped"], single.stderr
    assert (tmp_path / "0" / ".hydra" / "overrides.yaml").read_bytes() == record


def test_wandb_offline_run_needs_no_key_or_network(tmp_path):
    offline = [o for o in TOY if not o.startswith("wandb.mode")] + ["wandb.mode=offline"]
    result = run_train(*offline, "train_steps=100", f"hydra.run.dir={tmp_path}",
                       env={"WANDB_MODE": None, "WANDB_API_KEY": None})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_progress_bar_redraws_on_request_while_steps_stand_still(tmp_path, capsys):
    from dqt.logger import Logger

    logger = Logger(str(tmp_path), {"wandb": {"mode": "disabled"}, "progress": True}, True, total_steps=100)
    logger.progress(0, updates_left=1900)  # tqdm waits for steps (or a second) before drawing again
    assert "updates_left=1900" not in capsys.readouterr().err
    logger.progress(0, refresh=True, updates_left=1800)
    assert "updates_left=1800" in capsys.readouterr().err
    logger.close()


def test_noisy_rewards_are_logged_and_plateau_follows_the_eval_returns(tmp_path):
    # threads=1: with two threads a tiny model's updates slow down fivefold when the cores are busy
    result = run_train(*TOY, "threads=1", "train_steps=400", "eval_every=50", "log_every=50", "noise.std=3.0",
                       "noise.mean=0.5", "lr_schedule=plateau", "lr_plateau.patience=0", "lr_plateau.factor=0.5",
                       "lr_final=0.1", "lr=0.001", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/reward_mean" in r]
    assert len(train) == 8
    for r in train:
        # one-step episodes: the clean per-step rewards are the episode returns, 0 or 1
        assert r["train/clean_reward_mean"] == pytest.approx(r["train/episode_return"], abs=1e-12)
        assert r["train/clean_reward_std"] <= 0.5 < 2.0 < r["train/reward_std"]
    stored = sum(r["train/reward_mean"] for r in train) / len(train)  # 400 steps of N(0.5, 9) noise
    clean = sum(r["train/clean_reward_mean"] for r in train) / len(train)
    assert abs(stored - clean - 0.5) < 5 * 3.0 / 20

    # evaluation is clean: 8 episodes of reward 0 or 1
    assert all(float(r["eval/return"] * 8).is_integer() for r in rows if "eval/return" in r)

    # plateau, patience 0: each evaluation without a new best return halves the lr, down to 0.1 of it
    lr, best, expected = 1.0e-3, float("-inf"), []
    for r in rows:
        if "eval/return" in r:
            if r["eval/return"] > best:
                best = r["eval/return"]
            else:
                lr = max(lr * 0.5, 1.0e-4)
            expected.append(lr)
    assert [r["train/lr"] for r in train] == pytest.approx(expected, rel=1e-12)  # logged after each evaluation
    assert len(set(expected)) > 1
    saved = newest_checkpoint(tmp_path, 0)
    assert saved["learner"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1], rel=1e-12)


def test_noise_reaches_only_the_ranks_in_noise_agents(tmp_path):
    # 2 agents, noise on rank 1 only: rank 0's replay holds the toy's clean one-step returns (reward 0 or 1,
    # and the empty row after each episode's end), rank 1's a different Gaussian draw on every step
    toy = [o for o in TOY if not o.startswith("num_agents=")]
    result = run_train(*toy, "num_agents=2", "threads=1", "train_steps=200", "noise.std=3.0", "noise.agents=[1]",
                       f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    distinct = []
    for rank in (0, 1):
        replay = newest_checkpoint(tmp_path, rank)["replay"]
        assert replay["transitions_added"] == 200
        distinct.append(len(set(replay["nstep_return"][replay["sampleable"]].tolist())))
    assert distinct[0] <= 2 and distinct[1] >= 150, distinct


def test_wandb_gets_the_configured_tags(tmp_path, monkeypatch):
    import wandb

    from dqt.logger import _start_wandb

    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs) or "run")
    cfg = {"wandb": {"mode": "offline", "project": "dqt", "group": "scaling", "name": None, "tags": ["scaling"]}}
    assert _start_wandb(cfg, tmp_path) == "run"
    assert seen["tags"] == ["scaling"] and seen["group"] == "scaling"
    assert seen["config"] is cfg  # the cell's keys, so a sweep's runs can be told apart on the dashboard


def test_coarse_to_fine_run_stores_per_dimension_bins_and_holds_a_table_per_token(tmp_path):
    # bins=9 model.levels=2: the network holds two tokens of 3 bins per dimension; acting, replay and
    # evaluation keep the 9 per-dimension bins
    run = run_train(*TOY, "bins=9", "model.levels=2", "train_steps=200", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    saved = newest_checkpoint(tmp_path, 0)
    dims = saved["replay"]["bins"].shape[1]
    weights = saved["learner"]["model"]  # gym: two critics (model.critics=auto), members.0 and members.1
    assert weights["members.0.bin_embedding.weight"].shape[0] == dims * 2 * 3  # a table per token
    assert weights["members.1.advantage.weight"].shape[0] == 3
    stored = saved["replay"]["bins"][saved["replay"]["sampleable"]]
    assert stored.max() == 8 and stored.min() == 0  # per-dimension bins, not tokens (which stop at 2)
    assert saved["learner"]["updates"] == 40
