"""Plain DQN with a joint discrete action set (bins^d) on a gymnasium Box task: is the target reachable by a
discretised Q-learner at all, with the same budget? Diagnostic only, not part of dqt."""
import argparse, json, itertools, time
import numpy as np, torch, torch.nn as nn, gymnasium as gym

p = argparse.ArgumentParser()
p.add_argument('--env', default='Reacher-v5'); p.add_argument('--seed', type=int, default=1)
p.add_argument('--steps', type=int, default=50000); p.add_argument('--bins', type=int, default=11)
p.add_argument('--n', type=int, default=3); p.add_argument('--gamma', type=float, default=0.99)
p.add_argument('--lr', type=float, default=3e-4); p.add_argument('--eps', type=float, default=0.1)
p.add_argument('--width', type=int, default=256); p.add_argument('--ln', type=int, default=1)
p.add_argument('--utd', type=float, default=1.0); p.add_argument('--eval_every', type=int, default=5000)
p.add_argument('--out', default=None); p.add_argument('--cont', type=int, default=0)
p.add_argument('--soft', type=float, default=0)  # >0: soft Q-learning, Boltzmann acting, alpha tuned to entropy soft*log(A)
p.add_argument('--twin', type=int, default=0)  # clipped double Q: min of two nets in the target
a = p.parse_args()
torch.manual_seed(a.seed); np.random.seed(a.seed); torch.set_num_threads(1)
env = gym.make(a.env); eval_env = gym.make(a.env)
obs_dim = env.observation_space.shape[0]; d = env.action_space.shape[0]
lo, hi = env.action_space.low, env.action_space.high
grid = np.array(list(itertools.product(np.linspace(-1, 1, a.bins), repeat=d)), dtype=np.float32)
to_env = lambda idx: lo + (grid[idx] + 1) * 0.5 * (hi - lo)
A = len(grid)
def net():
    layers, w = [], obs_dim + (d if a.cont else 0)
    for _ in range(2):
        layers += [nn.Linear(w, a.width)] + ([nn.LayerNorm(a.width)] if a.ln else []) + [nn.ReLU()]; w = a.width
    m = nn.Sequential(*layers, nn.Linear(w, 1 if a.cont else A))
    if not a.cont: return m
    G = torch.as_tensor(grid)
    class Cont(nn.Module):  # Q(s, a) with the action as input, evaluated at every grid action
        def __init__(s2): super().__init__(); s2.m = m
        def at(s2, o, idx): return s2.m(torch.cat([o, G[idx]], -1)).squeeze(-1)
        def forward(s2, o):
            B = o.shape[0]
            x = torch.cat([o[:, None].expand(B, A, obs_dim), G[None].expand(B, A, d)], -1)
            return s2.m(x).squeeze(-1)
    return Cont()
q, qt = net(), net(); qt.load_state_dict(q.state_dict())
params = list(q.parameters())
if a.twin:
    q2, q2t = net(), net(); q2t.load_state_dict(q2.state_dict()); params += list(q2.parameters())
opt = torch.optim.Adam(params, lr=a.lr)
log_alpha = torch.tensor(-3.0, requires_grad=True); aopt = torch.optim.Adam([log_alpha], lr=3e-4)
H_target = a.soft * np.log(A)
N = a.steps + 10
O = np.zeros((N, obs_dim), np.float32); O2 = np.zeros_like(O); ACT = np.zeros(N, np.int64)
R = np.zeros(N, np.float32); D = np.zeros(N, np.float32); Gm = np.zeros(N, np.float32)
size = 0
def evaluate():
    rets = []
    for e in range(10):
        o, _ = eval_env.reset(seed=10_000 * a.seed + e); ret, done = 0.0, False
        while not done:
            with torch.no_grad(): i = int(q(torch.as_tensor(o, dtype=torch.float32)[None]).argmax())
            o, r, term, trunc, _ = eval_env.step(to_env(i)); ret += r; done = term or trunc
        rets.append(ret)
    return float(np.mean(rets))
o, _ = env.reset(seed=a.seed); ep = []  # (o, act, r, o2, term)
log = []; t0 = time.time(); updates_due = 0.0
for step in range(1, a.steps + 1):
    if step <= 2000 or (not a.soft and np.random.rand() < a.eps): i = np.random.randint(A)
    elif a.soft:
        with torch.no_grad():
            i = int(torch.distributions.Categorical(logits=q(torch.as_tensor(o, dtype=torch.float32)[None]) / log_alpha.exp()).sample())
    else:
        with torch.no_grad(): i = int(q(torch.as_tensor(o, dtype=torch.float32)[None]).argmax())
    o2, r, term, trunc, _ = env.step(to_env(i)); ep.append((o, i, r, o2, term)); o = o2
    if term or trunc:
        T = len(ep)
        for t in range(T):  # n-step window
            m = min(a.n, T - t); Rn = sum(a.gamma ** k * ep[t + k][2] for k in range(m))
            last = ep[t + m - 1]
            O[size], ACT[size], R[size], O2[size] = ep[t][0], ep[t][1], Rn, last[3]
            D[size] = 0.0 if last[4] else a.gamma ** m; size += 1
        ep = []; o, _ = env.reset()
    if step > 2000 and size > 0:
        updates_due += a.utd
        while updates_due >= 1:
            updates_due -= 1
            idx = np.random.randint(size, size=256)
            ob, ac, rw, ob2, dc = (torch.as_tensor(x[idx]) for x in (O, ACT, R, O2, D))
            with torch.no_grad():
                alpha = log_alpha.exp()
                if a.soft:
                    tq = torch.min(qt(ob2), q2t(ob2)) if a.twin else qt(ob2)
                    nxt = alpha * torch.logsumexp(tq / alpha, 1)  # soft value of softmax(tq/alpha)
                else:
                    best = q(ob2).argmax(1)
                    nxt = qt.at(ob2, best) if a.cont else qt(ob2).gather(1, best[:, None]).squeeze(1)
                    if a.twin: nxt = torch.min(nxt, q2t(ob2).gather(1, best[:, None]).squeeze(1))
                y = rw + dc * nxt
            qa = q.at(ob, ac) if a.cont else q(ob).gather(1, ac[:, None]).squeeze(1)
            loss = nn.functional.mse_loss(qa, y)
            if a.twin: loss = loss + nn.functional.mse_loss(q2(ob).gather(1, ac[:, None]).squeeze(1), y)
            if a.soft:
                with torch.no_grad(): logits = q(ob)
                pi_ = torch.softmax(logits / log_alpha.exp().detach(), 1)
                H = -(pi_ * torch.log_softmax(logits / log_alpha.exp(), 1)).sum(1)
                al = (log_alpha * (H.detach() - H_target)).mean()  # alpha up when the entropy is below target
                aopt.zero_grad(); al.backward(); aopt.step()
            opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(q.parameters(), 10); opt.step()
            with torch.no_grad():
                for pp, pt in zip(q.parameters(), qt.parameters()): pt.lerp_(pp, 0.005)
                if a.twin:
                    for pp, pt in zip(q2.parameters(), q2t.parameters()): pt.lerp_(pp, 0.005)
    if step % a.eval_every == 0:
        ev = evaluate(); log.append(dict(step=step, eval=ev, alpha=float(log_alpha.exp()), loss=float(loss), q=float(qa.mean()), t=time.time() - t0))
        print(json.dumps(log[-1]), flush=True)
if a.out: json.dump(log, open(a.out, 'w'))
