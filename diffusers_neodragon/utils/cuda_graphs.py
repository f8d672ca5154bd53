"""Replay a callable from CUDA graphs, one graph per input signature (inference only).

At batch 1 the DiT and the first-frame UNet are bound by kernel-launch overhead, not by the GPU: each call issues
hundreds to thousands of small kernels whose CPU-side launch costs more than their execution. A CUDA graph
records those launches once and replays them with a single call.

[`CUDAGraphRunner`] wraps any callable (a module's ``forward``, or an inner implementation function) and keys its
calls by :func:`graph_key`: the nesting structure of ``(args, kwargs)`` (flattened with ``torch.utils._pytree``,
so nested dicts such as the UNet's ``added_cond_kwargs`` count), the shape/dtype/device of every tensor leaf and
the value of every other leaf. For each key:

1. the first call runs eagerly (it fills lazily built caches and lets libraries pick their kernels);
2. the second call warms up once on a side stream (as ``torch.cuda.graphs`` requires), then captures the work into
   a graph whose memory comes from one pool shared by all graphs of this runner, with its inputs cloned into
   *static* buffers;
3. later calls copy their tensors into the static buffers, replay the graph and return its *static* outputs.

Rules that follow from replaying:

- **Outputs are overwritten by the next replay** (of this key, and possibly of any other graph of the same
  pool, which reuses the memory of freed intermediates). Consume or clone them before calling again, or pass
  ``clone_outputs=True``.
- The wrapped callable must be a pure function of its tensor inputs and non-tensor values: no host
  synchronisation (``.item()``, data-dependent Python branches), no in-place update of its inputs, no host-side
  state that changes between calls. Weights are read from the addresses they had at capture: after moving them
  (``.to()``, CPU offload, reloading with ``assign=True``) call :meth:`CUDAGraphRunner.reset`; in-place weight
  updates (``load_state_dict``, ``copy_``) are seen by later replays.
- Graphs are used only when autograd is off and every tensor leaf is a CUDA tensor on one device; anything else
  (CPU tensors, training, a stream that is itself being captured, unhashable non-tensor arguments) runs eagerly,
  so the wrapper is a pure passthrough there.
- Every key holds its own graph, static buffers and pooled memory until :meth:`CUDAGraphRunner.reset`.
- A capture that fails (a host synchronisation inside the callable, say) is logged and that key runs eagerly
  until :meth:`CUDAGraphRunner.reset`, so enabling graphs never breaks a model that cannot be captured.
"""

import contextlib
import functools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten


SEEN = "seen"  # a key called once, eagerly; the next call with that key captures
EAGER = "eager"  # a key whose capture failed: it always runs eagerly

logger = logging.getLogger(__name__)


def _leaf_key(leaf) -> Hashable:
    if isinstance(leaf, torch.Tensor):
        return (torch.Tensor, tuple(leaf.shape), leaf.dtype, leaf.device)
    hash(leaf)  # TypeError for unhashable values: such calls cannot be keyed
    return (type(leaf), leaf)  # the type keeps 1, 1.0 and True apart


def _key_from_flat(leaves: list[Any], spec: TreeSpec) -> Hashable | None:
    try:
        hash(spec)
        structure = spec
    except TypeError:  # a user-registered node whose context is unhashable
        structure = str(spec)
    try:
        leaf_keys = tuple(_leaf_key(leaf) for leaf in leaves)
    except TypeError:
        return None
    mode = (
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
        torch.is_inference_mode_enabled(),
    )
    return structure, leaf_keys, mode


def graph_key(args=(), kwargs=None) -> Hashable | None:
    """The key under which a call ``fn(*args, **kwargs)`` is captured; ``None`` when it cannot be keyed.

    Equal for calls with the same nesting structure, the same shape, dtype and device for every tensor leaf, the
    same (type, value) for every other leaf, and the same CUDA autocast / inference-mode state. Tensor *values*
    never enter the key: they are copied into the graph's inputs.
    """
    leaves, spec = tree_flatten((tuple(args), dict(kwargs or {})))
    return _key_from_flat(leaves, spec)


@dataclass
class _CapturedGraph:
    graph: Any  # torch.cuda.CUDAGraph
    static_inputs: list[torch.Tensor]  # the tensor leaves of (args, kwargs), in order
    output_leaves: list[Any]
    output_spec: TreeSpec

    def replay(self, tensors: list[torch.Tensor], clone_outputs: bool):
        for buffer, value in zip(self.static_inputs, tensors):
            if buffer is not value:
                buffer.copy_(value)
        self.graph.replay()
        leaves = self.output_leaves
        if clone_outputs:
            leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        return tree_unflatten(leaves, self.output_spec)  # fresh containers around the (static) tensors


class GraphPool:
    """A CUDA-graph memory pool that several runners can share; the handle is made on first use (CUDA only)."""

    def __init__(self):
        self._handle = None

    @property
    def handle(self):
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle


class CUDAGraphRunner:
    """Calls ``fn`` eagerly, or replays the CUDA graph captured for the call's :func:`graph_key`.

    Args:
        fn: the callable to run; it receives the caller's arguments (eager) or static copies of them (capture).
        clone_outputs: return clones of the graph's output tensors instead of the static tensors themselves, so
            that callers may keep them across calls (one extra copy per output).
        pool: a [`GraphPool`] to share with other runners; by default each runner makes its own, shared by all
            of its graphs. Graphs sharing a pool must never run concurrently, and the static outputs of one are
            only valid until another graph of the pool replays (its intermediates may reuse their memory).
        weights: the module whose parameters ``fn`` reads. Graphs replay fixed addresses, so when its first
            parameter has moved since the last call (``.to()``, ``.half()``, reloading) every graph is dropped
            and shapes are captured again; without it, call :meth:`reset` after moving the weights.
        eager_when: a predicate on the call's ``(*args, **kwargs)``; calls for which it is true always run eagerly.
            For callables that are pure only for some calls, e.g. a causal encoder that updates a cache passed in.

    Attributes:
        graphs: key → ``"seen"`` (called once), ``"eager"`` (capture failed) or the captured graph with its static
            buffers.
    """

    def __init__(self, fn: Callable, clone_outputs: bool = False, pool: GraphPool | None = None,
                 weights: torch.nn.Module | None = None, eager_when: Callable[..., bool] | None = None):
        self.fn = fn
        self.eager_when = eager_when
        self.clone_outputs = clone_outputs
        self.graph_pool = pool if pool is not None else GraphPool()
        self.weights = weights
        self._weights_address = None
        self.graphs: dict[Hashable, Any] = {}
        self.previous_forward = None  # set by enable_module_cuda_graphs: the instance forward it replaced
        self._paused = 0
        # Name, docstring and (through __wrapped__) inspect.signature of fn; never fn's attributes.
        functools.update_wrapper(self, fn, updated=())

    @property
    def pool(self):
        """The memory-pool handle of this runner's graphs (made on first use)."""
        return self.graph_pool.handle

    def drop_graphs_if_weights_moved(self) -> bool:
        """Forget every graph when the first parameter of ``weights`` is no longer where it was; True if so."""
        first = next(self.weights.parameters(), None) if self.weights is not None else None
        address = None if first is None else (first.device, first.dtype, first.data_ptr())
        moved = address != self._weights_address
        if moved:
            self._weights_address = address
            self.reset()
        return moved

    @property
    def num_graphs(self) -> int:
        """Number of captured graphs (keys seen only once do not count)."""
        return sum(isinstance(entry, _CapturedGraph) for entry in self.graphs.values())

    def reset(self):
        """Forget every key and drop every graph (call after the weights moved)."""
        self.graphs.clear()

    @contextlib.contextmanager
    def paused(self):
        """Run eagerly inside the block (e.g. to compare with the graphs), keeping the captured graphs."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def __call__(self, *args, **kwargs):
        if self._paused or torch.is_grad_enabled():
            return self.fn(*args, **kwargs)
        if self.eager_when is not None and self.eager_when(*args, **kwargs):
            return self.fn(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if not tensors or not tensors[0].is_cuda:
            return self.fn(*args, **kwargs)
        device = tensors[0].device
        if any(t.device != device for t in tensors) or torch.cuda.is_current_stream_capturing():
            return self.fn(*args, **kwargs)
        key = _key_from_flat(leaves, spec)
        if key is None:
            return self.fn(*args, **kwargs)
        self.drop_graphs_if_weights_moved()
        entry = self.graphs.get(key)
        if entry is None:  # first sight: eager (fills caches, picks kernels)
            self.graphs[key] = SEEN
            return self.fn(*args, **kwargs)
        with torch.cuda.device(device):
            if entry is SEEN:
                entry = self.graphs[key] = self._capture(leaves, spec)
            if entry is EAGER:
                return self.fn(*args, **kwargs)
            return entry.replay(tensors, self.clone_outputs)

    def _capture(self, leaves: list[Any], spec: TreeSpec):
        """The captured graph of this call, or ``EAGER`` when ``fn`` cannot be captured (errors of ``fn`` itself
        surface from the eager warm-up)."""
        static_leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(static_leaves, spec)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.fn(*args, **kwargs)  # warm-up on a side stream, as capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        previous = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                output = self.fn(*args, **kwargs)
        except Exception as error:  # e.g. `.item()` inside fn invalidates the capture
            # A failed capture_end skips the graph context's stream restore: put the caller's stream back.
            torch.cuda.set_stream(previous)
            logger.warning("CUDA-graph capture of %s failed, running it eagerly for this input signature: %r",
                           getattr(self.fn, "__qualname__", self.fn), error.__context__ or error)
            return EAGER
        output_leaves, output_spec = tree_flatten(output)
        static_inputs = [leaf for leaf in static_leaves if isinstance(leaf, torch.Tensor)]
        return _CapturedGraph(graph, static_inputs, output_leaves, output_spec)


def module_cuda_graph_runner(module: torch.nn.Module) -> CUDAGraphRunner | None:
    """The runner installed by :func:`enable_module_cuda_graphs` on ``module``, if any."""
    return module.__dict__.get("_cuda_graph_runner")


def enable_module_cuda_graphs(module: torch.nn.Module, enabled: bool = True, **runner_kwargs):
    """Route ``module.forward`` through a [`CUDAGraphRunner`] (``enabled=True``) or restore it (``False``).

    The runner wraps whatever ``module.forward`` is at that moment and becomes the instance's ``forward``;
    disabling puts the previous one back (the class's own method when there was none), so enable/disable is an
    exact round trip. Enabling again replaces the runner (its graphs are dropped). Raises ``RuntimeError`` when
    something else (e.g. an accelerate offload hook) wrapped the runner afterwards and must be removed first.
    Returns the new runner, or ``None`` when disabling.
    """
    runner = module_cuda_graph_runner(module)
    if runner is not None:
        if module.__dict__.get("forward") is not runner:
            raise RuntimeError(
                f"{type(module).__name__}.forward was wrapped again after CUDA graphs were enabled on it (e.g. by "
                "an offload hook); remove that wrapper before enabling or disabling the graphs"
            )
        if runner.previous_forward is None:
            del module.forward
        else:
            module.forward = runner.previous_forward
        del module._cuda_graph_runner
    if not enabled:
        return None
    previous = module.__dict__.get("forward")
    runner = CUDAGraphRunner(module.forward, **runner_kwargs)
    runner.previous_forward = previous
    module.forward = runner
    module._cuda_graph_runner = runner
    return runner
