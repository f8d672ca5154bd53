import inspect

import pytest
import torch

from diffusers_neodragon.utils.cuda_graphs import (
    CUDAGraphRunner,
    enable_module_cuda_graphs,
    graph_key,
    module_cuda_graph_runner,
)
from tests.tiny_components import first_frame_pipeline


def unet_call(batch=1, size=8, seed=0, timestep=999, dtype=torch.float32, device="cpu"):
    """Arguments of one first-frame UNet call as StableDiffusionXLPipeline makes it (tiny config)."""
    g = torch.Generator().manual_seed(seed)

    def cast(t):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    args = (cast(torch.randn(batch, 4, size, size, generator=g)), cast(torch.tensor(timestep)))
    added = {"text_embeds": torch.randn(batch, 8, generator=g), "time_ids": torch.randn(batch, 6, generator=g)}
    kwargs = dict(
        encoder_hidden_states=cast(torch.randn(batch, 12, 32, generator=g)),
        timestep_cond=None,
        cross_attention_kwargs=None,
        added_cond_kwargs={name: cast(t) for name, t in added.items()},
        return_dict=False,
    )
    return args, kwargs


def test_key_depends_on_shapes_dtypes_and_values_not_on_tensor_values():
    args, kwargs = unet_call(seed=0, timestep=999)
    key = graph_key(args, kwargs)
    assert key is not None and hash(key) == hash(graph_key(*unet_call(seed=0)))
    assert graph_key(*unet_call(seed=1, timestep=249)) == key  # other values, same shapes: same graph

    assert graph_key(*unet_call(batch=2)) != key
    assert graph_key(*unet_call(size=16)) != key
    assert graph_key(*unet_call(dtype=torch.float64)) != key
    assert graph_key(*unet_call(device="meta")) != key
    for name, value in (("return_dict", True), ("timestep_cond", torch.zeros(1, 4)), ("cross_attention_kwargs", 1)):
        assert graph_key(args, {**kwargs, name: value}) != key, name
    assert graph_key(args, {k: v for k, v in kwargs.items() if k != "timestep_cond"}) != key  # structure
    assert graph_key(args[:1], {**kwargs, "timestep": args[1]}) != key  # positional vs keyword
    # Non-tensor values are keyed with their type (1 == 1.0 == True in Python).
    assert len({graph_key((1,)), graph_key((1.0,)), graph_key((True,))}) == 3
    assert graph_key((0.5,)) == graph_key((0.5,)) != graph_key((0.25,))


def test_key_sees_the_leaves_of_nested_dicts():
    args, kwargs = unet_call()
    key = graph_key(args, kwargs)
    added = kwargs["added_cond_kwargs"]
    assert graph_key(args, {**kwargs, "added_cond_kwargs": {**added, "time_ids": torch.randn(1, 7)}}) != key
    assert graph_key(args, {**kwargs, "added_cond_kwargs": {**added, "time_ids": added["time_ids"].double()}}) != key
    assert graph_key(args, {**kwargs, "added_cond_kwargs": {**added, "image_embeds": torch.randn(1, 3)}}) != key
    same = {"text_embeds": torch.zeros(1, 8), "time_ids": torch.ones(1, 6)}
    assert graph_key(args, {**kwargs, "added_cond_kwargs": same}) == key
    assert graph_key(args, {**kwargs, "added_cond_kwargs": {"x": [1, {"y": 2}]}}) != graph_key(
        args, {**kwargs, "added_cond_kwargs": {"x": [1, {"y": 3}]}}
    )


def test_unhashable_leaves_cannot_be_keyed():
    class Unhashable:
        __hash__ = None

    assert graph_key((torch.zeros(2), Unhashable())) is None


@pytest.mark.parametrize("grad", [False, True])
def test_runner_is_a_passthrough_on_cpu(grad):
    unet = first_frame_pipeline().unet.eval()
    runner = CUDAGraphRunner(unet.forward)
    args, kwargs = unet_call()
    with torch.set_grad_enabled(grad):
        for _ in range(3):  # the calls that would run eagerly, capture and replay on CUDA
            out = runner(*args, **kwargs)
            assert torch.equal(out[0], unet(*args, **kwargs)[0])
    assert isinstance(out, tuple) and runner.graphs == {} and runner.num_graphs == 0
    assert runner.__name__ == "forward" and inspect.signature(runner) == inspect.signature(unet.forward)


def test_enable_module_cuda_graphs_round_trip():
    unet = first_frame_pipeline().unet
    assert "forward" not in unet.__dict__
    runner = enable_module_cuda_graphs(unet)
    assert unet.forward is runner and module_cuda_graph_runner(unet) is runner
    again = enable_module_cuda_graphs(unet)  # replaces, never stacks
    assert again is not runner and unet.forward is again and again.previous_forward is None
    assert enable_module_cuda_graphs(unet, enabled=False) is None
    assert "forward" not in unet.__dict__ and "_cuda_graph_runner" not in unet.__dict__
    assert unet.forward.__func__ is type(unet).forward
    enable_module_cuda_graphs(unet, enabled=False)  # disabling twice is a no-op

    # A forward that was already patched on the instance comes back as it was.
    def patched(*args, **kwargs):
        return type(unet).forward(unet, *args, **kwargs)

    unet.forward = patched
    enable_module_cuda_graphs(unet)
    assert unet.forward.fn is patched
    enable_module_cuda_graphs(unet, enabled=False)
    assert unet.forward is patched


def test_disabling_under_a_later_wrapper_is_refused():
    unet = first_frame_pipeline().unet
    runner = enable_module_cuda_graphs(unet)
    unet.forward = lambda *args, **kwargs: runner(*args, **kwargs)  # e.g. an offload hook added afterwards
    with pytest.raises(RuntimeError, match="wrapped again"):
        enable_module_cuda_graphs(unet, enabled=False)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_replay_equals_eager_on_cuda():
    unet = first_frame_pipeline().unet.eval().cuda()
    runner = CUDAGraphRunner(unet.forward)
    with torch.no_grad():
        for step, timestep in enumerate((999, 749, 499, 249, 999)):
            args, kwargs = unet_call(seed=step, timestep=timestep, device="cuda")
            out = runner(*args, **kwargs)[0]
            with runner.paused():
                eager = runner(*args, **kwargs)[0]
            torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
            assert runner.num_graphs == (1 if step >= 1 else 0)
        first = out
        args, kwargs = unet_call(seed=9, device="cuda")
        other = runner(*args, **kwargs)[0]
        assert other.data_ptr() == first.data_ptr()  # static output: overwritten by the next replay
        args, kwargs = unet_call(batch=2, device="cuda")
        runner(*args, **kwargs)  # a new shape runs eagerly first
        assert len(runner.graphs) == 2 and runner.num_graphs == 1
    with torch.enable_grad():  # autograd: eager, nothing recorded
        args, kwargs = unet_call(seed=3, device="cuda")
        runner(*args, **kwargs)
    assert len(runner.graphs) == 2


@cuda
def test_calls_marked_by_eager_when_always_run_eagerly_on_cuda():
    def step(x, cache=None):
        if cache is not None:  # host-side state: a replayed graph would skip this update
            cache["calls"] = cache.get("calls", 0) + 1
        return x * 2

    runner = CUDAGraphRunner(step, eager_when=lambda x, cache=None: cache is not None)
    x = torch.ones(4, device="cuda")
    with torch.no_grad():
        cache = {}
        for _ in range(3):
            runner(x, cache)
        assert cache == {"calls": 3} and runner.graphs == {}
        for _ in range(3):
            out = runner(x)
    assert runner.num_graphs == 1
    torch.testing.assert_close(out, x * 2)


def test_runner_drops_its_graphs_when_the_weights_move():
    layer = torch.nn.Linear(3, 3)
    runner = CUDAGraphRunner(layer.forward, weights=layer)
    assert runner.drop_graphs_if_weights_moved()  # first look: records where the weights are
    runner.graphs["key"] = "seen"
    assert not runner.drop_graphs_if_weights_moved() and runner.graphs == {"key": "seen"}
    layer.to(torch.float64)
    assert runner.drop_graphs_if_weights_moved() and runner.graphs == {}
    unguarded = CUDAGraphRunner(layer.forward)
    unguarded.graphs["key"] = "seen"
    layer.to(torch.float32)
    assert not unguarded.drop_graphs_if_weights_moved() and unguarded.graphs == {"key": "seen"}


@cuda
def test_a_capture_that_fails_falls_back_to_eager_on_cuda():
    def synchronising(x):
        return x * float(x.sum().item())  # a host synchronisation: not capturable

    runner = CUDAGraphRunner(synchronising)
    x = torch.arange(4.0, device="cuda")
    with torch.no_grad():
        outs = [runner(x) for _ in range(3)]  # eager, failed capture (eager), eager
        for out in outs:
            torch.testing.assert_close(out, x * 6.0)
        assert runner.num_graphs == 0 and list(runner.graphs.values()) == ["eager"]
        assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the failed capture restored it
        other = CUDAGraphRunner(lambda y: y * 2)  # the device is still usable for graphs afterwards
        for _ in range(3):
            torch.testing.assert_close(other(x), x * 2)
        assert other.num_graphs == 1
