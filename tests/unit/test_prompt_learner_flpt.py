"""The shared prompt learner (equivalence with open_clip's encode_text, frozen encoder, per-sample bias) and FLPT.

Everything runs on the tiny profile's open_clip model on CPU; FLPT runs a few dozen steps on a small constructed
problem (a couple of epochs at batch 8, not the paper's 1 epoch at batch 4 over thousands of features).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from zsc.features import ALIGNMENT_KEY, Alignment, FeatureSet, alignment_id
from zsc.models.clip import ClipBundle, create_clip
from zsc.models.prompt_learner import PromptLearner, text_tower
from zsc.profiles import CONFIG_DIR
from zsc_recovery.core.flpt import AlignResult, FlptConfig, FlptModel, align_features
from zsc_recovery.core.recover import Cancelled

NAMES = ["cat", "golden retriever", "aquarium_fish", "sea lion", "a class name long enough to span many tokens"]
BASE = ["cat", "dog", "bird", "frog", "truck", "ship"]
NOVEL = ["horse", "deer", "airplane"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> ClipBundle:
    return create_clip("tiny:zsc-tiny-clip")


def tower_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every text-tower tensor (weights and buffers), to compare bit for bit later."""
    tower = text_tower(model)
    out = {f"p{i}": p.detach().clone() for i, p in enumerate(tower.parameters())}
    if tower.attn_mask is not None:
        out["attn_mask"] = tower.attn_mask.clone()
    return out


def assert_bit_identical(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    after = tower_state(model)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"text tower tensor {key} changed"


# ---------------------------------------------------------------------------------------------------- prompt learner
def test_phrase_context_equals_encode_text_on_tiny(tiny: ClipBundle) -> None:
    learner = PromptLearner(tiny.model, tiny.tokenizer, ctx_init="a photo of a")
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, tiny.token_embedding_dim)
    tokens = tiny.tokenizer([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        expected = tiny.model.encode_text(tokens)
        got_raw = learner(NAMES, normalize=False)
        got = learner(NAMES)
    # Same embeddings through the same ops. Not asserted bit-identical: two identical encode_text calls can differ by
    # ~2e-7 on CPU (kernel choice on the first call), so 1e-6 absolute is the tightest honest bound.
    torch.testing.assert_close(got_raw, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, F.normalize(expected, dim=-1), rtol=0, atol=1e-6)
    assert got.shape == (len(NAMES), tiny.embed_dim) and got.dtype == torch.float32


def test_other_phrase_and_class_subset(tiny: ClipBundle) -> None:
    learner = PromptLearner(tiny.model, tiny.tokenizer, ctx_init="a blurry photo of the")
    assert learner.n_ctx == 5
    with torch.no_grad():
        expected = tiny.model.encode_text(
            tiny.tokenizer([f"a blurry photo of the {n}." for n in NAMES]), normalize=True
        )
        subset = learner(NAMES, class_index=torch.tensor([3, 0, 3]))
    torch.testing.assert_close(subset, expected[[3, 0, 3]], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_phrase_context_equals_encode_text_on_real_architectures(tmp_path: Path) -> None:
    """open_clip's ViT-B-16 (the paper profile's architecture, random weights: no download) and CustomTextCLIP."""
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    names = NAMES[:2]
    learner = PromptLearner(model, tokenizer)
    with torch.no_grad():
        expected = model.encode_text(tokenizer([f"a photo of a {n}." for n in names]), normalize=True)
        got = learner(names)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

    config = json.loads((CONFIG_DIR / "zsc-tiny-clip.json").read_text())
    config["custom_text"] = True  # the CustomTextCLIP path: a separate TextTransformer module
    path = tmp_path / "zsc-test-custom-text.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    custom = open_clip.create_model("zsc-test-custom-text", pretrained=None).eval()
    assert isinstance(custom, open_clip.CustomTextCLIP)
    with torch.no_grad():
        expected = custom.encode_text(tokenizer([f"a photo of a {n}." for n in names]), normalize=True)
        got = PromptLearner(custom, tokenizer)(names)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_random_init_and_bad_settings(tiny: ClipBundle) -> None:
    g = torch.Generator().manual_seed(0)
    learner = PromptLearner(tiny.model, tiny.tokenizer, ctx_init=None, n_ctx=16, generator=g)
    assert learner.ctx.shape == (16, tiny.token_embedding_dim)
    ctx = learner.ctx.detach()
    assert abs(float(ctx.std()) - 0.02) < 0.002 and abs(float(ctx.mean())) < 0.002
    again = PromptLearner(tiny.model, tiny.tokenizer, ctx_init=None, n_ctx=16, generator=g.manual_seed(0))
    assert torch.equal(learner.ctx, again.ctx)
    assert learner(NAMES).shape == (len(NAMES), tiny.embed_dim)
    with pytest.raises(ValueError, match="is 4 tokens, but n_ctx=3"):
        PromptLearner(tiny.model, tiny.tokenizer, ctx_init="a photo of a", n_ctx=3)
    with pytest.raises(ValueError, match="n_ctx must be a positive integer"):
        PromptLearner(tiny.model, tiny.tokenizer, ctx_init=None, n_ctx=0)
    with pytest.raises(ValueError, match="class_names is empty"):
        learner([])
    with pytest.raises(ValueError, match="needs an open_clip CLIP"):
        PromptLearner(torch.nn.Linear(2, 2), tiny.tokenizer)


def test_only_the_context_learns_and_the_encoder_stays_bit_identical(tiny: ClipBundle) -> None:
    learner = PromptLearner(tiny.model, tiny.tokenizer)
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert list(learner.state_dict()) == ["ctx"]
    before = tower_state(tiny.model)
    start = learner.ctx.detach().clone()
    optimizer = torch.optim.AdamW(learner.parameters(), lr=1e-2)
    target = torch.arange(len(NAMES))
    for _ in range(3):
        loss = F.cross_entropy(10 * learner(NAMES) @ learner(NAMES).T, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert learner.ctx.grad is not None and float(learner.ctx.grad.abs().sum()) > 0
    assert not torch.equal(learner.ctx.detach(), start)
    tower = text_tower(tiny.model)
    assert all(not p.requires_grad and p.grad is None for p in tower.parameters())
    assert_bit_identical(before, tiny.model)


def test_per_sample_bias_shapes_and_gradients(tiny: ClipBundle) -> None:
    learner = PromptLearner(tiny.model, tiny.tokenizer)
    width, dim, classes = tiny.token_embedding_dim, tiny.embed_dim, len(NAMES)
    g = torch.Generator().manual_seed(1)
    bias = (0.05 * torch.randn(3, width, generator=g)).requires_grad_(True)

    per_class = learner(NAMES, bias=bias)  # every sample with every class
    assert per_class.shape == (3, classes, dim)
    own = learner(NAMES, bias=bias, class_index=torch.tensor([4, 0, 2]))  # each sample with its own class
    assert own.shape == (3, dim)
    torch.testing.assert_close(own, per_class[[0, 1, 2], [4, 0, 2]], rtol=0, atol=1e-6)
    # The bias goes on every context token: a per-token bias equal on all tokens gives the same prompts.
    per_token = learner(
        NAMES, bias=bias.unsqueeze(1).expand(-1, learner.n_ctx, -1), class_index=torch.tensor([4, 0, 2])
    )
    torch.testing.assert_close(per_token, own, rtol=0, atol=1e-6)
    with torch.no_grad():
        zero = learner(NAMES, bias=torch.zeros(2, width))
        plain = learner(NAMES)
    torch.testing.assert_close(zero, plain.expand(2, -1, -1), rtol=0, atol=1e-6)
    assert not torch.allclose(per_class[0], plain, atol=1e-4)  # the bias changes the features

    own.sum().backward()
    assert bias.grad is not None and bias.grad.shape == (3, width) and float(bias.grad.abs().sum()) > 0
    assert learner.ctx.grad is not None
    for bad in (torch.zeros(2, width + 1), torch.zeros(2, 3, width), torch.zeros(width), torch.zeros(0, width)):
        with pytest.raises(ValueError, match="bias"):
            learner(NAMES, bias=bad)
    with pytest.raises(ValueError, match="bias has 3 rows but class_index has 2"):
        learner(NAMES, bias=bias, class_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_index must lie in"):
        learner(NAMES, class_index=torch.tensor([classes]))


# ---------------------------------------------------------------------------------------------------- FLPT
def flpt_problem(tiny: ClipBundle, per_class: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Virtual features that are the text features of the base classes under a *random* context, plus noise.

    A context exists that fits them (the random one), so FLPT, starting from "a photo of a", has something to learn.
    """
    g = torch.Generator().manual_seed(3)
    other = PromptLearner(tiny.model, tiny.tokenizer, ctx_init=None, n_ctx=4, init_std=0.5, generator=g)
    with torch.no_grad():
        centers = other(BASE)
    noise = 0.05 * torch.randn(len(BASE) * per_class, centers.shape[1], generator=g)
    x = F.normalize(centers.repeat_interleave(per_class, 0) + noise, dim=-1)
    return x, torch.arange(len(BASE)).repeat_interleave(per_class)


def full_loss(result: AlignResult, y: torch.Tensor) -> float:
    """FLPT's loss over every feature at once, with the text features the result ends with."""
    text = result.text_features[: len(BASE)]
    return float(F.cross_entropy(result.logit_scale * F.normalize(result.features, dim=-1) @ text.T, y))


def test_flpt_learns_keeps_the_encoder_frozen_and_aligns_novel_classes(tiny: ClipBundle) -> None:
    x, y = flpt_problem(tiny)
    before = tower_state(tiny.model)
    calls: list[tuple[int, int, float]] = []
    config = FlptConfig(epochs=2, batch_size=8, lr=1e-2, seed=0, log_every=5)
    result = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, config, on_step=lambda *a: calls.append(a))

    steps = 2 * math.ceil(len(x) / 8)
    assert result.steps_run == steps and len(result.loss_curve) == steps
    # The batches follow the (class-sorted) input order, as in the released code, so the per-step curve moves from
    # class to class; the loss over all features is what must drop.
    start = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=0))
    assert full_loss(result, y) < 0.5 * full_loss(start, y), (full_loss(start, y), full_loss(result, y))
    assert [c[0] for c in calls] == [*range(5, steps, 5), steps] and all(c[1] == steps for c in calls)
    assert result.final_loss == result.loss_curve[-1]
    assert_bit_identical(before, tiny.model)

    # Shapes: aligned features in input order, text features for base then novel classes, unit norm.
    assert result.class_names == BASE + NOVEL
    assert result.features.shape == x.shape and torch.equal(result.labels, y)
    assert result.text_features.shape == (len(BASE) + len(NOVEL), tiny.embed_dim)
    torch.testing.assert_close(result.text_features.norm(dim=1), torch.ones(len(BASE) + len(NOVEL)))
    # x' = x + 0.005 r with one shared residual r = mean over the context tokens of MLP(token).
    torch.testing.assert_close(result.features - x, (0.005 * result.residual).expand_as(x), rtol=0, atol=1e-6)
    assert float(result.residual.norm()) > 0
    # The novel text features are the learned context's prompts, not the "a photo of a" ones.
    learned = PromptLearner(tiny.model, tiny.tokenizer)
    with torch.no_grad():
        learned.ctx.copy_(result.ctx)
        torch.testing.assert_close(result.text_features[len(BASE) :], learned(NOVEL), rtol=0, atol=1e-6)
        initial = tiny.model.encode_text(tiny.tokenizer([f"a photo of a {n}." for n in NOVEL]), normalize=True)
    assert (result.text_features[len(BASE) :] - initial).norm(dim=1).min() > 1e-3


def test_flpt_without_steps_is_the_identity_and_runs_are_reproducible(tiny: ClipBundle) -> None:
    x, y = flpt_problem(tiny, per_class=4)
    still = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=0))
    assert still.steps_run == 0 and math.isnan(still.final_loss)
    assert torch.equal(still.features, x)  # the last MLP layer starts at zero, so r = 0
    with torch.no_grad():
        names = BASE + NOVEL
        expected = tiny.model.encode_text(tiny.tokenizer([f"a photo of a {n}." for n in names]), normalize=True)
    torch.testing.assert_close(still.text_features, expected, rtol=0, atol=1e-6)

    config = FlptConfig(epochs=1, batch_size=4, seed=7)
    a = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, config)
    b = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, config)
    assert a.loss_curve == b.loss_curve
    assert torch.equal(a.features, b.features) and torch.equal(a.text_features, b.text_features)
    c = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=1, batch_size=4, seed=8))
    assert c.loss_curve != a.loss_curve  # another seed draws another first MLP layer
    assert c.loss_curve[0] == a.loss_curve[0]  # ... which cannot show at step 1: the last layer starts at zero
    # shuffle=True is zsc's seeded option; the default keeps the input order (the released loader's shuffle=False).
    shuffled = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=1, shuffle=True, seed=7))
    assert shuffled.loss_curve[0] != a.loss_curve[0]  # same init, another first batch
    with pytest.raises(ValueError, match="shuffle must be a bool"):
        FlptConfig(shuffle=1)  # type: ignore[arg-type]


def test_flpt_residual_is_the_mean_of_the_per_token_mlp(tiny: ClipBundle) -> None:
    """Hand-set weights with a closed-form answer: tokens +2e0, +2e0, -2e0, -2e0 (mean token 0), hidden unit 0 = the
    token's first coordinate, output k=5 = that unit's QuickGELU, every output bias 0.25. Per token then mean:
    r_5 = 0.25 + (2 sigmoid(3.404) - 2 sigmoid(-3.404)) / 2 = 0.25 + tanh(1.702), every other r_k = 0.25. The MLP of
    the mean token would give 0.25 everywhere (QuickGELU(0) = 0): the GELU makes the two differ."""
    model = FlptModel(tiny.model, tiny.tokenizer, generator=torch.Generator().manual_seed(0))
    width, dim = tiny.token_embedding_dim, tiny.embed_dim
    assert width != dim  # the tiny profile exercises W != D
    assert model.mlp[0].weight.shape == (4 * width, width) and model.mlp[2].weight.shape == (dim, 4 * width)
    # The released init: first layer N(0, 0.02) with zero bias, last layer all zero, so r = 0 at the start.
    with torch.no_grad():
        assert abs(float(model.mlp[0].weight.std()) - 0.02) < 0.001 and float(model.mlp[0].bias.abs().max()) == 0
        assert float(model.mlp[2].weight.abs().max()) == 0 and float(model.mlp[2].bias.abs().max()) == 0
        assert float(model.residual().abs().max()) == 0.0
        model.prompt.ctx.zero_()
        model.prompt.ctx[:2, 0], model.prompt.ctx[2:, 0] = 2.0, -2.0
        model.mlp[0].weight.zero_()
        model.mlp[0].weight[0, 0] = 1.0
        model.mlp[2].weight.zero_()
        model.mlp[2].weight[5, 0] = 1.0
        model.mlp[2].bias.fill_(0.25)
        expected = torch.full((dim,), 0.25)
        expected[5] += math.tanh(1.702)
        torch.testing.assert_close(model.residual(), expected, rtol=0, atol=1e-6)
        of_mean = model.mlp(model.prompt.ctx.mean(dim=0))
        torch.testing.assert_close(of_mean, torch.full((dim,), 0.25), rtol=0, atol=1e-6)
        x = torch.randn(3, dim, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(model.align(x), x + 0.005 * expected, rtol=0, atol=1e-6)
    # AdamW with torch's own default weight decay, which the released code keeps by passing only the lr.
    adamw_default = inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default
    assert FlptConfig().weight_decay == adamw_default == 0.01
    assert {n for n, _ in model.named_parameters()} == {
        "prompt.ctx",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
    }


def test_flpt_rejects_bad_input_with_one_line(tiny: ClipBundle) -> None:
    x, y = flpt_problem(tiny, per_class=2)
    cases = [
        (dict(features=x[:, :8]), "features have D=8 but the CLIP text encoder outputs D=32"),
        (dict(features=torch.full_like(x, math.nan)), "NaN or Inf"),
        (dict(labels=y + 1), "labels must index the 6 base classes"),
        (dict(labels=y[:-1]), "rows but labels has"),
        (dict(novel=["cat"]), "unique across base and novel"),
        (dict(base=[]), "at least one base class"),
        (dict(features=x[:0], labels=y[:0]), "features is empty"),
    ]
    for change, message in cases:
        args = dict(features=x, labels=y, base=BASE, novel=NOVEL) | change
        with pytest.raises(ValueError, match=message) as err:
            align_features(tiny.model, tiny.tokenizer, args["features"], args["labels"], args["base"], args["novel"])
        assert "\n" not in str(err.value)
    for bad, message in [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(lr=-1.0), r"lr must lie in \(0, 10\]"),
        (dict(epochs=-1), "epochs must be a non-negative integer"),
        (dict(residual_scale=math.inf), "residual_scale"),
        (dict(ctx_init=" "), "ctx_init"),
    ]:
        with pytest.raises(ValueError, match=message):
            FlptConfig(**bad)


def test_flpt_cancel(tiny: ClipBundle) -> None:
    x, y = flpt_problem(tiny, per_class=4)
    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled, match="after 3 of"):
        align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=5), should_stop=stop)


# ---------------------------------------------------------------------------------------------------- alignments
def test_alignment_id_is_the_hash_of_the_residual_bytes_and_weight() -> None:
    alignment = Alignment(torch.tensor([1.0, -2.0]), 0.5)
    raw = b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0" + b"\x00\x00\x00\x00\x00\x00\xe0\x3f"  # 1.0f, -2.0f, 0.5 (LE)
    assert alignment.id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert Alignment(torch.tensor([1.0, -2.0]), 0.25).id != alignment.id
    for bad, message in [
        (dict(residual=torch.zeros(2, 2)), "1-D float32"),
        (dict(residual=torch.tensor([math.nan])), "NaN or Inf"),
        (dict(weight=-1.0), "weight must be"),
        (dict(class_names=("a",)), "one aligned text feature per class name"),
    ]:
        with pytest.raises(ValueError, match=message):
            Alignment(**{"residual": torch.ones(2), "weight": 0.5, **bad})  # type: ignore[arg-type]


def test_alignment_recorded_in_a_file_moves_other_features_exactly_as_flpt_did(
    tiny: ClipBundle, tmp_path: Path
) -> None:
    x, y = flpt_problem(tiny, per_class=4)
    result = align_features(tiny.model, tiny.tokenizer, x, y, BASE, NOVEL, FlptConfig(epochs=1, lr=0.1))
    assert float(result.residual.norm()) > 0
    alignment = Alignment(result.residual, 0.005, tuple(result.class_names), result.text_features)
    path = tmp_path / "aligned.safetensors"
    FeatureSet(result.features, y, result.class_names, result.text_features, alignment.metadata()).save(path)
    loaded = FeatureSet.load(path)
    assert alignment_id(loaded.metadata) == alignment.id
    again = Alignment.from_features(loaded)
    assert again.id == alignment.id and torch.equal(again.residual, result.residual)
    assert again.class_names == tuple(BASE + NOVEL) and torch.equal(again.text_features, result.text_features)

    # The same move FLPT made: the raw features, moved, are bit-identical to FLPT's aligned features.
    raw = FeatureSet(x, y, list(BASE), torch.zeros(len(BASE), 3), {"profile": "tiny"})
    moved = again.apply(raw)
    assert torch.equal(moved.features, result.features)
    assert torch.equal(moved.text_features, result.text_features[: len(BASE)])  # the aligned text of its classes
    assert alignment_id(moved.metadata) == alignment.id and moved.metadata["profile"] == "tiny"
    assert torch.equal(again.apply(raw, text=False).text_features, raw.text_features)

    with pytest.raises(ValueError, match="already aligned"):
        again.apply(moved)
    with pytest.raises(ValueError, match="D=3 but the alignment residual has D=32"):
        again.apply(FeatureSet(x[:, :3], y, list(BASE), torch.zeros(len(BASE), 3)))
    with pytest.raises(ValueError, match="no aligned text feature of class 'zebra'"):
        again.apply(FeatureSet(x, y.clamp(max=0), ["zebra"], torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="records no alignment"):
        Alignment.from_features(raw)
    record = json.loads(loaded.metadata[ALIGNMENT_KEY])
    record["weight"] = 0.5
    loaded.metadata[ALIGNMENT_KEY] = json.dumps(record)
    with pytest.raises(ValueError, match="does not match its id"):
        Alignment.from_features(loaded)
