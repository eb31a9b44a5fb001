"""How much GPU memory a training stage needs per GPU, estimated from the model's shape and the settings.

Printed when a training stage starts, so that a run that cannot fit says so before it spends an hour
getting there, and used in ``docs/gpu.md`` for the paper's recipe (Qwen2.5-VL-7B on 8 GPUs of 80 GB).
The figures are estimates in GiB, per GPU, for the longest prompt and answer the settings allow:

- **weights**: the policy's, bf16 under DeepSpeed (its engine casts them; the fp32 masters live in the
  optimizer), else in the dtype they load in; ZeRO-3 shards them over the GPUs.
- **gradients**: in the weights' dtype, sharded from ZeRO-2 on. **optimizer**: AdamW's two fp32 moments, plus
  an fp32 master copy when the weights are 16-bit under DeepSpeed; sharded from ZeRO-1 on.
- **reference**: GRPO's frozen KL reference (bf16 under bf16 training), sharded under ZeRO-3 only.
- **activations**: one forward pass of ``batch_size`` sequences, kept for the backward: with gradient
  checkpointing each layer's input plus one layer's working set (34 bytes per token and hidden unit, as in
  Korthikanti et al. 2022, without the attention matrix that fused attention never stores), else every
  layer's working set; and the answer's logits over the vocabulary (16-bit logits, fp32 log-probabilities
  and their gradient: 10 bytes a logit).
- **generation**: vLLM's fixed share of the GPU (weights and KV cache) when it generates; with Hugging Face
  generate, the KV cache of every sequence the GPU generates in one step.

The generation phase holds the static parts (weights, gradients, optimizer, reference) and the generation's;
the update holds the static parts, the activations and, unless vLLM sleeps, vLLM's share.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
ACTIVATION_BYTES_PER_TOKEN_AND_HIDDEN = 34  # one transformer layer's saved tensors, 16-bit, fused attention
LOGIT_BYTES = 10  # a 16-bit logit, its fp32 log-probability, and that one's gradient
CONTEXT_GIB = 2.0  # CUDA context, NCCL buffers, allocator slack


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a model: its size and its language model's dimensions."""

    params: int
    trainable: int
    hidden: int
    layers: int
    vocab: int
    kv_bytes_per_token: int  # one token's keys and values over all layers, 16-bit

    @classmethod
    def of(cls, model) -> ModelShape:
        text = model.config.get_text_config()
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            params=sum(p.numel() for p in model.parameters()),
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            vocab=text.vocab_size,
            kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * 2,
        )


@dataclass(frozen=True)
class Workload:
    """What one GPU does in one step, as far as memory goes."""

    world: int = 1  # GPUs (training processes)
    zero_stage: int = 0  # DeepSpeed ZeRO stage; 0 = no DeepSpeed
    weight_bytes: int = 4  # bytes a trained weight takes on the GPU
    batch_size: int = 1  # sequences per forward pass
    prompt_tokens: int = 0
    answer_tokens: int = 0
    gradient_checkpointing: bool = False
    reference: bool = False  # a frozen KL reference model beside the policy
    reference_bytes: int = 2
    generated_sequences: int = 0  # sequences this GPU generates per step (0 = no generation)
    vllm_share: float = 0.0  # share of the GPU given to a colocated vLLM engine (0 = Hugging Face generate)
    vllm_sleeps: bool = False  # vLLM frees its memory during the update


@dataclass(frozen=True)
class MemoryPlan:
    parts: dict[str, float]  # GiB per GPU
    generation_peak: float
    update_peak: float
    gpu_gib: float | None

    @property
    def peak(self) -> float:
        return max(self.generation_peak, self.update_peak)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_gib is None else self.peak <= self.gpu_gib

    def summary(self) -> str:
        parts = ", ".join(f"{name} {gib:.1f}" for name, gib in self.parts.items() if gib)
        of = f" of {self.gpu_gib:.0f} GiB" if self.gpu_gib else ""
        return (
            f"estimated GPU memory per GPU (GiB): {parts}; peak while generating {self.generation_peak:.1f}, "
            f"while updating {self.update_peak:.1f}{of}"
        )


def plan(shape: ModelShape, work: Workload, gpu_gib: float | None = None) -> MemoryPlan:
    """The estimate for ``shape`` doing ``work`` on GPUs of ``gpu_gib`` (the vLLM share needs it)."""
    w = work
    deepspeed = w.zero_stage > 0
    sharded = {stage: w.world if w.zero_stage >= stage else 1 for stage in (1, 2, 3)}
    moments = 8 if (deepspeed or w.weight_bytes == 4) else 2 * w.weight_bytes
    master = 4 if deepspeed and w.weight_bytes < 4 else 0
    tokens = w.batch_size * (w.prompt_tokens + w.answer_tokens)
    per_layer = ACTIVATION_BYTES_PER_TOKEN_AND_HIDDEN * tokens * shape.hidden
    if w.gradient_checkpointing:
        layers = 2 * tokens * shape.hidden * shape.layers + per_layer
    else:
        layers = per_layer * shape.layers
    logits = w.batch_size * w.answer_tokens * shape.vocab * LOGIT_BYTES
    vllm = w.vllm_share * gpu_gib if (w.vllm_share and gpu_gib) else 0.0
    hf_cache = 0.0 if w.vllm_share else w.generated_sequences * (w.prompt_tokens + w.answer_tokens)
    parts = {
        "weights": shape.params * w.weight_bytes / sharded[3] / GIB,
        "gradients": shape.trainable * w.weight_bytes / sharded[2] / GIB,
        "optimizer": shape.trainable * (moments + master) / sharded[1] / GIB,
        "reference": shape.params * w.reference_bytes / sharded[3] / GIB if w.reference else 0.0,
        "activations": (layers + logits) / GIB,
        "vllm": vllm,
        "generation_cache": hf_cache * shape.kv_bytes_per_token / GIB,
        "context": CONTEXT_GIB,
    }
    static = sum(parts[k] for k in ("weights", "gradients", "optimizer", "reference", "context"))
    generation = static + parts["vllm"] + parts["generation_cache"]
    update = static + parts["activations"] + (0.0 if w.vllm_sleeps else parts["vllm"])
    return MemoryPlan(parts, generation, update, gpu_gib)


@dataclass(frozen=True)
class DiskPlan:
    """The bytes a training stage writes, in GiB: what its pod's scratch volume and the S3 store must hold."""

    checkpoint: float  # one Trainer checkpoint: the weights and the optimizer's state (DeepSpeed's shards)
    kept: int  # checkpoints kept (keep_checkpoints); the next is written before the oldest goes
    model: float  # the saved model
    start_model: float  # the start model as downloaded (16-bit on the hub)

    @property
    def scratch(self) -> float:
        """A pod's work folder at its peak: the start model, kept + 1 checkpoints, the saved model."""
        return self.start_model + (self.kept + 1) * self.checkpoint + self.model

    @property
    def store(self) -> float:
        """The stage's S3 folder at its peak: kept + 1 checkpoints, then the model (checkpoints go at the end
        unless keep_checkpoints_when_done)."""
        return (self.kept + 1) * self.checkpoint + self.model

    def summary(self) -> str:
        return (
            f"disk plan (GiB): a checkpoint {self.checkpoint:.1f} (weights and optimizer state), "
            f"{self.kept} kept; the model {self.model:.1f}; scratch volume at its peak {self.scratch:.1f}, "
            f"S3 at its peak {self.store:.1f}"
        )


def disk_plan(
    shape: ModelShape, work: Workload, kept: int, model_bytes: int, start_bytes: int = 2
) -> DiskPlan:
    """What ``shape`` trained as in ``work`` writes: checkpoints hold the weights as trained (bf16 under
    DeepSpeed) and AdamW's two fp32 moments, plus fp32 master weights when the weights are 16-bit under
    DeepSpeed; ZeRO shards them over the GPUs, but a checkpoint holds every shard."""
    master = 4 if work.zero_stage > 0 and work.weight_bytes < 4 else 0
    checkpoint = shape.params * work.weight_bytes + shape.trainable * (8 + master)
    return DiskPlan(
        checkpoint / GIB, kept, shape.params * model_bytes / GIB, shape.params * start_bytes / GIB
    )


def peak_host_memory_gib() -> float:
    """The most resident memory (RSS, GiB) this process, or any one of its finished child processes (a
    training launch's workers), has held so far: the figure to set a pod's memory request from."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024 / GIB  # ru_maxrss is in KiB on Linux


def peak_gpu_memory_gib() -> float | None:
    """The most GPU memory torch allocated in this process (GiB), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / GIB
