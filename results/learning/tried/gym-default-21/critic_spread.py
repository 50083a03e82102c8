# The probe behind explore.optimism=1 (twenty-first session): how far the critics disagree on Hopper and how often a
# bonus of beta x their std changes the greedy action. PYTHONPATH=. python critic_spread.py RUN_DIR [STEP]
import sys, torch, numpy as np
from pathlib import Path
from dqt.bench.policy import load_policy
from dqt.envs import make_task
import gymnasium as gym
run=Path(sys.argv[1]); step=int(sys.argv[2]) if len(sys.argv)>2 else None
cfg, task, gen, model, vm = load_policy(run, step)
env=gym.make("Hopper-v5"); obs=[]
o,_=env.reset(seed=0)
rng=np.random.default_rng(0)
for t in range(2000):
    o,r,term,trunc,_=env.step(rng.uniform(-1,1,3)*0.3)
    obs.append(o)
    if term or trunc: o,_=env.reset()
obs=torch.tensor(np.array(obs),dtype=torch.float32)
from dqt.model import greedy_bins
with torch.inference_mode():
    b=greedy_bins(model,obs)
    q=model(obs, model.action_tokens(b)[:, :-1], every_critic=True)  # [B, tokens, critics, bins]
    std=q.std(-2,correction=0); mean=q.mean(-2)
    gap=(mean.max(-1).values - mean.median(-1).values)
    print("std over critics: median", std.median().item(), "90%", std.quantile(0.9).item(), "max", std.max().item())
    print("mean Q median", mean.median().item(), "gap max-median bin", gap.median().item())
    for beta in (0.5,1,2,4):
        bo=greedy_bins(model,obs,optimism=beta)
        print(beta, "share of states whose action changes", (bo!=b).any(1).float().mean().item(), "per dim", (bo!=b).float().mean(0).tolist())
