"""benchmarks/export_full_size.py: its memory summary against the paper's budget (the exports themselves need the
full-size models, hours of CPU and ~13 GB of memory, so they are run by hand, not here)."""

from tests.script_loading import load_script


export_full_size = load_script("benchmarks/export_full_size.py")


def row(component, weights_mib, peak_mib):
    memory = {"weights_mib": weights_mib, "peak_activations_mib": peak_mib}
    return {"component": component, "memory_fp16": memory, "memory_w8a16": {**memory, "weights_mib": weights_mib / 2}}


def test_the_budget_counts_the_stages_shared_weights_once_and_each_phase_alone():
    rows = [row("text_encoder", 495, 5), row("transformer_stage_0", 2880, 19), row("transformer_stage_1", 2880, 60),
            row("decoder_step", 19, 346), row("t2i_unet", 2600, 120), row("t2i_text_encoder_2", 1204, 3)]
    fp16_names, fp16, fp16_phases, w8a16_names, w8a16, w8a16_phases = export_full_size.budget_summary(
        rows, 3.5 * 2**30).splitlines()
    assert "6 components" in fp16_names and "6 components" in w8a16_names
    # all resident: 495 + 2880 (once) + 19 + 2600 + 1204 weights + the 346 MiB decoder peak
    resident = 495 + 2880 + 19 + 2600 + 1204 + 346
    assert f"{resident:.1f} MiB = {resident / 3584:.1%}" in fp16
    # phase by phase: the video phase (2880 + 19 + 346) outweighs the first frame (2600 + 120), whose CLIP text
    # encoder has run and gone before the UNet loads, and the text
    assert f"the largest (video): {2880 + 19 + 346:.1f} MiB" in fp16_phases
    assert f"the largest (video): {1440 + 9.5 + 346:.1f} MiB" in w8a16_phases
    assert "(text, video, first frame, first-frame text)" in w8a16_phases


def test_first_frame_parts_are_built_alone_at_twice_the_video_size():
    """The wiring of the first-frame parts, on the meta device (the full-size weights would take minutes)."""
    import torch

    from diffusers_neodragon.export.specs import ExportSize

    with torch.device("meta"):
        pipe = export_full_size.build("t2i_unet")
    assert not isinstance(pipe.text_encoder_2, torch.nn.Module)  # only its config is kept
    spec = export_full_size.spec_for("t2i_unet", pipe, ExportSize(320, 512, 49))
    assert spec.name == "t2i_unet" and tuple(spec.inputs["sample"].shape) == (1, 4, 80, 128)
    assert tuple(spec.inputs["encoder_hidden_states"].shape) == (1, 77, 2048)
    assert spec.inputs["text_embeds"].shape[-1] == pipe.text_encoder_2.config.projection_dim


def test_a_shared_context_without_the_stages_is_refused_before_any_work(tmp_path, capsys):
    import pytest

    (tmp_path / "transformer_stage_0.onnx").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        export_full_size.main(["--output", str(tmp_path), "--components", "transformer_stage_1", "--shared-context"])
    assert exit_info.value.code == 2
    # stage 0 is there and stage 1 will be exported: only stage 2 is missing
    assert "export transformer_stage_2.onnx first" in capsys.readouterr().err
