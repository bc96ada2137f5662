"""Two training streams in one batch, for synthetic-to-real adaptation (Denoising as Adaptation).

A restorer adapted to a real domain trains on two kinds of data at every step: paired synthetic
data (clean images degraded on the device, or paired shards) and unpaired real degraded images,
whose clean targets it may never see. :class:`AdaptationDataModule` owns one
:class:`~datamodules.ShardDataModule` per domain and zips their training streams, so each
training batch holds the synthetic batch as the child makes it (``gt``, ``lq``, ``__key__``, ...)
plus the real child's LQ images and keys under a prefix (``real_lq``, ``real___key__``).

Validation, test and predict read the real domain only: that is where adaptation is judged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl

from datamodules.shard_datamodule import ShardDataModule
from datamodules.stream import StepsPerEpoch

REAL_TRAINING_MEMBERS: tuple[str, ...] = ("lq", "__key__", "meta", "n_skipped")
"""Members of a real training batch that reach the method; ``gt`` and ``mask`` (the GT grid) never do."""

EVAL_SHARDS: tuple[str, ...] = ("val_shards", "test_shards", "predict_shards")
"""Shard arguments of the evaluation stages, which read the real domain."""


class DomainStreams:
    """The combined training loader: zips the two children's ``StepsPerEpoch`` streams batch by batch.

    Each batch is the synthetic batch with the real batch's members added under ``prefix``, and
    ``n_skipped`` the samples both streams dropped (``<prefix>n_skipped`` keeps the real share).
    ``state_dict`` / ``load_state_dict`` delegate to both streams, so a resumed run continues each
    stream exactly where the interrupted one stopped.
    """

    def __init__(self, synthetic: StepsPerEpoch, real: StepsPerEpoch, prefix: str) -> None:
        if len(synthetic) != len(real):
            raise ValueError(f"the synthetic stream has {len(synthetic)} steps per epoch, the real one {len(real)}")
        self.synthetic, self.real, self.prefix = synthetic, real, prefix

    def __len__(self) -> int:
        return len(self.synthetic)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._zip(iter(self.synthetic), iter(self.real))

    def _zip(self, synthetic: Iterator[dict[str, Any]], real: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for synthetic_batch, real_batch in zip(synthetic, real):  # both yield the same number of batches
            merged = merge_domains(synthetic_batch, real_batch, self.prefix)
            if "n_skipped" in synthetic_batch and "n_skipped" in real_batch:
                merged["n_skipped"] = synthetic_batch["n_skipped"] + real_batch["n_skipped"]  # what the run logs
            yield merged

    def state_dict(self) -> dict[str, dict[str, int]]:
        """Both streams' positions (epoch and batches taken)."""
        return {"synthetic": self.synthetic.state_dict(), "real": self.real.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        """Make the next ``iter()`` continue both streams at ``state``."""
        missing = {"synthetic", "real"} - set(state)
        if missing:
            raise KeyError(
                f"the training loader state has no {sorted(missing)} stream (keys: {sorted(state)}): "
                "was the checkpoint written by a run with another data module?"
            )
        self.synthetic.load_state_dict(state["synthetic"])
        self.real.load_state_dict(state["real"])

    def close(self) -> None:
        """Stop both streams' worker processes."""
        self.synthetic.close()
        self.real.close()


def merge_domains(synthetic: dict[str, Any], real: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The synthetic batch plus every member of the real one renamed ``prefix + name``."""
    merged = dict(synthetic)
    for name, value in real.items():
        if prefix + name in synthetic:
            raise ValueError(
                f"the synthetic batch already has a member {prefix + name!r}; choose another "
                f"data.real_key_prefix than {prefix!r}"
            )
        merged[prefix + name] = value
    return merged


def split_domains(batch: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Undo :func:`merge_domains` (a training batch's ``n_skipped``, the total, stays in the synthetic part)."""
    synthetic = {name: value for name, value in batch.items() if not name.startswith(prefix)}
    real = {name[len(prefix) :]: value for name, value in batch.items() if name.startswith(prefix)}
    return synthetic, real


class AdaptationDataModule(pl.LightningDataModule):
    """Paired synthetic and unpaired real training data in every batch; real-domain evaluation.

    Training batch (per device): everything the synthetic child's batch holds (``gt``, ``lq``,
    ``__key__``, ``n_skipped``, ...) and, from the real child, ``<prefix>lq`` and
    ``<prefix>__key__`` (and ``<prefix>meta``, ``<prefix>n_skipped`` when present); ``n_skipped``
    counts the samples both streams dropped. The real child's ``gt`` (and ``mask``) never reach the
    method: when the real child makes ``lq`` from clean images with its own ``degradation`` (a
    stand-in for a real camera), the clean images are dropped right after, in
    ``on_after_batch_transfer``.

    Both streams are infinite, split by rank and resumable as :class:`ShardDataModule` makes
    them; each keeps its own ``batch_size``, ``crop_size`` and ``num_workers`` (two loaders run,
    so a device has ``synthetic.num_workers + real.num_workers`` worker processes). The batch
    sizes may differ: the method decides how to pair the samples of the two domains (Denoising
    as Adaptation conditions one diffusion input on a synthetic and a real output, sample by
    sample, so its recipes give both streams one batch and crop size).

    Validation, test and predict read the real child's ``val_shards``/``test_shards``/
    ``predict_shards``: paired real LQ/GT images, or clean images degraded by the real child's
    degradation (seeded from the keys, so the same every epoch). Set no evaluation shards on the
    synthetic child: they would never be read.

    Args:
        synthetic: paired data: clean shards with a ``degradation`` that makes ``lq`` on the
            device, or paired (``gt`` + ``lq``) shards.
        real: unpaired real data: LQ-only shards (``require_gt: false``), or clean shards with a
            ``degradation`` standing in for the real process (their GT is dropped from training
            batches). Its ``steps_per_epoch`` must equal the synthetic one, and its ``seed``
            differ from it, so the two streams draw different shards, crops and noise even over
            the same shards.
        real_key_prefix: prefix of the real stream's members in a training batch.
    """

    def __init__(self, synthetic: ShardDataModule, real: ShardDataModule, real_key_prefix: str = "real_") -> None:
        super().__init__()
        for name, child in (("synthetic", synthetic), ("real", real)):
            if not isinstance(child, ShardDataModule):
                raise ValueError(f"data.{name} must be a datamodules.ShardDataModule, got {child!r}")
        if not isinstance(real_key_prefix, str) or not real_key_prefix:
            raise ValueError(
                f"data.real_key_prefix must be a non-empty string, got {real_key_prefix!r}: the real "
                "members would overwrite the synthetic"
            )
        if synthetic.steps_per_epoch != real.steps_per_epoch:
            raise ValueError(
                f"data.synthetic.steps_per_epoch ({synthetic.steps_per_epoch}) and data.real.steps_per_epoch "
                f"({real.steps_per_epoch}) differ: every step takes one batch of each stream, so give both the same"
            )
        if synthetic.seed == real.seed:
            raise ValueError(
                f"data.synthetic.seed and data.real.seed are both {synthetic.seed}: the two streams would draw the "
                "same shards, crops and degradation noise; give the real stream another seed"
            )
        unread = [name for name in EVAL_SHARDS if synthetic.shards[name] is not None]
        if unread:
            raise ValueError(
                f"data.synthetic sets {', '.join(unread)}, but evaluation reads the real domain only: move them to "
                "data.real (or drop them)"
            )
        self.synthetic, self.real, self.real_key_prefix = synthetic, real, real_key_prefix
        self._train_streams: DomainStreams | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Training batches per epoch (the same in both streams)."""
        return self.synthetic.steps_per_epoch

    def _children(self, stage: str) -> dict[str, ShardDataModule]:
        """The children a stage uses, by name: both to fit, the real one alone to evaluate."""
        return {"synthetic": self.synthetic, "real": self.real} if stage == "fit" else {"real": self.real}

    def _share_trainer(self) -> None:
        """Give the children this module's trainer: they read rank, world size, epoch and step from it."""
        for child in (self.synthetic, self.real):
            child.trainer = self.trainer

    def setup(self, stage: str) -> None:
        """Set up the children this stage uses; errors name the child (``data.synthetic``/``data.real``)."""
        self._share_trainer()
        for name, child in self._children(stage).items():
            try:
                child.setup(stage)
            except (ValueError, FileNotFoundError) as error:
                raise type(error)(f"data.{name}: {error}") from error

    def teardown(self, stage: str) -> None:
        """Stop the combined training stream and the children's workers."""
        if stage == "fit" and self._train_streams is not None:
            self._train_streams.close()
            self._train_streams = None
        for child in self._children(stage).values():
            child.teardown(stage)

    def train_dataloader(self) -> DomainStreams:
        """One synthetic and one real batch per step, merged; resumable through ``state_dict``."""
        self._share_trainer()
        self._train_streams = DomainStreams(
            self.synthetic.train_dataloader(), self.real.train_dataloader(), self.real_key_prefix
        )
        return self._train_streams

    def val_dataloader(self) -> Any:
        """The real domain's validation batches, or ``[]`` without ``data.real.val_shards``."""
        self._share_trainer()
        return self.real.val_dataloader()

    def test_dataloader(self) -> Any:
        """The real domain's test batches."""
        self._share_trainer()
        return self.real.test_dataloader()

    def predict_dataloader(self) -> Any:
        """The real domain's predict batches."""
        self._share_trainer()
        return self.real.predict_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Degrade on the device: in training the synthetic child makes ``lq`` and the real child
        ``<prefix>lq`` (each with its own seed), and the real GT is dropped; in evaluation the real
        child makes ``lq`` from ``gt``."""
        self._share_trainer()
        if self.real_key_prefix + "__key__" not in batch:
            return self.real.on_after_batch_transfer(batch, dataloader_idx)
        synthetic, real = split_domains(batch, self.real_key_prefix)
        synthetic = self.synthetic.on_after_batch_transfer(synthetic, dataloader_idx)
        real = self.real.on_after_batch_transfer(real, dataloader_idx)
        if "gt" not in synthetic or "lq" not in synthetic:
            raise ValueError(
                f"synthetic training batch {synthetic['__key__']} has {sorted(synthetic)}: it needs gt and lq "
                "(clean shards with data.synthetic.degradation, or paired shards)"
            )
        if "lq" not in real:
            raise ValueError(
                f"real training batch {real['__key__']} has no lq: give data.real LQ-only or paired shards, or a "
                "degradation that makes lq from its clean images"
            )
        kept = {name: value for name, value in real.items() if name in REAL_TRAINING_MEMBERS}
        return merge_domains(synthetic, kept, self.real_key_prefix)
