"""Peak training memory known before the first step: an estimate, what the device has, one-line refusal.

The estimate is for one training step (forward, backward, optimizer step) of a BERT-shaped encoder on one
batch of `batch_clips` sequences padded to `positions`. Terms, in bytes, e = activation element size
(4 for fp32, 2 under autocast), m = dropout mask element size (1 on CUDA, whose fused dropout keeps a
boolean mask; e on CPU, where torch's dropout keeps a scaled noise tensor of the input's dtype),
B clips, L positions, H hidden, I intermediate, A heads, N layers:

  parameters        4 · n_parameters (fp32 master weights)
  amp_weights       2 · n_parameters when e = 2 (autocast keeps a half-precision copy of each weight)
  gradients         4 · trainable_parameters
  optimizer_state   4 · trainable_parameters · states (AdamW/Adam: exp_avg and exp_avg_sq = 2; SGD: 0)
  activations       N · [B·L·(8H + 2I)·e + 2·B·L·H·m]  +  embeddings 3·B·L·H·e + B·L·H·m  +  frames B·L·F·4
                    (per layer, tensors kept for backward: the Q/K/V input, Q, K, V, the context, the FFN
                    input, both LayerNorm inputs (8 of B·L·H), the FFN's pre- and post-GELU (2 of B·L·I),
                    and two dropout masks)
  attention         quadratic: N · B·A·L²·(2s + ms)  (softmax output, dropout output, dropout mask)
                    linear:    N · B·A·L·4         (the log-sum-exp a fused kernel keeps)
  attention_mask    sdpa: N · B·L²·s (torch turns the boolean padding mask into a bias per call and keeps it
                    for backward) + B·L² (the boolean mask); eager: B·L²·s once (one additive mask)
  transient         the largest buffer alive beside all of the above: 2·B·A·L²·s (pre-softmax scores and
                    their gradient, last layer) when attention is quadratic, else 2·B·L·I·e

where s is the element size of the (positions x positions) scores: e on CUDA, but 4 on CPU whatever
autocast does (the CPU's math attention path computes reduced-precision inputs in fp32, and eager
attention's softmax keeps fp32 there: a bf16 step with attention dropout peaks as high as an fp32 one),
and ms the dropout mask's element size beside them (1 on CUDA, s on CPU).
  logits            2 · B·n_classes·4

Attention is quadratic for `eager`, and for `sdpa` on CPU when attention dropout is active (torch's fused
CPU kernel has no dropout, so it falls back to the math path). It is linear for `sdpa` on CUDA (flash /
memory-efficient kernels) and on CPU without dropout. Not counted: the framework itself (libraries, CUDA
context: `available_bytes` is measured with it loaded), allocator fragmentation and DataLoader workers.
Other encoders (Conformer, CNN) are not BERT-shaped; the same terms are a rough guide for them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

GIB = 2**30
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 0}
FIX_SETTINGS = "train.batch_frames, model.max_length, train.crop_frames or spectrogram.max_duration"
SIZE_SETTINGS = "model.hidden_size, model.intermediate_size, model.num_layers or model.max_length"


def attention_is_quadratic(*, attention: str, device_type: str, attention_dropout: bool) -> bool:
    """Whether the attention kernel in use materialises the (positions x positions) score matrix."""
    if attention == "eager":
        return True
    if attention != "sdpa":
        raise ValueError(f"unknown attention implementation {attention!r}")
    return device_type == "cpu" and attention_dropout


def estimate_peak_bytes(
    *, n_parameters: int, trainable_parameters: int, batch_clips: int, positions: int, hidden: int, layers: int,
    heads: int, intermediate: int, n_classes: int, attention: str, device_type: str, amp_dtype_bytes: int = 4,
    optimizer: str = "adamw", attention_dropout: bool = True, input_features: int = 0,
) -> dict[str, int]:
    """Bytes per term of one training step's peak (see the module docstring), with their sum as `total`."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZER_STATES)}")
    e, b, n, a = amp_dtype_bytes, batch_clips, positions, heads
    m = 1 if device_type == "cuda" else e
    s = e if device_type == "cuda" else 4  # the scores' element size (module docstring)
    ms = 1 if device_type == "cuda" else s
    quadratic = attention_is_quadratic(attention=attention, device_type=device_type,
                                       attention_dropout=attention_dropout)
    per_layer = b * n * (8 * hidden + 2 * intermediate) * e + 2 * b * n * hidden * m
    embeddings = 3 * b * n * hidden * e + b * n * hidden * m + b * n * input_features * 4
    if attention == "sdpa":
        mask = layers * b * n * n * s + b * n * n
    else:
        mask = b * n * n * s
    terms = {
        "parameters": 4 * n_parameters,
        "amp_weights": 2 * n_parameters if e == 2 else 0,
        "gradients": 4 * trainable_parameters,
        "optimizer_state": 4 * trainable_parameters * OPTIMIZER_STATES[optimizer],
        "activations": layers * per_layer + embeddings,
        "attention": layers * b * a * n * (n * (2 * s + ms) if quadratic else 4),
        "attention_mask": mask,
        "transient": 2 * b * a * n * n * s if quadratic else 2 * b * n * intermediate * e,
        "logits": 2 * b * n_classes * 4,
    }
    return {**terms, "total": sum(terms.values())}


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """A container's memory limit minus its use (cgroup v2), which can be far below the host's free RAM."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device | str) -> int:
    """Memory a training step may still take: free GPU memory (plus this process's cached blocks) or RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    candidates = [value for value in (_meminfo_available(), _cgroup_headroom()) if value is not None]
    if not candidates:
        try:
            import psutil
        except ImportError:
            raise UserError("cannot tell how much memory this machine has (no /proc/meminfo, no psutil); "
                            "install psutil") from None
        candidates = [int(psutil.virtual_memory().available)]
    return min(candidates)


def describe(estimate: dict[str, int]) -> str:
    """One log line: the total and its three largest terms, in GiB."""
    largest = sorted((k for k in estimate if k != "total"), key=estimate.__getitem__, reverse=True)[:3]
    parts = ", ".join(f"{k} {estimate[k] / GIB:.2f}" for k in largest)
    return f"{estimate['total'] / GIB:.2f} GiB ({parts})"


def check_fits(
    estimate: dict[str, int], available: int, *, longest_clip_id: str, longest_frames: int, settings_hint: str,
) -> None:
    """Stop before the first step, with one line, when the worst batch would not fit in memory."""
    if estimate["total"] <= available:
        return
    raise UserError(
        f"training would need about {estimate['total'] / GIB:.1f} GiB for the batch holding the longest clip "
        f"{longest_clip_id} ({longest_frames} frames) but {available / GIB:.1f} GiB is available; "
        f"lower {FIX_SETTINGS} (now {settings_hint})")


def check_weights_fit(n_parameters: int, available: int, *, settings_hint: str) -> None:
    """Stop before any weight is allocated, with one line, when the fp32 weights alone would not fit (a lower
    bound of the step's peak: check_fits, once the model exists, counts the rest)."""
    weights = 4 * n_parameters
    if weights <= available:
        return
    raise UserError(
        f"the model would have {n_parameters:.3g} parameters, {weights / GIB:.1f} GiB of weights alone, but "
        f"{available / GIB:.1f} GiB is available; lower {SIZE_SETTINGS} (now {settings_hint})")
