"""Pretraining's loss against a hand computation."""
import math

import pytest
import torch

from divcfg.learner.pretrain import next_token_loss


def test_next_token_loss_by_hand():
    # B=1, K=1, T=2, V=2. Frame 0: logits (0, 0) -> CE ln 2. Frame 1: logits (ln 3, 0), target 0 -> CE ln(4/3).
    logits = torch.tensor([[[[0.0, 0.0], [math.log(3), 0.0]]]])
    codes = torch.tensor([[[1, 0]]])
    assert next_token_loss(logits, codes).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)


def test_text_stage_learns_to_read_attributes_and_freezing_keeps_it_fixed(tmp_path):
    """pretrain_text fits the caption -> attribute heads well above chance; with ``freeze_text`` the text encoder is
    then left alone by next-token pretraining while the decoder trains."""
    import numpy as np

    from divcfg.common.config.schema import PretrainConfig
    from divcfg.learner.pretrain import pretrain, pretrain_text
    from divcfg.model.policy import build_policy
    words = ["low", "middle", "high"]
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, 400)  # 3 = not described
    prompts = [f"a piece in the {words[v]} register" if v < 3 else "a piece" for v in values]
    policy = build_policy(freeze_text=True, seed=0)
    assert not any(p.requires_grad for p in policy.text.parameters())
    out = pretrain_text(policy, prompts, values[:, None], [3], steps=60, batch_size=32, seed=0)
    assert out["accuracy"][0] > 0.9  # chance is about 0.25
    assert not any(p.requires_grad for p in policy.text.parameters())  # frozen again after its own stage
    text_before = {k: v.clone() for k, v in policy.text.state_dict().items()}
    heads_before = policy.heads.weight.clone()
    codes = rng.integers(0, policy.cfg.card, (400, policy.cfg.n_codebooks, 6))
    pretrain(policy, prompts, codes, PretrainConfig(steps=3, batch_size=8, ckpt_every=10**6), str(tmp_path),
             progress=False)
    assert all(torch.equal(v, policy.text.state_dict()[k]) for k, v in text_before.items())
    assert not torch.equal(heads_before, policy.heads.weight)


def test_text_stage_refuses_labels_of_the_wrong_shape():
    import numpy as np

    from divcfg.learner.pretrain import pretrain_text
    from divcfg.model.policy import build_policy
    with pytest.raises(ValueError, match=r"labels have shape \(2, 1\), expected \(2, 2\)"):
        pretrain_text(build_policy(), ["a", "b"], np.zeros((2, 1)), [3, 4], steps=1)


def test_freeze_text_survives_a_checkpoint(tmp_path):
    from divcfg.model.loaders import load_policy, save_policy
    from divcfg.model.policy import build_policy
    save_policy(build_policy(freeze_text=True), tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert loaded.cfg.freeze_text and not any(p.requires_grad for p in loaded.text.parameters())
