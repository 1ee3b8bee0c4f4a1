"""RL math (backends/train/rl_math) against a PyTorch reference written here from the
published formulas (slime/utils/ppo_utils.py, Schulman's KL estimators, PPO dual clip,
REINFORCE++, GAE). Values and gradients within 1e-6 in fp32, on batches that include
clipped, dual-clipped and masked cases."""

import json
import os
import subprocess

import pytest
import torch

TOOL = os.path.join(os.environ.get("ANVIL_TEST_TOOLS", "build/tests"), "rl_math_tool")


def call(requests):
    proc = subprocess.run([TOOL], input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def ref_policy_loss(ppo_kl, adv, eps, eps_high, eps_c):
    ratio = (-ppo_kl).exp()
    l1 = -ratio * adv
    l2 = -ratio.clamp(1 - eps, 1 + eps_high) * adv
    clipped = torch.maximum(l1, l2)
    clipfrac = torch.gt(l2, l1).float()
    if eps_c is not None:
        clipped = torch.where(adv < 0, torch.min(-eps_c * adv, clipped), clipped)
    return clipped, clipfrac


def ref_kl(lp, base, kind, ir):
    log_ratio = lp.float() - base.float()
    if kind == "k1":
        kl = log_ratio
    elif kind == "k2":
        kl = log_ratio ** 2 / 2.0
    else:
        kl = (-log_ratio).exp() - 1 - (-log_ratio)
    if ir is not None:
        kl = ir * kl
    if kind == "low_var_kl":
        kl = torch.clamp(kl, min=-10, max=10)
    return kl


@pytest.mark.parametrize("eps_c", [None, 3.0])
def test_policy_loss_values_and_grads(eps_c):
    g = torch.Generator().manual_seed(0)
    n = 400
    ppo_kl = torch.randn(n, generator=g) * 0.5  # ratios well outside [0.8, 1.28]
    adv = torch.randn(n, generator=g)
    w = torch.rand(n, generator=g)
    (r,) = call([{"op": "policy_loss", "ppo_kl": ppo_kl.tolist(), "advantages": adv.tolist(),
                  "eps_clip": 0.2, "eps_clip_high": 0.28, "eps_clip_c": eps_c, "weights": w.tolist()}])
    x = ppo_kl.clone().requires_grad_(True)
    loss, clipfrac = ref_policy_loss(x, adv, 0.2, 0.28, eps_c)
    (grad,) = torch.autograd.grad((loss * w).sum(), x)
    assert 0 < clipfrac.mean() < 1  # both branches exercised
    if eps_c is not None:
        assert ((adv < 0) & (-eps_c * adv < torch.maximum(-(-ppo_kl).exp() * adv,
                 -(-ppo_kl).exp().clamp(0.8, 1.28) * adv))).any()  # dual clip active
    assert torch.allclose(t(r["loss"]), loss.detach(), atol=1e-6, rtol=0)
    assert torch.equal(t(r["clipfrac"]), clipfrac)
    assert torch.allclose(t(r["grad"]), grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
@pytest.mark.parametrize("with_ir", [False, True])
def test_kl_estimators_values_and_grads(kind, with_ir):
    g = torch.Generator().manual_seed(1)
    n = 300
    lp = -torch.rand(n, generator=g) * 5
    base = -torch.rand(n, generator=g) * 5
    base[:10] = lp[:10] + 15  # large ratios: low_var_kl's clamp is exercised
    ir = torch.rand(n, generator=g) * 2 if with_ir else None
    w = torch.rand(n, generator=g)
    (r,) = call([{"op": "kl", "logp": lp.tolist(), "logp_base": base.tolist(), "type": kind,
                  "importance_ratio": ir.tolist() if ir is not None else None, "weights": w.tolist()}])
    x = lp.clone().requires_grad_(True)
    kl = ref_kl(x, base, kind, ir)
    (grad,) = torch.autograd.grad((kl * w).sum(), x)
    assert torch.allclose(t(r["kl"]), kl.detach(), atol=1e-6, rtol=1e-6)
    assert torch.allclose(t(r["grad"]), grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("divide_std", [True, False])
def test_group_normalisation(divide_std):
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 2.0, -1.0, 3.0])
    (r,) = call([{"op": "group_norm", "rewards": rewards.tolist(), "group_size": 4,
                  "divide_std": divide_std}])
    g = rewards.view(-1, 4)
    g = g - g.mean(-1, keepdim=True)
    if divide_std:
        g = g / (g.std(-1, keepdim=True) + 1e-6)
    assert torch.allclose(t(r["out"]), g.flatten(), atol=1e-6, rtol=0)
    (bad,) = call([{"op": "group_norm", "rewards": [1.0, 2.0, 3.0], "group_size": 2, "divide_std": True}])
    assert "n-samples-per-prompt" in bad["error"]


def test_reinforce_plus_plus_returns_with_mask():
    kl = torch.tensor([0.1, -0.2, 0.3, 0.05, 0.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])  # last unmasked token is index 2
    (r,) = call([{"op": "rpp", "reward": 1.5, "kl": kl.tolist(), "mask": mask.tolist(),
                  "kl_coef": 0.1, "gamma": 0.9}])
    tok = -0.1 * kl
    tok[2] += 1.5
    ret, run = torch.zeros(5), 0.0
    for i in reversed(range(5)):
        run = tok[i] + 0.9 * run
        ret[i] = run
    assert torch.allclose(t(r["out"]), ret, atol=1e-6, rtol=0)


def test_gae():
    g = torch.Generator().manual_seed(2)
    values, rewards = torch.randn(20, generator=g), torch.randn(20, generator=g)
    (r,) = call([{"op": "gae", "values": values.tolist(), "rewards": rewards.tolist(),
                  "gamma": 0.99, "lambd": 0.95}])
    last, adv = 0.0, []
    for i in reversed(range(20)):
        nxt = values[i + 1] if i < 19 else 0.0
        delta = rewards[i] + 0.99 * nxt - values[i]
        last = delta + 0.99 * 0.95 * last
        adv.append(last)
    adv = torch.tensor(adv[::-1])
    assert torch.allclose(t(r["adv"]), adv, atol=1e-5, rtol=0)
    assert torch.allclose(t(r["ret"]), adv + values, atol=1e-5, rtol=0)
