"""IdleOnCpu: frozen text encoders parked in CPU memory while a run with cached captions does not use them; in the
flow-matching and DMD scripts they are parked after the caption cache and never run while parked."""

import pytest
import torch

from diffusers_neodragon.training_utils import IdleOnCpu


class Recorded(torch.nn.Linear):
    """A module that records where it is sent instead of going there (no accelerator on the test machine)."""

    def __init__(self, moves):
        super().__init__(2, 2)
        self.moves = moves

    def to(self, device):
        self.moves.append(torch.device(device).type)
        return self


def test_parked_modules_come_to_the_device_only_inside_in_use(caplog):
    caplog.set_level("INFO", logger="diffusers_neodragon.training_utils.frozen_offload")
    moves = []
    idle = IdleOnCpu([Recorded(moves), None, Recorded(moves)], "cuda")
    assert len(idle.modules) == 2
    with idle.in_use():  # not parked yet: nothing moves
        pass
    assert moves == [] and idle.park() is idle and idle.parked
    idle.park()  # already parked: no second move
    assert moves == ["cpu", "cpu"]
    with pytest.raises(RuntimeError, match="boom"), idle.in_use():
        assert not idle.parked
        raise RuntimeError("boom")
    assert moves == ["cpu", "cpu", "cuda", "cuda", "cpu", "cpu"] and idle.parked  # parked again after the error
    parked = [r.getMessage() for r in caplog.records if "parked in CPU memory" in r.getMessage()]
    assert parked == ["2 idle module(s) parked in CPU memory: 0.0 MiB off cuda"]  # said once, not at every re-park
    cpu_run = IdleOnCpu([Recorded(moves)], "cpu").park()
    assert not cpu_run.parked and len(moves) == 6  # on a CPU run there is nowhere else to go


def spy_on(module, monkeypatch):
    """Replace the script's IdleOnCpu with one that acts as on a GPU (nothing really moves) and records its moves
    and whether a text encoder ran while parked."""
    moves, ran_while_parked = [], []

    class Spy(IdleOnCpu):
        def __init__(self, modules, device):
            super().__init__(modules, "cuda")
            for m in self.modules:
                m.register_forward_pre_hook(lambda *_: ran_while_parked.append(self.parked))

        def _move(self, device):
            moves.append(device.type)

    monkeypatch.setattr(module, "IdleOnCpu", Spy)
    return moves, ran_while_parked


def test_flow_training_parks_the_text_encoders_after_caching_captions(tmp_path, monkeypatch):
    from tests.tiny_components import tiny_causal_vae
    from tests.training.test_train_pyramidal_flow import TINY, train

    tiny_causal_vae(seed=0).save_pretrained(tmp_path / "vae_folder" / "vae")
    moves, ran_while_parked = spy_on(train, monkeypatch)
    train.main(train.parse_args([
        *TINY, "--vae_path", str(tmp_path / "vae_folder"), "--output_dir", str(tmp_path / "out"),
        "--max_train_steps", "2", "--train_samples", "4", "--checkpointing_steps", "0", "--validation_steps", "1",
        "--num_validation_prompts", "1", "--validation_num_inference_steps", "1",
        "--validation_video_num_inference_steps", "1",
    ]))
    # parked once the captions are cached; on the device for the validations at steps 1 and 2 and the final one
    assert moves == ["cpu", "cuda", "cpu", "cuda", "cpu", "cuda", "cpu"]
    assert ran_while_parked and not any(ran_while_parked)


def test_dmd_parks_the_teacher_text_encoders_after_caching_captions(tmp_path, monkeypatch):
    from tests.tiny_components import tiny_causal_vae
    from tests.training.test_distill_pyramidal_dmd import TINY_TEACHER, distill, train

    tiny_causal_vae(seed=0).save_pretrained(tmp_path / "vae_folder" / "vae")
    train.main(train.parse_args([*TINY_TEACHER, "--vae_path", str(tmp_path / "vae_folder"),
                                 "--output_dir", str(tmp_path / "teacher")]))
    moves, ran_while_parked = spy_on(distill, monkeypatch)
    distill.main(distill.parse_args([
        "--teacher_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "dmd"), "--train_samples", "4",
        "--train_batch_size", "2", "--max_sequence_length", "24", "--report_to", "none", "--max_train_steps", "1",
        "--checkpointing_steps", "0", "--num_validation_prompts", "1", "--validation_steps", "1",
    ]))
    assert moves == ["cpu", "cuda", "cpu", "cuda", "cpu"]  # parked; the validation at step 1 and the final one
    assert ran_while_parked and not any(ran_while_parked)
