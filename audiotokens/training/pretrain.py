"""Learning from audio without labels: masked prediction of token ids (the `pretrain` stage).

Objectives (pretrain.objective):
  mlm            token ids in; spans of content positions are chosen (augment.mask_time_spans, mask_prob and
                 span) and each chosen position becomes [MASK] (80 %), a random cluster id of each codebook
                 (10 %) or stays as it is (10 %), as in BERT; one linear head per codebook predicts the
                 original ids there.
  masked_frames  frames in (HuBERT / BEATs style); the chosen positions' frames are replaced by the learned
                 [MASK] vector of the frame projection; the targets are those positions' token ids from the
                 current vocabulary (so it needs one token per frame: the frame tokenizers).
Only content positions are ever chosen ([CLS], [SEP] and padding never are), and the heads predict
cluster ids only, so no special token is ever a target.

The pre-training set is every clip of the catalogue (processed/split.json) that is in neither the
validation nor the test split: the training split plus clips in no split (unlabelled audio). A held-out
share (pretrain.heldout) of the unlabelled clips (of the training clips when there are none) reports loss
and masked accuracy after each epoch. Training clips with corrupted copies (augment.copies) are read, per
(seed, epoch, clip), clean or as one of their copies, as in the train stage; held-out clips are always
clean. output/pretrain/ holds the embedder and encoder weights in a bundle's file names (model.safetensors,
model_spec.json, audiotokens.json with the frame spec and the vocabulary digest), metrics.jsonl and
curves.png; `train.init` starts a classifier from it (finetune.py).

The optimisation is the train stage's (trainer.Optimisation: AdamW, warm-up/decay, autocast when train.amp:
CUDA, or a CPU with native bf16). After every epoch the whole
state (weights, optimizer, schedule, scaler, random states, history) goes to output/checkpoints/pretrain.pt;
`audiotokens pretrain --resume` continues from it. Masks and clip order depend only on (seed, epoch), so a
resumed pre-training ends with the weights an uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..config import RUNTIME, Config, keys_with_role
from ..errors import UserError
from ..model.batching import longest_first
from ..model.bundle import METADATA, SPEC, WEIGHTS
from ..model.inputs import pack_frames, pack_sequences
from ..model.parts import (
    ENCODERS,
    MASK,
    PRETRAINED_PARTS,
    TOKEN_OFFSET,
    AudioClassifier,
    decode_tables,
    frame_special_ids,
)
from ..pipeline.files import atomic_dir, atomic_path, jsonl_text, write_json
from ..pipeline.layout import CURVES, METRICS_LOG, Layout
from ..pipeline.provenance import package_versions, recorded_fingerprint, stage_params
from ..pipeline.stores import ClipIndex, SplitPlan, copy_offsets, open_store, read_frame_spec
from .augment import content_positions, mask_time_spans
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import CopyChoice, EpochShuffleSampler
from .loaders import check_model_size, record_peak_memory, reset_peak_memory, set_loader_epoch
from .optimisation import Optimisation, divergence_error, divergence_hint, intra_op_threads, pick_device
from .tracking import TokenUsage, Tracking
from .train import SplitStore, check_token_ids, model_length, model_spec, read_vocabulary

log = logging.getLogger("audiotokens")

IGNORE = -100  # label of positions that are not predicted (F.cross_entropy's ignore_index)
REPLACE_MASK, REPLACE_RANDOM = 0.8, 0.1  # BERT's split of chosen positions; the rest stay unchanged
HELD_OUT_SPLITS = ("validation", "test")  # never seen by pre-training


# ---------------------------------------------------------------- masking


@dataclass
class MaskedBatch:
    """inputs with the chosen positions corrupted; where (batch, positions) bool; labels (batch, positions,
    codebooks) cluster ids at chosen positions, IGNORE elsewhere."""

    inputs: torch.Tensor
    where: torch.Tensor
    labels: torch.Tensor


def choose_positions(attention_mask: torch.Tensor, *, mask_prob: float, span: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Spans of content positions to predict (never [CLS], [SEP] or padding)."""
    return mask_time_spans(content_positions(attention_mask), span=span, max_fraction=mask_prob,
                           generator=generator)


def target_labels(ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Cluster ids (token id - TOKEN_OFFSET) at the chosen positions, IGNORE elsewhere."""
    labels = ids - TOKEN_OFFSET
    return torch.where(where[..., None], labels, torch.full_like(labels, IGNORE))


def mlm_corrupt(ids: torch.Tensor, attention_mask: torch.Tensor, *, codebook_sizes: list[int], mask_prob: float,
                span: int, generator: torch.Generator) -> MaskedBatch:
    """BERT's corruption of a token batch (batch, positions, codebooks): chosen positions become [MASK] in
    every codebook (80 %), random cluster ids (10 %) or stay (10 %)."""
    where = choose_positions(attention_mask, mask_prob=mask_prob, span=span, generator=generator)
    draw = torch.rand(where.shape, generator=generator).to(where.device)
    to_mask = where & (draw < REPLACE_MASK)
    to_random = where & (draw >= REPLACE_MASK) & (draw < REPLACE_MASK + REPLACE_RANDOM)
    sizes = torch.tensor(codebook_sizes, dtype=torch.float64)
    random_ids = (torch.rand(ids.shape, generator=generator, dtype=torch.float64) * sizes).long() + TOKEN_OFFSET
    corrupted = torch.where(to_random[..., None], random_ids.to(ids.device), ids)
    corrupted = torch.where(to_mask[..., None], torch.full_like(ids, MASK), corrupted)
    return MaskedBatch(corrupted, where, target_labels(ids, where))


# ---------------------------------------------------------------- the model


def check_pretrainable(encoder: str) -> None:
    """Masked prediction needs one encoder output per input position: refused first, before the model spec's
    checks of a classifier (which would ask for another model.input) name a reason that does not apply."""
    kind = ENCODERS.get(encoder)  # an unknown name: the model spec's check names the valid ones
    if kind is not None and (kind.reads_raw_frames or not kind.has_cls):
        raise UserError(f"pre-training needs an encoder with one output per position (bert or conformer), "
                        f"got model.encoder={encoder}")


class MaskedPredictor(nn.Module):
    """An AudioClassifier's embedder and encoder, with one linear head per codebook over every position.

    Its pooling and classification head are left untouched (they are not handed on).
    """

    def __init__(self, *, backbone: AudioClassifier, codebook_sizes: list[int]):
        super().__init__()
        check_pretrainable(backbone.spec.encoder)
        self.backbone = backbone
        size = backbone.encoder.output_size
        self.heads = nn.ModuleList(nn.Linear(size, n) for n in codebook_sizes)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, where: torch.Tensor) -> list[torch.Tensor]:
        backbone = self.backbone
        if backbone.spec.input == "frames":
            # the chosen frames are replaced by the projection's learned [MASK] vector
            special = torch.where(where, torch.full_like(where, MASK, dtype=torch.long), frame_special_ids(mask))
            embedded = backbone.embedder.frames(inputs.float(), special)
            states, _ = backbone.encoder(embedded, mask)
        else:
            states, _ = backbone.encode(inputs, mask)
        return [head(states) for head in self.heads]

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().contiguous().cpu() for name, value in self.backbone.state_dict().items()
                if name.startswith(PRETRAINED_PARTS)}


def masked_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy over codebooks at the chosen positions; also (correct, predicted) counts."""
    losses, correct, count = [], 0, 0
    for codebook, scores in enumerate(logits):
        target = labels[..., codebook]
        chosen = target != IGNORE
        if not chosen.any():
            continue
        losses.append(F.cross_entropy(scores[chosen].float(), target[chosen]))
        correct += int((scores[chosen].argmax(dim=-1) == target[chosen]).sum())
        count += int(chosen.sum())
    if not losses:
        return torch.zeros((), device=labels.device, requires_grad=True), 0, 0
    return torch.stack(losses).mean(), correct, count


# ---------------------------------------------------------------- data


def pretraining_ids(plan: SplitPlan) -> tuple[list[str], list[str]]:
    """(training clips, clips in no split) of the catalogue; validation and test clips are never included."""
    held = {clip_id for name in HELD_OUT_SPLITS for clip_id in plan.splits.get(name) or []}
    train = set(plan.splits.get("train") or [])
    ids = [str(clip["id"]) for clip in plan.clips if str(clip["id"]) not in held]
    return [i for i in ids if i in train], [i for i in ids if i not in train]


def hold_out(train_ids: list[str], unlabelled: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit ids, held-out ids): a seeded share of the unlabelled clips, or of the training clips if none."""
    pool = unlabelled if unlabelled else train_ids
    n_held = max(1, round(share * len(pool))) if share > 0 and len(pool) > 1 else 0
    held = set(np.random.default_rng(seed).permutation(pool)[:n_held].tolist())
    return [i for i in train_ids + unlabelled if i not in held], [i for i in pool if i in held]


def rows_of(index: ClipIndex, ids: list[str], copies: bool = False) -> tuple[np.ndarray, np.ndarray,
                                                                          np.ndarray | None]:
    """(offsets, lengths, offsets of their corrupted copies or None) of the listed clips that the store holds;
    copies only when asked for (stores.copy_offsets)."""
    row = index.row_of()
    kept_ids = [i for i in ids if i in row]
    kept = np.asarray([row[i] for i in kept_ids], dtype=np.int64)
    return index.offsets[kept], index.lengths[kept], copy_offsets(index, row, kept_ids) if copies else None


class PretrainClips(Dataset):
    """Clips of one or two stores (tokens; frames and tokens) cut to max_frames; no labels. Item N*v + i is
    version v of clip i (0 clean, else its copy v), as in datasets.ClipDataset."""

    def __init__(self, *, stores: list[tuple[Path, np.ndarray, np.ndarray, np.ndarray | None]],
                 max_frames: int):
        self.stores = stores  # (array path, offsets, lengths, copies' offsets) each, clips in the same order
        self.lengths = np.minimum(stores[0][2], max_frames)
        self.copies = stores[0][3]
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, i: int) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(path, mmap_mode="r") for path, *_ in self.stores]
        version, clip = divmod(i, len(self.lengths))
        n = int(self.lengths[clip])
        starts = [int(offsets[clip] if version == 0 else copies[clip, version - 1]) for _, offsets, _, copies
                  in self.stores]
        return [np.array(array[start:start + n]) for array, start in zip(self._arrays, starts)]

    @staticmethod
    def collate(items: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
        columns = list(zip(*items))
        if len(columns) == 1:
            ids, mask = pack_sequences([c.astype(np.int64) for c in columns[0]])
            return {"inputs": ids, "ids": ids, "mask": mask}
        frames, mask = pack_frames(columns[0])
        ids, _ = pack_sequences([c.astype(np.int64) for c in columns[1]])
        return {"inputs": frames, "ids": ids, "mask": mask}


# ---------------------------------------------------------------- the stage


class Pretrainer:
    """`audiotokens pretrain`: masked prediction of token ids over the unlabelled and training clips."""

    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        self.settings = config.pretrain
        self.layout = Layout(config.workdir)
        self.resume = resume

    @property
    def out_dir(self) -> Path:
        return self.layout.pretrain_dir

    @property
    def checkpoint_path(self) -> Path:
        return self.layout.pretrain_checkpoint

    def run(self) -> dict[str, Any]:
        with intra_op_threads(self.config.train.threads):
            return self._run()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()

        settings = self.settings
        check_pretrainable(self.config.model.encoder)
        vocab = read_vocabulary(self.layout)
        fit_loader, held_loader, max_frames, counts = self._loaders(vocab)
        frames = settings.objective == "masked_frames"
        tables = decode_tables("frames" if frames else "tokens", self.config.model.token_embedding, vocab)
        columns = fit_loader.dataset.stores[0][0]
        sizes = SplitStore(name="train", path=columns, index=None, columns=self._columns(vocab, frames))
        spec = model_spec(_with_input(self.config, "frames" if frames else "tokens"), ["[pretrain]"], max_frames,
                          {"train": sizes}, vocab, tables)
        check_model_size(spec=spec, tables=tables, device=pick_device(self.config.train.device),
                         network=self.config.model)
        torch.manual_seed(settings.seed)
        backbone = AudioClassifier(spec=spec, decode_tables=[torch.from_numpy(t) for t in tables])
        model = MaskedPredictor(backbone=backbone, codebook_sizes=list(vocab.codebook_sizes))
        with Tracking.open(self.config.train.tracking, self.layout, "pretrain") as tracking:
            history = self._fit(model, fit_loader, held_loader, vocab, tracking)
            self._write(model, vocab, history)
            last = history[-1].get("heldout", {}) if history else {}  # pretrain.heldout = 0: none
            result = {**counts, "epochs": len(history), "max_frames": max_frames,
                      "heldout_loss": last.get("loss"), "heldout_masked_accuracy": last.get("masked_accuracy"),
                      "wall_time_s": round(time.perf_counter() - started, 3)}
            tracking.finish(figures={name: result[name] for name in ("heldout_loss", "heldout_masked_accuracy")},
                            best_epoch=len(history), class_ap=None, summary=result,
                            artifacts=[(self.out_dir, "pretrain")])
        return result

    def _columns(self, vocab, frames: bool) -> int:
        return int(np.load(self.layout.frames, mmap_mode="r").shape[1]) if frames else len(vocab.codebook_sizes)

    def _loaders(self, vocab) -> tuple[DataLoader, DataLoader | None, int, dict[str, int]]:
        settings = self.settings
        plan = SplitPlan.load(self.layout)
        train_ids, unlabelled = pretraining_ids(plan)
        fit_ids, held_ids = hold_out(train_ids, unlabelled, settings.heldout, settings.seed)
        _, tokens_index = open_store(self.layout.tokens, self.layout.tokens_index)
        if tokens_index.extra.get("vocabulary_digest") != vocab.digest:
            raise UserError(f"{self.layout.tokens} was made with another vocabulary than {vocab.path}; "
                            "re-run `audiotokens tokenize`")
        check_token_ids(self.layout.tokens, vocab)
        stores = [(self.layout.tokens, tokens_index)]
        if settings.objective == "masked_frames":
            _, frames_index = open_store(self.layout.frames, self.layout.frames_index)
            self._check_aligned(frames_index, tokens_index)
            stores.insert(0, (self.layout.frames, frames_index))
        datasets = {}
        for name, ids in (("fit", fit_ids), ("heldout", held_ids)):
            datasets[name] = [(path, *rows_of(index, ids, copies=name == "fit")) for path, index in stores]
        if not len(datasets["fit"][0][1]):
            raise UserError(f"no pre-training clip has tokens in {self.layout.tokens}; run `audiotokens tokenize`")
        lengths = {"fit": datasets["fit"][0][2], "heldout": datasets["heldout"][0][2]}
        max_frames = _max_frames(self.config.model.max_length, np.concatenate(list(lengths.values())), model_length)
        fit = PretrainClips(stores=datasets["fit"], max_frames=max_frames)
        held = PretrainClips(stores=datasets["heldout"], max_frames=max_frames) if len(lengths["heldout"]) else None
        generator = torch.Generator().manual_seed(settings.seed)
        order = EpochShuffleSampler(len(fit), settings.seed)
        if fit.copies is None:
            fit_loader = DataLoader(fit, batch_size=settings.batch_size, sampler=order,
                                    collate_fn=PretrainClips.collate, generator=generator)
        else:  # each training clip clean or as one of its corrupted copies, per (seed, epoch, clip)
            batches = CopyChoice(inner=BatchSampler(order, settings.batch_size, drop_last=False),
                                 copies=(fit.copies >= 0).sum(axis=1), seed=settings.seed)
            fit_loader = DataLoader(fit, batch_sampler=batches, collate_fn=PretrainClips.collate,
                                    generator=generator)
        held_loader = None if held is None else DataLoader(
            held, batch_size=settings.batch_size, sampler=longest_first(held.lengths), collate_fn=PretrainClips.collate)
        counts = {"train_clips": len(train_ids), "unlabelled_clips": len(unlabelled), "fit_clips": len(fit),
                  "heldout_clips": 0 if held is None else len(held)}
        log.info("pre-training on %d clips (%d training, %d unlabelled), %d held out (%s)", len(fit), len(train_ids),
                 len(unlabelled), counts["heldout_clips"], "unlabelled" if unlabelled else "training clips")
        return fit_loader, held_loader, max_frames, counts

    def _check_aligned(self, frames_index: ClipIndex, tokens_index: ClipIndex) -> None:
        tokens = dict(zip(tokens_index.ids, tokens_index.lengths.tolist()))
        if any(tokens.get(i) not in (None, n) for i, n in zip(frames_index.ids, frames_index.lengths.tolist())):
            raise UserError("pretrain.objective=masked_frames needs one token per frame; cluster.quantizer "
                            f"'{self.config.cluster.quantizer}' makes tokens of several frames; use mlm")

    def _fit(self, model: MaskedPredictor, fit_loader: DataLoader, held_loader: DataLoader | None,
             vocab, tracking: Tracking) -> list[dict[str, Any]]:
        settings = self.settings
        device = pick_device(self.config.train.device)
        model.to(device)
        total_steps = settings.epochs * len(fit_loader)
        steps = Optimisation(model, device, amp=self.config.train.amp, learning_rate=settings.learning_rate,
                             weight_decay=self.config.train.weight_decay, warmup_ratio=self.config.train.warmup_ratio,
                             total_steps=total_steps)
        history = self._restore(model, steps, total_steps) if self.resume else []
        tracking.start(stage_params(self.config, "pretrain"), history,
                       TokenUsage.read(self.layout) if tracking.active else None)
        reset_peak_memory(device)
        for epoch in range(len(history), settings.epochs):
            set_loader_epoch(fit_loader, epoch)
            generator = torch.Generator().manual_seed(settings.seed * 1000 + epoch + 1)
            tic = time.perf_counter()
            fit = self._pass(model, fit_loader, vocab, generator, steps)
            self._stop_if_diverged(steps, epoch, steps.nonfinite())
            row = {"epoch": epoch + 1, "lr": steps.scheduler.get_last_lr()[0], "train": fit,
                   "epoch_time_s": round(time.perf_counter() - tic, 3)}
            if held_loader is not None:
                with torch.no_grad():  # the same masks every epoch, so the figures compare
                    row["heldout"] = self._pass(model, held_loader, vocab, torch.Generator().manual_seed(settings.seed),
                                                steps, training=False)
                if not math.isfinite(row["heldout"]["loss"]):
                    self._stop_if_diverged(steps, epoch, ("held-out loss", steps.step))
            record_peak_memory(row, device)
            history.append(row)
            tracking.epoch(row)
            self._checkpoint(model, steps, history)
            held = row.get("heldout", {})
            log.info("pretrain epoch %d/%d: loss %.4f | held-out %s, masked accuracy %s", epoch + 1, settings.epochs,
                     fit["loss"], _fmt(held.get("loss")), _fmt(held.get("masked_accuracy")))
        return history

    def _pass(self, model, loader, vocab, generator, steps: Optimisation, training: bool = True) -> dict[str, float]:
        model.train(training)
        loss_sum, batches, correct, count = 0.0, 0, 0, 0
        for batch in loader:
            masked = self._corrupt(batch, vocab, generator)
            mask = batch["mask"].to(steps.device)
            with steps.autocast():
                logits = model(masked.inputs.to(steps.device), mask, masked.where.to(steps.device))
            loss, right, n = masked_loss([part.float() for part in logits], masked.labels.to(steps.device))
            if training:
                steps.watch_loss(loss)
                steps.scaler.scale(loss).backward()
                steps.optimizer_step()
            loss_sum, batches, correct, count = loss_sum + float(loss.detach()), batches + 1, correct + right, count + n
        return {"loss": loss_sum / max(batches, 1), "masked_accuracy": correct / count if count else None,
                "masked_positions": count}

    def _stop_if_diverged(self, steps: Optimisation, epoch: int, found: tuple[str, int] | None) -> None:
        """NaN or infinite numbers end the pre-training before the epoch's checkpoint: output/pretrain
        stays as it was."""
        if found is not None:
            hint = divergence_hint(learning_rate=self.settings.learning_rate,
                                   learning_rate_key="pretrain.learning_rate",
                                   weight_decay=self.config.train.weight_decay, grad_clip=None,
                                   precision=steps.precision)
            raise divergence_error(found, epoch=epoch + 1, hint=hint, kept=self.out_dir)

    # ------------------------------------------------------------ checkpoints

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed: every setting but the number of epochs
        and the runtime ones, and the tokens it read."""
        runtime = set(keys_with_role(RUNTIME)) | {"pretrain.epochs"}
        params = {k: v for k, v in stage_params(self.config, "pretrain").items() if k not in runtime}
        return {"params": params, "tokenize": recorded_fingerprint(self.layout, "tokenize"),
                "split": recorded_fingerprint(self.layout, "split")}

    def _checkpoint(self, model: MaskedPredictor, steps: Optimisation, history: list[dict[str, Any]]) -> None:
        save_checkpoint(self.checkpoint_path, {"model": model.state_dict(), **steps.state_dict(),
                                               "rng": rng_state(), "history": history,
                                               "identity": self._identity()})

    def _restore(self, model: MaskedPredictor, steps: Optimisation, total_steps: int) -> list[dict[str, Any]]:
        state = load_checkpoint(self.checkpoint_path)
        old, new = state.get("identity", {}), self._identity()
        changed = sorted(k for k in set(old.get("params", {})) | set(new["params"])
                         if old.get("params", {}).get(k) != new["params"].get(k))
        changed += [key for key in ("tokenize", "split") if old.get(key) != new[key]]
        if changed:
            raise UserError(f"{self.checkpoint_path} was written by another pre-training ({', '.join(changed)} "
                            "changed); run `audiotokens pretrain` without --resume to start over")
        model.load_state_dict(state["model"])
        steps.load_state_dict(state)
        set_rng_state(state["rng"])
        history = state["history"]
        if len(history) < self.settings.epochs:  # more epochs: the schedule goes on from where it stands
            steps.extend_schedule(total_steps, self.checkpoint_path, "run `audiotokens pretrain` without --resume")
        log.info("resume: pre-training continues after epoch %d", len(history))
        return history

    def _corrupt(self, batch: dict[str, torch.Tensor], vocab, generator: torch.Generator) -> MaskedBatch:
        settings = self.settings
        if settings.objective == "mlm":
            return mlm_corrupt(batch["ids"], batch["mask"], codebook_sizes=list(vocab.codebook_sizes),
                               mask_prob=settings.mask_prob, span=settings.span, generator=generator)
        where = choose_positions(batch["mask"], mask_prob=settings.mask_prob, span=settings.span, generator=generator)
        return MaskedBatch(batch["inputs"], where, target_labels(batch["ids"], where))

    def _write(self, model: MaskedPredictor, vocab, history: list[dict[str, Any]]) -> None:
        spec = model.backbone.spec
        with atomic_dir(self.out_dir) as tmp:
            save_file(model.pretrained_state(), str(tmp / WEIGHTS))
            write_json(tmp / SPEC, spec.to_json())
            write_json(tmp / METADATA, {
                "format": "audiotokens-pretrain", "objective": self.settings.objective, "input": spec.input,
                "spectrogram": vocab.frame_spec if spec.input == "tokens" else read_frame_spec(self.layout),
                "vocabulary_digest": vocab.digest, "versions": package_versions()})
            (tmp / METRICS_LOG).write_text(jsonl_text(history))
            _plot(history, tmp / CURVES)
        log.info("pre-trained embedder and encoder written to %s", self.out_dir)


def _with_input(config: Config, kind: str) -> Config:
    """The config with model.input = kind: what the pre-training objective reads, whatever the classifier's."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, input=kind))


def _max_frames(max_length: int, lengths: np.ndarray, model_length) -> int:
    if max_length > 0:
        return max_length
    from types import SimpleNamespace

    index = SimpleNamespace(lengths=lengths, ids=[""] * len(lengths))
    return model_length({"pretrain": SimpleNamespace(index=index)}, 0)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    for part in ("train", "heldout"):
        rows = [row.get(part, {}) for row in history]
        loss_axis.plot(epochs, [r.get("loss", float("nan")) for r in rows], marker="o", label=part)
        accuracy = [r.get("masked_accuracy") for r in rows]
        accuracy_axis.plot(epochs, [float("nan") if a is None else a for a in accuracy], marker="o", label=part)
    loss_axis.set(xlabel="epoch", ylabel="masked loss")
    accuracy_axis.set(xlabel="epoch", ylabel="masked accuracy")
    loss_axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)

