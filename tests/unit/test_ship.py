"""SHIP's prompt VAE, the feature bank and CoOp / CLIP-Adapter / Tip-Adapter-F fine-tuning, on the tiny profile.

The ground truth is constructed (``core/ship_problem.py``): "real" image features of a class are the tiny CLIP's own
text-encoder output for a prompt with a hidden context (the embedding of "a photo of a" plus N(0, 0.12²) noise), a
small class-specific context and a per-image bias; 10 base classes have 16 images x 4 views, the 10 new classes only
names. Sizes differ from methods.md's defaults because the problem is small (160 images: batch 256 would be one step
per epoch): the VAE trains 25 epochs at batch 8, lr 3e-3, widths 256 and latent 32 (500 steps); CoOp 25 epochs at
batch 16 and lr 5e-4 (the tiny random encoder's loss surface is sharp, and lr 2e-3 without momentum diverges on some
seeds); CLIP-Adapter 50 epochs at batch 16, lr 0.02 and reduction 1 (with D = 32, reduction 4 leaves 8 ReLU units,
which die on some seeds); Tip-Adapter-F its defaults at batch 32. Fine-tuning follows the released protocol (all 16
shots, the last epoch). Measured on problem seed 0 over training seeds 0, 1, 2, N without -> with synthesized
features: CoOp 0.94/1.00/0.98 -> 1.00/1.00/1.00, CLIP-Adapter 0.50/0.50/0.70 -> 0.90/0.90/0.80, Tip-Adapter-F
0.66 -> 0.70 (every seed; without a held-out split to search alpha, beta on, it keeps the imagenet preset's
alpha 1.17, beta 1 and stays near zero-shot here, B 0.25-0.29; bench/ship_protocol.py compares the held-out option).
Problem seed 1: CoOp 0.90 -> 1.00, CLIP-Adapter 0.83/0.50/0.69 -> 0.83/0.83/1.00, Tip-Adapter-F 0.69 -> 0.80.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zsc.evaluation import base_to_new_metrics, mean_per_class_accuracy
from zsc.features import FeatureSet
from zsc.models.clip import ClipBundle, create_clip
from zsc.models.prompt_learner import PromptLearner, text_tower
from zsc_generative.core.bank import VIEWS_KEY, FeatureBank, augment_view, encode_bank
from zsc_generative.core.common import Cancelled, GeneratorTrainResult
from zsc_generative.core.finetune import (
    TIP_ADAPTER_PRESETS,
    FineTuneConfig,
    _split,
    build_classifier,
    fine_tune,
)
from zsc_generative.core.ship import ShipConfig, ShipVAE, build_ship_vae, synthesize, train_ship_vae
from zsc_generative.core.ship_problem import HiddenContextProblem, hidden_context_problem

SHIP = dict(epochs=25, lr=3e-3, batch_size=8, encoder_hidden=256, generator_hidden=256, latent_dim=32)
FINETUNE = {
    "coop": dict(epochs=25, batch_size=16, lr=5e-4),
    "clip_adapter": dict(epochs=50, batch_size=16, lr=0.02, reduction=1),
    "tip_adapter_f": dict(batch_size=32),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip() -> ClipBundle:
    return create_clip("tiny:zsc-tiny-clip")


@pytest.fixture(scope="module")
def problem(clip: ClipBundle) -> HiddenContextProblem:
    return hidden_context_problem(clip.model, clip.tokenizer, seed=0)


def tower_state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in text_tower(model).parameters()]


@pytest.fixture(scope="module")
def trained(clip: ClipBundle, problem: HiddenContextProblem) -> dict[str, object]:
    before = tower_state(clip.model)
    untrained = build_ship_vae(clip.model, clip.tokenizer, ShipConfig(**SHIP), problem.train.dim)
    result = train_ship_vae(clip.model, clip.tokenizer, problem.train, ShipConfig(**SHIP))
    return {"before": before, "result": result, "untrained": untrained}


def class_means(data: FeatureSet) -> torch.Tensor:
    return F.normalize(torch.stack([data.features[data.labels == c].mean(0) for c in range(data.num_classes)]), dim=-1)


def reconstruction(model: ShipVAE, problem: HiddenContextProblem) -> tuple[float, float]:
    """(mean squared error, nearest-true-class-mean accuracy) of the reconstructions of the base images' plain
    view, decoding the posterior mean."""
    bank = FeatureBank.from_feature_set(problem.train)
    with torch.no_grad():
        mu, _ = model.encoder(bank.plain())
        recon = model.decode(mu, problem.train.class_names, bank.labels)
    error = float((recon - bank.plain()).pow(2).sum(dim=1).mean())
    nearest = float(((recon @ class_means(problem.test).T).argmax(dim=1) == bank.labels).float().mean())
    return error, nearest


# ------------------------------------------------------------------------------------------------------ the VAE
def test_clip_weights_stay_bit_identical_and_only_context_encoder_generator_learn(clip, problem, trained) -> None:
    result: GeneratorTrainResult = trained["result"]  # type: ignore[assignment]
    after = tower_state(clip.model)
    assert all(torch.equal(a, b) for a, b in zip(trained["before"], after, strict=True))  # type: ignore[arg-type]
    model: ShipVAE = result.generator  # type: ignore[assignment]
    names = {n for n, _ in model.named_parameters()}
    assert names == {"prompt.ctx"} | {f"encoder.{n}" for n, _ in model.encoder.named_parameters()} | {
        f"generator.{n}" for n, _ in model.generator.named_parameters()
    }
    assert set(result.state_dict) == names  # checkpoints hold nothing of CLIP
    # A step of a fresh VAE: gradients reach the context, the encoder and the generator, and nothing of the text
    # tower. (Not of the trained one: its posterior has collapsed, KL ~ 0, and its encoder's ReLUs are silent.)
    fresh: ShipVAE = trained["untrained"]  # type: ignore[assignment]
    bank = FeatureBank.from_feature_set(problem.train)
    eps = torch.randn(8, fresh.latent_dim, generator=torch.Generator().manual_seed(0))
    recon, mu, logvar = fresh(bank.plain()[:8], problem.train.class_names, bank.labels[:8], eps)
    loss = (recon - bank.plain()[:8]).pow(2).sum() - 0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    loss.backward()
    for name, p in fresh.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert all(not p.requires_grad and p.grad is None for p in text_tower(clip.model).parameters())
    fresh.zero_grad(set_to_none=True)


def test_vae_reconstructs_base_features(problem, trained) -> None:
    result: GeneratorTrainResult = trained["result"]  # type: ignore[assignment]
    history = result.history
    assert len(history) == SHIP["epochs"] and result.best_epoch == SHIP["epochs"]
    assert history[-1]["loss_rec"] < 0.25 * history[0]["loss_rec"]
    # Measured: squared error 0.037 (cosine 0.982) and every reconstruction nearest its own class after training;
    # 0.21 and 80% with the untrained VAE (its random context is not the hidden one). Problem seeds 1 and 3: 0.022
    # and 0.019 after, 0.69 and 1.10 before.
    error, nearest = reconstruction(result.generator, problem)  # type: ignore[arg-type]
    untrained_error, _ = reconstruction(trained["untrained"], problem)  # type: ignore[arg-type]
    assert error < 0.06 and error < 0.4 * untrained_error
    assert nearest > 0.95


def test_synthesized_new_features_land_nearest_their_true_class(problem, trained) -> None:
    model: ShipVAE = trained["result"].generator  # type: ignore[union-attr]
    names = problem.class_names
    x, y = synthesize(model, [names[i] for i in problem.new], 50, seed=3)
    y = torch.tensor(problem.new)[y]
    assert x.shape == (500, 32) and torch.equal(y, torch.tensor(problem.new).repeat_interleave(50))
    torch.testing.assert_close(x.norm(dim=1), torch.ones(500))
    means = class_means(problem.test)  # the true class means, from held-out "real" features of every class
    sims = x @ means.T
    # Nearest among all 20 classes (base and new): measured 0.99; its own class beats the best other one by 0.067 in
    # cosine on average.
    assert float((sims.argmax(dim=1) == y).float().mean()) > 0.85
    own = sims.gather(1, y.view(-1, 1)).squeeze(1)
    other = sims.scatter(1, y.view(-1, 1), -2.0).max(dim=1).values
    assert float((own - other).mean()) > 0.01
    # Synthesis needs only names, is seeded, and another seed gives other features.
    again, _ = synthesize(model, [names[i] for i in problem.new], 50, seed=3)
    assert torch.equal(x, again)
    assert not torch.equal(x, synthesize(model, [names[i] for i in problem.new], 50, seed=4)[0])


def test_vae_bad_input_and_cancel(clip, problem) -> None:
    config = ShipConfig(**{**SHIP, "epochs": 2})
    wrong_dim = FeatureSet(torch.randn(4, 16), torch.tensor([0, 0, 1, 1]), ["cat", "dog"], torch.randn(2, 16))
    with pytest.raises(ValueError, match="the features have D=16 but the CLIP text encoder outputs D=32"):
        train_ship_vae(clip.model, clip.tokenizer, wrong_dim, config)
    long = FeatureSet(torch.randn(2, 32), torch.tensor([0, 1]), ["cat", "word " * 80], torch.randn(2, 32))
    with pytest.raises(ValueError, match="does not fit in the text encoder's 77 tokens"):
        train_ship_vae(clip.model, clip.tokenizer, long, config)
    nan = FeatureSet(torch.full((2, 32), math.nan), torch.tensor([0, 1]), ["cat", "dog"], torch.randn(2, 32))
    with pytest.raises(ValueError, match="NaN"):
        train_ship_vae(clip.model, clip.tokenizer, nan, config)
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"kl_weight": math.nan}, {"beta1": 1.0}):
        with pytest.raises(ValueError):
            ShipConfig(**{**SHIP, **bad}).check()
    model = build_ship_vae(clip.model, clip.tokenizer, config, 32)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        synthesize(model, ["cat"], 0, seed=0)
    with pytest.raises(Cancelled):
        train_ship_vae(clip.model, clip.tokenizer, problem.train, config, should_stop=lambda: True)


def test_truncated_prompts_encode_as_the_full_context(clip) -> None:
    """The prompt learner cuts the padding after the last EOT under the causal mask: same features as all 77."""
    learner = PromptLearner(clip.model, clip.tokenizer)
    tower = learner.tower
    assert tower.causal
    names = ["cat", "golden retriever", "a class name long enough to span many tokens"]
    p = learner.prompts(names)
    embeddings = torch.cat([p.prefix, learner.ctx.detach().unsqueeze(0).expand(3, -1, -1), p.suffix], dim=1)
    with torch.no_grad():
        cut = tower.encode_embeddings(embeddings, p.token_ids)
        full = dataclasses.replace(tower, causal=False).encode_embeddings(embeddings, p.token_ids)
    assert tower.pooled_length(p.token_ids) < 20 < tower.context_length
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- the feature bank
def test_feature_bank_round_trip_views_and_encoding(clip, problem) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    assert (bank.views, bank.images, bank.dim) == (4, 160, 32)
    assert problem.train.metadata[VIEWS_KEY] == "4"
    back = bank.to_feature_set(problem.train.class_names, problem.train.text_features, problem.train.metadata)
    assert torch.equal(back.features, problem.train.features) and torch.equal(back.labels, problem.train.labels)
    drawn = bank.draw(torch.arange(160), torch.Generator().manual_seed(0))
    matches = (drawn.unsqueeze(0) == bank.features).all(dim=2)  # [V, N]: which view each image came from
    assert bool((matches.sum(dim=0) >= 1).all()) and len(set(matches.float().argmax(dim=0).tolist())) > 1
    bad = dataclasses.replace(problem.train, metadata={VIEWS_KEY: "3"})
    with pytest.raises(ValueError, match="640 rows do not split into 3 views per image"):
        FeatureBank.from_feature_set(bad)
    with pytest.raises(ValueError, match="is not an integer"):
        FeatureBank.from_feature_set(dataclasses.replace(problem.train, metadata={VIEWS_KEY: "four"}))

    # Encoding images once per view: view 0 is the plain image, the others augmented (and different).
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    augmented = augment_view(images, torch.Generator().manual_seed(1))
    assert augmented.shape == images.shape and not torch.equal(augmented, images)
    with torch.no_grad():
        built = encode_bank(clip.model.encode_image, images, [0, 0, 1, 1, 2, 2], views=3, seed=1)
        plain = clip.model.encode_image(images)
    assert built.features.shape == (3, 6, 32)
    torch.testing.assert_close(built.plain(), plain)
    assert not torch.allclose(built.features[1], plain)


# ---------------------------------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def synthetic(problem, trained) -> tuple[torch.Tensor, torch.Tensor]:
    model: ShipVAE = trained["result"].generator  # type: ignore[union-attr]
    x, y = synthesize(model, [problem.class_names[i] for i in problem.new], 50, seed=0)
    return x, torch.tensor(problem.new)[y]


def new_accuracy(result, problem) -> tuple[float, float]:
    m = base_to_new_metrics(
        result.classifier.scores(problem.test.features), problem.test.labels, problem.base, problem.new
    )
    return m.base, m.new


@pytest.mark.parametrize("method", ["coop", "clip_adapter", "tip_adapter_f"])
def test_synthesized_features_raise_new_accuracy(method, clip, problem, synthetic) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    gains = []
    for seed in (0, 1, 2):
        config = FineTuneConfig.for_method(method, seed=seed, **FINETUNE[method])
        without = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config)
        with_synthetic = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
        (_, n_without), (_, n_with) = new_accuracy(without, problem), new_accuracy(with_synthetic, problem)
        assert n_with >= n_without, (seed, n_without, n_with)  # CoOp reaches N = 1.00 without on seed 1
        gains.append(n_with - n_without)
        assert without.trained_classes == problem.base  # the baseline trains over the base classes only
        assert with_synthetic.trained_classes == [*problem.base, *problem.new]
    # Measured mean gains: CoOp 0.029 (little headroom left), CLIP-Adapter 0.30, Tip-Adapter-F 0.042.
    assert sum(gains) / len(gains) > {"coop": 0.02, "clip_adapter": 0.2, "tip_adapter_f": 0.03}[method]


def released_coop(clip, bank: FeatureBank, names: list[str], synthetic, epochs: int, batch: int, lr: float, seed: int):
    """SHIP's CoOp fine-tuning written out as the released code runs it, drawing the same random numbers as zsc's
    core: every image of the bank trains, plain SGD on a per-step cosine schedule, each real batch joined by as many
    synthesized features of uniformly drawn new classes, logits 100·cos over base + new; returns the context
    tokens after the last step (base classes are 0..9 and new ones 10..19, so labels need no remapping)."""
    x_real = F.normalize(bank.features.float(), dim=-1)
    syn_y, order = synthetic[1].sort(stable=True)
    syn_x = F.normalize(synthetic[0].float(), dim=-1)[order]
    new, counts = syn_y.unique(return_counts=True)
    starts = counts.cumsum(0) - counts
    prompt = PromptLearner(clip.model, clip.tokenizer, ctx_init="a photo of a")
    optimizer = torch.optim.SGD(prompt.parameters(), lr=lr)
    steps = math.ceil(bank.images / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(bank.images, generator=gen).split(batch):
            x, y = bank_draw(x_real, idx, gen), bank.labels[idx]
            pick = torch.randint(0, new.numel(), (idx.numel(),), generator=gen)
            offset = (torch.rand(idx.numel(), generator=gen) * counts[pick]).long()
            x, y = torch.cat([x, syn_x[starts[pick] + offset]]), torch.cat([y, new[pick]])
            loss = F.cross_entropy(100 * x @ prompt(names).T, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return prompt.ctx.detach()


def bank_draw(features: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random augmentation view per image, as every epoch of the released code sees a fresh augmentation."""
    return features[torch.randint(0, features.shape[0], (idx.numel(),), generator=gen), idx]


def test_default_is_the_released_protocol_all_shots_and_the_last_epoch(clip, problem, synthetic) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    config = FineTuneConfig.for_method("coop", seed=3, epochs=3, batch_size=32)
    assert config.val_fraction == 0.0  # nothing is held out unless asked
    result = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
    assert (result.n_fit, result.n_val, result.n_synthetic) == (160, 0, 500)  # all 16 shots of the 10 classes
    assert result.best_epoch == 3 and math.isnan(result.val_accuracy)
    assert all("val_accuracy" not in h for h in result.history)
    # The known answer: the returned model is the state after the last step of the released loop.
    ctx = released_coop(clip, bank, problem.class_names, synthetic, epochs=3, batch=32, lr=2e-3, seed=3)
    torch.testing.assert_close(result.classifier.ctx, ctx, rtol=0, atol=1e-6)
    learner = PromptLearner(clip.model, clip.tokenizer, ctx_init="a photo of a")
    with torch.no_grad():
        learner.ctx.copy_(ctx)
        text = learner(problem.class_names)
    torch.testing.assert_close(result.classifier.text_weights, F.normalize(text, dim=-1), rtol=0, atol=1e-6)
    assert not torch.allclose(ctx, PromptLearner(clip.model, clip.tokenizer, ctx_init="a photo of a").ctx)  # it moved


def test_held_out_selection_is_an_option_and_rebuilds(clip, problem, synthetic, tmp_path) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    before = tower_state(clip.model)
    # The held-out base images, as the core splits them (seeded per class).
    _, val_idx = _split(bank.labels, 0.2, torch.Generator().manual_seed(0))
    val_x, val_y = F.normalize(bank.plain()[val_idx], dim=-1), bank.labels[val_idx]
    for method in ("coop", "clip_adapter", "tip_adapter_f"):
        config = FineTuneConfig.for_method(method, seed=0, **{**FINETUNE[method], "epochs": 4, "val_fraction": 0.2})
        result = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
        # 20% of each class's 16 images are held out: 3 per class, never trained on.
        assert (result.n_fit, result.n_val, result.n_synthetic) == (130, 30, 500) and val_idx.numel() == 30
        scored = [h["val_accuracy"] for h in result.history]
        assert len(result.history) == 4 and result.best_epoch == 1 + scored.index(max(scored))
        if method != "tip_adapter_f":  # Tip-Adapter-F's alpha/beta search may raise it further
            assert result.val_accuracy == max(scored)
        # The returned model is the selected one: it scores exactly the reported accuracy on the held-out images.
        pred = result.classifier.scores(val_x)[:, :10].argmax(dim=1)
        assert mean_per_class_accuracy(val_y, pred, list(range(10)), 10) == pytest.approx(result.val_accuracy)
        scores = result.classifier.scores(problem.test.features)
        assert scores.shape == (1000, 20) and bool(torch.isfinite(scores).all())
        # What the service stores (safetensors + meta) rebuilds the same classifier.
        save_file({k: v.contiguous() for k, v in result.state_dict.items()}, tmp_path / f"{method}.safetensors")
        rebuilt = build_classifier(load_file(tmp_path / f"{method}.safetensors"), result.classifier.meta())
        torch.testing.assert_close(rebuilt.scores(problem.test.features), scores)
        assert torch.equal(rebuilt.seen_mask, torch.arange(20) < 10)
        if method == "tip_adapter_f":
            # Keys: the 130 real training images (mean of views) + as many synthesized per new class as the median
            # real images per base class (13); values one-hot over all classes.
            assert rebuilt.cache_keys.shape == (130 + 10 * 13, 32) and rebuilt.cache_values.shape == (260, 20)
            assert torch.equal(rebuilt.cache_values.sum(dim=0), torch.full((20,), 13.0))
            assert set(result.extra) == {"alpha", "beta"}
    assert all(torch.equal(a, b) for a, b in zip(before, tower_state(clip.model), strict=True))


def test_tip_adapter_presets_are_the_released_configs(clip, problem, synthetic) -> None:
    # Tip-Adapter's configs/*.yaml: init_alpha, search_scale = [beta_max, alpha_max], train_epoch.
    released = {
        "caltech101": (3, 12, 5, 20),
        "dtd": (2, 13, 13, 20),
        "eurosat": (2, 12, 10, 100),
        "fgvc": (5, 30, 30, 20),
        "food101": (1.17, 10, 10, 20),
        "imagenet": (1.17, 7, 3, 20),
        "oxford_flowers": (10, 50, 50, 20),
        "oxford_pets": (1.17, 7, 3, 20),
        "stanford_cars": (3, 20, 10, 20),
        "sun397": (1.17, 12, 10, 20),
        "ucf101": (3, 7, 3, 20),
    }
    assert set(TIP_ADAPTER_PRESETS) == set(released)
    for name, (alpha, beta_max, alpha_max, epochs) in released.items():
        c = FineTuneConfig.for_method("tip_adapter_f", tip_adapter_preset=name)
        got = (c.init_alpha, c.init_beta, c.search_beta_max, c.search_alpha_max, c.epochs)
        assert got == (alpha, 1, beta_max, alpha_max, epochs), name
        assert (c.search_beta_steps, c.search_alpha_steps) == (200, 20)
    default = FineTuneConfig.for_method("tip_adapter_f")
    assert default.tip_adapter_preset == "imagenet" and (default.init_alpha, default.epochs) == (1.17, 20)
    assert FineTuneConfig.for_method("tip_adapter_f", tip_adapter_preset="eurosat", epochs=3).epochs == 3  # overrides
    assert FineTuneConfig.for_method("coop", tip_adapter_preset="eurosat").epochs == 200  # other methods: no effect
    with pytest.raises(ValueError, match="unknown tip_adapter_preset 'cifar10'; expected one of caltech101, dtd"):
        FineTuneConfig.for_method("coop", tip_adapter_preset="cifar10")
    with pytest.raises(ValueError, match="unknown tip_adapter_preset"):
        dataclasses.replace(default, tip_adapter_preset="").check()

    bank = FeatureBank.from_feature_set(problem.train)
    # The released protocol has no held-out split to search on: the preset's initial alpha and beta are kept.
    config = FineTuneConfig.for_method("tip_adapter_f", tip_adapter_preset="oxford_flowers", epochs=2, batch_size=32)
    result = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
    assert result.extra == {"alpha": 10.0, "beta": 1.0} and result.classifier.alpha == 10.0
    # With held-out selection the search runs on the held-out images over the preset's grid.
    config = FineTuneConfig.for_method(
        "tip_adapter_f", tip_adapter_preset="dtd", epochs=2, batch_size=32, val_fraction=0.2
    )
    result = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
    alphas = [2.0] + [0.1 + i * (13 - 0.1) / 20 for i in range(20)]  # dtd: init 2, alpha in [0.1, 13), 20 points
    betas = [1.0] + [0.1 + i * (13 - 0.1) / 200 for i in range(200)]
    assert min(abs(result.extra["alpha"] - a) for a in alphas) < 1e-6
    assert min(abs(result.extra["beta"] - b) for b in betas) < 1e-6


def test_fine_tuning_is_seeded(clip, problem, synthetic) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    runs = [
        fine_tune(
            clip.model,
            clip.tokenizer,
            bank,
            problem.class_names,
            FineTuneConfig.for_method("coop", seed=s, epochs=3),
            synthetic,
        ).state_dict["text_weights"]
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_fine_tuning_bad_input(clip, problem, synthetic) -> None:
    bank = FeatureBank.from_feature_set(problem.train)
    names = problem.class_names
    config = FineTuneConfig.for_method("tip_adapter_f", epochs=1)
    x, y = synthetic
    cases = {
        "class 'apple' has real images and synthesized features": (bank, names, (x, torch.zeros_like(y))),
        "the synthesized features have D=16": (bank, names, (x[:, :16], y)),
        "the synthesized features contain NaN": (bank, names, (torch.full_like(x, math.nan), y)),
        "synthesized labels must index the 20 classes": (bank, names, (x, y + 20)),
        "the features have D=16 but the CLIP text encoder outputs D=32": (
            FeatureBank(bank.features[..., :16], bank.labels),
            names,
            None,
        ),
        "real labels must index the 5 classes": (bank, names[:5], None),
        "class names must be unique": (bank, [*names[:-1], names[0]], None),
    }
    for message, (b, n, s) in cases.items():
        with pytest.raises(ValueError, match=message):
            fine_tune(clip.model, clip.tokenizer, b, n, config, s)
    with pytest.raises(ValueError, match="unknown fine-tuning method 'linear'"):
        FineTuneConfig.for_method("linear")
    with pytest.raises(ValueError, match="unknown fine-tuning settings: alpha"):
        FineTuneConfig.for_method("coop", alpha=1.0)
    bad_settings = (
        {"val_fraction": 1.0},
        {"lr": 0.0},
        {"template": "no slot"},
        {"template": "{} of {kind}"},
        {"ratio": 2.0},
        {"epochs": 0},
    )
    for bad in bad_settings:
        with pytest.raises(ValueError):
            FineTuneConfig.for_method("clip_adapter", **bad).check()
    with pytest.raises(Cancelled):
        fine_tune(clip.model, clip.tokenizer, bank, names, config, should_stop=lambda: True)
