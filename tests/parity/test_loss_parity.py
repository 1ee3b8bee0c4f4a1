"""Loss assembly and advantages (backends/train/loss) against a PyTorch reference written
here from slime's published definitions (slime/backends/megatron_utils/loss.py:
policy_loss_function, sft_loss_function, value_loss_function,
compute_advantages_and_returns; slime/utils/ppo_utils.py; slime/ray/rollout.py reward
post-processing). The reference sees the whole step at once; anvil computes it micro-batch
by micro-batch with step-level reducer weights, so agreement also pins gradient
accumulation. Values and gradients within 1e-6 (fp32)."""

import json
import os
import subprocess

import pytest
import torch

TOOL = os.path.join(os.environ.get("ANVIL_TEST_TOOLS", "build/tests"), "rl_math_tool")
TOL = 1e-6


def call(requests):
    proc = subprocess.run([TOOL], input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ---- reference (whole step, per-sample lists as slime) ----

def ref_sum_of_sample_mean(x_list, masks, denoms, per_token):
    if per_token:
        return sum((x * m).sum() for x, m in zip(x_list, masks))
    return sum((x * m).sum() / torch.clamp_min(d, 1) for x, m, d in zip(x_list, masks, denoms))


def ref_kl(lp, base, kind, ir=None):
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


def ref_step(opts, samples, num_rollouts):
    """Returns (loss, metrics, leaf tensors) for the whole step."""
    per_token = opts.get("calculate_per_token_loss", False)
    lp = [torch.tensor(s["logprobs"], requires_grad=True) for s in samples]
    ent = [torch.tensor(s["entropy"], requires_grad=True) for s in samples]
    masks = [torch.tensor(s["loss_mask"]) for s in samples]
    rids = [s["rollout_id"] for s in samples]
    totals = {}
    for r, m in zip(rids, masks):
        totals[r] = totals.get(r, 0.0) + float(m.sum())
    denoms = [torch.tensor(totals[r]) for r in rids]
    # the step-level normaliser Megatron applies (loss * num_mbs / gbs / num_mbs, or / tokens)
    if per_token:
        scale = 1.0 / sum(max(float(m.sum()), 1.0) for m in masks)
    else:
        scale = 1.0 / num_rollouts

    def red(x):
        lens = [len(s["logprobs"]) for s in samples]
        return ref_sum_of_sample_mean(list(x.split(lens)), masks, denoms, per_token) * scale

    loss_type = opts.get("loss_type", "policy_loss")
    if loss_type == "sft_loss":
        loss = -red(torch.cat(lp))
        return loss, {"loss": loss.item()}, lp, ent, []
    if loss_type == "value_loss":
        values = [torch.tensor(s["values"], requires_grad=True) for s in samples]
        v, old = torch.cat(values), torch.cat([torch.tensor(s["old_values"]) for s in samples])
        ret = torch.cat([torch.tensor(s["returns"]) for s in samples])
        clip = opts.get("value_clip", 0.2)
        vclipped = old + (v - old).clamp(-clip, clip)
        loss = red(torch.max((vclipped - ret) ** 2, (v - ret) ** 2))
        return loss, {"value_loss": loss.item(),
                      "value_clipfrac": red(((v - old).abs() > clip).float()).item()}, lp, ent, values

    est = opts.get("advantage_estimator", "grpo")
    eps, eps_high = opts.get("eps_clip", 0.2), opts.get("eps_clip_high", 0.2)
    eps_c = opts.get("eps_clip_c")
    adv = torch.cat([torch.tensor(s["advantages"]) for s in samples])
    use_rollout = opts.get("use_rollout_logprobs", False)
    if use_rollout:
        old_list = [torch.tensor(s["rollout_logprobs"]) for s in samples]
    else:
        old_list = [torch.tensor(s["old_logprobs"]) for s in samples]
    train_for_tis = [torch.tensor(s["old_logprobs"]) for s in samples]
    if est == "gspo":
        kls = [((o - l) * m).sum() / torch.clamp_min(m.sum(), 1) for l, o, m in zip(lp, old_list, masks)]
        ppo_kl = torch.cat([k.expand_as(l) for k, l in zip(kls, lp)])
    else:
        ppo_kl = torch.cat(old_list) - torch.cat(lp)
    logp = torch.cat(lp)
    old = torch.cat(old_list)
    ratio = (-ppo_kl).exp()
    if est == "cispo":
        trunc = torch.clamp(ratio, min=1 - eps, max=1 + eps_high)
        pg = -trunc.detach() * adv * logp
        clipfrac = (trunc != ratio).float()
    else:
        l1 = -ratio * adv
        l2 = -ratio.clamp(1 - eps, 1 + eps_high) * adv
        clipped = torch.maximum(l1, l2)
        clipfrac = torch.gt(l2, l1).float()
        if eps_c is not None:
            clipped = torch.where(adv < 0, torch.min(-eps_c * adv, clipped), clipped)
        pg = clipped
    metrics = {}
    if opts.get("use_tis") or opts.get("get_mismatch_metrics"):
        rlp = torch.cat([torch.tensor(s["rollout_logprobs"]) for s in samples])
        tis = torch.exp(torch.cat(train_for_tis) - rlp)
        w = torch.clamp(tis, min=opts.get("tis_clip_low", 0.0), max=opts.get("tis_clip", 2.0))
        metrics["ois"] = red(ratio).item()
        metrics["tis"] = red(tis).item()
        metrics["tis_clipfrac"] = red((w != tis).float()).item()
        metrics["tis_abs"] = red((tis - 1).abs()).item()
        if opts.get("use_tis"):
            pg = pg * w
    pg_loss = red(pg)
    entropy_loss = red(torch.cat(ent))
    loss = pg_loss - opts.get("entropy_coef", 0.0) * entropy_loss
    if opts.get("use_kl_loss"):
        ref = torch.cat([torch.tensor(s["ref_logprobs"]) for s in samples])
        ir = torch.exp(logp - old) if opts.get("use_unbiased_kl") else None
        kl_loss = red(ref_kl(logp, ref, opts.get("kl_loss_type", "k1"), ir))
        loss = loss + opts.get("kl_loss_coef", 0.0) * kl_loss
        metrics["kl_loss"] = kl_loss.item()
    if "rollout_logprobs" in samples[0]:
        rlp = torch.cat([torch.tensor(s["rollout_logprobs"]) for s in samples])
        cmp = logp if use_rollout else old
        metrics["train_rollout_logprob_abs_diff"] = red((cmp - rlp).abs()).item()
    mask = torch.cat(masks) > 0
    metrics.update({"loss": loss.item(), "pg_loss": pg_loss.item(),
                    "entropy_loss": entropy_loss.item(), "pg_clipfrac": red(clipfrac).item(),
                    "ppo_kl": red(ppo_kl).item(),
                    "ratio_max": ratio[mask].max().item(), "ratio_min": ratio[mask].min().item()})
    return loss, metrics, lp, ent, []


def make_samples(seed, n=6, rollout_ids=None, with_rollout=True, with_ref=True, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        r = int(torch.randint(3, 12, (1,), generator=g))
        lp = -torch.rand(r, generator=g) * 3
        mask = (torch.rand(r, generator=g) > 0.25).float()
        old = (lp + torch.randn(r, generator=g) * spread).clamp(max=0)
        adv = torch.randn(r, generator=g) * 2
        if i == 4:
            # ratios above the dual-clip bound with negative advantages
            old[::2] = lp[::2] - 1.5
            adv[::2] = -adv[::2].abs()
        if i == 2:
            mask[:] = 0.0  # a fully masked sample (multi-turn tool output, or removed)
        mask[0] = mask[0] if i == 2 else 1.0
        s = {
            "logprobs": lp.tolist(),
            "entropy": (torch.rand(r, generator=g) * 2).tolist(),
            # large log-ratio spread: ratios far outside the clip range, both signs of advantage
            "old_logprobs": old.tolist(),
            "advantages": adv.tolist(),
            "loss_mask": mask.tolist(),
            "rollout_id": i if rollout_ids is None else rollout_ids[i],
        }
        if with_rollout:
            s["rollout_logprobs"] = (lp + torch.randn(r, generator=g) * spread).clamp(max=0).tolist()
        if with_ref:
            s["ref_logprobs"] = (lp + torch.randn(r, generator=g) * spread).clamp(max=0).tolist()
        out.append(s)
    return out


CASES = {
    "grpo_default": {},
    "clip_higher_dual_clip": {"eps_clip": 0.2, "eps_clip_high": 0.28, "eps_clip_c": 3.0},
    "entropy_and_kl_k1": {"entropy_coef": 0.01, "use_kl_loss": True, "kl_loss_coef": 0.1},
    "kl_k2": {"use_kl_loss": True, "kl_loss_coef": 0.3, "kl_loss_type": "k2"},
    "kl_k3": {"use_kl_loss": True, "kl_loss_coef": 0.3, "kl_loss_type": "k3"},
    "kl_low_var_unbiased": {"use_kl_loss": True, "kl_loss_coef": 0.3,
                            "kl_loss_type": "low_var_kl", "use_unbiased_kl": True},
    "tis": {"use_tis": True, "tis_clip": 1.5, "tis_clip_low": 0.5},
    "tis_rollout_logprobs": {"use_tis": True, "use_rollout_logprobs": True},
    "mismatch_metrics_only": {"get_mismatch_metrics": True},
    "per_token": {"calculate_per_token_loss": True, "entropy_coef": 0.02},
    "gspo": {"advantage_estimator": "gspo", "eps_clip": 3e-4, "eps_clip_high": 4e-4},
    "cispo": {"advantage_estimator": "cispo", "eps_clip": 1.0, "eps_clip_high": 0.28},
    "reinforce_pp": {"advantage_estimator": "reinforce_plus_plus", "use_tis": True},
    "sft": {"loss_type": "sft_loss"},
    "sft_per_token": {"loss_type": "sft_loss", "calculate_per_token_loss": True},
}


GROUPINGS = ["one_mb", "split_mbs", "multi_sample_rollouts"]


def step_case(name, grouping):
    rollout_ids = [0, 0, 1, 2, 2, 3] if grouping == "multi_sample_rollouts" else None
    samples = make_samples(sorted(CASES).index(name), rollout_ids=rollout_ids)
    num_rollouts = len(set(s["rollout_id"] for s in samples))
    mbs = [[0, 1, 2, 3, 4, 5]] if grouping == "one_mb" else [[0, 3], [1], [2, 4, 5]]
    return samples, num_rollouts, {"op": "step_loss", "options": CASES[name], "samples": samples,
                                   "num_rollouts": num_rollouts, "micro_batches": mbs}


@pytest.fixture(scope="module")
def step_results():
    # One tool process for every case (LibTorch start-up dominates otherwise).
    keys = [(n, g) for n in sorted(CASES) for g in GROUPINGS]
    return dict(zip(keys, call([step_case(n, g)[2] for n, g in keys])))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_step_loss_matches_reference(name, grouping, step_results):
    opts = CASES[name]
    samples, num_rollouts, _ = step_case(name, grouping)
    r = step_results[(name, grouping)]
    assert "error" not in r, r
    loss, metrics, lp, ent, _ = ref_step(opts, samples, num_rollouts)
    loss.backward()
    assert abs(r["loss"] - loss.item()) <= TOL * max(1.0, abs(loss.item()))
    for k, v in metrics.items():
        assert k in r["metrics"], (k, r["metrics"].keys())
        assert abs(r["metrics"][k] - v) <= TOL * max(1.0, abs(v)), (k, r["metrics"][k], v)
    for i, (l, e) in enumerate(zip(lp, ent)):
        torch.testing.assert_close(torch.tensor(r["grads"][i]["logprobs"]), l.grad,
                                   atol=TOL, rtol=TOL, msg=f"sample {i} d/dlogprobs")
        eg = e.grad if e.grad is not None else torch.zeros_like(e)
        torch.testing.assert_close(torch.tensor(r["grads"][i]["entropy"]), eg,
                                   atol=TOL, rtol=TOL, msg=f"sample {i} d/dentropy")


def test_clip_cases_are_exercised():
    # The generated batches must hit every branch the acceptance names.
    samples = make_samples(7)
    lp = torch.cat([torch.tensor(s["logprobs"]) for s in samples])
    old = torch.cat([torch.tensor(s["old_logprobs"]) for s in samples])
    adv = torch.cat([torch.tensor(s["advantages"]) for s in samples])
    rlp = torch.cat([torch.tensor(s["rollout_logprobs"]) for s in samples])
    ratio = (lp - old).exp()
    assert ((ratio > 1.28) & (adv > 0)).any() and ((ratio < 0.8) & (adv < 0)).any()
    assert ((ratio * adv < -3.0 * adv.abs()) | ((adv < 0) & (ratio > 3.0))).any()  # dual clip
    tis = (old - rlp).exp()
    assert (tis > 1.5).any() and (tis < 0.5).any()  # truncated IS both sides
    assert any(sum(s["loss_mask"]) < len(s["loss_mask"]) for s in samples)


def test_value_loss_matches_reference():
    g = torch.Generator().manual_seed(3)
    samples = []
    for i in range(4):
        r = 5 + i
        samples.append({"logprobs": [-1.0] * r, "entropy": [0.0] * r,
                        "loss_mask": [1.0] * (r - 1) + [0.0], "rollout_id": i,
                        "values": torch.randn(r, generator=g).tolist(),
                        "old_values": torch.randn(r, generator=g).mul(0.3).tolist(),
                        "returns": torch.randn(r, generator=g).tolist()})
    opts = {"loss_type": "value_loss", "value_clip": 0.2}
    (r,) = call([{"op": "step_loss", "options": opts, "samples": samples, "num_rollouts": 4,
                  "micro_batches": [[0, 1], [2, 3]]}])
    loss, metrics, _, _, values = ref_step(opts, samples, 4)
    loss.backward()
    assert abs(r["loss"] - loss.item()) <= TOL
    for k, v in metrics.items():
        assert abs(r["metrics"][k] - v) <= TOL, k
    for i, v in enumerate(values):
        torch.testing.assert_close(torch.tensor(r["grads"][i]["values"]), v.grad, atol=TOL, rtol=TOL)


# ---- advantages ----

def ref_post_process(raw, est, group, norm=True, std_norm=True):
    if est not in ("grpo", "gspo", "cispo", "reinforce_plus_plus_baseline") or not norm:
        return raw
    r = torch.tensor(raw, dtype=torch.float).reshape(-1, group)
    r = r - r.mean(dim=-1, keepdim=True)
    if est in ("grpo", "gspo", "cispo") and std_norm:
        r = r / (r.std(dim=-1, keepdim=True) + 1e-6)
    return r.flatten().tolist()


def ref_advantages(opts, rewards, samples):
    est = opts.get("estimator", "grpo")
    kl_coef = opts.get("kl_coef", 0.0)
    lps = [torch.tensor(s["logprobs"]) for s in samples]
    masks = [torch.tensor(s["loss_mask"]) for s in samples]
    if kl_coef == 0:
        kl = [torch.zeros_like(x) for x in lps]
    else:
        kl = [ref_kl(lp, torch.tensor(s["ref_logprobs"]), opts.get("kl_loss_type", "k1"))
              for lp, s in zip(lps, samples)]
    gamma, lambd = opts.get("gamma", 1.0), opts.get("lambd", 1.0)
    if est in ("grpo", "gspo", "cispo"):
        adv = [torch.ones_like(k) * r for k, r in zip(kl, rewards)]
        ret = adv
    elif est == "reinforce_plus_plus":
        ret = []
        for r, k, m in zip(rewards, kl, masks):
            tr = -kl_coef * k
            last = int(m.nonzero()[-1])
            tr[last] += r
            out, run = torch.zeros_like(tr), 0.0
            for t in reversed(range(len(tr))):
                run = tr[t] + gamma * run
                out[t] = run
            ret.append(out)
        adv = ret
    elif est == "reinforce_plus_plus_baseline":
        adv = [torch.ones_like(k) * r - kl_coef * k for k, r in zip(kl, rewards)]
        ret = adv
    elif est == "ppo":
        adv, ret = [], []
        for r, k, s in zip(rewards, kl, samples):
            v = torch.tensor(s["values"], dtype=torch.float64)
            tr = (k * -kl_coef).double()
            tr[-1] += r
            a, last = torch.zeros_like(v), 0.0
            for t in reversed(range(len(v))):
                nv = v[t + 1] if t + 1 < len(v) else 0.0
                last = tr[t] + gamma * nv - v[t] + gamma * lambd * last
                a[t] = last
            adv.append(a.float())
            ret.append((a + v).float())
    if opts.get("normalize_advantages"):
        allv, m = torch.cat(adv), torch.cat(masks)
        n = m.sum()
        mean = (allv * m).sum() / n
        var = (allv ** 2 * m).sum() / n - mean ** 2
        var = var * n / (n - 1)
        white = (allv - mean) * torch.rsqrt(var + 1e-8)
        adv = list(white.split([len(a) for a in adv]))
    return adv, ret


ADV_CASES = [
    {"estimator": "grpo"},
    {"estimator": "grpo", "grpo_std_normalization": False},  # Dr.GRPO
    {"estimator": "grpo", "kl_coef": 0.1, "kl_loss_type": "k3", "normalize_advantages": True},
    {"estimator": "gspo"},
    {"estimator": "cispo", "rewards_normalization": False},
    {"estimator": "reinforce_plus_plus", "kl_coef": 0.05, "gamma": 0.99},
    {"estimator": "reinforce_plus_plus_baseline", "kl_coef": 0.05, "normalize_advantages": True},
    {"estimator": "ppo", "kl_coef": 0.02, "gamma": 0.95, "lambd": 0.9},
]


@pytest.mark.parametrize("case", range(len(ADV_CASES)))
def test_advantages_match_reference(case):
    opts = ADV_CASES[case]
    g = torch.Generator().manual_seed(case)
    samples = make_samples(100 + case, n=8)
    for s in samples:
        s["loss_mask"][0] = 1.0
        s["values"] = torch.randn(len(s["logprobs"]), generator=g).tolist()
    raw = torch.randint(0, 2, (8,), generator=g).float().add(torch.rand(8, generator=g)).tolist()
    (r,) = call([{"op": "advantages", "options": opts, "raw_rewards": raw, "group_size": 4,
                  "samples": samples}])
    assert "error" not in r, r
    rewards = ref_post_process(raw, opts["estimator"], 4, opts.get("rewards_normalization", True),
                               opts.get("grpo_std_normalization", True))
    torch.testing.assert_close(torch.tensor(r["rewards"]), torch.tensor(rewards), atol=TOL, rtol=TOL)
    adv, ret = ref_advantages(opts, rewards, samples)
    for i in range(len(samples)):
        torch.testing.assert_close(torch.tensor(r["advantages"][i]), adv[i].float(), atol=TOL, rtol=TOL)
        torch.testing.assert_close(torch.tensor(r["returns"][i]), ret[i].float(), atol=TOL, rtol=TOL)


def test_bad_options_are_named():
    (r,) = call([{"op": "step_loss", "options": {"kl_loss_type": "k9"}, "samples": [],
                  "num_rollouts": 1, "micro_batches": []}])
    assert "--kl-loss-type" in r["error"]
    (r,) = call([{"op": "step_loss", "options": {"eps_clip_c": 0.5}, "samples": [],
                  "num_rollouts": 1, "micro_batches": []}])
    assert "--eps-clip-c" in r["error"]
