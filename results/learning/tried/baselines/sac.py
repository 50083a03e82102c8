"""Plain SAC (Haarnoja et al. 2018: 256x256, lr 3e-4, auto entropy, tau 0.005, UTD 1, 5k random steps, as CleanRL's
sac_continuous_action but for its critic and entropy lr of 1e-3, which `--q_lr 1e-3` gives, and its actor updated in
every step; CleanRL's twice every other step): a continuous actor-critic reference for the budget of dqt's gymnasium targets. Diagnostic only."""
import argparse, json, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, gymnasium as gym
p = argparse.ArgumentParser()
p.add_argument('--env', default='Reacher-v5'); p.add_argument('--seed', type=int, default=1)
p.add_argument('--steps', type=int, default=50000); p.add_argument('--eval_every', type=int, default=5000)
p.add_argument('--start', type=int, default=5000); p.add_argument('--out', default=None)
p.add_argument('--q_lr', type=float, default=3e-4)  # critics and entropy temperature
p.add_argument('--alpha_lr', type=float, default=None)  # entropy temperature's lr; default: --q_lr's
p.add_argument('--critic_only', type=int, default=0)  # K > 0: no actor, no entropy: act (with Gaussian noise 0.2) and back up by the argmax of min(Q1, Q2) over a K^d grid, as dqt does over its bins
p.add_argument('--hidden', type=int, default=256)  # width of every MLP's two hidden layers (dqt's model.dim is 64)
a = p.parse_args()
torch.manual_seed(a.seed); np.random.seed(a.seed); torch.set_num_threads(1)
env = gym.make(a.env); eval_env = gym.make(a.env); env.action_space.seed(a.seed)  # the random steps too, so a run repeats
od, ad = env.observation_space.shape[0], env.action_space.shape[0]
hi = torch.as_tensor(env.action_space.high, dtype=torch.float32)
h = a.hidden
mlp = lambda i, o: nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))
q1, q2, actor = mlp(od + ad, 1), mlp(od + ad, 1), mlp(od, 2 * ad)
q1t, q2t = mlp(od + ad, 1), mlp(od + ad, 1); q1t.load_state_dict(q1.state_dict()); q2t.load_state_dict(q2.state_dict())
qopt = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=a.q_lr)
aopt = torch.optim.Adam(actor.parameters(), lr=3e-4)
log_alpha = torch.zeros(1, requires_grad=True); alopt = torch.optim.Adam([log_alpha], lr=a.alpha_lr or a.q_lr)
def pi(o, det=False):
    mu, ls = actor(o).chunk(2, -1); ls = ls.clamp(-5, 2)
    if det: return torch.tanh(mu) * hi, None
    d = torch.distributions.Normal(mu, ls.exp()); u = d.rsample(); act = torch.tanh(u)
    logp = (d.log_prob(u) - torch.log(1 - act.pow(2) + 1e-6)).sum(-1)
    return act * hi, logp
N = a.steps; O = np.zeros((N, od), np.float32); A = np.zeros((N, ad), np.float32); R = np.zeros(N, np.float32)
O2 = np.zeros_like(O); D = np.zeros(N, np.float32); n = 0
import itertools
GRID = torch.as_tensor(list(itertools.product(np.linspace(-1, 1, 11), repeat=ad)), dtype=torch.float32)
CGRID = torch.as_tensor(list(itertools.product(np.linspace(-1, 1, max(a.critic_only, 2)), repeat=ad)), dtype=torch.float32)
def critic_argmax(qa, qb, obs, grid=CGRID):  # the action of the grid with the highest min(qa, qb) per row of obs, and that value
    b, g = obs.shape[0], len(grid)
    x = torch.cat([obs.repeat_interleave(g, 0), (grid * hi).repeat(b, 1)], 1)
    v = torch.min(qa(x), qb(x)).view(b, g)
    return grid[v.argmax(1)] * hi, v.amax(1)
def grid_act(o):  # the critic's argmax over the 11^d grid of bin centres: a discretised greedy policy on SAC's critic
    return critic_argmax(q1, q2, o, GRID)[0][0].numpy()
def evaluate(grid=False):
    rets = []
    for e in range(10):
        o, _ = eval_env.reset(seed=10_000 * a.seed + e); ret, done = 0.0, False
        while not done:
            with torch.no_grad():
                ot = torch.as_tensor(o, dtype=torch.float32)[None]
                act = grid_act(ot) if grid else (critic_argmax(q1, q2, ot)[0][0].numpy() if a.critic_only else pi(ot, det=True)[0][0].numpy())
            o, r, term, trunc, _ = eval_env.step(act); ret += r; done = term or trunc
        rets.append(ret)
    return float(np.mean(rets))
o, _ = env.reset(seed=a.seed); t0 = time.time(); log = []
for step in range(1, N + 1):
    if step <= a.start: act = env.action_space.sample()
    else:
        with torch.no_grad():
            ot = torch.as_tensor(o, dtype=torch.float32)[None]
            if a.critic_only: act = (critic_argmax(q1, q2, ot)[0][0] + 0.2 * hi * torch.randn(ad)).clamp(-hi, hi).numpy()
            else: act = pi(ot)[0][0].numpy()
    o2, r, term, trunc, _ = env.step(act)
    O[n], A[n], R[n], O2[n], D[n] = o, act, r, o2, float(term); n += 1; o = o2
    if term or trunc: o, _ = env.reset()
    if step > a.start:
        idx = np.random.randint(n, size=256)
        ob, ac, rw, ob2, dn = (torch.as_tensor(x[idx]) for x in (O, A, R, O2, D))
        with torch.no_grad():
            if a.critic_only: y = rw + 0.99 * (1 - dn) * critic_argmax(q1t, q2t, ob2)[1]
            else:
                a2, lp2 = pi(ob2); x2 = torch.cat([ob2, a2], 1)
                y = rw + 0.99 * (1 - dn) * (torch.min(q1t(x2), q2t(x2)).squeeze(1) - log_alpha.exp() * lp2)
        x = torch.cat([ob, ac], 1); ql = F.mse_loss(q1(x).squeeze(1), y) + F.mse_loss(q2(x).squeeze(1), y)
        qopt.zero_grad(); ql.backward(); qopt.step()
        if not a.critic_only:
            an, lp = pi(ob); xn = torch.cat([ob, an], 1)
            al = (log_alpha.exp().detach() * lp - torch.min(q1(xn), q2(xn)).squeeze(1)).mean()
            aopt.zero_grad(); al.backward(); aopt.step()
            alpha_loss = -(log_alpha * (lp.detach() - ad)).mean()  # target entropy -ad
            alopt.zero_grad(); alpha_loss.backward(); alopt.step()
        with torch.no_grad():
            for net, tgt in ((q1, q1t), (q2, q2t)):
                for pp, pt in zip(net.parameters(), tgt.parameters()): pt.lerp_(pp, 0.005)
    if step % a.eval_every == 0:
        log.append(dict(step=step, eval=evaluate(), grid=evaluate(True), t=time.time() - t0)); print(json.dumps(log[-1]), flush=True)
if a.out: json.dump(log, open(a.out, 'w'))
