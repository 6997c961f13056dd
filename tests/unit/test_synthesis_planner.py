"""The synthesis prompt planner: determinism, exact shares, guidance draws, seeds and validation."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from zsc_synthesis.core.planner import (
    DEFAULT_DOMAINS,
    IMAGE_TEMPLATES,
    TEMPLATES,
    TRICKS,
    ClassSpec,
    TrickConfig,
    image_seed,
    interleave,
    largest_remainder,
    list_tricks,
    make_plan,
    parse_tricks,
)

CLASSES = ["airplane", "cat", "dog"]


def by_class(jobs, name):
    return [j for j in jobs if j.class_name == name]


def test_plan_is_deterministic_and_complete():
    first = make_plan(CLASSES, 37, "merged", seed=11)
    again = make_plan(CLASSES, 37, "merged", seed=11)
    assert first == again
    assert [(j.class_name, j.index) for j in first] == [(c, i) for c in CLASSES for i in range(37)]
    assert [j.seed for j in make_plan(CLASSES, 37, "merged", seed=12)] != [j.seed for j in first]


def test_ten_domains_take_exactly_equal_shares():
    jobs = make_plan(["cat", "dog"], 1000, "multidomain", seed=0)
    for name in ("cat", "dog"):
        counts = Counter(j.domain for j in by_class(jobs, name))
        assert counts == dict.fromkeys(DEFAULT_DOMAINS, 100)
    cat = by_class(jobs, "cat")
    # interleaved: the first ten images of a class already cover every domain
    assert {j.domain for j in cat[:10]} == set(DEFAULT_DOMAINS)
    assert cat[0].prompt == "a photo of a cat" and cat[9].prompt == "a 3D rendering of a cat"


def test_uneven_counts_use_largest_remainder():
    counts = Counter(j.domain for j in make_plan(["cat"], 1003, "multidomain"))
    assert sum(counts.values()) == 1003
    assert sorted(counts.values()) == [100] * 7 + [101] * 3
    # ties go to the earlier domains
    assert [counts[d] for d in DEFAULT_DOMAINS[:3]] == [101, 101, 101]
    assert largest_remainder([0.5, 0.3, 0.2], 10) == [5, 3, 2]
    assert largest_remainder([1 / 3] * 3, 7) == [3, 2, 2]
    assert largest_remainder([0.0, 1.0], 5) == [0, 5]


def test_largest_remainder_and_interleave_invariants():
    rng = random.Random(0)
    for _ in range(200):
        shares = [rng.random() for _ in range(rng.randint(1, 6))]
        total = rng.randint(0, 300)
        counts = largest_remainder(shares, total)
        assert sum(counts) == total
        quotas = [s * total / sum(shares) for s in shares]
        assert all(abs(c - q) < 1 for c, q in zip(counts, quotas, strict=True))
        order = interleave(counts)
        assert Counter(order) == {i: c for i, c in enumerate(counts) if c}


def test_merged_shares_are_exact_per_class_and_per_domain():
    mix = [("class_prompt", 0.5), ("multidomain,random_guidance", 0.3), ("random_guidance", 0.2)]
    jobs = make_plan(CLASSES, 200, mix, seed=5)
    for name in CLASSES:
        cls_jobs = by_class(jobs, name)
        assert Counter(j.trick for j in cls_jobs) == {
            "class_prompt": 100,
            "multidomain+random_guidance": 60,
            "random_guidance": 40,
        }
        md = [j for j in cls_jobs if j.trick == "multidomain+random_guidance"]
        assert Counter(j.domain for j in md) == dict.fromkeys(DEFAULT_DOMAINS, 6)
        assert all(j.domain == "" for j in cls_jobs if j.trick != "multidomain+random_guidance")
    default = make_plan(["cat"], 9, "merged")
    assert Counter(j.trick for j in default) == {"class_prompt": 3, "multidomain": 3, "random_guidance": 3}


def test_trick_prompts_and_combination_semantics():
    crane = ClassSpec("crane", "crane, a bird")
    [plain] = make_plan([crane], 1, "class_prompt")
    assert (plain.prompt, plain.guidance, plain.class_name, plain.file) == (
        "crane, a bird",
        7.5,
        "crane",
        "crane/00000.png",
    )
    # the released create_dataset.py's random-scale prompt: f"an image of {c}", no article
    [rg] = make_plan(["cat"], 1, "random_guidance")
    assert rg.prompt == "an image of cat" and 1.0 <= rg.guidance <= 5.0 and rg.trick == "random_guidance"
    [fixed] = make_plan(["cat"], 1, parse_tricks("fixed_guidance", guidance_scale=3.0))
    assert (fixed.prompt, fixed.guidance) == ("an image of cat", 3.0)
    combo = make_plan(["cat"], 20, "multidomain,random_guidance", seed=1)
    assert combo == make_plan(["cat"], 20, "random_guidance+multidomain", seed=1)
    assert {j.trick for j in combo} == {"multidomain+random_guidance"}
    assert combo[3].prompt == f"a {combo[3].domain} of a cat"
    assert len({j.guidance for j in combo}) == 20
    class_rg = make_plan(["cat"], 5, "class_prompt,random_guidance")
    assert all(j.prompt == "cat" and j.guidance != 7.5 for j in class_rg)


def test_image_templates_name_the_paper_and_released_wordings():
    assert IMAGE_TEMPLATES == {"image_of": "an image of {class}", "image_of_a": "an image of a {class}"}
    [paper] = make_plan(["cat"], 1, parse_tricks("random_guidance", image_template="image_of_a"))
    assert paper.prompt == "an image of a cat"
    [literal] = make_plan(
        [ClassSpec("crane", "crane, a bird")], 1, parse_tricks("fixed_guidance", image_template="a {class}")
    )
    assert literal.prompt == "a crane, a bird"
    # a merge: the knob reaches the component without a prompt trick only; the guidance is unchanged
    mix = parse_tricks([("multidomain", 0.5), ("random_guidance", 0.5)], image_template="image_of_a")
    plan = make_plan(["cat"], 4, mix, seed=3)
    assert {j.prompt for j in plan if j.trick == "random_guidance"} == {"an image of a cat"}
    assert all(j.prompt.endswith("of a cat") and j.domain for j in plan if j.trick == "multidomain")
    default = make_plan(["cat"], 4, [("multidomain", 0.5), ("random_guidance", 0.5)], seed=3)
    assert [j.guidance for j in plan] == [j.guidance for j in default]


def test_custom_and_satellite_templates_and_domains():
    sat = make_plan(["river"], 4, parse_tricks("multidomain", template="satellite", domains=["photo", "sketch"]))
    assert [j.prompt for j in sat] == [
        "a satellite photo of a river in the style of a photo",
        "a satellite photo of a river in the style of a sketch",
    ] * 2
    assert TEMPLATES["satellite"] == "a satellite photo of a {class} in the style of a {domain}"
    custom = make_plan(["cat"], 2, parse_tricks("multidomain", template="{class} as {domain}", domains=["oil", "ink"]))
    assert [j.prompt for j in custom] == ["cat as oil", "cat as ink"]
    [neg] = make_plan(["cat"], 1, parse_tricks("class_prompt", negative_prompt="blurry"))
    assert neg.negative_prompt == "blurry"


def test_random_guidance_in_range_and_varied():
    jobs = make_plan(CLASSES, 400, "random_guidance", seed=2)
    values = [j.guidance for j in jobs]
    assert all(1.0 <= g <= 5.0 for g in values)
    assert len(set(values)) == len(values)
    assert statistics.pstdev(values) > 1.0  # uniform on [1, 5] has sd 1.15
    assert min(values) < 1.1 and max(values) > 4.9
    narrow = make_plan(["cat"], 300, parse_tricks("random_guidance", guidance_range=(2.0, 2.5)))
    assert all(2.0 <= j.guidance <= 2.5 for j in narrow)
    point = make_plan(["cat"], 3, parse_tricks("random_guidance", guidance_range=(4.0, 4.0)))
    assert {j.guidance for j in point} == {4.0}


def test_seeds_unique_and_regenerable_alone():
    jobs = make_plan([f"class{i}" for i in range(20)], 500, "multidomain", seed=7)
    seeds = [j.seed for j in jobs]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    big = {(j.class_name, j.index): j for j in make_plan(["dog", "cat", "emu"], 50, "random_guidance", seed=7)}
    # the same image in a plan with another count, other classes and another order
    for j in make_plan(["cat"], 10, "random_guidance", seed=7):
        assert j.seed == big[("cat", j.index)].seed == image_seed(7, "cat", j.index)
        assert j.guidance == big[("cat", j.index)].guidance
    assert image_seed(7, "cat", 3) != image_seed(8, "cat", 3)
    assert image_seed(7, "cat", 3) != image_seed(7, "cats", 3)
    # the trick does not enter the seed: a multi-domain and a class-prompt plan share their noise per (class, index)
    assert [j.seed for j in make_plan(["cat"], 5, "class_prompt", seed=7)] == [
        j.seed for j in make_plan(["cat"], 5, "multidomain", seed=7)
    ]


def test_list_tricks_describes_defaults():
    tricks = {t.name: t for t in list_tricks()}
    assert tuple(tricks) == TRICKS
    assert tricks["multidomain"].defaults["domains"] == list(DEFAULT_DOMAINS)
    assert tricks["multidomain"].defaults["template"] == "a {domain} of a {class}"
    assert tricks["random_guidance"].defaults["guidance_range"] == [1.0, 5.0]
    assert tricks["random_guidance"].defaults["template"] == "an image of {class}"
    assert tricks["class_prompt"].defaults["guidance_scale"] == 7.5
    assert sum(tricks["merged"].defaults["shares"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": []}, "no classes"),
        ({"classes": ["cat", "cat"]}, "class 'cat' appears twice in classes"),
        ({"classes": ["cat", "  "]}, "empty"),
        ({"classes": ["a/b"]}, "folder name"),
        ({"classes": ["manifest.jsonl"]}, "reserved"),
        ({"images_per_class": 0}, "positive"),
        ({"images_per_class": -3}, "positive"),
        ({"images_per_class": 11}, "cap"),
        ({"tricks": "multidomain,magic"}, "unknown trick"),
        ({"tricks": "class_prompt,multidomain"}, "conflicting"),
        ({"tricks": "merged,random_guidance"}, "cannot be combined"),
        ({"tricks": [("class_prompt", 0.5), ("multidomain", 0.4)]}, "sum to 1"),
        ({"tricks": [("class_prompt", 1.5), ("multidomain", -0.5)]}, "non-negative"),
        ({"tricks": [("class_prompt", 0.5), ("class_prompt", 0.5)]}, "distinct"),
    ],
)
def test_plan_validation(kwargs, message):
    args = {"classes": CLASSES, "images_per_class": 4, "tricks": "class_prompt"} | kwargs
    with pytest.raises(ValueError, match=message) as err:
        make_plan(args["classes"], args["images_per_class"], args["tricks"], max_images_per_class=10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "knobs", "message"),
    [
        ("multidomain", {"domains": "cubism"}, "unknown domain set"),
        ("multidomain", {"domains": ["photo", ""]}, "unknown domain"),
        ("multidomain", {"domains": ["photo", "photo"]}, "duplicate domains"),
        ("multidomain", {"domains": []}, "at least one domain"),
        ("multidomain", {"template": "a {domain} of a thing"}, r"no \{class\}"),
        ("multidomain", {"template": "a {style} {domain} of a {class}"}, "unknown fields"),
        ("multidomain", {"template": "a {class} photo"}, r"needs \{domain\}"),
        ("multidomain", {"template": "mosaic"}, "unknown template"),
        ("random_guidance", {"guidance_range": (5.0, 1.0)}, "lo > hi"),
        ("random_guidance", {"guidance_range": (-1.0, 2.0)}, "non-negative"),
        ("fixed_guidance", {"guidance_scale": -2.0}, "non-negative"),
        ("class_prompt", {"guidance_range": (1.0, 2.0)}, "no trick"),
        ("class_prompt", {"domains": ["photo"]}, "no trick"),
        ("multidomain,random_guidance", {"image_template": "image_of_a"}, "image_template was given but no trick"),
        ("random_guidance", {"image_template": "an_image"}, "unknown image template 'an_image'"),
        ("random_guidance", {"image_template": "a {domain} {class}"}, r"takes no \{domain\}"),
        ("random_guidance", {"image_template": "an image of {thing}"}, "unknown fields"),
        ("", {}, "malformed"),
    ],
)
def test_trick_validation(spec, knobs, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_tricks(spec, **knobs)
    assert "\n" not in str(err.value)


def test_trick_config_validates_itself():
    with pytest.raises(ValueError, match=r"no \{class\}"):
        TrickConfig("x", "a photo")
    with pytest.raises(ValueError, match="no \\{domain\\}"):
        TrickConfig("x", "a {class}", domains=("photo",))
    with pytest.raises(ValueError, match="guidance mode"):
        TrickConfig("x", "a {class}", guidance_mode="cosine")
    config = TrickConfig("mine", "a {domain} {class}", domains=["red", "blue"], guidance_mode="uniform")
    assert [j.prompt for j in make_plan(["car"], 2, config)] == ["a red car", "a blue car"]
