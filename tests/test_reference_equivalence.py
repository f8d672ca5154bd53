"""Conversion checked against the official code (skipped without a local reference checkout).

Runs ``benchmarks/compare_with_reference.py`` at its tiny size (official classes with random weights, written in
the release layout by their own ``save_pretrained``, converted, outputs and a full generation compared), and checks
that the layouts ``tests/test_conversion.py`` writes down from the fact sheet are exactly the official classes'
``state_dict()`` names and shapes.
"""

import os

import pytest
import torch

from tests import test_conversion as facts
from tests.reference_utils import REFERENCE_PATH, import_reference
from tests.script_loading import load_script


# numpy 2 deprecation inside the reference scheduler's linspace
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
PYRAMID_FLOW_PATH = os.environ.get("PYRAMID_FLOW_REFERENCE_PATH", "/work/ref/pyramid-flow")


@pytest.fixture(scope="module")
def bench():
    module = load_script("benchmarks/compare_with_reference.py")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and contention on shared machines)
    yield module
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def official(bench):
    import_reference("pyramid_mmdit")  # skips when there is no reference checkout
    try:
        return bench.import_official(REFERENCE_PATH)
    except Exception as error:  # the reference pins old library versions
        pytest.skip(f"the reference does not import here: {error}")


def _layout(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_fact_sheet_layouts_are_the_official_state_dicts(bench, official):
    config = {k: v for k, v in facts.official_dit_config(3).items() if not k.startswith("_")}
    dit = official.pyramid_mmdit.PyramidMMDiT(**config)
    assert _layout(dit) == facts.official_dit_layout(3)
    torch.testing.assert_close(dit.state_dict()["pos_embed.pos_embed"],
                               facts.facts_sincos_table(facts.WIDTH, facts.POS_GRID, facts.SAMPLE_SIZE // facts.PATCH),
                               rtol=0, atol=1e-6)

    vae_config = {k: v for k, v in facts.official_vae_config().items() if not k.startswith("_")}
    assert _layout(official.asymmetric_causal_video_vae.AsymmetricCausalVideoVAE(**vae_config)) == \
        facts.official_vae_layout()

    adapter_config = {k: v for k, v in facts.official_adapter_config().items() if not k.startswith("_")}
    assert _layout(official.context_adapter.ContextAdapter(**adapter_config)) == facts.official_adapter_layout()

    vocab = len(facts.t5_tokenizer())
    dt5_config = {k: v for k, v in facts.official_dt5_config(vocab).items()
                  if k not in ("architectures", "model_type", "transformers_version")}
    dt5 = official.distil_t5.T5EncoderWithProjection(official.distil_t5.T5ProjectionConfig(**dt5_config))
    assert _layout(dt5) == facts.official_dt5_layout(vocab)


def test_pyramid_flow_layouts_are_its_state_dicts(bench):
    if not os.path.isdir(PYRAMID_FLOW_PATH):
        pytest.skip(f"Pyramid-Flow not found at {PYRAMID_FLOW_PATH}")
    pf = bench.import_pyramid_flow(PYRAMID_FLOW_PATH)
    config = {k: v for k, v in facts.official_dit_config(4, pyramid_flow=True).items() if not k.startswith("_")}
    config.update(temp_pos_embed_type="rope", add_temp_pos_embed=True)  # as its loader builds it
    assert _layout(pf.dit.PyramidDiffusionMMDiT(**config)) == facts.official_dit_layout(4, facts.T5XXL_WIDTH)
    vae_config = {k: v for k, v in facts.pyramid_flow_vae_config().items() if not k.startswith("_")}
    assert _layout(pf.vae.CausalVideoVAE(**vae_config)) == facts.pyramid_flow_vae_layout()


def test_tiny_comparison_meets_every_tolerance(bench, official, tmp_path):
    pyramid_flow = PYRAMID_FLOW_PATH if os.path.isdir(PYRAMID_FLOW_PATH) else None
    rows = bench.run(REFERENCE_PATH, pyramid_flow=pyramid_flow, workdir=tmp_path, log=lambda *args: None)
    names = {row[0] for row in rows}
    assert {"transformer (diffusion_transformer_320p)", "VAE encoder (mean)", "VAE decoder", "DT5 text encoder",
            "context adapter (context_adapter)", "generation hybrid: latent max diff",
            "generation monolithic: min per-frame PSNR (dB)"} <= names
    failed = [row for row in rows if not row[3]]
    assert not failed, failed


def test_the_generation_comparison_notices_a_wrong_weight(bench, official, tmp_path):
    """Negative control: one perturbed converted tensor must show up in the generation comparison."""
    from diffusers_neodragon import NeodragonPipeline
    from diffusers_neodragon.loaders import load_official_neodragon

    built = bench.build_official_snapshot(official, tmp_path, bench.sizes(False), modes=("hybrid",))
    pipe = NeodragonPipeline(**load_official_neodragon(tmp_path, mode="hybrid"))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.transformer.transformer_blocks[1].attn.to_v.weight[0, 0] += 0.05
    result = bench.compare_generation(official, built, pipe, "cpu", "hybrid")
    assert result["latent max diff"][0] > 1e-3 and min(result["psnr"]) < 120
