"""The loop's feature caches: layer groups that never train are computed once, not every epoch.

Layer groups that never train are computed once per image (and per augmented view) before the
first epoch when ``config.cache_features`` allows: with only the head training (``"head"``) the
cache holds the pooled features and each step runs the head alone; with a longer frozen prefix
(``"prefix"``) it holds the prefix's output and each step runs the rest. Objectives see the same
methods either way (``Trainer.inputs``, ``Trainer.logits``, ``Trainer.features``, ``Trainer.head``),
so a cache never changes what is trained. A head's warm-up before fine-tuning is cached the same
way for its epochs alone.

``FeatureCaching`` is the ``Trainer``'s half that builds and reads these caches; it works on the
trainer's own state (model, images, device, config), so the two read as one class.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager

import torch
from torch import nn

from core.cache import tensor_key
from core.data.encoded import normalise
from core.hooks import capture, preserved
from core.train.base import CACHE_BUDGET_BYTES, FitCancelled, augment_batch

__all__ = ["FeatureCaching", "skip_prefix", "prefix_key"]


@contextmanager
def skip_prefix(modules: list[nn.Module], boundary: nn.Module, stash: dict):
    """Make the frozen prefix free: its modules pass their input through, and the boundary
    module returns the cached activation in ``stash["x"]`` instead of computing it."""
    try:
        for module in modules:
            module.forward = lambda x, *args, **kwargs: x
        boundary.forward = lambda *args, **kwargs: stash["x"]
        yield
    finally:
        for module in modules + [boundary]:
            module.__dict__.pop("forward", None)


def prefix_key(modules: list[nn.Module]) -> str:
    """A digest of the frozen prefix's weights and buffers: equal digests compute equal activations."""
    digest = hashlib.sha1()
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            digest.update(tensor_key(tensor.detach()).encode())
    return digest.hexdigest()



class FeatureCaching:
    """The feature caches of ``core.train.loop.Trainer`` (see the module docstring)."""

    def _plan_caches(self, never_trained) -> None:
        """Choose what the cache skips for the whole fit and, failing that, for the head's warm-up."""
        model = self.model
        self.cache_until = None  # the last epoch a warm-up-only cache serves
        self._choose_cache(never_trained)
        if self.cache_mode is None and self.warmup_end and self.dist is None:
            # only the head trains in the warm-up: cache the body's features for those epochs
            warm_frozen = [g for g in model.layer_groups
                           if all(epoch[g.name] == 0 for epoch in self.plan[:self.warmup_end])]
            if len(warm_frozen) == len(model.layer_groups) - 1:
                self._choose_cache(warm_frozen)
                if self.cache_mode == "head":
                    self.cache_until = self.warmup_end
                else:  # only the head's input can serve a warm-up that ends (_leave_warmup)
                    self._drop_cache()

    def _stand_in(self, x: torch.Tensor) -> torch.Tensor:
        # the skipped prefix never reads its input: a tiny stand-in carries the batch size
        self.stash["x"] = x
        return torch.zeros(len(x), 3, 8, 8, device=self.device)

    def _choose_cache(self, never_trained) -> None:
        """Decide what the cache skips: the longest run of ``never_trained`` groups from the input on."""
        config, model = self.config, self.model
        self._drop_cache()
        self.boundary, self.prefix_modules, self.stash = None, [], {}
        prefix = []
        for g in model.layer_groups:
            if g not in never_trained:
                break
            prefix.append(g)
        if not (config.cache_features and prefix and not (config.train_bn and never_trained)
                and "other" not in self.by_group and hasattr(model, "forward_head")):
            return
        if len(prefix) == len(model.layer_groups) - 1:
            mode, boundary_name, where = "head", model.head_path[0], "input"
        else:
            mode, boundary_name, where = "prefix", prefix[-1].modules[-1], "output"
        if not self.objective.cache_ok(model, mode, boundary_name):
            return
        boundary = model.get_submodule(boundary_name)
        first = next(iter(self.images.values()))
        with torch.inference_mode(), preserved(model):
            model.eval()
            probe = capture(model, boundary, normalise(first[:1].to(self.device), self.mean, self.std), where)
        views = config.cached_views if self.augmenter is not None else 1
        n_train = sum(len(self.images[s]) for s in self.objective.sources)
        n_all = sum(len(v) for v in self.images.values())
        if probe[0].numel() * 4 * (n_train * views + n_all) > CACHE_BUDGET_BYTES:
            return
        self.cache_mode, self.boundary_name, self.boundary, self.where = mode, boundary_name, boundary, where
        self.views = views
        # the head cache can grow between epochs (see _build_caches); so can nothing under DDP,
        # whose ranks must reach every collective together: there all views come first
        self.lazy_cache = mode == "head" and self.dist is None
        if mode == "prefix":
            self.prefix_modules = [model.get_submodule(m) for g in prefix for m in g.modules if m != boundary_name]
        self.prefix_digest = prefix_key([model.get_submodule(m) for g in prefix for m in g.modules])

    def _collect(self, images: torch.Tensor, seed: int | None, source: str, view: int | None = None,
                 tick: bool = True) -> torch.Tensor:
        """The cached activation at the boundary for every image (augmented with ``seed`` when given);
        a training view (``view`` given) is shown to the objective too. ``tick``: report each batch
        as progress of the "cache" phase (not for what is cached later, between epochs)."""
        key = (self.cache_mode, self.boundary_name, self.prefix_digest, int(self.config.image_size),
               str(self.device), str(self.amp_dtype), tensor_key(images), seed)
        chosen = augment_batch(images, self.augmenter, seed) if seed is not None else images
        if view is not None:
            self.objective.on_cache_view(self, source, view, chosen)
        if key in self.shared_cache:
            if tick:
                self._tick(0, 0, math.nan, "cache", math.ceil(len(images) / self.config.batch_size))
            return self.shared_cache[key]
        model, bs, out = self.model, self.config.batch_size, []
        lo, hi = (0, len(chosen)) if self.dist is None else self.dist.rows(len(chosen))
        with torch.inference_mode():
            for start in range(lo, hi, bs):
                if self.cancelled():
                    raise FitCancelled
                x = normalise(chosen[start:min(start + bs, hi)].to(self.device, non_blocking=True), self.mean, self.std)
                with self.autocast():
                    out.append(capture(model, self.boundary, x, self.where).float())
                if tick:
                    self._tick(0, 0, math.nan, "cache")
        if self.dist is not None and not out and len(chosen):  # an empty share still needs the shape
            with torch.inference_mode():
                x = normalise(chosen[:1].to(self.device), self.mean, self.std)
                out.append(capture(model, self.boundary, x, self.where).float()[:0])
        bank = torch.cat(out) if out else torch.empty(0)
        if self.dist is not None:  # each rank computed its share: put the whole cache together
            with torch.inference_mode():
                bank = self.dist.gather_rows(bank, len(chosen))
        self.shared_cache[key] = bank
        return bank

    def _plain_bank(self, source: str) -> torch.Tensor | None:
        if self.lazy_cache and self.cache_mode and source not in self.plain_banks and source in self.images:
            with preserved(self.model):  # BatchNorm reads its running statistics, as in the first pass
                self.model.eval()
                self.plain_banks[source] = self._collect(self.images[source], None, source, tick=False)
        return self.plain_banks.get(source)

    def _build_caches(self) -> None:
        """Before the first epoch: each training source's views (the images themselves, then augmented
        ones), and every source plain.

        With a frozen body (the "head" cache) only the first view is computed now, so the curve's
        first point comes after one pass over the training images instead of ``views + 2``: one more
        view joins before each later epoch (``_grow_caches``), and a plain bank is computed when
        first read. The prefix cache cannot wait: its stand-in replaces the prefix during the fit."""
        seed0 = self.config.seed * 1000
        for i, source in enumerate(self.objective.sources):
            images = self.images[source]
            # the first view is the image itself: a head trained on crops alone is judged on whole
            # images it never saw (feature extraction 2.5-4.8 points below a linear probe, bench_defaults)
            seeds = [None] + [seed0 + 500 * i + v for v in range(1, self.views)]
            self.view_seeds[source] = seeds
            first = self._collect(images, seeds[0], source, 0)
            self.banks[source] = bank = first.new_empty((len(seeds), *first.shape))
            bank[0] = first
            self.filled_views[source] = 1
            if not self.lazy_cache:
                self._grow_caches(every=True)
        if not self.lazy_cache:
            for source, images in self.images.items():
                self.plain_banks[source] = self._collect(images, None, source)

    def _grow_caches(self, every: bool = False) -> None:
        """Cache the next view of each training source (``every``: all that are missing)."""
        for source, seeds in self.view_seeds.items():
            while self.filled_views[source] < len(seeds):
                v = self.filled_views[source]
                if self.lazy_cache:
                    with preserved(self.model):
                        self.model.eval()
                        self.banks[source][v] = self._collect(self.images[source], seeds[v], source, v, tick=False)
                else:
                    self.banks[source][v] = self._collect(self.images[source], seeds[v], source, v)
                self.filled_views[source] = v + 1
                if not every:
                    break

    def _drop_cache(self) -> None:
        """No feature cache (any more): every batch runs the whole model."""
        self.cache_mode, self.cache_until, self.lazy_cache = None, None, False
        self.banks, self.plain_banks, self.filled_views, self.view_seeds = {}, {}, {}, {}
