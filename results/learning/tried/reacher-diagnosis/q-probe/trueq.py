"""Learned Q against the true Q of the learned greedy policy (rollouts from copied MuJoCo states), Reacher.

For states along a hand controller's episodes (steps 0, 3, 10 of 10 episodes): Q^pi(s, a) = r(s, a) + the
discounted return of the run's greedy policy afterwards, over HORIZON steps in all (default 400, argv[2]: the
learned Q bootstraps through the time limit, so it estimates the value beyond it), for a = the greedy action,
the controller's action (binned) and (0, 0); beside each, the learned Q of the same action in reward units.

    PYTHONPATH=<a dqt checkout> .venv/bin/python trueq.py RUN_DIR [HORIZON]   (its newest checkpoint; the weights it evaluated)
"""
import sys, math, numpy as np, torch, gymnasium as gym
from pathlib import Path
from dqt.bench.policy import load_policy
from dqt.model import greedy_bins
from dqt.algorithm import to_bins, from_bins
torch.set_num_threads(1)
cfg, _, _, model, value_map = load_policy(Path(sys.argv[1]))
gamma, B = 0.99, cfg["bins"]
HORIZON = int(sys.argv[2]) if len(sys.argv) > 2 else 400  # what Q estimates: the time limit truncates, the value goes on (0.99^400 = 0.018)
L1, L2 = 0.1, 0.11
def controller(o):
    c1, c2, s1, s2, tx, ty, v1, v2 = o[:8]
    q1, q2 = math.atan2(s1, c1), math.atan2(s2, c2)
    c = np.clip((tx * tx + ty * ty - L1**2 - L2**2) / (2 * L1 * L2), -1, 1)
    best = None
    for sgn in (1, -1):
        g2 = sgn * math.acos(c)
        g1 = math.atan2(ty, tx) - math.atan2(L2 * math.sin(g2), L1 + L2 * math.cos(g2))
        d = [(g1 - q1 + math.pi) % (2 * math.pi) - math.pi, (g2 - q2 + math.pi) % (2 * math.pi) - math.pi]
        if best is None or abs(d[0]) + abs(d[1]) < abs(best[0]) + abs(best[1]):
            best = d
    return np.clip([0.5 * best[0] - 0.1 * v1, 0.5 * best[1] - 0.1 * v2], -1, 1)
def learned_q(o, b):
    with torch.no_grad():
        q = model(torch.tensor(o, dtype=torch.float32)[None], torch.tensor([[b[0]]]))[0, 1, b[1]]
    return value_map.unmap(float(q))
env = gym.make("Reacher-v5").unwrapped
def rollout(qpos, qvel, t, first):
    env.set_state(qpos, qvel)
    o, total, disc = None, 0.0, 1.0
    for k in range(t, t + HORIZON):
        if k == t:
            b = first
        else:
            b = greedy_bins(model, torch.tensor(o, dtype=torch.float32)[None])[0].tolist()
        o, r, *_ = env.step(from_bins(torch.tensor(b), B).numpy())
        total += disc * r; disc *= gamma
    return total
rows = []
for ep in range(10):
    env.reset(seed=ep); o = env._get_obs()
    for t in range(50):
        cb = to_bins(torch.tensor(controller(o)), B).tolist()
        if t in (0, 3, 10):
            g = greedy_bins(model, torch.tensor(o, dtype=torch.float32)[None])[0].tolist()
            qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
            row = {}
            for name, b in (("greedy", g), ("ctrl", cb), ("still", [B // 2, B // 2])):
                row[name] = (rollout(qpos, qvel, t, b), learned_q(o, b))
            env.set_state(qpos, qvel)
            rows.append(row)
            print(f"ep{ep} t{t:2d} greedy {g} ctrl {cb} | true Q^pi: greedy {row['greedy'][0]:7.2f} ctrl {row['ctrl'][0]:7.2f} still {row['still'][0]:7.2f}"
                  f" | learned: greedy {row['greedy'][1]:7.2f} ctrl {row['ctrl'][1]:7.2f} still {row['still'][1]:7.2f}")
        o, *_ = env.step(from_bins(torch.tensor(cb), B).numpy())
for name in ("ctrl", "still"):
    true_gap = np.array([r["greedy"][0] - r[name][0] for r in rows]); learned_gap = np.array([r["greedy"][1] - r[name][1] for r in rows])
    print(f"greedy - {name}: true mean {true_gap.mean():.2f} (share > 0: {(true_gap > 0).mean():.2f}), learned mean {learned_gap.mean():.2f}; corr {np.corrcoef(true_gap, learned_gap)[0,1]:.2f}")
